"""A prompt prefilled on its own: from a kept prefix (``prefixes.py``), and in chunks while others decode.

A long prompt prefilled in one piece between two decode steps makes every running stream wait for all of
it (a 1,500-token grounded prompt: about 2 s on 2 cores). While rows are decoding, the scheduler gives such
a prompt one chunk of ``PREFILL_CHUNK`` tokens per step, into a cache of its own, and adds it to the batch
when its last chunk is done (as vLLM's chunked prefill does, with a separate forward). With nothing
decoding it is prefilled in one piece: nobody waits, and the first token comes soonest.

Prompts arriving together that kept prefixes cover but for their last few tokens (``FEED_TOKENS`` at most)
need no forward of their own: each resumes from its prefix in a slot and feeds those tokens one a decode step,
beside the other rows (its sampler untouched until its first real token). Sixteen chat prompts that share
the chat template's start then join the batch together, instead of taking sixteen forwards, one a step.
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

FEED_TOKENS = 32  # a kept prefix's hit with this many new tokens or fewer is fed through decode steps (slots)


@dataclass(eq=False)
class Fill:
    """One job's prompt going into its own cache; ``done`` tokens of it are in. A kept prefix's keys and values
    (``reuse``) are copied in at its first forward, not when it is admitted: several admitted at once do not
    all copy before the running rows' next step."""

    job: Job
    cache: Any
    done: int = 0
    reuse: Prefix | None = None

    @classmethod
    def start(cls, job: Any, config: Any, reuse: tuple[int, Prefix] | None = None) -> Fill:
        """A fresh cache, to be seeded with the first ``common`` tokens' KV of a kept prefix when ``reuse``."""
        if reuse is None:
            return cls(job, roomy_cache(config))
        common, prefix = reuse
        return cls(job, roomy_cache(config), common, prefix)

    @property
    def remaining(self) -> int:
        return len(self.job.input_ids) - self.done

    def inputs(self, n: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, position ids) of the next ``n`` prompt tokens; ``done`` moves on."""
        if self.reuse is not None:
            for layer, (keys, values) in enumerate(self.reuse.layers):
                self.cache.update(keys[:, :, : self.done].to(device), values[:, :, : self.done].to(device), layer)
            self.reuse = None
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
        """Bring the admitted jobs into the batch. A job whose prompt starts as a kept prefix and has one token
        left resumes from it as a decoding row (slots only), and so do several with up to ``FEED_TOKENS`` left
        each, admitted together or one while others wait for their forwards (those tokens fed one a step, beside
        the other rows: none waits for the others' forwards). One with more left, a lone one with a few left
        (one forward gives its first token soonest), or
        one whose prompt is more than ``prefill_chunk`` new tokens while rows decode, waits in ``_filling``, which
        gives one forward a step (``_fill_step``): rows decoding never wait for more than one. The others go
        together, left padded."""
        now = time.perf_counter()
        for job in jobs:
            job.started = now
        cold: list[Job] = []
        resumed: list[tuple[Job, int, Prefix]] = []
        admitted = list(jobs)  # ``jobs`` is the scheduler's list of those being admitted: it shrinks as they go
        hits = [self.prefixes.longest(j.adapter, j.input_ids) if self.prefixes.enabled else None for j in admitted]
        lefts = [len(j.input_ids) - (hit[0] if hit is not None else 0) for j, hit in zip(admitted, hits, strict=True)]
        # several of them now, or one and others already waiting for a forward each: fed, none waits for the rest
        few = sum(1 for hit, left in zip(hits, lefts, strict=True) if hit is not None and left <= FEED_TOKENS)
        few += sum(1 for fill in self._filling if fill.remaining <= FEED_TOKENS)
        for job, hit, left in zip(admitted, hits, lefts, strict=True):
            feeding = left == 1 or (left <= FEED_TOKENS and few > 1)
            if hit is not None and feeding and isinstance(self._batch, SlotBatch):
                resumed.append((job, *hit))
            elif hit is None and not self._chunking(left):
                cold.append(job)
            else:
                with self._cond:
                    self._admitting.remove(job)
                    self._filling.append(Fill.start(job, self.model.config, hit))
        if resumed:
            assert isinstance(self._batch, SlotBatch)  # room for all of them at once: the buffers grow once
            self._batch.reserve(len(resumed), max(common for _, common, _ in resumed), resumed[0][2].layers)
            for job, common, prefix in resumed:
                self._resume(job, common, prefix)
        if cold:
            self._prefill_group(cold)

    def _resume(self, job: Job, common: int, prefix: Prefix) -> None:
        """A prompt that a kept prefix holds but for its last token: the prefix goes into a slot and the last
        token is fed by the next decode step, with the other rows; its first new token comes from there."""
        assert isinstance(self._batch, SlotBatch)
        self._batch.resume(prefix.layers, common, job.input_ids[common])
        row = self._row(job)
        row.feed = list(job.input_ids[common + 1 :])
        with self._cond:
            self._rows.append(row)
            self._admitting.remove(job)
            self.peak_batch = max(self.peak_batch, len(self._rows))

    def _chunking(self, new_tokens: int) -> bool:
        return 0 < self.prefill_chunk < new_tokens and bool(self._rows)

    def _fill_step(self) -> None:
        """One forward for the prompt waiting with the fewest tokens left (the first of those): a chunk of it while
        rows decode (all of it without chunking, or when no row is decoding any more). Fewest first: a short
        message on a kept prefix is not held behind a long prompt's many chunks, and a long one, once it is
        down to its last chunk, goes before a longer newcomer."""
        now = time.perf_counter()
        for fill in list(self._filling):
            job = fill.job
            if job.cancelled.is_set() or (job.deadline is not None and now >= job.deadline):
                with self._cond:
                    self._filling.remove(fill)
                self._finish(job, "cancelled" if job.cancelled.is_set() else "timeout", "", 0)
        if self._filling:
            fill = min(self._filling, key=lambda f: f.remaining)
            self._fill_safely(fill, (self.prefill_chunk or fill.remaining) if self._rows else fill.remaining)

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
        rows = [self._row(job) for job in jobs]
        tokens = next_tokens(logits, [r.sampler for r in rows])
        self._batch.add(cache, mask, tokens)
        with self._cond:
            self._rows.extend(rows)
            self._admitting = [j for j in self._admitting if j not in jobs]
            self.peak_batch = max(self.peak_batch, len(self._rows))
        self._accept(rows, tokens)

    def _row(self, job: Job) -> Row:
        return Row(
            job,
            RowSampler.create(job.params, job.input_ids, self.device, self._breakers),
            TextStream(self.tokenizer, job.params.stop),
        )

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
