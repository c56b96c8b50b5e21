"""The running batch in per-row slots (``toolkit/engines/local/slots.py``): rows join without moving the
others, leave with one row moved, and each row's keys and values stay its own."""

from __future__ import annotations

from typing import Any

import torch

from toolkit.engines.local.kvroom import roomy_cache
from toolkit.engines.local.slots import SlotBatch

LAYERS, HEADS, DIM = 2, 3, 8


def config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=HEADS * DIM, num_attention_heads=HEADS, num_key_value_heads=HEADS
    )


def group(lengths: list[int], seed: int) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
    """A prefilled group, left padded as the engine's prefill makes it: its cache, its mask and each row's own
    keys (``(heads, length, dim)`` per layer, stacked)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    cache = roomy_cache(config())
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    own = [torch.randn(LAYERS, HEADS, n, DIM, generator=gen) for n in lengths]
    for layer in range(LAYERS):
        keys = torch.zeros(len(lengths), HEADS, width, DIM)
        for i, n in enumerate(lengths):
            keys[i, :, width - n :] = own[i][layer]
            mask[i, width - n :] = 1
        cache.update(keys, keys * 2, layer)
    return cache, mask, own


def test_rows_keep_their_own_keys_and_values_through_joins_steps_and_leaves() -> None:
    batch = SlotBatch("cpu")
    cache, mask, own = group([5, 2], seed=0)
    batch.add(cache, mask, torch.tensor([7, 8]))
    cache, mask, more = group([9], seed=1)
    batch.add(cache, mask, torch.tensor([9]))
    rows = own + more
    assert batch.lengths.tolist() == [5, 2, 9]
    ids, step_mask, positions = batch.step_inputs()
    assert ids.tolist() == [[7], [8], [9]] and positions.tolist() == [[5], [2], [9]]
    # each row attends over its own columns and the one it writes now: no left padding, no other row's width
    assert step_mask[:, 0, 0].sum(-1).tolist() == [6, 3, 10]
    new = torch.randn(3, HEADS, 1, DIM)
    for layer in range(LAYERS):
        batch.cache.update(new, new * 2, layer)
    batch.advance(step_mask, torch.tensor([1, 2, 3]))
    rows = [torch.cat([r, new[i, None].expand(LAYERS, -1, -1, -1)], dim=2) for i, r in enumerate(rows)]
    order = batch.keep([1, 2])  # the first row finished: the last moves into its slot
    assert order == [2, 1] and batch.lengths.tolist() == [10, 3] and batch.last.tolist() == [3, 2]
    for slot, row in enumerate(order):
        length, layers = batch.row_kv(slot)
        assert length == rows[row].shape[2]
        for layer, (k, v) in enumerate(layers):
            assert torch.equal(k[0], rows[row][layer]) and torch.equal(v[0], rows[row][layer] * 2)


def test_a_join_copies_the_new_row_only() -> None:
    batch = SlotBatch("cpu")
    cache, mask, _ = group([30, 12], seed=2)
    batch.add(cache, mask, torch.tensor([1, 2]))
    buffers = [k.data_ptr() for k, _ in batch.layers]
    before = [k[:2].clone() for k, _ in batch.layers]
    cache, mask, _ = group([20], seed=3)  # within the room the first join made: nothing moves
    batch.add(cache, mask, torch.tensor([3]))
    assert [k.data_ptr() for k, _ in batch.layers] == buffers
    assert all(torch.equal(k[:2], b) for (k, _), b in zip(batch.layers, before, strict=True))


def test_spare_memory_never_reaches_a_step(monkeypatch: Any) -> None:
    """Buffers are allocated empty; whatever a step reads (every row up to the live width) is a number."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: torch.full(a[0], float("nan"), dtype=k.get("dtype")))
    batch = SlotBatch("cpu")
    cache, mask, _ = group([3, 2], seed=4)
    batch.add(cache, mask, torch.tensor([1, 2]))
    cache, mask, _ = group([150], seed=5)  # wider than the room: every buffer grows
    batch.add(cache, mask, torch.tensor([3]))
    batch.keep([1, 2])  # the first row leaves, the long one moves into its slot
    long_kv = [(torch.randn(1, HEADS, 200, DIM), torch.randn(1, HEADS, 200, DIM)) for _ in range(LAYERS)]
    batch.resume(long_kv, 200, 5)  # from a kept prefix, into a fresh slot, wider still
    batch.step_inputs()
    width = batch.width + 1
    for k, v in batch.layers:
        assert torch.isfinite(k[: batch.size, :, :width]).all() and torch.isfinite(v[: batch.size, :, :width]).all()
    assert batch.lengths.tolist() == [150, 2, 200] and batch.last.tolist() == [3, 2, 5]
    length, kept = batch.row_kv(2)
    assert length == 200 and all(torch.equal(k[0], src[0]) for (k, _), (src, _) in zip(kept, long_kv, strict=True))
