"""What the scheduler keeps per request: the ``Job`` (queued or running) and, once prefilled, its ``Row``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from toolkit.engines.base import Sampling
from toolkit.engines.local.detok import TextStream
from toolkit.engines.local.sampling import RowSampler, next_tokens
from toolkit.events import Sink
from toolkit.loopguard import LoopGuard


@dataclass(eq=False)
class Job:
    request_id: str
    input_ids: list[int]
    params: Sampling  # every parameter set, the seed included
    sink: Sink
    submitted: float
    deadline: float | None
    adapter: str | None = None
    decode: str | None = None  # the decode path it must take (a replay: its record's); None: the engine's choice
    decoded: set[str] = field(default_factory=set)  # the paths its decode steps took: eager, compiled
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float | None = None
    first_token: float | None = None
    done: bool = False


def decode_path(decoded: set[str]) -> str:
    """What the run record says of a request's decode steps: eager, compiled, or mixed (some of each)."""
    return "mixed" if len(decoded) > 1 else next(iter(decoded), "eager")


def step_tokens(logits: torch.Tensor, rows: Sequence[Row]) -> tuple[torch.Tensor, list[int]]:
    """Each row's next input: its sampled token, or a resumed row's next prompt token (``feed``; its sampler
    untouched, so a seed draws as from a cold start); and the rows that sampled."""
    live = [i for i, row in enumerate(rows) if not row.feed]
    if len(live) == len(rows):
        return next_tokens(logits, [row.sampler for row in rows]), live
    tokens = torch.tensor([row.feed.pop(0) if row.feed else 0 for row in rows], device=logits.device)
    if live:
        index = torch.tensor(live, device=logits.device)
        tokens[index] = next_tokens(logits.index_select(0, index), [rows[i].sampler for i in live])
    return tokens, live


@dataclass(eq=False)
class Row:
    job: Job
    sampler: RowSampler
    text: TextStream
    generated: int = 0
    guard: LoopGuard = field(default_factory=LoopGuard)  # near copies; holds back a copy in the making
    ends: list[int] = field(default_factory=list)  # the raw text's length after each token
    ids: list[int] = field(default_factory=list)  # every token sampled, EOS included
    feed: list[int] = field(default_factory=list)  # a resumed row's prompt tokens still to feed, one a step
