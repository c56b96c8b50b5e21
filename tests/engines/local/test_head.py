"""The LM head padded to 16 rows: the logits of ``F.linear`` for a step's rows, and nothing else changed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from toolkit.engines.local import head
from toolkit.engines.local.head import TO, pad_head


class Tiny(torch.nn.Module):
    """An embedding and an output layer, as a causal LM exposes them."""

    def __init__(self, hidden: int = 32, vocabulary: int = 300) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocabulary, hidden)
        self.lm_head = torch.nn.Linear(hidden, vocabulary, bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(ids))


@pytest.fixture
def padded(monkeypatch: pytest.MonkeyPatch) -> Tiny:
    """A tiny model whose head this CPU 'measured' faster padded from 4 rows (the timing is the host's: here it is
    set, so that the padded path runs on any CPU)."""
    monkeypatch.setattr(head, "SMALLEST", 0)
    monkeypatch.setattr(head, "_pays_from", lambda weight: 4)
    monkeypatch.setattr(head, "_TIMED", {})
    model = Tiny()
    assert pad_head(model) == 4
    return model


def test_each_rows_logits_are_the_plain_layers_and_the_same_token_wins(padded: Tiny) -> None:
    weight = padded.lm_head.weight
    for rows in (1, 3, 4, 9, TO - 1, TO, 40):  # below, inside and above the padded range
        x = torch.randn(rows, 1, weight.shape[1])
        with torch.inference_mode():
            logits = padded.lm_head(x)
        expected = F.linear(x, weight)
        assert logits.shape == expected.shape == (rows, 1, weight.shape[0])
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(logits.argmax(-1), expected.argmax(-1)), rows


def test_prefill_shapes_and_training_take_the_plain_layer(padded: Tiny) -> None:
    x = torch.randn(5, 7, padded.lm_head.in_features)  # five prompts of seven positions
    with torch.inference_mode():
        assert torch.equal(padded.lm_head(x), F.linear(x, padded.lm_head.weight))
    ids = torch.randint(0, 300, (6, 1))  # six rows of one position, with autograd on: as in training
    padded(ids).sum().backward()
    assert padded.lm_head.weight.grad is not None and padded.lm_head.weight.grad.abs().sum() > 0


def test_padding_again_changes_nothing_and_a_copy_uses_its_own_weight(padded: Tiny) -> None:
    forward = padded.lm_head.forward
    assert pad_head(padded) == 4 and padded.lm_head.forward is forward  # a second engine on the same model
    twin = copy.deepcopy(padded)
    with torch.no_grad():
        twin.lm_head.weight.mul_(-1)
    x = torch.randn(6, 1, padded.lm_head.in_features)
    with torch.inference_mode():
        torch.testing.assert_close(twin.lm_head(x), -padded.lm_head(x))
    assert padded.state_dict().keys() == Tiny().state_dict().keys()  # saved as before: the same names


def test_a_small_or_non_float32_head_is_left_as_it_is() -> None:
    small = Tiny()  # 300 x 32: microseconds at stake
    assert pad_head(small) is None and "forward" not in small.lm_head.__dict__
    big = Tiny(hidden=64, vocabulary=70_000).to(torch.bfloat16)  # large enough, but bfloat16 (packed.py's)
    assert pad_head(big) is None and "forward" not in big.lm_head.__dict__


def test_under_the_compiler_the_head_runs_outside_the_graph_and_no_row_count_compiles_anew(
    padded: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    plain = head.padded_linear
    monkeypatch.setattr(head, "padded_linear", lambda x, *rest: calls.append(x.shape[0]) or plain(x, *rest))
    compiled = torch.compile(padded, dynamic=True)
    counters = torch._dynamo.utils.counters
    with torch.inference_mode():
        for rows in (9, 9, 12, 16, 2, 15, 5, 40):  # the first compiles; every other count runs the same graphs
            ids = torch.randint(0, 300, (rows, 1))
            torch.testing.assert_close(compiled(ids), F.linear(padded.embed(ids), padded.lm_head.weight))
            if rows == 9:
                graphs = counters["stats"]["unique_graphs"]
    # Python pads at every call (the head is not traced into the graph), and the choice adds no guard on the
    # batch: a guard there compiled a graph for each side of it, in the middle of serving
    assert calls == [9, 9, 12, 15, 5] and counters["stats"]["unique_graphs"] == graphs
