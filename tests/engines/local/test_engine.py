"""The engine on the real bundled model: batching, streaming, cancel, limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from polling import wait_for

from toolkit.engines.local.engine import Delta, Finished, Scheduler
from toolkit.errors import GenerationError, InvalidRequest, Overloaded
from toolkit.params import GenerationParams, filled

GREEDY = filled(temperature=0, max_new_tokens=24)
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Who wrote Hamlet? Answer in one short sentence, please.",
]


@pytest.fixture()
def make_engine(loaded: Any) -> Iterator[Callable[..., Scheduler]]:
    engines: list[Scheduler] = []

    def make(model: Any = None, **kwargs: Any) -> Scheduler:
        engine = Scheduler(
            model if model is not None else loaded.model,
            loaded.tokenizer,
            eos_token_ids=loaded.eos_token_ids,
            context_length=kwargs.pop("context_length", loaded.context_length),
            **kwargs,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close(grace_s=0)


@pytest.fixture(scope="module")
def ids(loaded: Any) -> Callable[[str], list[int]]:
    def encode(question: str) -> list[int]:
        return list(
            loaded.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )

    return encode


def run_together(engine: Scheduler, jobs: list[tuple[list[int], GenerationParams]]) -> list[Finished]:
    """Submit every job before any finishes; return their Finished events in order."""
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = engine.generate(*jobs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_answers_paris(make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]) -> None:
    result = make_engine().generate(ids(QUESTIONS[0]), GREEDY)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.prompt_tokens == len(ids(QUESTIONS[0]))
    assert 0 < result.completion_tokens <= 24
    assert result.first_token_s is not None and 0 <= result.queued_s <= result.first_token_s <= result.total_s


def test_stream_deltas_concatenate_to_the_final_text(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    prompt = ids("Reply with three emoji and the word café.")
    events = list(engine.stream(prompt, filled(temperature=0, max_new_tokens=30)))
    deltas = [e.text for e in events if isinstance(e, Delta)]
    final = events[-1]
    assert isinstance(final, Finished)
    assert all(deltas) and len(deltas) > 3
    assert "".join(deltas) == final.text
    assert final.text == engine.generate(prompt, filled(temperature=0, max_new_tokens=30)).text


def test_identical_greedy_requests_batched_equal_the_solo_run(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    prompt = ids(QUESTIONS[1])
    solo = engine.generate(prompt, GREEDY).text
    together = run_together(engine, [(prompt, GREEDY)] * 4)
    assert [r.text for r in together] == [solo] * 4
    assert engine.peak_batch >= 2


def test_different_prompts_batched_equal_their_solo_runs(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    """Left padding must not change any row's greedy output."""
    engine = make_engine()
    prompts = [ids(q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) > 1
    solo = [engine.generate(p, GREEDY).text for p in prompts]
    together = run_together(engine, [(p, GREEDY) for p in prompts])
    assert [r.text for r in together] == solo
    assert engine.peak_batch >= 2


def test_each_row_stops_at_its_own_max_new_tokens(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    prompt = ids("Write a long story about a dragon.")
    limits = [3, 9, 17, 30]
    results = run_together(engine, [(prompt, filled(temperature=0, max_new_tokens=n)) for n in limits])
    assert [r.completion_tokens for r in results] == limits
    assert all(r.finish_reason == "length" for r in results)
    # shorter answers are prefixes of longer ones: same greedy path, cut at different points
    texts = [r.text for r in results]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(3))


def test_a_request_joins_a_running_batch(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    long_prompt, short_prompt = ids("Write a long story about a dragon."), ids(QUESTIONS[0])
    long_params = filled(temperature=0, max_new_tokens=60)
    solo_long = engine.generate(long_prompt, long_params).text
    solo_short = engine.generate(short_prompt, GREEDY).text
    stream = engine.stream(long_prompt, long_params)
    next(stream)  # the long request is generating
    short = engine.generate(short_prompt, GREEDY)
    rest = list(stream)
    final = rest[-1]
    assert isinstance(final, Finished)
    assert short.text == solo_short
    assert final.text == solo_long
    assert short.total_s < final.total_s  # it did not wait for the long one to finish
    assert engine.peak_batch == 2


def test_cancel_mid_stream_and_the_batch_goes_on(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    long_params = filled(temperature=0, max_new_tokens=80)
    prompt = ids("Write a long story about a dragon.")
    solo = engine.generate(prompt, long_params).text
    seen: list[Any] = []
    stopped = threading.Event()

    def cancelled_one() -> None:
        for event in engine.stream(prompt, long_params, request_id="to-cancel"):
            seen.append(event)
            if isinstance(event, Delta) and len(seen) == 3:
                assert engine.cancel("to-cancel")
        stopped.set()

    thread = threading.Thread(target=cancelled_one)
    thread.start()
    mate = engine.generate(prompt, long_params)
    thread.join(timeout=60)
    final = seen[-1]
    assert isinstance(final, Finished) and final.finish_reason == "cancelled"
    assert final.completion_tokens < 80
    assert mate.finish_reason in ("length", "stop") and mate.text == solo
    assert engine.peak_batch == 2
    assert engine.cancel("to-cancel") is False  # already over


def test_closing_a_stream_cancels_its_request(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    stream = engine.stream(ids("Count from one to one hundred."), filled(temperature=0, max_new_tokens=200))
    next(stream)
    stream.close()
    wait_for(lambda: engine.active == 0, 5, "the closed stream's request kept running")


def test_a_full_queue_answers_overloaded_at_once(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    """Held between steps (``hold``), the engine keeps one request running and two queued, however fast the
    host: a fourth is refused, queued ones cancel at once, and the running one finishes once let go."""
    engine = make_engine(max_batch_size=1, max_queue=2)
    short = filled(temperature=0, max_new_tokens=8)
    prompt = ids("Count from one to one thousand.")
    events: list[Any] = []
    engine.submit(prompt, filled(temperature=0, max_new_tokens=64), events.append, request_id="running")
    wait_for(lambda: any(e.request_id == "running" for e in events))  # its first token: it is running
    gate = engine.hold()
    engine.submit(prompt, short, events.append, request_id="queued-1")
    engine.submit(prompt, short, events.append, request_id="queued-2")
    with pytest.raises(Overloaded) as info:
        engine.submit(prompt, short, events.append, request_id="one-too-many")
    assert info.value.code == "OVERLOADED" and "retry" in info.value.message
    assert engine.queue_depth == 2 and engine.active == 1
    # cancelling queued requests answers them at once, each with its own Finished
    assert engine.cancel("queued-1") and engine.cancel("queued-2")
    finished = {e.request_id: e.finish_reason for e in events if isinstance(e, Finished)}
    assert finished == {"queued-1": "cancelled", "queued-2": "cancelled"}
    gate.set()  # let go: it runs on, and a cancel ends it
    assert engine.cancel("running")
    wait_for(lambda: any(isinstance(e, Finished) and e.request_id == "running" for e in events))
    assert engine.active == 0 and engine.queue_depth == 0


def test_a_request_timeout_ends_it(make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]) -> None:
    """A request past its timeout ends with what it had said, whatever the host's speed: the engine is held
    between two steps until the deadline has passed."""
    engine = make_engine()
    events: list[Any] = []
    started = time.monotonic()
    engine.submit(ids("Count to ten."), filled(temperature=0, max_new_tokens=50), events.append, timeout_s=0.5)
    wait_for(lambda: len(events) > 0)
    gate = engine.hold()
    wait_for(lambda: time.monotonic() - started > 0.6)  # the deadline passes while nothing runs
    gate.set()
    wait_for(lambda: isinstance(events[-1], Finished))
    result = events[-1]
    assert result.finish_reason == "timeout" and 0 < result.completion_tokens < 50


def test_seeded_sampling_is_reproducible_alone_and_batched(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    engine = make_engine()
    prompt = ids(QUESTIONS[1])
    seeded = filled(temperature=0.9, top_p=0.95, top_k=50, seed=42, max_new_tokens=20)
    alone = engine.generate(prompt, seeded)
    assert alone.seed == 42
    other = filled(temperature=0.9, seed=7, max_new_tokens=20)
    together = run_together(engine, [(prompt, seeded), (ids(QUESTIONS[2]), other), (prompt, seeded)])
    assert together[0].text == together[2].text == alone.text
    unseeded = engine.generate(prompt, filled(temperature=0.9, max_new_tokens=5))
    assert isinstance(unseeded.seed, int)  # the seed actually used is reported


def test_stop_strings_end_a_row(make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]) -> None:
    engine = make_engine()
    prompt = ids("What is the capital of France?")
    full = engine.generate(prompt, GREEDY).text
    assert "Paris" in full
    cut = engine.generate(prompt, filled(temperature=0, max_new_tokens=24, stop=["Paris"]))
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index("Paris")]


def test_async_stream(make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]) -> None:
    engine = make_engine()
    prompt = ids(QUESTIONS[0])

    async def collect() -> list[Any]:
        return [event async for event in engine.astream(prompt, GREEDY)]

    events = asyncio.run(collect())
    assert isinstance(events[-1], Finished)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == events[-1].text
    assert events[-1].text == engine.generate(prompt, GREEDY).text


def test_a_model_failure_fails_that_request_and_the_engine_keeps_serving(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]], tiny_model_dir: Any
) -> None:
    """A real failure: a token id past the tiny model's embedding table."""
    from transformers import AutoModelForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = make_engine(tiny, context_length=256)
    bad = engine.generate([1, 2, tiny.config.vocab_size + 10], GREEDY)
    assert bad.finish_reason == "error"
    assert isinstance(bad.error, GenerationError) and "retry" in bad.error.message
    good = engine.generate(ids(QUESTIONS[0]), filled(temperature=0, max_new_tokens=5))
    assert good.finish_reason == "length" and good.completion_tokens == 5


