"""bfloat16 linear layers with their weights prepacked for the CPU's matrix kernels.

On a CPU, aten's bfloat16 ``linear`` hands the weight to oneDNN, which reorders it into its
blocked layout on every call; for a decode step (one to a few dozen rows) that reorder costs
about as much as the product itself. ``pack_linears`` reorders each weight once and makes the
layer call oneDNN with the packed copy, the kernel being the same, so the outputs are the same
numbers (measured on the bundled model's decode shapes: no difference at all), only sooner
(2x for a 576x1536 layer at 1 and 16 rows here).

The packed path runs only where it is safe: without autograd (the engine's inference mode), on a
CPU bfloat16 input; training and other dtypes take the plain ``F.linear``. A packed weight is
rebuilt when its weight changes (a different tensor, or one written in place). It costs one more
copy of each packed weight in memory.

And only where this CPU can run it: oneDNN's bfloat16 path needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT;
on an AVX2-only CPU its reorder raises ("bf16 path needs the cpu support ..."), and every request would
fail. ``is_packing_available`` tries the two kernels once on a tiny weight; where they fail, nothing is
packed and the layers keep ``F.linear`` (which runs there). The model's info says which path it takes.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
PACKED, PLAIN = "packed", "plain"  # a bfloat16 model's linear layers: oneDNN with prepacked weights, or F.linear


@functools.cache
def is_packing_available() -> bool:
    """Whether this torch build has oneDNN's linear kernels and this CPU runs their bfloat16 path: both tried
    once, on a tiny weight (an AVX2-only CPU has the kernels and fails them)."""
    ops = torch.ops.mkldnn
    names = ("_reorder_linear_weight", "_linear_pointwise")
    if not torch.backends.mkldnn.is_available() or not all(hasattr(ops, name) for name in names):
        return False
    try:
        _probe()
    except RuntimeError as exc:  # "bf16 path needs the cpu support avx_ne_convert or avx512bw, ..."
        log.info("bfloat16 linear layers take F.linear: oneDNN's packed kernels fail here (%s)", exc)
        return False
    return True


def _probe() -> None:
    with torch.inference_mode(False), torch.no_grad():
        weight = torch.ones(8, 8, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 8, dtype=torch.bfloat16), packed, None, "none", [], "")


class _PackedForward:
    """A ``Linear.forward`` that uses a once-reordered weight when it safely can."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.layer = layer
        self.weight: torch.Tensor | None = None  # the weight the packed copy was made from
        self.version = -1
        self.packed: torch.Tensor | None = None

    def _fresh(self, weight: torch.Tensor) -> torch.Tensor:
        version = weight._version
        if self.packed is None or weight is not self.weight or version != self.version:
            with torch.inference_mode(False), torch.no_grad():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
            self.weight, self.version = weight, version
        return self.packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        weight = layer.weight
        if torch.is_grad_enabled() or x.dtype is not torch.bfloat16:  # autograd, or another dtype: plain
            return F.linear(x, weight, layer.bias)
        if weight is self.weight and weight._version == self.version:  # every decode step: packed, unchanged
            packed = self.packed
        elif weight.dtype is torch.bfloat16 and weight.device.type == "cpu" and x.device.type == "cpu":
            packed = self._fresh(weight)
        else:
            return F.linear(x, weight, layer.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], "")


def pack_linears(model: Any) -> int:
    """Give every plain ``nn.Linear`` of a bfloat16 CPU model the packed path; returns how many.

    Nothing changes for another dtype or device, or when the kernels are missing (returns 0).
    Layers that are not exactly ``nn.Linear`` (4-bit, LoRA wrappers) keep their own forward; the
    ``nn.Linear`` inside a LoRA wrapper is packed like any other.
    """
    if not is_packing_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear or isinstance(module.forward, _PackedForward):
            continue
        if module.weight.dtype != torch.bfloat16 or module.weight.device.type != "cpu":
            continue
        module.__dict__["forward"] = _PackedForward(module)  # found before the class's: nn.Module.__call__ calls it
        count += 1
    return count
