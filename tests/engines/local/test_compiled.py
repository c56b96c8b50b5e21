"""The decode step compiled in the background (``toolkit/engines/local/compiled.py``), on a small model built
from a config: the compile takes seconds, not the bundled model's minutes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.engines.local.compiled import SHAPES, CompiledStep
from toolkit.engines.local.engine import Finished, Scheduler
from toolkit.errors import InvalidRequest
from toolkit.params import filled

GREEDY = filled(temperature=0, max_new_tokens=12)
PROMPTS = ["Hello there", "The harbour at night", "Lanterns and boats", "A short story about the sea"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def finished(engine: Scheduler, prompts: list[list[int]], decode: list[str | None] | None = None) -> list[Finished]:
    """Greedy answers to ``prompts``, all submitted at once (one batch); ``decode``: each one's path held to."""
    done = threading.Semaphore(0)
    events: dict[int, Finished] = {}

    def sink(i: int) -> Any:
        def on(event: Any) -> None:
            if isinstance(event, Finished):
                events[i] = event
                done.release()

        return on

    for i, ids in enumerate(prompts):
        engine.submit(ids, GREEDY, sink(i), decode=decode[i] if decode else None)
    for _ in prompts:
        assert done.acquire(timeout=120)
    return [events[i] for i in range(len(prompts))]


def answers(engine: Scheduler, prompts: list[list[int]]) -> list[str]:
    return [event.text for event in finished(engine, prompts)]


def test_the_compiled_step_answers_as_the_eager_one_alone_and_batched(tiny: Any, loaded: Any) -> None:
    tok = loaded.tokenizer
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    engines = [
        Scheduler(tiny, tok, eos_token_ids=[tok.eos_token_id], context_length=256, compile_decode=compile_decode)
        for compile_decode in (False, True)
    ]
    eager, compiled = engines
    try:
        assert eager.compiled is None and compiled.compiled is not None
        step = compiled.compiled
        assert step.wait(600) and step.state == "ready"
        assert set(step.timings) == set(SHAPES)  # each shape measured both ways
        assert set(step.compiled) <= set(SHAPES)  # served compiled only where that was faster
        # one graph a shape: no break (a symbolic flag to SDPA broke it at every layer, each layer then compiled
        # on its own, past torch's recompile limit)
        assert not torch._dynamo.utils.counters["graph_break"]
        step.keep_slower = True
        step.warm()  # now every shape is served compiled
        assert step.compiled == tuple(SHAPES)
        alone = [answers(compiled, [one])[0] for one in ids[:2]]  # one row
        together = answers(compiled, ids)  # a batch
        assert alone == [answers(eager, [one])[0] for one in ids[:2]] and together == answers(eager, ids)
        # each answer says which path its decode steps took, and a request can be held to one (a replay)
        assert {e.extra["decode"] for e in finished(compiled, ids)} == {"compiled"}
        assert {e.extra["decode"] for e in finished(eager, ids)} == {"eager"}
        held = finished(compiled, ids, ["eager", "compiled", "eager", None])
        assert [e.extra["decode"] for e in held][:3] == ["eager", "compiled", "eager"]  # never one step for both
        assert [e.text for e in held] == together
        with pytest.raises(InvalidRequest) as refused:  # no compiled step in this engine
            eager.submit(ids[0], GREEDY, lambda event: None, decode="compiled")
        assert refused.value.field == "decode"
    finally:
        for engine in engines:
            engine.close(grace_s=0)


def test_a_model_the_compiler_cannot_take_stays_eager(tiny: Any) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("no graph for this")

    step = CompiledStep(tiny, broken, background=False)
    step.warm()
    assert step.state == "failed" and step.compiled == ()
