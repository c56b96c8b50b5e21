"""A prompt prefilled on its own: from a kept prefix (``prefixes.py``), and in chunks while others decode.

A long prompt prefilled in one piece between two decode steps makes every running stream wait for all of
it (a 1,500-token grounded prompt: about 2 s on 2 cores). While rows are decoding, the scheduler gives such
a prompt one chunk of ``PREFILL_CHUNK`` tokens per step, into a cache of its own, and adds it to the batch
when its last chunk is done (as vLLM's chunked prefill does, with a separate forward). With nothing
decoding it is prefilled in one piece: nobody waits, and the first token comes soonest.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from toolkit.engines.local.detok import TextStream
from toolkit.engines.local.kvbatch import KVBatch, left_padded
from toolkit.engines.local.kvroom import roomy_cache
from toolkit.engines.local.prefixes import Prefix, PrefixCache
from toolkit.engines.local.rows import Job, Row
from toolkit.engines.local.sampling import RowSampler, next_tokens
from toolkit.engines.local.slots import SlotBatch


@dataclass(eq=False)
class Fill:
    """One job's prompt going into its own cache; ``done`` tokens of it are in."""

    job: Job
    cache: Any
    done: int = 0

    @classmethod
    def start(cls, job: Any, config: Any, device: Any, reuse: tuple[int, Prefix] | None = None) -> Fill:
        """A fresh cache, seeded with the first ``common`` tokens' KV of a kept prefix when ``reuse``."""
        cache = roomy_cache(config)
        if reuse is None:
            return cls(job, cache)
        common, prefix = reuse
        for layer, (keys, values) in enumerate(prefix.layers):
            cache.update(keys[:, :, :common].to(device), values[:, :, :common].to(device), layer)
        return cls(job, cache, common)

    @property
    def remaining(self) -> int:
        return len(self.job.input_ids) - self.done

    def inputs(self, n: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, position ids) of the next ``n`` prompt tokens; ``done`` moves on."""
        end = min(self.done + n, len(self.job.input_ids))
        ids = torch.tensor([self.job.input_ids[self.done : end]], dtype=torch.long, device=device)
        mask = torch.ones((1, end), dtype=torch.long, device=device)
        positions = torch.arange(self.done, end, device=device).unsqueeze(0)
        self.done = end
        return ids, mask, positions


class Prefilling:
    """The scheduler's part that brings admitted jobs into the running batch: from a kept prefix, in
    chunks, or together in one left-padded forward; and that keeps a finished row's KV for reuse."""

    model: Any
    tokenizer: Any
    device: Any
    pad_id: int
    prefixes: PrefixCache
    prefill_chunk: int
    peak_batch: int
    chunks = 0  # forwards of a prompt prefilled on its own (from a kept prefix, or a chunk)
    _cond: threading.Condition
    _rows: list[Row]
    _admitting: list[Job]
    _filling: deque[Fill]
    _batch: KVBatch | SlotBatch
    _forward: Callable[..., torch.Tensor]
    _accept: Callable[[Sequence[Row], torch.Tensor], None]
    _finish: Callable[..., None]
    _fail_jobs: Callable[[list[Job], Exception], None]
    _breakers: Callable[[], frozenset[int]]

    def _prefill(self, jobs: list[Job]) -> None:
        """Prefill the admitted jobs and add them to the batch. A job whose prompt starts as a kept prefix
        is prefilled on its own from there; one whose new tokens are more than ``prefill_chunk`` while rows
        decode waits in ``_filling`` for a chunk a step; the others go together, left padded."""
        now = time.perf_counter()
        for job in jobs:
            job.started = now
        cold: list[Job] = []
        for job in list(jobs):
            hit = self.prefixes.longest(job.adapter, job.input_ids) if self.prefixes.enabled else None
            chunked = self._chunking(len(job.input_ids) - (hit[0] if hit is not None else 0))
            if hit is None and not chunked:
                cold.append(job)
                continue
            fill = Fill.start(job, self.model.config, self.device, hit)
            with self._cond:
                self._admitting.remove(job)
                self._filling.append(fill)
            if not chunked:
                self._fill_safely(fill, fill.remaining)
        if cold:
            self._prefill_group(cold)

    def _chunking(self, new_tokens: int) -> bool:
        return 0 < self.prefill_chunk < new_tokens and bool(self._rows)

    def _fill_step(self) -> None:
        """One chunk of the first prompt being prefilled (all of it, when no row is decoding any more)."""
        now = time.perf_counter()
        for fill in list(self._filling):
            job = fill.job
            if job.cancelled.is_set() or (job.deadline is not None and now >= job.deadline):
                with self._cond:
                    self._filling.remove(fill)
                self._finish(job, "cancelled" if job.cancelled.is_set() else "timeout", "", 0)
        if self._filling:
            fill = self._filling[0]
            self._fill_safely(fill, self.prefill_chunk if self._rows else fill.remaining)

    def _fill_safely(self, fill: Fill, n: int) -> None:
        """``_fill``; a failure fails this prompt's request only (the running rows were not touched)."""
        try:
            self._fill(fill, n)
        except Exception as exc:
            with self._cond:
                if fill in self._filling:
                    self._filling.remove(fill)
            if fill.job not in [row.job for row in self._rows]:
                self._fail_jobs([fill.job], exc)
            else:
                raise

    def _fill(self, fill: Fill, n: int) -> None:
        """The next ``n`` tokens of ``fill``'s prompt; after its last, it samples and joins the batch."""
        ids, mask, positions = fill.inputs(n, self.device)
        logits = self._forward(ids, mask, positions, fill.cache, [fill.job])
        self.chunks += 1
        if fill.remaining:
            return
        with self._cond:
            self._filling.remove(fill)
        self._join([fill.job], fill.cache, mask, logits)

    def _prefill_group(self, jobs: list[Job]) -> None:
        cache = roomy_cache(self.model.config)
        ids, mask, positions = left_padded([j.input_ids for j in jobs], self.pad_id, self.device)
        logits = self._forward(ids, mask, positions, cache, jobs)
        self._join(jobs, cache, mask, logits)

    def _join(self, jobs: list[Job], cache: Any, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Prefilled ``jobs`` sample their first tokens and join the running batch."""
        rows = [
            Row(
                job,
                RowSampler.create(job.params, job.input_ids, self.device, self._breakers),
                TextStream(self.tokenizer, job.params.stop),
            )
            for job in jobs
        ]
        tokens = next_tokens(logits, [r.sampler for r in rows])
        self._batch.add(cache, mask, tokens)
        with self._cond:
            self._rows.extend(rows)
            self._admitting = [j for j in self._admitting if j not in jobs]
            self.peak_batch = max(self.peak_batch, len(self._rows))
        self._accept(rows, tokens)

    def _keep_prefix(self, row: Row) -> None:
        """Keep the KV of a finished row (its prompt and the tokens fed after it) for prompts that start so."""
        kv = self._batch.row_kv(self._rows.index(row)) if row in self._rows else None
        if kv is None:
            return
        length, layers = kv
        tokens = (row.job.input_ids + row.ids)[:length]
        if len(tokens) < length:
            return
        self.prefixes.put(row.job.adapter, tokens, layers)
