"""Prefix reuse: a prompt that starts as a finished answer's prompt and text prefills only what is new."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from toolkit.engines.local.engine import Finished, Scheduler
from toolkit.engines.local.prefill import FEED_TOKENS
from toolkit.engines.local.prefixes import MIN_REUSE, PrefixCache
from toolkit.params import filled

GREEDY = filled(temperature=0, max_new_tokens=32)
SHORT = filled(temperature=0, max_new_tokens=8)
SYSTEM = "You answer questions about the town of Varnholt. " * 12


def kv(length: int, value: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, 2, length, 4), value), torch.full((1, 2, length, 4), value)) for _ in range(3)]


def test_the_longest_common_prefix_of_the_same_adapter_is_found() -> None:
    cache = PrefixCache(max_bytes=1 << 20)
    cache.put(None, list(range(40)), kv(40))
    cache.put("quenby", list(range(60)), kv(60))
    common, entry = cache.longest(None, [*range(30), 999, 1000])  # type: ignore[misc]
    assert common == 30 and len(entry.tokens) == 40
    assert cache.longest(None, [*range(MIN_REUSE - 1), 999, 1000]) is None  # too short to be worth it
    assert cache.longest("other", list(range(50))) is None  # another adapter's KV is not this one's
    common, _ = cache.longest(None, list(range(40)))  # type: ignore[misc]
    assert common == 39  # the last prompt token is always computed: its logits give the first new token


def test_entries_stay_within_the_budget_oldest_first_and_an_adapter_can_be_cleared() -> None:
    one = sum(k.nbytes + v.nbytes for k, v in kv(40))
    cache = PrefixCache(max_bytes=3 * one)
    for start in (0, 1000, 2000, 3000):
        cache.put(None, list(range(start, start + 40)), kv(40))
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert cache.longest(None, [*range(0, 40), 7]) is None  # the oldest went
    cache.put(None, list(range(3000, 3050)), kv(50))  # it covers an entry: that one goes, not kept twice
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes  # and the oldest made room for the rest
    assert cache.longest(None, [*range(3000, 3050), 7])[0] == 50  # type: ignore[index]
    cache.put("quenby", list(range(40)), kv(40))
    assert cache.longest("quenby", [*range(40), 7]) is not None
    cache.clear("quenby")  # unloaded, or loaded again with other weights
    assert cache.longest("quenby", [*range(40), 7]) is None and len(cache) == 1
    assert PrefixCache(0).longest(None, list(range(40))) is None


def test_the_same_tokens_kept_again_are_not_copied_again() -> None:
    cache = PrefixCache(max_bytes=1 << 20)
    cache.put(None, list(range(40)), kv(40))
    cache.put(None, list(range(100, 140)), kv(40))
    size = cache.bytes
    cache.put(None, list(range(40)), kv(40, value=2.0))  # the same prompt answered again
    cache.put(None, list(range(30)), kv(30, value=2.0))  # or a shorter one it covers
    assert cache.bytes == size and len(cache) == 2
    cache.max_bytes = size  # room for two: a third entry drops the least recently kept
    cache.put(None, list(range(500, 540)), kv(40))
    common, entry = cache.longest(None, [*range(40), 7])  # type: ignore[misc]
    assert common == 40 and torch.equal(entry.layers[0][0], kv(40)[0][0])  # the first copy, kept as used
    assert cache.longest(None, [*range(100, 140), 7]) is None


@pytest.fixture()
def engines(loaded: Any) -> Iterator[tuple[Scheduler, Scheduler]]:
    made = [
        Scheduler(
            loaded.model,
            loaded.tokenizer,
            eos_token_ids=loaded.eos_token_ids,
            context_length=loaded.context_length,
            prefix_cache_bytes=bytes_,
        )
        for bytes_ in (64 << 20, 0)
    ]
    yield made[0], made[1]
    for engine in made:
        engine.close(grace_s=0)


def answer(engine: Scheduler, ids: list[int], params: Any = GREEDY) -> Finished:
    done = threading.Event()
    events: list[Any] = []

    def sink(event: Any) -> None:
        events.append(event)
        if isinstance(event, Finished):
            done.set()

    engine.submit(ids, params, sink)
    assert done.wait(120)
    return events[-1]


def test_a_conversations_second_turn_reuses_the_first_and_answers_as_a_cold_start(
    engines: tuple[Scheduler, Scheduler], loaded: Any
) -> None:
    warm, cold = engines
    tok = loaded.tokenizer

    def ids(messages: list[dict[str, str]]) -> list[int]:
        return list(
            tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        )

    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]
    one = answer(warm, ids(first))
    assert warm.prefixes.hits == 0 and len(warm.prefixes) == 1
    second = [*first, {"role": "assistant", "content": one.text}, {"role": "user", "content": "And of Italy?"}]
    two = answer(warm, ids(second))
    assert warm.prefixes.hits == 1
    assert warm.prefixes.reused_tokens >= len(ids(first))  # the first turn's prompt and answer were not prefilled again
    assert two.text == answer(cold, ids(second)).text and two.prompt_tokens == len(ids(second))
    assert len(cold.prefixes) == 0  # 0 bytes: nothing kept


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode_and_answers_as_alone(loaded: Any) -> None:
    tok = loaded.tokenizer
    chunked, alone = (
        Scheduler(
            loaded.model,
            tok,
            eos_token_ids=loaded.eos_token_ids,
            context_length=loaded.context_length,
            prefill_chunk=chunk,
        )
        for chunk in (32, 0)
    )
    try:

        def ids(system: str, question: str) -> list[int]:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
            return list(out["input_ids"])

        running = ids("Be brief.", "Write a long essay about the sea.")
        long = ids(SYSTEM, "Which town is this about?")
        assert len(long) > 4 * 32
        started, ended, events = threading.Event(), threading.Event(), []

        def sink(event: Any) -> None:
            started.set()
            events.append(event)
            if isinstance(event, Finished):
                ended.set()

        chunked.submit(running, filled(temperature=0, max_new_tokens=120), sink)
        assert started.wait(60)  # decoding: a long prompt now goes a chunk a step
        two = answer(chunked, long)
        assert chunked.chunks >= len(long) // 32 and two.text == answer(alone, long).text
        cancelled = threading.Event()
        job = chunked.submit([*long, 13], GREEDY, lambda e: cancelled.set() if isinstance(e, Finished) else None)
        chunked.cancel(job.request_id)  # while it waits or fills: it ends, and the others go on
        assert cancelled.wait(60)
        assert ended.wait(120)
        assert events[-1].finish_reason in ("length", "stop") and chunked.active == 0
    finally:
        chunked.close(grace_s=0)
        alone.close(grace_s=0)


def chat_ids(tok: Any, *turns: str, system: str = SYSTEM) -> list[int]:
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": system}] + [
        {"role": roles[i % 2], "content": text} for i, text in enumerate(turns)
    ]
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def test_the_same_prompt_again_resumes_from_its_prefix_and_answers_as_a_cold_start(
    engines: tuple[Scheduler, Scheduler], loaded: Any
) -> None:
    warm, cold = engines
    ids = chat_ids(loaded.tokenizer, "Which town is this about?")
    one = answer(warm, ids)
    forwards = warm.chunks
    two = answer(warm, ids)  # a regenerate, an evaluation run again: all but the last token is kept
    assert warm.prefixes.hits == 1 and warm.prefixes.reused_tokens == len(ids) - 1
    assert warm.chunks == forwards  # no forward of its own: its last token went in with a decode step
    assert len(warm.prefixes) == 1  # and its KV was not kept twice
    assert two.text == one.text == answer(cold, ids).text and two.prompt_tokens == len(ids)


def follow_ups_to(engine: Scheduler, tok: Any, questions: tuple[str, ...]) -> list[list[int]]:
    """A first question answered (its KV kept), and the conversations that go on from it with ``questions``."""
    first = answer(engine, chat_ids(tok, "Which town is this about?"))
    return [chat_ids(tok, "Which town is this about?", first.text, q) for q in questions]


def decoding(engine: Scheduler, tok: Any) -> threading.Event:
    """A long answer started, its first token come (rows are decoding); the event its end sets."""
    started, ended = threading.Event(), threading.Event()
    engine.submit(
        chat_ids(tok, "Write a long essay about the sea.", system="Be brief."),
        filled(temperature=0, max_new_tokens=24),
        lambda e: (started.set(), isinstance(e, Finished) and ended.set()),
    )
    assert started.wait(60)
    return ended


def test_prompts_from_kept_prefixes_take_one_forward_a_step_while_rows_decode(
    engines: tuple[Scheduler, Scheduler], loaded: Any
) -> None:
    warm, cold = engines
    tok = loaded.tokenizer
    questions = (  # more new tokens than FEED_TOKENS: each takes a forward of its own
        "And which river runs through it, where does that river meet the sea, and which bridges cross it on the way?",
        "Who was its mayor before the great flood, what did that mayor build, and who pays for its upkeep today?",
    )
    follow_ups = follow_ups_to(warm, tok, questions)
    assert all(len(ids) - len(chat_ids(tok, "Which town is this about?")) > FEED_TOKENS for ids in follow_ups)
    filled_at: list[int] = []
    fill = warm._fill

    def spy(*args: Any) -> None:
        filled_at.append(warm.steps)
        fill(*args)

    warm._fill = spy  # type: ignore[method-assign]
    ended = decoding(warm, tok)
    gate = warm.hold()  # both arrive between the same two steps
    results: list[Finished] = []
    done = threading.Semaphore(0)
    for ids in follow_ups:
        warm.submit(ids, SHORT, lambda e: isinstance(e, Finished) and (results.append(e), done.release()))
    gate.set()
    assert done.acquire(timeout=120) and done.acquire(timeout=120) and ended.wait(120)
    assert len(filled_at) == 2 and filled_at[0] != filled_at[1]  # never two prompts' forwards in one step
    assert sorted(r.text for r in results) == sorted(answer(cold, ids, SHORT).text for ids in follow_ups)


def test_short_follow_ups_on_kept_prefixes_are_fed_through_the_decode_steps_and_answer_as_cold_starts(
    engines: tuple[Scheduler, Scheduler], loaded: Any
) -> None:
    warm, cold = engines
    tok = loaded.tokenizer
    follow_ups = follow_ups_to(warm, tok, ("And its river?", "Its mayor?"))
    sampled = filled(temperature=0.9, seed=7, max_new_tokens=8)  # its seed's draws must be a cold start's
    asked = [(follow_ups[0], SHORT), (follow_ups[1], SHORT), (follow_ups[1], sampled)]
    ended = decoding(warm, tok)
    gate = warm.hold()  # all arrive between the same two steps, while a row decodes
    forwards, hits = warm.chunks, warm.prefixes.hits
    results: dict[int, Finished] = {}
    done = threading.Semaphore(0)
    for i, (ids, params) in enumerate(asked):
        warm.submit(ids, params, lambda e, i=i: isinstance(e, Finished) and (results.update({i: e}), done.release()))
    gate.set()
    assert all(done.acquire(timeout=120) for _ in asked) and ended.wait(120)
    assert warm.prefixes.hits - hits == 3 and warm.chunks == forwards  # no forward of their own: fed, a token a step
    assert [results[i].text for i in range(3)] == [answer(cold, ids, params).text for ids, params in asked]
    assert all(results[i].prompt_tokens == len(ids) for i, (ids, _) in enumerate(asked))


def test_a_short_message_on_a_kept_prefix_is_not_held_behind_a_long_prompts_chunks(loaded: Any) -> None:
    tok = loaded.tokenizer
    engine = Scheduler(
        loaded.model,
        tok,
        eos_token_ids=loaded.eos_token_ids,
        context_length=loaded.context_length,
        prefix_cache_bytes=64 << 20,
        prefill_chunk=32,
    )
    try:
        first = answer(engine, chat_ids(tok, "Which town is this about?"), SHORT)
        follow_up = chat_ids(tok, "Which town is this about?", first.text, "And its river?")
        long = chat_ids(tok, "Summarise the town's history.", system="Be brief. " + "Harbours and lanterns. " * 60)
        assert len(long) > 8 * 32
        started = threading.Event()
        engine.submit(
            chat_ids(tok, "Write a long essay about the sea.", system="Be brief."),
            filled(temperature=0, max_new_tokens=40),
            lambda e: started.set(),
        )
        assert started.wait(60)  # rows decode: prompts now go one forward a step
        firsts: list[str] = []
        done = threading.Semaphore(0)

        def sink(name: str) -> Any:
            def on(event: Any) -> None:
                if name not in firsts:
                    firsts.append(name)
                if isinstance(event, Finished):
                    done.release()

            return on

        gate = engine.hold()
        engine.submit(long, SHORT, sink("long"))  # first in, many chunks
        engine.submit(follow_up, SHORT, sink("follow-up"))  # then a message on a kept prefix
        gate.set()
        assert done.acquire(timeout=120) and done.acquire(timeout=120)
        assert firsts == ["follow-up", "long"]
    finally:
        engine.close(grace_s=0)
