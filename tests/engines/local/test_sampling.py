from __future__ import annotations

import pytest
import torch

from toolkit.engines.base import Sampling
from toolkit.engines.local.sampling import RowSampler, _top_k_top_p, next_tokens
from toolkit.params import filled


def sampling(seed: int, **kwargs: object) -> Sampling:
    return Sampling.of(filled(seed=seed, **kwargs))


def row(**kwargs: object) -> RowSampler:
    return RowSampler.create(sampling(1234, **kwargs), prompt_ids=[1, 2, 3], device="cpu")


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
    sampler = RowSampler.create(sampling(0, temperature=0, repetition_penalty=2.0), [1], "cpu")
    assert next_tokens(logits.clone(), [sampler]).tolist() == [0]  # 2.1 / 2 < 2.0


def test_seeded_sampling_is_reproducible_and_seeds_differ() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1000)

    def draw(seed: int) -> list[int]:
        sampler = RowSampler.create(sampling(seed, temperature=1.0), [], "cpu")
        return [int(next_tokens(logits, [sampler])[0]) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("temperature", [0.01, 0.5, 2.0])
def test_sampling_never_picks_a_masked_token(temperature: float) -> None:
    logits = torch.tensor([[0.0, 10.0, 9.0, -5.0, 8.0]])
    sampler = RowSampler.create(sampling(3, temperature=temperature, top_k=2), [], "cpu")
    picks = {int(next_tokens(logits, [sampler])[0]) for _ in range(50)}
    assert picks <= {1, 2}


def test_presence_and_frequency_penalties_count_generated_tokens_only() -> None:
    """Token 1 is in the prompt and leads by 1.0: a penalty of 1.5 must not touch it until it is generated."""
    logits = torch.tensor([[2.0, 3.0, 2.5, 0.0]])
    sampler = RowSampler.create(sampling(0, temperature=0, presence_penalty=1.5), [1, 1, 1], "cpu")
    assert next_tokens(logits.clone(), [sampler]).tolist() == [1]  # copying a prompt word stays possible
    sampler.observe(torch.tensor(1))
    assert next_tokens(logits.clone(), [sampler]).tolist() == [2]  # 3.0 - 1.5 < 2.5: generated once, pushed down
    frequent = RowSampler.create(sampling(0, temperature=0, frequency_penalty=0.3), [], "cpu")
    next_tokens(logits.clone(), [frequent])
    frequent.observe(torch.tensor(1))
    assert next_tokens(logits.clone(), [frequent]).tolist() == [1]  # once: 3.0 - 0.3 = 2.7 still leads
    frequent.observe(torch.tensor(1))
    assert next_tokens(logits.clone(), [frequent]).tolist() == [2]  # twice: 3.0 - 0.6 = 2.4 < 2.5


# ----- DRY and the n-gram rule, over the generated tokens only (issue 23) ---------------------------

from toolkit.engines.local.repeats import Generated  # noqa: E402


def generated(tokens: list[int], **kwargs: object) -> Generated:
    g = Generated(**kwargs)  # type: ignore[arg-type]
    for t in tokens:
        g.observe(t)
    return g


def test_dry_penalises_the_token_that_extends_a_repeat_more_the_longer_it_is() -> None:
    # 5 6 7 8 ... 5 6 7: the next 8 would repeat "5 6 7 8"; a match of 3 tokens, allowed 2
    g = generated([5, 6, 7, 8, 9, 1, 5, 6, 7], dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    assert g.dry_penalties() == {8: 0.8 * 1.75 ** (3 - 2)}
    short = generated([5, 6, 9, 1, 5], dry_multiplier=0.8, dry_allowed_length=2)
    assert short.dry_penalties() == {}  # a match of one token is allowed


def test_dry_does_not_match_across_a_sequence_breaker() -> None:
    tokens = [2, 5, 7, 8, 1, 3, 5, 7]  # "5 7" then 8, and "5 7" again: 8 would extend a 2-token repeat
    assert generated(tokens, dry_multiplier=1.0, dry_allowed_length=2).dry_penalties() == {8: 1.0}
    broken = generated(tokens, dry_multiplier=1.0, dry_allowed_length=2, breakers=frozenset({5}))
    assert broken.dry_penalties() == {}  # 5 breaks the match: only "7" repeats


def test_the_prompt_is_not_counted_so_copying_a_source_stays_free() -> None:
    sampler = RowSampler.create(
        sampling(0, temperature=0, dry_multiplier=2.0), prompt_ids=[3, 4, 3, 4, 3], device="cpu"
    )
    logits = torch.zeros(1, 8)
    logits[0, 4] = 1.0
    assert next_tokens(logits, [sampler]).tolist() == [4]  # the prompt's "3 4 3 4" is not the answer's


def test_no_repeat_ngram_bans_a_repeated_trigram() -> None:
    g = generated([1, 2, 3, 9, 1, 2], no_repeat_ngram_size=3)
    assert g.banned() == {3}
    sampler = RowSampler.create(sampling(0, temperature=0, no_repeat_ngram_size=3), prompt_ids=[], device="cpu")
    for t in (1, 2, 3, 9, 1, 2):
        sampler.observe(torch.tensor(t))
    logits = torch.zeros(1, 10)
    logits[0, 3], logits[0, 5] = 5.0, 1.0
    assert next_tokens(logits, [sampler]).tolist() == [5]
