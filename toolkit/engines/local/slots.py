"""The running batch's KV cache in per-row slots: each row keeps its own length, nothing is left padded.

Row ``i`` holds its keys and values in slot ``i`` of one buffer per layer (``(slots, kv heads, columns,
head dim)``), from column 0 to its length. A decode step writes each row's new column at that row's own
length and attends over the live width with a mask per row (SDPA over the cache's view: ``attention.py``).
So a prompt that joins is copied once, into its own slot: the rows already running are not touched, where
the left-padded batch (``kvbatch.py``) re-laid every row's cache out to the new width at every join and
trimmed it again at every finish. A finished row's slot is filled by the last row (one row copied, not the
batch). Buffers grow with room (a quarter more) when a row needs more columns or the batch more slots.

Only for a model whose cache is plain per-layer keys and values and which attends with ``attention.NAME``
(the engine checks); the forward gets a ready 4D mask, so transformers builds none.
"""

from __future__ import annotations

from typing import Any

import torch

from toolkit.engines.local.kvroom import room


class SlotCache:
    """What the model's forward sees for one decode step: ``update`` writes each row's new keys and values at
    its own length and returns the live width's view of every row."""

    def __init__(self, batch: SlotBatch) -> None:
        self.batch = batch

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        b = self.batch
        kbuf, vbuf = b.layers[layer_idx]
        n = keys.shape[0]
        kbuf[b.rows[:n], :, b.lengths] = keys[:, :, 0, :]
        vbuf[b.rows[:n], :, b.lengths] = values[:, :, 0, :]
        width = b.width + 1
        return kbuf[:n, :, :width], vbuf[:n, :, :width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.batch.width


class SlotBatch:
    """The running rows' KV in slots, their lengths (each row's next position) and last tokens."""

    mergeable = True

    def __init__(self, device: Any) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)  # tokens in each row's slot
        self.last: torch.Tensor | None = None  # each row's last sampled token, fed at the next step
        self.rows = torch.arange(0, device=self.device)  # 0..slots-1, for indexing

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        """The longest row's length: the columns a step attends over, before its own."""
        return int(self.lengths.max()) if self.size else 0

    @property
    def cache(self) -> SlotCache:
        return SlotCache(self)

    def add(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """Copy a prefilled group (its left-padded cache, its mask and first sampled tokens) into new slots."""
        lengths = mask.sum(-1)
        n, new = self.size, int(lengths.shape[0])
        self._fit(n + new, max(self.width, int(lengths.max())) + 1, cache)
        width = mask.shape[1]
        for (kbuf, vbuf), layer in zip(self.layers, cache.layers, strict=True):
            for j in range(new):
                length = int(lengths[j])
                kbuf[n + j, :, :length].copy_(layer.keys[j, :, width - length :])
                vbuf[n + j, :, :length].copy_(layer.values[j, :, width - length :])
        self.lengths = torch.cat([self.lengths, lengths.to(self.device)])
        self.last = tokens if self.last is None else torch.cat([self.last, tokens])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, 4D attention mask, position ids) for one decode step of every row: each row attends over
        its own columns and the one it writes now."""
        assert self.last is not None
        self._fit(self.size, self.width + 1)
        columns = torch.arange(self.width + 1, device=self.device)
        mask = (columns[None, :] <= self.lengths[:, None])[:, None, None, :]
        return self.last.unsqueeze(1), mask, self.lengths.unsqueeze(1)

    def advance(self, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """After a decode step: each row one column longer, the new tokens."""
        self.lengths, self.last = self.lengths + 1, tokens

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only these rows. The rows past the new size move into the slots of those that left (one row's
        columns copied each); returns the rows' new order, as their old indices."""
        if not rows:
            self.reset()
            return []
        kept = set(rows)
        size = len(rows)
        holes = [i for i in range(size) if i not in kept]
        movers = [i for i in rows if i >= size]
        order = list(range(size))
        for hole, mover in zip(holes, movers, strict=True):
            length = int(self.lengths[mover])
            for kbuf, vbuf in self.layers:
                kbuf[hole, :, :length].copy_(kbuf[mover, :, :length])
                vbuf[hole, :, :length].copy_(vbuf[mover, :, :length])
            order[hole] = mover
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        self.lengths = self.lengths.index_select(0, index)
        assert self.last is not None
        self.last = self.last.index_select(0, index)
        return order

    def row_kv(self, i: int) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Row ``i``'s length and its keys and values per layer (views, ``(1, kv heads, length, dim)``)."""
        length = int(self.lengths[i])
        return length, [(k[i : i + 1, :, :length], v[i : i + 1, :, :length]) for k, v in self.layers]

    def _fit(self, slots: int, columns: int, like: Any = None) -> None:
        """Buffers with at least ``slots`` slots and ``columns`` columns: moved into larger ones (with room)
        when they are too small; the first ones shaped as ``like``'s layers."""
        if not self.layers:
            assert like is not None
            shapes = [(layer.keys.shape[1], layer.keys.shape[3], layer.keys.dtype) for layer in like.layers]
            slots, columns = slots + max(4, slots // 4), columns + room(columns)
            self.layers = [
                (self._empty(slots, heads, columns, dim, dtype), self._empty(slots, heads, columns, dim, dtype))
                for heads, dim, dtype in shapes
            ]
        else:
            kbuf = self.layers[0][0]
            have_slots, have_columns = kbuf.shape[0], kbuf.shape[2]
            if slots <= have_slots and columns <= have_columns:
                return
            grown_slots = max(have_slots, slots + max(4, slots // 4)) if slots > have_slots else have_slots
            grown_columns = max(have_columns, columns + room(columns)) if columns > have_columns else have_columns
            size, width = self.size, self.width
            layers = []
            for kbuf, vbuf in self.layers:
                _, heads, _, dim = kbuf.shape
                k = self._empty(grown_slots, heads, grown_columns, dim, kbuf.dtype)
                v = self._empty(grown_slots, heads, grown_columns, dim, vbuf.dtype)
                k[:size, :, :width].copy_(kbuf[:size, :, :width])
                v[:size, :, :width].copy_(vbuf[:size, :, :width])
                layers.append((k, v))
            self.layers = layers
        self.rows = torch.arange(self.layers[0][0].shape[0], device=self.device)

    def _empty(self, slots: int, heads: int, columns: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
        # zeros, not empty: the columns past a row's length are masked out, but must be finite numbers
        return torch.zeros((slots, heads, columns, dim), dtype=dtype, device=self.device)
