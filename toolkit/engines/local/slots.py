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
        self.width = batch.width  # read once a step, not once a layer (and never inside a compiled step)

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        b = self.batch
        kbuf, vbuf = b.layers[layer_idx]
        n = keys.shape[0]
        kbuf[b.rows[:n], :, b.lengths] = keys[:, :, 0, :]
        vbuf[b.rows[:n], :, b.lengths] = values[:, :, 0, :]
        return kbuf[:n, :, : self.width + 1], vbuf[:n, :, : self.width + 1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width


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
        self.finite = 0  # slots 0..finite-1 hold numbers in every column (a step reads past a row's length)

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
        self._fit(
            n + new, max(self.width, int(lengths.max())) + 1, [(layer.keys, layer.values) for layer in cache.layers]
        )
        width = mask.shape[1]
        for (kbuf, vbuf), layer in zip(self.layers, cache.layers, strict=True):
            for j in range(new):
                length = int(lengths[j])
                kbuf[n + j, :, :length].copy_(layer.keys[j, :, width - length :])
                vbuf[n + j, :, :length].copy_(layer.values[j, :, width - length :])
        for j in range(new):
            self._clean(n + j, int(lengths[j]))
        self.lengths = torch.cat([self.lengths, lengths.to(self.device)])
        self.last = tokens if self.last is None else torch.cat([self.last, tokens])

    def reserve(self, rows: int, length: int, like: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Room for ``rows`` more rows of up to ``length`` columns (and a step's), shaped as ``like``'s layers."""
        self._fit(self.size + rows, max(self.width, length) + 1, like)

    def resume(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int, token: int) -> None:
        """A new row from a kept prefix: the first ``length`` columns of ``layers`` (``(1, kv heads, columns,
        dim)`` per layer) into a new slot, and ``token`` to be fed at the next step, at position ``length``."""
        n = self.size
        self._fit(n + 1, max(self.width, length) + 1, layers)
        for (kbuf, vbuf), (keys, values) in zip(self.layers, layers, strict=True):
            kbuf[n, :, :length].copy_(keys[0, :, :length])
            vbuf[n, :, :length].copy_(values[0, :, :length])
        self._clean(n, length)
        self.lengths = torch.cat([self.lengths, torch.tensor([length], device=self.device)])
        fed = torch.tensor([token], dtype=torch.long, device=self.device)
        self.last = fed if self.last is None else torch.cat([self.last, fed])

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

    def _fit(self, slots: int, columns: int, like: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Buffers with more than ``slots`` slots and ``columns`` columns: moved into larger ones (with room)
        when they are not; the first ones shaped as ``like``'s (keys, values) per layer. More, not as many: a
        step's view of every row's live columns is then never a whole buffer dimension, which the compiled step
        would take as another case (a guard, and a recompile of tens of seconds in the middle of serving)."""
        if not self.layers:
            assert like is not None
            shapes = [(keys.shape[1], keys.shape[3], keys.dtype) for keys, _ in like]
            slots, columns = slots + max(4, slots // 4), columns + room(columns)
            self.layers = [
                (self._empty(slots, heads, columns, dim, dtype), self._empty(slots, heads, columns, dim, dtype))
                for heads, dim, dtype in shapes
            ]
        else:
            kbuf = self.layers[0][0]
            have_slots, have_columns = kbuf.shape[0], kbuf.shape[2]
            if slots < have_slots and columns < have_columns:
                return
            grown_slots = max(have_slots, slots + max(4, slots // 4)) if slots >= have_slots else have_slots
            grown_columns = max(have_columns, columns + room(columns)) if columns >= have_columns else have_columns
            size, width = self.size, self.width
            layers = []
            for kbuf, vbuf in self.layers:
                _, heads, _, dim = kbuf.shape
                k = self._empty(grown_slots, heads, grown_columns, dim, kbuf.dtype)
                v = self._empty(grown_slots, heads, grown_columns, dim, vbuf.dtype)
                k[:size, :, :width].copy_(kbuf[:size, :, :width])
                v[:size, :, :width].copy_(vbuf[:size, :, :width])
                k[:size, :, width:].zero_()
                v[:size, :, width:].zero_()
                layers.append((k, v))
            self.finite = size
            self.layers = layers
        self.rows = torch.arange(self.layers[0][0].shape[0], device=self.device)

    def _clean(self, slot: int, length: int) -> None:
        """A row has just been written into ``slot``'s first ``length`` columns: the columns past them are
        zeroed if the slot never held a row. A step reads every column up to the live width, and a masked-out
        NaN still poisons attention; a buffer is allocated empty, so only the slots rows take are ever written
        (growing for one long row does not touch the spare slots' memory)."""
        if slot >= self.finite:
            for kbuf, vbuf in self.layers:
                kbuf[slot, :, length:].zero_()
                vbuf[slot, :, length:].zero_()
            self.finite = slot + 1

    def _empty(self, slots: int, heads: int, columns: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
        # not zeroed: ``_clean`` zeroes a slot when a row first takes it
        return torch.empty((slots, heads, columns, dim), dtype=dtype, device=self.device)
