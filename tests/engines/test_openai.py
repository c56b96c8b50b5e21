"""The remote engine against a small server shaped like vLLM's, at the network boundary: answers,
streams, parameters sent, cancel, overload, token counts, and every fault (refused, hang before the
first byte, a stream cut after 3 chunks, 500, 400 for context length, malformed SSE): each gives its
typed error or finish reason, nothing hangs past its timeout, and the other models keep answering.
The same engine against the real vLLM: tests/engines/test_vllm.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fake_openai import ANSWER, FINGERPRINT, FakeServer, start_fake

from toolkit.errors import EngineUnavailable, InvalidRequest, ModelNotReady, Overloaded, PromptTooLong
from toolkit.modelsfile import ModelConfig
from toolkit.results import Done, Token
from toolkit.service import InferenceService
from toolkit.settings import Settings

SHORT = {"temperature": 0, "max_new_tokens": 16}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = start_fake()
    yield server
    server.stop()


def remote(name: str, base_url: str, **kwargs: Any) -> ModelConfig:
    return ModelConfig(name=f"r-{name}", engine="openai", base_url=base_url, served_model=name, **kwargs)


@pytest.fixture(scope="module")
def mixed(settings: Settings, loaded: Any, fake: FakeServer) -> Iterator[InferenceService]:
    """The bundled model (the default) beside one remote model per fake behaviour."""
    configs = [ModelConfig(name=loaded.name)]
    configs += [
        remote(mode, fake.base_url, timeout_s=1.0) for mode in ("ok", "hang", "cut", "error500", "context", "malformed")
    ]
    configs.append(remote("slow", fake.base_url, max_in_flight=2))
    svc = InferenceService(replace(settings, search_provider="none"), models=configs, loaded=loaded)
    svc.start(wait=False, progress=False)
    for config in configs[1:]:
        svc.wait_ready(timeout=30, model=config.name)
    yield svc
    svc.close(grace_s=0)


def test_a_remote_answer_streams_and_carries_its_run_record(mixed: InferenceService, fake: FakeServer) -> None:
    events = list(mixed.stream("What is the capital of France?", model="r-ok", seed=7, stop=["\n\n"], top_k=5, **SHORT))
    tokens = [e for e in events if isinstance(e, Token)]
    result = events[-1].result  # type: ignore[union-attr]
    assert isinstance(events[-1], Done) and "".join(t.delta for t in tokens) == result.text == ANSWER
    assert result.finish_reason == "stop" and result.usage.completion_tokens == 6 and result.usage.prompt_tokens == 37
    assert result.model == "r-ok" and result.timings.first_token_s is not None
    record = result.run_record
    assert record.engine == "openai" and record.served_model == "ok" and record.engine_version == FINGERPRINT
    assert record.messages[-1] == {"role": "user", "content": "What is the capital of France?"}
    assert record.params["seed"] == 7 and record.model_hash is None and record.prompt_text is None
    sent = fake.seen.bodies[-1]  # what went over the wire, and what the record says was sent
    assert sent["model"] == "ok" and sent["seed"] == 7 and sent["temperature"] == 0 and sent["max_tokens"] == 16
    assert sent["stop"] == ["\n\n"] and sent["top_k"] == 5 and sent["stream_options"] == {"include_usage": True}
    assert "repetition_penalty" not in sent  # 1.0: not sent
    assert "top_p" not in sent  # no default in the models file: the server's own applies (issue 22)
    assert record.sent == {
        **{k: sent[k] for k in ("model", "max_tokens", "temperature", "seed", "stop")},
        "extra_body": {"top_k": 5},
    }


def test_models_health_and_routing(mixed: InferenceService) -> None:
    models = {m.id: m for m in mixed.models()}
    assert models["r-ok"].engine == "openai" and models["r-ok"].status == "ready"
    assert models["r-ok"].context_length == 2048 and models["r-ok"].served_model == "ok"
    assert models[mixed.registry.default.name].default and models[mixed.registry.default.name].engine == "local"
    assert {m.name for m in mixed.health().models} == set(models)
    with pytest.raises(InvalidRequest) as info:
        mixed.infer("Hi", model="nope")
    assert info.value.field == "model" and "'r-ok'" in info.value.message
    assert [a.name for a in mixed.adapters("r-ok")] == ["ok-lora"]  # the server's LoRA modules, by parent
    assert mixed.engine("r-ok").info.capabilities.token_count == "server"


@pytest.mark.parametrize(
    ("model", "error", "words"),
    [
        ("r-hang", EngineUnavailable, "did not answer within 1 s"),
        ("r-cut", EngineUnavailable, "connection broke"),
        ("r-error500", EngineUnavailable, "HTTP 500"),
        ("r-malformed", EngineUnavailable, "broken stream"),
        ("r-context", PromptTooLong, "maximum context length is 2048"),
    ],
)
def test_each_fault_gives_its_typed_error_and_the_other_models_answer(
    mixed: InferenceService, model: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:  # a hang past its timeout (1 s here) would be the suite's timeout
        mixed.infer("What is the capital of France?", model=model, **SHORT)
    assert words in info.value.message  # type: ignore[attr-defined]
    assert "127.0.0.1" not in info.value.message and "http" not in info.value.message  # type: ignore[attr-defined]
    if isinstance(info.value, PromptTooLong):
        assert info.value.field == "prompt" and info.value.limit == 2048 and info.value.count == 3000
    else:
        assert info.value.code == "ENGINE_UNAVAILABLE" and model in info.value.message  # type: ignore[attr-defined]
    assert mixed.infer("What is the capital of France?", model="r-ok", **SHORT).text == ANSWER
    assert "Paris" in mixed.infer("What is the capital of France?", **SHORT).text


def test_a_cut_stream_delivers_its_tokens_then_the_error(mixed: InferenceService) -> None:
    seen: list[str] = []
    with pytest.raises(EngineUnavailable):
        for event in mixed.stream("Hi", model="r-cut", **SHORT):
            if isinstance(event, Token):
                seen.append(event.delta)
    assert "".join(seen) == "The capital of"


def test_cancel_closes_the_connection_and_the_server_sees_it(mixed: InferenceService, fake: FakeServer) -> None:
    events: list[Any] = []
    request_id = "remote-cancel-1"
    thread = threading.Thread(
        target=lambda: events.extend(
            mixed.stream("Count.", model="r-slow", request_id=request_id, **SHORT | {"max_new_tokens": 300})
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mixed.cancel(request_id)
    thread.join(10)
    assert isinstance(events[-1], Done) and events[-1].result.finish_reason == "cancelled"
    deadline = time.monotonic() + 5
    while "slow" not in fake.seen.closed_early and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "slow" in fake.seen.closed_early  # the remote stopped: its connection was closed mid-answer


def test_a_slow_remote_is_overloaded_at_once_beyond_max_in_flight(mixed: InferenceService) -> None:
    streams = [mixed.stream("Count.", model="r-slow", **SHORT | {"max_new_tokens": 300}) for _ in range(2)]
    for stream in streams:
        next(stream)  # each is in flight
    with pytest.raises(Overloaded) as info:  # at once: waiting for room would answer instead
        mixed.infer("Count.", model="r-slow", **SHORT)
    assert "max_in_flight" in info.value.message
    for stream in streams:
        stream.close()  # cancels them
    assert mixed.infer("Hi", model="r-ok", **SHORT).text == ANSWER


def test_a_remote_that_goes_down_is_unavailable_and_one_never_up_stays_loading(settings: Settings, loaded: Any) -> None:
    fake = start_fake(tokenize=False)
    configs = [
        ModelConfig(name=loaded.name),
        remote("ok", fake.base_url),
        remote("ok", "http://127.0.0.1:9/v1", max_in_flight=1),
    ]
    configs[2] = replace(configs[2], name="r-never")
    svc = InferenceService(replace(settings, search_provider="none"), models=configs, loaded=loaded)
    svc.registry.REMOTE_PROBE_S = svc.registry.REMOTE_RETRY_S = 0.2  # the light periodic probe, often
    svc.start(progress=False)
    back = None
    try:
        svc.wait_ready(timeout=30, model="r-ok")
        assert svc.engine("r-ok").info.capabilities.token_count == "estimate"  # no /tokenize there
        assert svc.infer("Hi", model="r-ok", **SHORT).text == ANSWER
        fake.stop()
        with pytest.raises(EngineUnavailable, match="cannot be reached"):  # two connection retries, then this
            svc.infer("Hi", model="r-ok", **SHORT)
        # its status follows its server: unavailable, with the reason and since when, in health and models
        down = next(m for m in svc.health().models if m.name == "r-ok")
        assert down.status == "unavailable" and "cannot be reached" in (down.error or "") and down.since
        assert next(m for m in svc.models() if m.id == "r-ok").status == "unavailable"
        back = start_fake(tokenize=False, port=int(fake.base_url.split(":")[-1].split("/")[0]))
        deadline = time.monotonic() + 15
        while next(m for m in svc.models() if m.id == "r-ok").status != "ready":
            assert time.monotonic() < deadline, "the model did not come back when its server did"
            time.sleep(0.05)
        assert svc.infer("Hi", model="r-ok", **SHORT).text == ANSWER
        never = next(m for m in svc.health().models if m.name == "r-never")
        assert never.status == "loading" and "cannot be reached" in (never.error or "")
        with pytest.raises(ModelNotReady, match="r-never"):
            svc.infer("Hi", model="r-never")
        assert svc.health().status == "ready"  # the default model is
        assert "Paris" in svc.infer("What is the capital of France?", **SHORT).text
    finally:
        svc.close(grace_s=0)
        if back is not None:
            back.stop()


def test_token_counts_for_the_budget(mixed: InferenceService, fake: FakeServer) -> None:
    engine = mixed.engine("r-ok")
    before = fake.seen.tokenize_calls
    assert engine.count_tokens("one two three") == 8  # the fake's /tokenize: words + 5
    assert fake.seen.tokenize_calls == before + 1
    from toolkit.engines.openai import ESTIMATE_BYTES_PER_TOKEN, OpenAIEngine

    offline = OpenAIEngine(remote("ok", "http://127.0.0.1:9/v1").remote())
    try:
        text = "x" * 300
        assert offline.count_tokens(text) == 300 // ESTIMATE_BYTES_PER_TOKEN  # stated and conservative
        assert offline.info.capabilities.token_count == "estimate"
    finally:
        offline.close(0)


def test_the_server_counts_only_prompts_that_may_not_fit(mixed: InferenceService, fake: FakeServer) -> None:
    limit = mixed.settings.max_input_tokens
    before = fake.seen.tokenize_calls
    assert mixed.infer("Hi", model="r-ok", **SHORT).text == ANSWER
    assert fake.seen.tokenize_calls == before  # a token is at least a byte: a short prompt fits for certain
    maybe = "word " * (limit // 5 + 20)  # more bytes than the limit: the server counts (words + 5 with the fake)
    assert mixed.infer(maybe, model="r-ok", **SHORT).text == ANSWER
    assert fake.seen.tokenize_calls == before + 1
    with pytest.raises(PromptTooLong):
        mixed.infer("word " * limit, model="r-ok", **SHORT)  # the server's count is over the limit


def test_a_parameter_a_remote_server_cannot_take_is_refused_naming_it(mixed: InferenceService) -> None:
    with pytest.raises(InvalidRequest) as info:
        mixed.infer("Hi", model="r-ok", dry_multiplier=0.8, **SHORT)
    assert info.value.field == "params.dry_multiplier" and "r-ok" in info.value.message
    assert mixed.infer("Hi", model="r-ok", dry_multiplier=0.0, **SHORT).text == ANSWER  # off: nothing to refuse
