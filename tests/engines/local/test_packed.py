"""Prepacked bfloat16 linear layers: the same numbers as ``F.linear``, only where inference is safe."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from toolkit.engines.local.packed import is_packing_available, pack_linears

# the packing's own tests, where this torch build and this CPU run the kernels; the fallback's run everywhere
AVAILABLE = is_packing_available()
needs_packing = pytest.mark.skipif(
    not AVAILABLE, reason="oneDNN's bfloat16 linear kernels do not run here (an AVX2-only CPU)"
)


def bf16_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 32, bias=False)).to(
        torch.bfloat16
    )


@needs_packing
def test_packed_layers_give_the_same_numbers_as_plain_ones() -> None:
    plain, packed = bf16_mlp(), bf16_mlp()
    assert pack_linears(packed) == 2
    for shape in ((1, 1, 64), (16, 1, 64), (3, 40, 64)):  # a decode step of 1 and 16 rows, a prefill
        x = torch.randn(shape, dtype=torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(packed(x), plain(x)), shape


@needs_packing
def test_training_and_autograd_take_the_plain_path() -> None:
    model = bf16_mlp()
    pack_linears(model)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    model(x).float().sum().backward()  # no inference mode: gradients flow as for any Linear
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


@needs_packing
def test_a_changed_weight_is_packed_again() -> None:
    model = bf16_mlp()
    pack_linears(model)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place, as merging a LoRA adapter does
    with torch.inference_mode():
        after = model(x)
    layer = model[0]
    expected = model[2](F.silu(F.linear(x, layer.weight, layer.bias)))
    assert not torch.equal(before, after) and torch.equal(after, expected)
    with torch.no_grad():
        model[2].weight = torch.nn.Parameter(torch.zeros_like(model[2].weight))  # a new tensor
    with torch.inference_mode():
        assert torch.count_nonzero(model(x)) == 0


@needs_packing
def test_only_bfloat16_cpu_linears_are_packed() -> None:
    model = bf16_mlp().float()
    assert pack_linears(model) == 0
    again = bf16_mlp()
    assert pack_linears(again) == 2 and pack_linears(again) == 0  # packing twice changes nothing


def test_a_cpu_that_cannot_run_the_packed_kernels_keeps_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AVX2-only CPU has oneDNN's kernels, and its bfloat16 reorder raises: nothing is packed, the layers
    answer with F.linear, and a scheduler over such a model says so (its model info's ``linear``)."""
    import toolkit.engines.local.packed as packed

    def no_bf16_path() -> None:
        raise RuntimeError("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(packed, "_probe", no_bf16_path)
    packed.is_packing_available.cache_clear()
    try:
        assert not packed.is_packing_available()
        model, plain = bf16_mlp(), bf16_mlp()
        assert pack_linears(model) == 0
        x = torch.randn(2, 64, dtype=torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(model(x), plain(x))
    finally:
        monkeypatch.undo()
        packed.is_packing_available.cache_clear()  # the real probe again, for the tests after
    assert packed.is_packing_available() == AVAILABLE  # this CPU's own answer again, once the probe is real


def test_the_model_info_says_which_path_a_bfloat16_model_takes(tiny_model_dir: Any, loaded: Any) -> None:
    """packed where this CPU runs the kernels, plain where it does not (and the model answers either way)."""
    from transformers import AutoModelForCausalLM

    from toolkit.engines.local.engine import Scheduler

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    scheduler = Scheduler(model, loaded.tokenizer, eos_token_ids=[loaded.tokenizer.eos_token_id], context_length=128)
    try:
        assert scheduler.linear == ("packed" if AVAILABLE else "plain")
    finally:
        scheduler.close(grace_s=0)
