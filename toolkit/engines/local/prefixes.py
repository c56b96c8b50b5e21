"""Prefix reuse: the KV cache of finished answers, kept so that a prompt that starts the same way (the turns
before a conversation's new message, the same sources asked again) prefills only what is new.

An entry is the KV of one finished row (its prompt and the tokens it generated, as far as they were fed to
the model), keyed by the adapter it ran with and its token ids. A new request takes the entry with the
longest common prefix (``MIN_REUSE`` tokens at least) and prefills the rest; its last prompt token is always
computed, for the logits of its first new token. Entries are dropped least recently used first, to stay
within ``max_bytes``. Scheduler thread only: no locking.

The reused keys and values are the numbers an earlier forward computed: the same in exact arithmetic as a
fresh prefill, but not always to the last bit (a decode step and a prefill add up in a different order), so
a greedy answer at a near tie can part from the one a cold start gives. ``PREFIX_CACHE_MB=0`` turns it off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_REUSE = 16  # a shorter common prefix is prefilled with the rest: not worth a batch of its own


@dataclass
class Prefix:
    tokens: torch.Tensor  # 1-D, long
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [1, heads, len, dim]
    nbytes: int


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str | None, int], Prefix] = OrderedDict()
        self._serial = 0
        self.bytes = 0
        self.hits = 0
        self.reused_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, adapter: str | None, tokens: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``layers`` (cloned here) as the KV of ``tokens``; an entry that is a prefix of it is dropped, and
        nothing is cloned when an entry already holds all of ``tokens`` (the same prompt asked again)."""
        if not self.enabled or len(tokens) < MIN_REUSE:
            return
        ids = torch.tensor(list(tokens), dtype=torch.long)
        for key, entry in list(self._entries.items()):
            if key[0] != adapter:
                continue
            n = min(len(entry.tokens), len(ids))
            if not torch.equal(entry.tokens[:n], ids[:n]):
                continue
            if n == len(ids):  # it covers these tokens already: keep it, as the most recently used
                self._entries.move_to_end(key)
                return
            self._drop(key)  # this one covers it: the shorter is never the longest
        kept = [(k.clone(), v.clone()) for k, v in layers]
        size = sum(k.nbytes + v.nbytes for k, v in kept)
        if size > self.max_bytes:
            return
        self._serial += 1
        self._entries[(adapter, self._serial)] = Prefix(ids, kept, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def longest(self, adapter: str | None, tokens: Sequence[int]) -> tuple[int, Prefix] | None:
        """(how many leading tokens of ``tokens`` an entry holds, that entry), or None under ``MIN_REUSE``.
        At most ``len(tokens) - 1``: the last prompt token is always computed."""
        if not self._entries or len(tokens) <= MIN_REUSE:
            return None
        ids = torch.tensor(list(tokens), dtype=torch.long)
        best: tuple[int, tuple[str | None, int]] | None = None
        for key, entry in self._entries.items():
            if key[0] != adapter:
                continue
            n = min(len(entry.tokens), len(ids) - 1)
            differ = (entry.tokens[:n] != ids[:n]).nonzero()
            common = int(differ[0, 0]) if len(differ) else n
            if common >= MIN_REUSE and (best is None or common > best[0]):
                best = (common, key)
        if best is None:
            return None
        common, key = best
        self._entries.move_to_end(key)
        self.hits += 1
        self.reused_tokens += common
        return common, self._entries[key]

    def _drop(self, key: tuple[str | None, int]) -> None:
        self.bytes -= self._entries.pop(key).nbytes

    def clear(self, adapter: str | None = None) -> None:
        """Drop every entry (of ``adapter`` only, when given: its weights changed or it was unloaded)."""
        for key in [k for k in self._entries if adapter is None or k[0] == adapter]:
            self._drop(key)
