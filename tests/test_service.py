"""InferenceService, the facade every front end calls, on the real bundled model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from toolkit.errors import InvalidRequest, ModelNotReady, PromptTooLong
from toolkit.params import GenerationParams, InferRequest
from toolkit.results import Done, Token
from toolkit.service import InferenceService
from toolkit.settings import Settings


def test_infer_answers_with_a_full_result(service: InferenceService, loaded: Any) -> None:
    result = service.infer("What is the capital of France?", temperature=0, max_new_tokens=24)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.model == "SmolLM2-135M-Instruct" and result.adapter is None
    assert result.usage.prompt_tokens > 10 and result.usage.completion_tokens > 0
    t = result.timings
    assert t.first_token_s is not None and 0 <= t.queued_s <= t.first_token_s <= t.total_s
    record = result.run_record
    assert record.request_id == result.id
    assert record.model_hash == loaded.content_hash and record.model_source == "gguf"
    assert record.messages == [{"role": "user", "content": "What is the capital of France?"}]
    assert "What is the capital of France?" in record.prompt_text
    assert record.params["temperature"] == 0 and record.params["max_new_tokens"] == 24
    assert isinstance(record.params["seed"], int)
    assert {"toolkit", "torch", "transformers", "python"} <= set(record.versions)
    json.dumps(result.to_dict())  # JSON-ready


def test_stream_tokens_concatenate_to_the_infer_text(service: InferenceService) -> None:
    request = InferRequest.build("Name two colours of the rainbow.", temperature=0, max_new_tokens=32)
    events = list(service.stream(request))
    tokens = [e for e in events if isinstance(e, Token)]
    done = events[-1]
    assert isinstance(done, Done) and len(tokens) > 2
    assert "".join(t.delta for t in tokens) == done.result.text
    assert tokens[-1].text == done.result.text  # each Token carries the text so far
    again = service.infer(InferRequest.build("Name two colours of the rainbow.", temperature=0, max_new_tokens=32))
    assert again.text == done.result.text


def test_run_record_replays_the_answer(service: InferenceService) -> None:
    first = service.infer("Invent a name for a cat.", temperature=1.0, max_new_tokens=12)
    record = first.run_record
    params = GenerationParams(**{**record.params, "stop": tuple(record.params["stop"])})
    replay = service.infer(InferRequest(prompt=record.messages[-1]["content"], params=params))
    assert replay.text == first.text


def test_history_and_system_prompt_reach_the_model(service: InferenceService) -> None:
    result = service.infer(
        InferRequest(
            prompt="What is my name?",
            history=[
                {"role": "user", "content": "My name is Zorblax."},
                {"role": "assistant", "content": "Hello Zorblax!"},
            ],
            system_prompt="You are a terse assistant.",
            params=GenerationParams(temperature=0, max_new_tokens=16),
        )
    )
    assert result.run_record.messages[0] == {"role": "system", "content": "You are a terse assistant."}
    assert "You are a terse assistant." in result.run_record.prompt_text
    text = result.run_record.prompt_text
    assert text.index("You are a terse") < text.index("My name is Zorblax.") < text.index("Hello Zorblax!")
    assert text.index("Hello Zorblax!") < text.index("What is my name?")
    bare = service.infer("What is my name?", temperature=0, max_new_tokens=1)
    assert result.usage.prompt_tokens > bare.usage.prompt_tokens


def test_health_and_models(service: InferenceService, loaded: Any) -> None:
    health = service.health()
    assert health.status == "ready"
    assert (health.model, health.device, health.dtype, health.quantization) == (
        "SmolLM2-135M-Instruct",
        "cpu",
        "float32",
        None,
    )
    assert health.queue_depth == 0 and health.error is None
    models = service.models()
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]
    assert models[0].loaded and models[0].context_length == 8192 and models[0].content_hash == loaded.content_hash


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "gpt-4"}, "model"),
        ({"adapter": "pirate"}, "adapter"),
        ({"web_search": True}, "web_search"),
        ({"max_new_tokens": 5000}, "params.max_new_tokens"),
    ],
)
def test_requests_this_deployment_cannot_serve(service: InferenceService, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        service.infer("hello", **kwargs)
    assert info.value.field == field


def test_the_model_can_be_named(service: InferenceService) -> None:
    assert service.infer("Hi", model="SmolLM2-135M-Instruct", temperature=0, max_new_tokens=2).finish_reason == "length"


def test_prompt_over_the_input_limit_gives_count_and_limit(settings: Settings, loaded: Any) -> None:
    small = InferenceService(Settings(cache_dir=settings.cache_dir, max_input_tokens=64), loaded=loaded)
    try:
        with pytest.raises(PromptTooLong) as info:
            small.infer("word " * 100)
        err = info.value
        assert err.field == "prompt" and err.limit == 64 and err.count > 100
        assert f"{err.count} tokens" in err.message and "64" in err.message
        history = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok " * 40}]
        with pytest.raises(PromptTooLong) as info:
            small.infer("and?", history=history)
        assert info.value.field == "history"
        # the service keeps serving
        assert small.infer("Hi", temperature=0, max_new_tokens=2).usage.completion_tokens == 2
    finally:
        small.close(grace_s=0)


def test_prompt_over_the_model_context(service: InferenceService) -> None:
    with pytest.raises(PromptTooLong) as info:
        service.infer("hello " * 9000)
    assert info.value.limit == 4096  # the configured limit is below the model's 8192 context


def test_cancel_through_the_service(service: InferenceService) -> None:
    request = InferRequest.build("Count from one to five hundred.", temperature=0, max_new_tokens=400)
    events: list[Any] = []

    def consume() -> None:
        events.extend(service.stream(request))

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 20
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.cancel(request.request_id)
    thread.join(timeout=30)
    assert isinstance(events[-1], Done) and events[-1].result.finish_reason == "cancelled"
    assert service.cancel("no-such-request") is False


def test_async_infer_and_stream(service: InferenceService) -> None:
    async def go() -> tuple[Any, list[Any]]:
        result = await service.ainfer("What is the capital of France?", temperature=0, max_new_tokens=16)
        events = [e async for e in service.astream("What is the capital of France?", temperature=0, max_new_tokens=16)]
        return result, events

    result, events = asyncio.run(go())
    assert "Paris" in result.text
    assert isinstance(events[-1], Done) and events[-1].result.text == result.text


def test_loading_then_ready(settings: Settings) -> None:
    svc = InferenceService(settings)
    assert svc.health().status == "loading"
    with pytest.raises(ModelNotReady, match="loading"):
        svc.infer("hi")
    svc.start(wait=False, progress=False)
    svc.wait_ready(timeout=120)
    assert svc.health().status == "ready"
    svc.close(grace_s=0)
    assert svc.health().status == "stopped"


def test_a_failed_load_is_reported_not_raised_from_the_thread(settings: Settings) -> None:
    svc = InferenceService(Settings(model_id="./no/such/model", cache_dir=settings.cache_dir))
    svc.start(wait=False, progress=False)
    with pytest.raises(ModelNotReady, match="failed to load"):
        svc.wait_ready(timeout=30)
    health = svc.health()
    assert health.status == "error" and "neither an existing file" in (health.error or "")
    with pytest.raises(ModelNotReady, match="failed to load"):
        svc.infer("hi")
