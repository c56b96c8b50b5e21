"""The engine: one model, a bounded queue and a scheduler thread that batches.

Requests are token ids in, text deltas out. The scheduler admits waiting
requests at every step: it prefills them together (left padded) and merges
their KV cache into the running batch, so a request that arrives while
others are generating joins them instead of waiting for them to finish
(continuous batching). Each row has its own sampling parameters, stop strings,
``max_new_tokens``, deadline, cancel flag and LoRA adapter (``toolkit.adapters``:
rows with different adapters share a batch), and leaves the batch on its own.
Adapters load and unload on the scheduler thread, between two steps (``adapting.py``). How admitted
prompts get into the batch (from a kept prefix, in chunks while others decode,
or together) is ``prefill.py``'s part; the jobs and rows are ``rows.py``'s.

The layers of generation stack as generators: the scheduler emits events
into a per-request sink; ``stream``/``astream`` (``toolkit.events``) turn the sink into an iterator;
the service turns events into ``Token``/``Done`` for the front ends.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from toolkit.engines.base import Sampling
from toolkit.engines.local import attention, omp
from toolkit.engines.local.adapting import Adapting, Op
from toolkit.engines.local.forward import ModelForward
from toolkit.engines.local.head import pad_head
from toolkit.engines.local.kvbatch import KVBatch
from toolkit.engines.local.packed import PACKED, PLAIN, pack_linears
from toolkit.engines.local.prefill import Fill, Prefilling
from toolkit.engines.local.prefixes import PrefixCache
from toolkit.engines.local.repeats import breaker_ids
from toolkit.engines.local.rows import Job, Row, decode_path, step_tokens
from toolkit.engines.local.slots import SlotBatch
from toolkit.errors import EngineClosed, GenerationError, InvalidRequest, Overloaded, ToolkitError
from toolkit.events import Delta, Event, Finished, Sink, Streams
from toolkit.loopguard import MIN_SPAN_TOKENS, looping
from toolkit.params import GenerationParams

log = logging.getLogger("toolkit.engine")

# Engines still running at interpreter exit are stopped first: a scheduler thread that has run
# the model and is still parked when Python finalizes makes the process abort.
_LIVE_ENGINES: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close(grace_s=0)


class Scheduler(Prefilling, Adapting, Streams):
    """Batched, streaming, cancellable generation over one loaded model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        eos_token_ids: Sequence[int],
        context_length: int,
        max_batch_size: int = 16,
        max_queue: int = 64,
        default_timeout_s: float | None = None,
        prefix_cache_bytes: int = 0,
        prefill_chunk: int = 0,
        slots: bool = True,
        compile_decode: bool = False,
        max_loras: int = 0,
        max_lora_rank: int = 16,
    ) -> None:
        """``prefix_cache_bytes``: how much KV of finished answers is kept for prompts that start the same
        way (``prefixes.py``); 0: none. ``prefill_chunk``: while rows decode, a longer prompt is prefilled
        this many tokens a step (``prefill.py``); 0: in one piece. ``slots``: the running rows' KV in per-row
        slots (``slots.py``) where the model allows; False: the left-padded batch (``kvbatch.py``), to compare.
        ``compile_decode``: the decode step over the slots compiled in the background (``compiled.py``); with
        ``max_loras`` > 0, adapters inside it (``rowlora.py``: that many at once, of rank ``max_lora_rank`` at
        most), else peft's, the steps eager while one is loaded."""
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.default_timeout_s = default_timeout_s
        self.device = next(model.parameters()).device
        # SDPA with its own grouped-query support over the cache (attention.py): no copy of the KV heads
        self.attention = attention.NAME if attention.use(model) else str(model.config._attn_implementation)
        # a bfloat16 model's linear layers: prepacked for oneDNN where this CPU runs it, else F.linear (packed.py)
        self.linear: str | None = None
        if self.device.type == "cpu" and next(model.parameters()).dtype == torch.bfloat16:
            self.linear = PACKED if pack_linears(model) else PLAIN
        pad_head(model)  # a float32 LM head's step of a few rows: padded to 16 where this CPU is faster so (head.py)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(eos_token_ids)))
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._rows: list[Row] = []
        self._admitting: list[Job] = []
        plain = self._plain_cache()
        # per-row KV slots (slots.py) where the cache is plain and the attention the engine's; else left padded
        self.kv = "slots" if slots and plain and self.attention == attention.NAME else "padded"
        self._model = ModelForward(
            model,
            compile_decode=compile_decode and self.kv == "slots",
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            max_rows=max_batch_size,
        )
        self._lora = self._model.lora
        self.compiled = self._model.compiled  # the decode step compiled (COMPILE_DECODE), or None
        self._adapters: set[str] = set()  # adapters requests may name (loaded, not being unloaded)
        self._between_steps: list[Op] = []  # changes to the model, run by the scheduler thread
        self._closing = False
        self._breaker_ids: frozenset[int] | None = None  # DRY's sequence breakers, when a request first needs them
        self._batch: KVBatch | SlotBatch = SlotBatch(self.device) if self.kv == "slots" else KVBatch(self.device)
        self.prefixes = PrefixCache(prefix_cache_bytes if plain else 0)
        self.prefill_chunk = prefill_chunk if plain else 0
        self._filling: deque[Fill] = deque()  # prompts being prefilled on their own (fewest tokens left first)
        self.steps = 0  # decode steps run
        self.peak_batch = 0  # the most rows ever decoded together
        self._gate: threading.Event | None = None  # hold(): the scheduler waits between steps until it is set
        self._thread = threading.Thread(target=self._run, name="toolkit-engine", daemon=True)
        omp.release()  # the building thread's OpenMP pool (packing, the bank) would slow the engine's steps
        self._thread.start()
        _LIVE_ENGINES.add(self)

    def _plain_cache(self) -> bool:
        """Whether this model's cache is plain per-layer keys and values (no sliding window): those a kept
        prefix can seed."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.model.config).layers)

    # ----- public API -------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def active(self) -> int:
        with self._cond:
            running = sum(not row.job.done for row in self._rows)  # a finished row leaves at the step's end
            return running + len(self._admitting) + len(self._filling)

    def check_room(self, waiting: int = 0) -> None:
        """Raise ``Overloaded`` now if the queue is full, before a caller spends time preparing a request;
        ``waiting``: requests accepted by the caller and not yet submitted, which count as queued."""
        with self._cond:
            if len(self._pending) + waiting >= self.max_queue:
                raise Overloaded(len(self._pending) + waiting, self.max_queue)

    def submit(
        self,
        input_ids: Sequence[int],
        params: GenerationParams,
        sink: Sink,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        adapter: str | None = None,
        decode: str | None = None,
    ) -> Job:
        """Queue a request; its events go to ``sink`` from the scheduler thread.

        ``adapter`` names a loaded LoRA adapter (None: the base model). ``decode``: the path every decode step
        of it takes, ``eager`` or ``compiled`` (a replay: its record's; ``compiled`` needs ``can_compile``);
        None: the engine's choice. Raises ``Overloaded`` at once when the queue is full.
        """
        if decode not in (None, "eager", "compiled") or (decode == "compiled" and not self.can_compile):
            raise InvalidRequest("decode", f"{decode!r} is not a decode path this engine can take now")
        if not input_ids:
            raise InvalidRequest("prompt", "the prompt has no tokens")
        omp.release()  # this thread computes nothing of it: its OpenMP pool would slow the engine's (omp.py)
        timeout_s = timeout_s if timeout_s is not None else self.default_timeout_s
        now = time.perf_counter()
        job = Job(
            request_id=request_id or secrets.token_hex(16),
            input_ids=list(input_ids),
            params=Sampling.of(params),  # the service resolved them once (toolkit.params.resolve)
            sink=sink,
            submitted=now,
            deadline=now + timeout_s if timeout_s else None,
            adapter=adapter,
            decode=decode,
        )
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is shutting down; retry against a running service")
            if adapter is not None and adapter not in self._adapters:
                raise InvalidRequest("adapter", f"adapter {adapter!r} is not loaded (or is being unloaded)")
            if len(self._pending) >= self.max_queue:
                raise Overloaded(len(self._pending), self.max_queue)
            if job.request_id in self._jobs:
                raise InvalidRequest("request_id", f"a request with id {job.request_id!r} is already running")
            self._jobs[job.request_id] = job
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, request_id: str) -> bool:
        """Stop a request at its next step (at once if it is still queued). False if unknown."""
        with self._cond:
            job = self._jobs.get(request_id)
            if job is None or job.done:
                return False
            job.cancelled.set()
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, "cancelled", "", 0)
            self._cond.notify_all()
        return True

    def hold(self) -> threading.Event:
        """Stop between steps until the returned gate is set: admitted requests stay running, queued ones stay
        queued, and nothing decodes meanwhile. For tests of a busy engine (a full queue, a cancel, a client that
        leaves mid-answer) without long answers whose length is a guess about the host's speed."""
        gate = threading.Event()
        with self._cond:
            self._gate = gate
            self._cond.notify_all()
        return gate

    def close(self, grace_s: float = 10.0) -> None:
        """Take no new requests; let running ones finish for ``grace_s``, then cancel the rest."""
        with self._cond:
            self._closing = True
            if self._gate is not None:
                self._gate.set()  # a held scheduler lets go: closing must not wait on a test's gate
            self._cond.notify_all()
        deadline = time.monotonic() + grace_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(timeout=0.05)
        with self._cond:
            for job in list(self._jobs.values()):
                job.cancelled.set()
            for job in list(self._pending):
                self._finish(job, "cancelled", "", 0)
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)
        if self.compiled is not None:
            self.compiled.close()

    # ----- scheduler ----------------------------------------------------------------

    def _run(self) -> None:
        computed = False  # since the engine last went idle
        while True:
            with self._cond:
                while not self._pending and not self._rows and not self._filling and not self._between_steps:
                    if self._closing:
                        return
                    if computed:  # idle: its OpenMP pool would slow another thread's (a second engine: omp.py)
                        computed = False
                        self._cond.release()  # not under the lock: the pool's threads end first
                        try:
                            omp.release()
                        finally:
                            self._cond.acquire()
                        continue  # something may have come meanwhile
                    self._cond.wait()
                gate = self._gate
                if gate is None:
                    changes, self._between_steps = self._between_steps, []
                    self._admitting = self._take_admissible()
            if gate is not None:  # hold(): between two steps, until the gate opens
                gate.wait()
                with self._cond:
                    if self._gate is gate:
                        self._gate = None
                continue
            for change in changes:  # e.g. load an adapter: between steps, not in inference mode
                change.run()
            computed = True
            try:
                # inference mode only around the work: a thread parked in it aborts at interpreter exit
                with torch.inference_mode():
                    if self._admitting:
                        try:
                            self._prefill(self._admitting)
                        except Exception as exc:
                            if not self._admitting:  # it failed after joining the batch: fail them all
                                raise
                            self._fail_jobs(self._admitting, exc)  # the running rows were not touched
                    if self._filling:
                        self._fill_step()
                    if self._rows:
                        self._decode_step()
            except Exception as exc:  # keep serving: fail this batch, not the engine
                self._fail_batch(exc)
            finally:
                self._admitting = []

    def _take_admissible(self) -> list[Job]:
        """Called under the lock: drop expired queued jobs and pop those that fit."""
        now = time.perf_counter()
        for job in [j for j in self._pending if j.deadline is not None and now >= j.deadline]:
            self._pending.remove(job)
            self._finish(job, "timeout", "", 0)
        if not self._batch.mergeable and self._rows:
            return []
        room = self.max_batch_size - len(self._rows) - len(self._filling)
        taken: list[Job] = []
        # a request held to one decode path waits while the running rows are held to the other (a replay)
        forced = {j.decode for j in [*(r.job for r in self._rows), *(f.job for f in self._filling)] if j.decode}
        while self._pending and len(taken) < room:
            wants = self._pending[0].decode
            if wants is not None and forced - {wants}:
                break
            if wants is not None:
                forced.add(wants)
            taken.append(self._pending.popleft())
        return taken

    @property
    def can_compile(self) -> bool:
        """A decode step can be held to the compiled path now (``COMPILE_DECODE``, warmed up)."""
        return self._model.can_compile

    def _breakers(self) -> frozenset[int]:
        if self._breaker_ids is None:
            self._breaker_ids = breaker_ids(self.tokenizer)
        return self._breaker_ids

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, jobs: Sequence[Job]
    ) -> torch.Tensor:
        return self._model(ids, mask, positions, cache, [job.adapter for job in jobs])

    def _decode_step(self) -> None:
        now = time.perf_counter()
        for row in self._rows:
            job = row.job
            if job.cancelled.is_set():
                self._finish_row(row, "cancelled")
            elif job.deadline is not None and now >= job.deadline:
                self._finish_row(row, "timeout")
        self._prune()
        if not self._rows:
            return
        ids, mask, positions = self._batch.step_inputs()
        adapters = [r.job.adapter for r in self._rows]
        forced = next((r.job.decode for r in self._rows if r.job.decode), None)
        logits, path = self._model.decode(ids, mask, positions, self._batch.cache, adapters, forced)
        rows = self._rows
        for row in rows:
            row.job.decoded.add(path)
        tokens, live = step_tokens(logits, rows)
        self._batch.advance(mask, tokens)
        self.steps += 1
        if len(live) < len(rows):  # the rows still feeding their prompts emit nothing yet
            rows, tokens = [rows[i] for i in live], tokens[live]
        self._accept(rows, tokens)

    def _accept(self, rows: Sequence[Row], tokens: torch.Tensor) -> None:
        """Feed each row its new token: emit text, decide whether it is done."""
        now = time.perf_counter()
        ids = tokens.tolist()
        for i, row in enumerate(rows):
            job, token = row.job, int(ids[i])
            if job.done:
                continue
            if job.deadline is not None and now >= job.deadline:  # computed too late: not shown
                self._finish_row(row, "timeout")
                continue
            row.generated += 1
            row.ids.append(token)
            if job.first_token is None:
                job.first_token = now
            if token in self.eos_token_ids:
                self._finish_row(row, "stop")
                continue
            row.sampler.observe(tokens[i])
            delta = row.text.push(token)
            row.ends.append(len(row.guard.raw) + len(delta))
            shown = row.guard.push(delta)
            if shown:
                self._emit(job, Delta(job.request_id, shown))
            period = 0 if row.text.stopped or row.guard.loop else looping(row.text.tokens)
            if period:  # the same span over and over: the visible answer keeps its first turn
                n = len(row.text.tokens)
                row.guard.stop("period", row.ends[n - max(MIN_SPAN_TOKENS, 4 * period) + period - 1])
            if row.text.stopped:
                self._finish_row(row, "stop")
            elif row.guard.loop:
                self._finish_row(row, "repetition")  # see toolkit.loopguard
            else:
                at_context = len(job.input_ids) + row.generated >= self.context_length
                if at_context or row.generated >= job.params.max_new_tokens:
                    self._finish_row(row, "length")
        self._prune()

    def _prune(self) -> None:
        """Drop finished rows from the batch."""
        keep = [i for i, row in enumerate(self._rows) if not row.job.done]
        if len(keep) == len(self._rows):
            return
        order = self._batch.keep(keep)  # the slots' batch moves rows into the places of those that left
        with self._cond:
            self._rows = [self._rows[i] for i in order]

    def _finish_row(self, row: Row, reason: str) -> None:
        """End a running row; ``completion_tokens`` counts every generated token, EOS included. The text is
        the visible answer (a loop's copies cut off); the raw one goes to the run record when they differ."""
        if reason in ("stop", "length", "repetition") and self.prefixes.enabled:
            self._keep_prefix(row)
        guard = row.guard
        tail = guard.push(row.text.finish()) + guard.finish()
        if tail:
            self._emit(row.job, Delta(row.job.request_id, tail))
        extra = {"raw_text": guard.raw} if guard.loop is not None and guard.raw != guard.visible else {}
        self._finish(row.job, reason, guard.visible, row.generated, extra=extra)

    def _finish(
        self,
        job: Job,
        reason: str,
        text: str,
        generated: int,
        error: ToolkitError | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if job.done:
            return
        job.done = True
        now = time.perf_counter()
        started = job.started if job.started is not None else now
        event = Finished(
            request_id=job.request_id,
            text=text,
            finish_reason=reason,
            prompt_tokens=len(job.input_ids),
            completion_tokens=generated,
            seed=job.params.seed,
            queued_s=started - job.submitted,
            first_token_s=(job.first_token - job.submitted) if job.first_token is not None else None,
            total_s=now - job.submitted,
            error=error,
            extra={**(extra or {}), "decode": decode_path(job.decoded)},
        )
        with self._cond:
            self._jobs.pop(job.request_id, None)
            self._cond.notify_all()  # for unload_adapter, waiting for an adapter's requests to end
        self._emit(job, event)

    def _emit(self, job: Job, event: Event) -> None:
        try:
            job.sink(event)
        except Exception:  # the consumer is gone (closed event loop, ...): stop its work
            job.cancelled.set()

    @staticmethod
    def _error(exc: Exception) -> GenerationError:
        """A message for users without internals (paths, memory figures): those go to the log, by id."""
        error_id = secrets.token_hex(6)
        log.error("generation failed (error id %s)", error_id, exc_info=exc)
        return GenerationError(
            f"generation failed ({type(exc).__name__}, error id {error_id}, logged); "
            "the request was not completed, retry it"
        )

    def _fail_jobs(self, jobs: list[Job], exc: Exception) -> None:
        error = self._error(exc)
        for job in jobs:
            self._finish(job, "error", "", 0, error)

    def _fail_batch(self, exc: Exception) -> None:
        error = self._error(exc)
        for row in list(self._rows):
            self._finish(row.job, "error", row.guard.raw[: row.guard.shown], row.generated, error)
        for job in list(self._admitting):
            self._finish(job, "error", "", 0, error)
        with self._cond:
            self._rows = []
        self._batch.reset()
