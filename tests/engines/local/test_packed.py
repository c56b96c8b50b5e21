"""Prepacked bfloat16 linear layers: the same numbers as ``F.linear``, only where inference is safe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolkit.engines.local.packed import is_packing_available, pack_linears

pytestmark = pytest.mark.skipif(not is_packing_available(), reason="this torch build has no oneDNN linear kernels")


def bf16_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 32, bias=False)).to(
        torch.bfloat16
    )


def test_packed_layers_give_the_same_numbers_as_plain_ones() -> None:
    plain, packed = bf16_mlp(), bf16_mlp()
    assert pack_linears(packed) == 2
    for shape in ((1, 1, 64), (16, 1, 64), (3, 40, 64)):  # a decode step of 1 and 16 rows, a prefill
        x = torch.randn(shape, dtype=torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(packed(x), plain(x)), shape


def test_training_and_autograd_take_the_plain_path() -> None:
    model = bf16_mlp()
    pack_linears(model)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    model(x).float().sum().backward()  # no inference mode: gradients flow as for any Linear
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


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


def test_only_bfloat16_cpu_linears_are_packed() -> None:
    model = bf16_mlp().float()
    assert pack_linears(model) == 0
    again = bf16_mlp()
    assert pack_linears(again) == 2 and pack_linears(again) == 0  # packing twice changes nothing