def test_rows_end_at_the_context_length(make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]) -> None:
    prompt = ids("Write a long story about a dragon.")
    engine = make_engine(context_length=len(prompt) + 6)
    result = engine.generate(prompt, filled(temperature=0, max_new_tokens=100))
    assert (result.finish_reason, result.completion_tokens) == ("length", 6)


def test_submit_rejects_what_the_engine_cannot_run(make_engine: Callable[..., Scheduler]) -> None:
    engine = make_engine()
    with pytest.raises(InvalidRequest, match="prompt"):
        engine.submit([], GREEDY, lambda e: None)
    with pytest.raises(InvalidRequest, match="max_new_tokens"):
        engine.submit([1], GenerationParams(temperature=0), lambda e: None)


def test_close_finishes_in_flight_work_then_refuses(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]]
) -> None:
    from toolkit.errors import EngineClosed

    engine = make_engine()
    events: list[Any] = []
    engine.submit(ids(QUESTIONS[0]), GREEDY, events.append)
    engine.close(grace_s=30)
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"
    with pytest.raises(EngineClosed):
        engine.submit(ids(QUESTIONS[0]), GREEDY, events.append)


def test_a_failed_prefill_does_not_touch_running_rows(
    make_engine: Callable[..., Scheduler], ids: Callable[[str], list[int]], tiny_model_dir: Any
) -> None:
    from transformers import AutoModelForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = make_engine(tiny, context_length=256)
    events: list[Any] = []
    engine.submit(ids("Hello there"), filled(temperature=0, max_new_tokens=120), events.append, request_id="good")
    wait_for(lambda: events, 10, "the good request never started generating")
    bad = engine.generate([1, 2, tiny.config.vocab_size + 10], GREEDY)
    assert bad.finish_reason == "error"
    wait_for(lambda: any(isinstance(e, Finished) for e in events), 30, "the good request never finished")
    good = next(e for e in events if isinstance(e, Finished))
    assert good.finish_reason in ("length", "stop") and good.error is None
