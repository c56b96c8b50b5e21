"""Choose the next token for every row of a batch, each row with its own parameters.

Rows are independent: a greedy row takes the argmax, a sampling row applies its
penalties, temperature, min-p, top-k and top-p and draws with its own seeded
``torch.Generator``, so a seeded request samples the same tokens alone or in a
batch. The repetition penalty (transformers' CTRL-style) counts the prompt too; the presence and
frequency penalties (OpenAI's and vLLM's) count only the generated tokens, so that copying from
the prompt (a web source, say) is not punished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from toolkit.engines.base import Sampling
from toolkit.engines.local.repeats import Generated


@dataclass
class RowSampler:
    """Sampling state of one row: its parameters (every one set), generator and the tokens seen."""

    seed: int
    generator: torch.Generator | None
    seen: torch.Tensor | None  # prompt + generated ids, only kept for repetition penalty
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    counts: torch.Tensor | None = None  # how often each token was generated, for presence/frequency penalties
    generated: Generated = field(default_factory=Generated)  # DRY and the n-gram rule

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def fast(self) -> bool:
        """Greedy with nothing to adjust: the argmax of the raw logits."""
        return self.greedy and self.seen is None and not self.penalized and not self.generated.active

    @classmethod
    def create(
        cls,
        params: Sampling,
        prompt_ids: Sequence[int],
        device: Any,
        breakers: Callable[[], frozenset[int]] = frozenset,
    ) -> RowSampler:
        """``breakers``: the model's DRY sequence breakers, asked for only when DRY is on."""
        p = params
        generator = None
        if not p.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(p.seed)
        seen = None
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
        return cls(
            p.seed,
            generator,
            seen,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            generated=Generated(
                dry_multiplier=p.dry_multiplier,
                dry_base=p.dry_base,
                dry_allowed_length=p.dry_allowed_length,
                no_repeat_ngram_size=p.no_repeat_ngram_size,
                breakers=breakers() if p.dry_multiplier else frozenset(),
            ),
        )

    def observe(self, token: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen = torch.cat([self.seen, token.view(1)])
        if self.counts is not None:
            self.counts[token] += 1
        if self.generated.active:
            self.generated.observe(int(token))


def next_tokens(logits: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """``logits`` [batch, vocab] -> next token ids [batch]."""
    if all(r.fast for r in rows):
        return logits.argmax(dim=-1)
    logits = logits.float()
    for i, row in enumerate(rows):
        if row.seen is not None:
            _repetition_penalty(logits[i], row.seen, row.repetition_penalty)
        if row.penalized:
            if row.counts is None:  # the first token: nothing generated yet
                row.counts = torch.zeros(logits.shape[-1], device=logits.device)
            logits[i] -= row.frequency_penalty * row.counts + row.presence_penalty * (row.counts > 0).float()
        if row.generated.active:
            _repeats(logits[i], row.generated)
    out = logits.argmax(dim=-1)
    sampling = [i for i, r in enumerate(rows) if not r.greedy]
    if not sampling:
        return out
    index = torch.tensor(sampling, device=logits.device)
    sub = logits.index_select(0, index)
    temperature = torch.tensor([rows[i].temperature for i in sampling], device=sub.device)
    sub = sub / temperature.unsqueeze(1)
    sub = _min_p(sub, [rows[i].min_p for i in sampling])
    sub = _top_k_top_p(sub, [rows[i].top_k for i in sampling], [rows[i].top_p for i in sampling])
    probs = torch.softmax(sub, dim=-1)
    for j, i in enumerate(sampling):
        out[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    return out


def _repeats(row_logits: torch.Tensor, generated: Generated) -> None:
    """DRY penalties and the tokens the n-gram rule bans (``repeats``), over the row's generated tokens."""
    penalties = generated.dry_penalties()
    if penalties:
        index = torch.tensor(list(penalties), device=row_logits.device)
        row_logits.index_add_(0, index, -torch.tensor(list(penalties.values()), device=row_logits.device))
    banned = generated.banned()
    if banned and len(banned) < row_logits.shape[-1]:
        row_logits[torch.tensor(sorted(banned), device=row_logits.device)] = float("-inf")


def _repetition_penalty(row_logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL-style penalty, as transformers applies it: divide positive logits, multiply negative."""
    score = row_logits.gather(0, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    row_logits.scatter_(0, seen, score)


def _min_p(logits: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Drop the tokens less likely than ``min_p`` times the most likely one (after temperature, as vLLM does)."""
    if all(p <= 0.0 for p in min_p):
        return logits
    probs = torch.softmax(logits, dim=-1)
    floor = probs.max(dim=-1, keepdim=True).values * torch.tensor(min_p, device=logits.device).unsqueeze(1)
    return logits.masked_fill(probs < floor, float("-inf"))


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    if all(k == 0 for k in top_k) and all(p >= 1.0 for p in top_p):
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.tensor([k if k > 0 else vocab for k in top_k], device=logits.device).unsqueeze(1)
    remove = ranks >= k
    probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    cumulative = probs.cumsum(dim=-1)
    p = torch.tensor(top_p, device=logits.device, dtype=cumulative.dtype).unsqueeze(1)
    # drop a token when the mass before it already reaches top_p (the first token always stays)
    remove = remove | ((cumulative - probs) >= p)
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)
