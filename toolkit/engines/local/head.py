"""The output layer (the LM head) on a few rows, padded to the row count where the CPU's matrix kernel is fast.

Each step computes the logits of one position a row, so the head (hidden size -> vocabulary, the largest
matrix of a small model: 576 x 49,152 for the bundled one) multiplies a matrix of as many rows as the batch.
MKL's sgemm picks its kernel by that count, and for 4 to 15 rows it picks a slow one. Measured here
(``F.linear``, 2 threads, microseconds): 1 row 3,593; 2 rows 3,797; 4 rows 7,843; 8 rows 13,144;
15 rows 22,707; 16 rows 9,644; 17 rows 10,439; 32 rows 12,208. Copying 15 rows into 16 and dropping the extra
row's logits: 9,729. So the last rows of a batch of 16 (one request ends, the 15 others run on) took 85-96 ms
a step where 16 rows took 65-70.

``pad_head`` times that once for the head's shape (0.4-0.5 s, once a process) and, where padding is
faster, gives the head a forward that pads a step's rows up to ``TO`` from the row count where it pays. The
forward runs outside ``torch.compile``'s graphs (``torch.compiler.disable``: the compiled step breaks around
it), so the choice is plain Python, costs the other row counts nothing, and adds no graph to compile. The
whole forward is outside: a check on the batch size inside a graph guards it, and a dynamic batch's graph then
compiled anew on each side of the check (16 rows, 15, 7: 58-101 s each on 2 cores, in the middle of serving).
The padded rows are zeros; each real row's logits are the same dot products, only summed by another kernel
(the same greedy tokens: the engine's "alone or batched" tests run with it).
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

TO = 16  # the row count the padded forward pads to
TRIED = (4, 8, 15)  # row counts timed against padding to TO
_TIMED: dict[tuple[int, int, int], int | None] = {}  # (out, in, threads) -> pays from: timed once a process
SMALLEST = 4_000_000  # weights (elements) below which the head is left alone: the time at stake is microseconds


class _PaddedHead:
    """A ``Linear.forward`` that pads ``pad_from`` to ``TO - 1`` rows of one position each up to ``TO``."""

    def __init__(self, layer: torch.nn.Linear, pad_from: int) -> None:
        self.layer = layer
        self.pad_from = pad_from

    @torch.compiler.disable
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        rows = x.shape[0]
        if x.dim() != 3 or x.shape[1] != 1 or not self.pad_from <= rows < TO or torch.is_grad_enabled():
            return F.linear(x, layer.weight, layer.bias)
        return padded_linear(x, layer.weight, layer.bias)


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` of ``x``'s rows (fewer than ``TO``) computed as ``TO`` rows, the extra ones zeros."""
    rows = x.shape[0]
    padded = x.new_zeros((TO, *x.shape[1:]))
    padded[:rows] = x
    return F.linear(padded, weight, bias)[:rows]


def pad_head(model: Any) -> int | None:
    """Give ``model``'s output layer the padded forward where this CPU's kernel is faster with it; returns the
    row count padding starts from (None: the head is left as it is). Only a plain float32 ``nn.Linear`` on a
    CPU, of at least ``SMALLEST`` weights, is timed."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return None
    own = head.__dict__.get("forward")
    if own is not None:  # padded already (the model served an engine before), or packed (packed.py)
        return own.pad_from if isinstance(own, _PaddedHead) else None
    weight = head.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.numel() < SMALLEST:
        return None
    key = (weight.shape[0], weight.shape[1], torch.get_num_threads())  # the timing holds for this shape and setting
    if key not in _TIMED:
        _TIMED[key] = _pays_from(weight)
    pad_from = _TIMED[key]
    if pad_from is not None:
        head.__dict__["forward"] = _PaddedHead(head, pad_from)  # found before the class's (as packed.py does)
    return pad_from


def _pays_from(weight: torch.Tensor) -> int | None:
    """The fewest rows (of ``TRIED``) from which every count timed is slower than padding to ``TO``; None where
    none is. Timed on the head's own weight (read only)."""
    with torch.inference_mode():
        out_features, in_features = weight.shape
        x = torch.randn(TO, 1, in_features, dtype=weight.dtype)
        padded = _median_s(functools.partial(padded_linear, x[: TO - 1], weight))
        pays_from = None
        for rows in sorted(TRIED, reverse=True):
            if _median_s(functools.partial(F.linear, x[:rows], weight)) <= padded:
                break
            pays_from = rows
    log.info(
        "the LM head (%d x %d, %d threads) is padded to %d rows from %s",
        in_features,
        out_features,
        torch.get_num_threads(),
        TO,
        pays_from,
    )
    return pays_from


def _median_s(call: Any, repeats: int = 3) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
