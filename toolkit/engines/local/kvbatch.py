"""The tensors of a running batch: KV cache, attention mask, next position and last token per row.

Rows are left padded. A freshly prefilled group joins by concatenation along the
batch (the shorter side is left padded along the sequence); finished rows leave
by index selection, and padding columns no row needs any more are trimmed.
Only plain ``DynamicLayer`` caches can be merged; others run one group at a time. The plain layers are
``RoomyLayer`` (``kvroom.py``): a decode step appends in place instead of copying the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from toolkit.engines.local.kvroom import RoomyLayer


def left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) for a prefill of ``sequences``, left padded."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, width - len(seq) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class KVBatch:
    def __init__(self, device: Any) -> None:
        self.device = device
        self.mergeable = True
        self.reset()

    def reset(self) -> None:
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # the position of each row's next token
        self.last: torch.Tensor | None = None  # each row's last sampled token, fed at the next step

    def add(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append a prefilled group (its cache, mask and first sampled tokens) to the batch."""
        if self.cache is None:
            self.mergeable = all(isinstance(layer, RoomyLayer) for layer in getattr(cache, "layers", [None]))
            self.cache, self.mask = cache, mask
            self.positions = mask.sum(-1)
            self.last = tokens
            return
        assert self.mask is not None and self.positions is not None and self.last is not None
        have, new = self.mask.shape[1], mask.shape[1]
        pad_old, pad_new = max(0, new - have), max(0, have - new)
        for old_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
            old_layer.stack(new_layer, pad_old, pad_new)
        self.mask = torch.cat([_pad_left(self.mask, pad_old, -1), _pad_left(mask, pad_new, -1)], dim=0)
        self.positions = torch.cat([self.positions, mask.sum(-1)])
        self.last = torch.cat([self.last, tokens])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, position ids) for one decode step of every row."""
        assert self.mask is not None and self.positions is not None and self.last is not None
        ones = torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype, device=self.device)
        return self.last.unsqueeze(1), torch.cat([self.mask, ones], dim=1), self.positions.unsqueeze(1)

    def advance(self, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """After a decode step: the longer mask, the next positions, the new tokens."""
        assert self.positions is not None
        self.mask, self.positions, self.last = mask, self.positions + 1, tokens

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only these rows (in their order, which it returns); drop padding columns no remaining row uses."""
        if not rows:
            self.reset()
            return []
        assert self.mask is not None and self.positions is not None and self.last is not None
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)
        if not self.mergeable:  # one group, prefilled together: rows leave, the columns stay
            self.cache.batch_select_indices(index)
            return rows
        first = int(self.mask.any(dim=0).nonzero()[0, 0])
        for layer in self.cache.layers:
            layer.keep(rows, first)
        self.mask = self.mask[:, first:]
        return rows

    def row_kv(self, i: int) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """Row ``i``'s length and its keys and values per layer (``(1, kv heads, length, dim)``); None for a
        batch that cannot give them (one group of another kind of cache)."""
        if self.mask is None or not self.mergeable:
            return None
        length = int(self.mask[i].sum())
        layers = self.cache.layers
        return length, [(layer.keys[i : i + 1, :, -length:], layer.values[i : i + 1, :, -length:]) for layer in layers]


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
