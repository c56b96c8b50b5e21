"""``toolkit.client.RemoteService`` against a real server: the InferenceService interface, remotely."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from toolkit.client import RemoteService
from toolkit.errors import InvalidRequest, RateLimited, ServiceUnavailable
from toolkit.params import InferRequest
from toolkit.results import Done, SearchFinished, SearchStarted, Token
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService


@pytest.fixture()
def remote(server: Any) -> RemoteService:
    return RemoteService(server.url)


def test_infer_matches_the_in_process_service(remote: RemoteService, server_service: InferenceService) -> None:
    request = InferRequest.build(
        "What is the capital of France?", temperature=0, max_new_tokens=24, system_prompt="Be brief."
    )
    here = server_service.infer(request)
    there = remote.infer(
        InferRequest.build(
            "What is the capital of France?", temperature=0, max_new_tokens=24, system_prompt="Be brief."
        )
    )
    assert there.text == here.text and "Paris" in there.text
    assert there.finish_reason == here.finish_reason and there.usage == here.usage
    assert there.run_record.messages == here.run_record.messages
    assert there.run_record.model_hash == here.run_record.model_hash


def test_stream_events_and_text(remote: RemoteService) -> None:
    events = list(remote.stream("Name a colour.", temperature=0, max_new_tokens=12))
    tokens = [e for e in events if isinstance(e, Token)]
    done = events[-1]
    assert isinstance(done, Done) and tokens
    assert "".join(t.delta for t in tokens) == done.result.text == tokens[-1].text


def test_health_models_cancel(remote: RemoteService) -> None:
    health = remote.health()
    assert health.status == "ready" and health.model == "SmolLM2-135M-Instruct"
    assert remote.models()[0].id == "SmolLM2-135M-Instruct"
    assert remote.cancel("no-such-request") is False


def test_errors_come_back_typed(remote: RemoteService) -> None:
    with pytest.raises(InvalidRequest) as info:
        remote.infer("hi", temperature=0, max_new_tokens=100_000)
    assert info.value.field == "params.maxNewTokens"
    with pytest.raises(InvalidRequest) as info:
        list(remote.stream("hi", model="gpt-9"))
    assert info.value.field == "model"


def test_closing_the_stream_cancels_on_the_server(remote: RemoteService, server_service: InferenceService) -> None:
    stream = remote.stream("Count to one thousand.", temperature=0, max_new_tokens=400)
    for event in stream:
        if isinstance(event, Token):
            break
    stream.close()
    deadline = time.monotonic() + 5
    while server_service.health().active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server_service.health().active == 0


def test_a_script_that_exits_with_a_stream_open_does_not_hang(server: Any) -> None:
    """The generator is closed during interpreter shutdown, when the WebSocket's reader thread no longer runs."""
    import subprocess
    import sys

    script = (
        "from toolkit.client import RemoteService\n"
        f"stream = RemoteService({server.url!r}).stream('Count to a thousand.', max_new_tokens=300)\n"
        "print(type(next(stream)).__name__)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and child.stdout.strip() == "Token", child.stderr


def test_web_search_events_over_the_wire(make_server: Any, server_service: InferenceService) -> None:
    from pathlib import Path

    docs = Path(__file__).parents[1] / "data" / "docs"
    grounded = InferenceService(
        server_service.settings, loaded=server_service.loaded, searcher=Searcher(LocalDocsBackend(docs))
    )
    running = make_server(grounded)
    events = list(
        RemoteService(running.url).stream(
            "What is the capital of Zorvath?", web_search=True, temperature=0, max_new_tokens=24
        )
    )
    assert isinstance(events[0], SearchStarted) and isinstance(events[1], SearchFinished)
    assert events[1].status == "ok" and events[1].sources[0].index == 1
    result = events[-1].result  # type: ignore[union-attr]
    assert result.search_status == "ok" and result.sources and "Quillborough" in result.text
    grounded.close(grace_s=0)


def test_async_infer(remote: RemoteService) -> None:
    result = asyncio.run(remote.ainfer("Hi", temperature=0, max_new_tokens=3))
    assert result.usage.completion_tokens <= 3


def test_a_server_that_is_not_there() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = RemoteService(f"http://127.0.0.1:{port}/graphql")
    with pytest.raises(ServiceUnavailable, match="make serve"):
        remote.health()
    with pytest.raises(ServiceUnavailable):
        list(remote.stream("hi"))
    with pytest.raises(ServiceUnavailable, match="not ready within"):
        remote.wait_ready(timeout_s=0.3)


def test_wait_ready_on_a_ready_server(remote: RemoteService) -> None:
    assert remote.wait_ready(timeout_s=5).status == "ready"


def test_api_key_is_sent(make_server: Any, server_service: InferenceService) -> None:
    running = make_server(server_service, api_keys=("client-key-123456",))
    assert (
        RemoteService(running.url, api_key="client-key-123456").infer("Hi", max_new_tokens=1).usage.completion_tokens
        == 1
    )
    assert list(RemoteService(running.url, api_key="client-key-123456").stream("Hi", max_new_tokens=1))
    with pytest.raises(Exception, match="API key"):
        RemoteService(running.url).infer("Hi", max_new_tokens=1)
    with pytest.raises(ServiceUnavailable, match="refused"):
        list(RemoteService(running.url, api_key="wrong-key-1234567").stream("Hi", max_new_tokens=1))


def test_a_rate_limited_call_is_sent_again_after_the_wait_the_server_names(
    make_server: Any, server_service: InferenceService
) -> None:
    """As OpenAI's client does: a refused call did not run, so it is sent again (a page that fills its
    controls at once, or an evaluation's cells, would otherwise fail on a burst)."""
    running = make_server(server_service, rate_per_minute=60, rate_burst=1)
    patient, hasty = RemoteService(running.url), RemoteService(running.url, max_retries=0)
    assert patient.adapters() == []  # the burst's one call
    with pytest.raises(RateLimited) as refused:
        hasty.adapters()
    assert refused.value.retry_after_s >= 1
    assert patient.adapters() == []  # refused, then sent again a second later
    events = list(patient.stream("Hi", temperature=0, max_new_tokens=2))  # a stream refused before it began
    assert isinstance(events[-1], Done)
    assert asyncio.run(patient.ainfer("Hi", temperature=0, max_new_tokens=2)).finish_reason == "length"
    with pytest.raises(ValueError, match="max_retries"):
        RemoteService(running.url, max_retries=-1)
