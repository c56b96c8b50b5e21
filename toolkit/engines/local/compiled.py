"""The decode step compiled (``torch.compile``), made in the background while the eager step serves, and kept
only for the batch sizes where it measured faster.

The step is the model's forward over the running rows' slots (``slots.py``): one token a row, a 4D mask and
each row's position, attending with the engine's registered SDPA (``attention.py``), which keeps the grouped
KV heads grouped under the compiler; a padded LM head (``head.py``) runs outside the graph. The live width
and the batch are dynamic dimensions, so one graph serves every length; torch specializes a dimension of
size 1, so one row is a graph of its own (``SHAPES``).

Compiling takes tens of seconds on 2 cores, so it runs on a thread of its own at start: until a shape is
ready, and for good where the compiled step measured slower than eager at warm-up (the same rows, both ways,
alternated), steps run eager. torch keeps what it compiled in its on-disk caches (inductor's FX graph
cache, under ``TORCHINDUCTOR_CACHE_DIR``), so a restart compiles again in seconds. Adapters are outside it:
with a LoRA adapter loaded every step is eager (peft's mixed-adapter forward).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from toolkit.engines.local.slots import SlotBatch, SlotCache

log = logging.getLogger("toolkit.engine")

SHAPES = {"1 row": 1, "2+ rows": 4}  # each shape's name, and the rows the warm-up measures it with
WARM_CONTEXT = 300  # tokens of context in the warm-up's rows
TRIALS = 8  # steps timed each way, per shape

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, SlotCache], torch.Tensor]


def shape(rows: int) -> str:
    return "1 row" if rows == 1 else "2+ rows"


class CompiledStep:
    """``forward`` (ids, 4D mask, positions, slot cache -> last logits) eager, and compiled for the shapes
    where that measured faster; ``state``: compiling | ready | failed | closed."""

    def __init__(self, model: Any, forward: Forward, *, background: bool = True, keep_slower: bool = False) -> None:
        """``background``: warm up on a thread of its own now (else call ``warm``); ``keep_slower``: serve every
        shape compiled, faster or not (to compare the two paths' answers)."""
        self.model = model
        self.forward = forward
        self.keep_slower = keep_slower
        self.state = "compiling"
        self.timings: dict[str, tuple[float, float]] = {}  # shape -> (eager ms, compiled ms) at warm-up
        self._use: dict[str, bool] = {}  # shape -> the compiled step serves it
        self._closing = False
        self._compiled = torch.compile(forward, dynamic=True)
        self._thread = threading.Thread(target=self.warm, name="toolkit-compile", daemon=True)
        if background:
            self._thread.start()

    @property
    def compiled(self) -> tuple[str, ...]:
        """The shapes the compiled step serves now."""
        return tuple(name for name, used in list(self._use.items()) if used)

    def serves(self, rows: int) -> bool:
        """The warm-up kept the compiled step for a batch of ``rows`` rows."""
        return self._use.get(shape(rows), False)

    def run(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """The compiled step, for any batch (``serves`` says where it is the faster one); once ``ready``."""
        return self._compiled(ids, mask, positions, cache)

    def give_up(self, why: str) -> None:
        """Serve eager from now on (a compiled step failed, or the engine closes); ``why`` goes to the log."""
        if self.state != "failed":
            log.warning("%s; the decode step is eager from now on", why, exc_info=True)
        self._use.clear()
        self.state = "failed"

    def close(self, timeout: float = 30.0) -> None:
        """Stop the warm-up after the step it is in (a compile cannot be interrupted), and wait for it up to
        ``timeout``: a thread left compiling at interpreter exit can abort the process."""
        self._closing = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Until the warm-up has ended (True), or ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def warm(self) -> None:
        """Compile each shape and time it against eager on the same rows; keep it where it is faster."""
        try:
            with torch.inference_mode():  # as the scheduler's steps run: the graph's guards must match
                for name, rows in SHAPES.items():
                    if self._closing:
                        self.state = "closed"
                        return
                    eager_ms, compiled_ms = self._measure(rows)
                    self.timings[name] = (eager_ms, compiled_ms)
                    self._use[name] = compiled_ms < eager_ms or self.keep_slower
                    log.info(
                        "decode step, %s: eager %.1f ms, compiled %.1f ms: %s",
                        name,
                        eager_ms,
                        compiled_ms,
                        "compiled" if self._use[name] else "stays eager",
                    )
            self.state = "ready"
        except Exception:  # a model the compiler cannot take: it serves eager, as before
            self.give_up("the decode step could not be compiled")

    def _measure(self, rows: int) -> tuple[float, float]:
        eager, compiled = self._rows(rows), self._rows(rows)
        self._step(self._compiled, compiled)  # the compile
        self._step(self.forward, eager)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(TRIALS):
            times["eager"].append(self._step(self.forward, eager))
            times["compiled"].append(self._step(self._compiled, compiled))
        return statistics.median(times["eager"]) * 1000, statistics.median(times["compiled"]) * 1000

    def _rows(self, rows: int) -> SlotBatch:
        """A batch of ``rows`` rows of about ``WARM_CONTEXT`` tokens (random keys and values; lengths differ)."""
        config = self.model.config
        parameter = next(self.model.parameters())
        heads = config.num_key_value_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        batch = SlotBatch(parameter.device)
        generator = torch.Generator().manual_seed(rows)
        for row in range(rows):
            length = WARM_CONTEXT + 7 * row
            layers = [
                tuple(
                    torch.randn(1, heads, length, dim, generator=generator).to(parameter.device, parameter.dtype)
                    for _ in range(2)
                )
                for _ in range(config.num_hidden_layers)
            ]
            batch.resume(layers, length, 1000 + row)  # type: ignore[arg-type]
        return batch

    @staticmethod
    def _step(forward: Forward, batch: SlotBatch) -> float:
        ids, mask, positions = batch.step_inputs()
        started = time.perf_counter()
        logits = forward(ids, mask, positions, batch.cache)
        seconds = time.perf_counter() - started
        batch.advance(mask, logits.argmax(-1))
        return seconds
