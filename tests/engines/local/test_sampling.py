from __future__ import annotations

import pytest
import torch

from toolkit.engines.local.sampling import RowSampler, _top_k_top_p, next_tokens
from toolkit.params import GenerationParams


def row(**kwargs: object) -> RowSampler:
    return RowSampler.create(GenerationParams(**kwargs), seed=1234, prompt_ids=[1, 2, 3], device="cpu")  # type: ignore[arg-type]


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    assert next_tokens(logits, [row(temperature=0), row(temperature=0)]).tolist() == [1, 0]


def test_top_k_keeps_the_k_best() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = _top_k_top_p(logits, [2], [1.0])
    assert torch.isfinite(kept).tolist() == [[False, True, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = _top_k_top_p(probs.log(), [0], [0.75])
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = _top_k_top_p(probs.log(), [0], [0.4])  # the best token always stays
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]


def test_rows_keep_their_own_parameters() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    kept = _top_k_top_p(logits, [1, 0], [1.0, 1.0])
    assert torch.isfinite(kept).sum(dim=-1).tolist() == [1, 4]


def test_repetition_penalty_pushes_seen_tokens_down() -> None:
    logits = torch.tensor([[2.0, 2.1, -1.0, 0.5]])
    sampler = RowSampler.create(GenerationParams(temperature=0, repetition_penalty=2.0), 0, [1], "cpu")
    assert next_tokens(logits.clone(), [sampler]).tolist() == [0]  # 2.1 / 2 < 2.0


def test_seeded_sampling_is_reproducible_and_seeds_differ() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1000)

    def draw(seed: int) -> list[int]:
        sampler = RowSampler.create(GenerationParams(temperature=1.0), seed, [], "cpu")
        return [int(next_tokens(logits, [sampler])[0]) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("temperature", [0.01, 0.5, 2.0])
def test_sampling_never_picks_a_masked_token(temperature: float) -> None:
    logits = torch.tensor([[0.0, 10.0, 9.0, -5.0, 8.0]])
    sampler = RowSampler.create(GenerationParams(temperature=temperature, top_k=2), 3, [], "cpu")
    picks = {int(next_tokens(logits, [sampler])[0]) for _ in range(50)}
    assert picks <= {1, 2}


def test_presence_and_frequency_penalties_count_generated_tokens_only() -> None:
    """Token 1 is in the prompt and leads by 1.0: a penalty of 1.5 must not touch it until it is generated."""
    logits = torch.tensor([[2.0, 3.0, 2.5, 0.0]])
    sampler = RowSampler.create(GenerationParams(temperature=0, presence_penalty=1.5), 0, [1, 1, 1], "cpu")
    assert next_tokens(logits.clone(), [sampler]).tolist() == [1]  # copying a prompt word stays possible
    sampler.observe(torch.tensor(1))
    assert next_tokens(logits.clone(), [sampler]).tolist() == [2]  # 3.0 - 1.5 < 2.5: generated once, pushed down
    frequent = RowSampler.create(GenerationParams(temperature=0, frequency_penalty=0.3), 0, [], "cpu")
    next_tokens(logits.clone(), [frequent])
    frequent.observe(torch.tensor(1))
    assert next_tokens(logits.clone(), [frequent]).tolist() == [1]  # once: 3.0 - 0.3 = 2.7 still leads
    frequent.observe(torch.tensor(1))
    assert next_tokens(logits.clone(), [frequent]).tolist() == [2]  # twice: 3.0 - 0.6 = 2.4 < 2.5
