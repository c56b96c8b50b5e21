"""KV layers with room: the same keys and values as transformers' concatenating layer, appended in place."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from toolkit.engines.local.kvroom import MIN_ROOM, RoomyLayer


def states(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, length, 8, generator=gen), torch.randn(rows, 3, length, 8, generator=gen)


def test_updates_give_what_concatenation_gives_and_decode_steps_do_not_reallocate() -> None:
    roomy, plain = RoomyLayer(), DynamicLayer()
    for layer in (roomy, plain):
        layer.update(*states(2, 20, 0))  # a prefill
    buffer = roomy.keys.untyped_storage().data_ptr()
    for step in range(1, MIN_ROOM + 1):  # decode steps, one column each: all within the first room
        a = roomy.update(*states(2, 1, step))
        b = plain.update(*states(2, 1, step))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert roomy.keys.untyped_storage().data_ptr() == buffer  # written in place, not copied
    roomy.update(*states(2, 1, 999))  # past the room: a new, larger buffer, the same numbers
    plain.update(*states(2, 1, 999))
    assert roomy.keys.untyped_storage().data_ptr() != buffer
    assert torch.equal(roomy.keys, plain.keys) and roomy.get_seq_length() == plain.get_seq_length() == 20 + MIN_ROOM + 1


def test_rows_selected_and_padding_trimmed_from_outside_are_kept_on_the_next_update() -> None:
    roomy, plain = RoomyLayer(), DynamicLayer()
    for layer in (roomy, plain):
        layer.update(*states(3, 10, 1))
        layer.batch_select_indices(torch.tensor([0, 2]))  # a row finished
        layer.keys, layer.values = layer.keys[..., 4:, :], layer.values[..., 4:, :]  # padding nobody needs
        layer.update(*states(2, 1, 2))
    assert torch.equal(roomy.keys, plain.keys) and torch.equal(roomy.values, plain.values)


def test_keeping_rows_from_a_column_on_is_one_copy_with_room_to_append() -> None:
    roomy, plain = RoomyLayer(), DynamicLayer()
    for layer in (roomy, plain):
        layer.update(*states(3, 10, 1))
    roomy.keep([0, 2], first=4)  # what the batch does when a row finishes
    plain.batch_select_indices(torch.tensor([0, 2]))
    plain.keys, plain.values = plain.keys[..., 4:, :], plain.values[..., 4:, :]
    assert torch.equal(roomy.keys, plain.keys) and torch.equal(roomy.values, plain.values)
    buffer = roomy.keys.untyped_storage().data_ptr()
    assert torch.equal(roomy.update(*states(2, 1, 2))[0], plain.update(*states(2, 1, 2))[0])
    assert roomy.keys.untyped_storage().data_ptr() == buffer


def test_stacking_left_pads_the_shorter_side_with_zeros() -> None:
    old, new = RoomyLayer(), RoomyLayer()
    old.update(*states(2, 5, 3))
    new.update(*states(1, 8, 4))
    keys_old, keys_new = old.keys.clone(), new.keys.clone()
    old.stack(new, pad_self=3, pad_other=0)
    assert old.keys.shape == (3, 3, 8, 8)
    assert torch.equal(old.keys[:2, :, :3], torch.zeros(2, 3, 3, 8)) and torch.equal(old.keys[:2, :, 3:], keys_old)
    assert torch.equal(old.keys[2:], keys_new)
    buffer = old.keys.untyped_storage().data_ptr()
    old.update(*states(3, 1, 5))  # and the next step appends in place, after the widest row
    assert old.keys.untyped_storage().data_ptr() == buffer
    assert old.get_seq_length() == 9 and torch.equal(old.keys[2:, :, :8], keys_new)
