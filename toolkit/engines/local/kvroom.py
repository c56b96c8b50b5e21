"""KV cache layers with room to grow: a decode step writes its token's keys and values in place.

transformers' ``DynamicLayer`` grows by concatenation, so every decode step copies the whole cache of
every layer to add one column: for 16 rows at 600 tokens of context that copy was 44 % of a decode step
on 2 cores (104 of 236 ms, measured with the profiler), more than the matrix products. ``RoomyLayer``
keeps ``keys`` and ``values`` as views of buffers with spare columns at the end; ``update`` writes into
the spare columns and widens the views, and only allocates (with a quarter more room) when they are used
up. Anything that replaces ``keys``/``values`` from outside (selecting rows, trimming padding) simply
makes the next ``update`` move them into a new buffer, as a concatenation would have.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

MIN_ROOM = 64  # spare columns at least, per allocation


def room(length: int) -> int:
    """Spare columns to allocate for a cache of ``length`` columns: a quarter more, ``MIN_ROOM`` at least."""
    return max(MIN_ROOM, length // 4)


class RoomyLayer(DynamicLayer):
    """A ``DynamicLayer`` (same API, same numbers) that appends in place."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None  # what keys/values were when we set them

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        have, new = self.get_seq_length(), key_states.shape[-2]
        if not self._in_place(have + new, key_states):
            keys = self.keys if have and self.keys is not None else key_states[..., :0, :]
            values = self.values if have and self.values is not None else value_states[..., :0, :]
            self._place(keys, values, have + new)
        assert self._buffers is not None
        kbuf, vbuf = self._buffers
        kbuf[..., have : have + new, :].copy_(key_states)
        vbuf[..., have : have + new, :].copy_(value_states)
        keys, values = kbuf[..., : have + new, :], vbuf[..., : have + new, :]
        self._set(keys, values)
        return keys, values

    def _in_place(self, length: int, states: torch.Tensor) -> bool:
        if self._buffers is None or self._views is None:
            return False
        kbuf = self._buffers[0]
        return (
            self.keys is self._views[0]
            and self.values is self._views[1]
            and kbuf.shape[-2] >= length
            and kbuf.shape[:2] == states.shape[:2]
            and kbuf.dtype == states.dtype
        )

    def _place(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Move ``keys``/``values`` into new buffers with room for ``length`` columns and more."""
        columns = length + room(length)
        kbuf = keys.new_empty((*keys.shape[:-2], columns, keys.shape[-1]))
        vbuf = values.new_empty((*values.shape[:-2], columns, values.shape[-1]))
        have = keys.shape[-2]
        kbuf[..., :have, :].copy_(keys)
        vbuf[..., :have, :].copy_(values)
        self._buffers = (kbuf, vbuf)
        self._set(kbuf[..., :have, :], vbuf[..., :have, :])

    def _set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values
        self._views = (keys, values)

    def stack(self, other: DynamicLayer, pad_self: int, pad_other: int) -> None:
        """This layer's rows, then ``other``'s, each left padded with zeros to the wider of the two: one copy
        into a new buffer with room (the padding is masked out, but must be finite numbers)."""
        a_k, a_v, b_k, b_v = self.keys, self.values, other.keys, other.values
        assert a_k is not None and a_v is not None and b_k is not None and b_v is not None
        width = max(a_k.shape[-2] + pad_self, b_k.shape[-2] + pad_other)
        rows = a_k.shape[0] + b_k.shape[0]
        shape = (rows, *a_k.shape[1:-2], width + room(width), a_k.shape[-1])
        kbuf, vbuf = a_k.new_empty(shape), a_v.new_empty(shape)
        for buf, a, b in ((kbuf, a_k, b_k), (vbuf, a_v, b_v)):
            n = a.shape[0]
            buf[:n, ..., :pad_self, :].zero_()
            buf[:n, ..., pad_self:width, :].copy_(a)
            buf[n:, ..., :pad_other, :].zero_()
            buf[n:, ..., pad_other:width, :].copy_(b)
        self._buffers = (kbuf, vbuf)
        self._set(kbuf[..., :width, :], vbuf[..., :width, :])

    def keep(self, rows: list[int], first: int) -> None:
        """Only ``rows``, from column ``first`` on (padding no kept row needs): one copy into a new buffer
        with room, where selecting and then appending would copy twice."""
        if self.get_seq_length() == 0:  # a layer that holds nothing (KV shared from another layer)
            return
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        length = keys.shape[-2] - first
        shape = (len(rows), *keys.shape[1:-2], length + room(length), keys.shape[-1])
        kbuf, vbuf = keys.new_empty(shape), values.new_empty(shape)
        for j, i in enumerate(rows):
            kbuf[j, ..., :length, :].copy_(keys[i, ..., first:, :])
            vbuf[j, ..., :length, :].copy_(values[i, ..., first:, :])
        self._buffers = (kbuf, vbuf)
        self._set(kbuf[..., :length, :], vbuf[..., :length, :])

    def reset(self) -> None:
        self._buffers = self._views = None
        super().reset()


def roomy_cache(config: Any) -> Any:
    """transformers' ``DynamicCache`` for ``config``, its plain layers made ``RoomyLayer`` (sliding-window
    and other layers are left as they are)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.layers = [RoomyLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
