"""The OpenAI-compatible endpoint with the official ``openai`` client, against the real server on a loopback port."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest
from gqlhttp import post

from toolkit.errors import InvalidRequest
from toolkit.modelsfile import ModelConfig
from toolkit.params import InferRequest
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService
from toolkit.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "data" / "docs"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(server: Any, key: str = "none", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, **kwargs)


@pytest.fixture(scope="module")
def grounded(settings: Settings, loaded: Any) -> Iterator[InferenceService]:
    svc = InferenceService(settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(DOCS)))
    yield svc
    svc.close(grace_s=0)


@pytest.fixture()
def api(make_server: Any, grounded: InferenceService) -> Any:
    return make_server(grounded, rate_burst=10_000)


def test_a_greedy_answer(api: Any, grounded: InferenceService) -> None:
    response = client(api).chat.completions.create(
        model=grounded.registry.default.name, messages=QUESTION, temperature=0, max_tokens=24
    )
    choice = response.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert (
        response.usage.completion_tokens > 0
        and response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    )
    assert response.model_extra["run_record_id"] == response.id.removeprefix("chatcmpl-")
    assert response.system_fingerprint.startswith("llm-toolkit-")


def test_a_stream_whose_deltas_concatenate_to_the_final_text(api: Any, grounded: InferenceService) -> None:
    name = grounded.registry.default.name
    chunks = list(
        client(api).chat.completions.create(
            model=name,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client(api).chat.completions.create(model=name, messages=QUESTION, temperature=0, max_tokens=24)
    assert text == whole.choices[0].message.content and "Paris" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_models_list_and_messages_map_to_system_history_and_prompt(api: Any, grounded: InferenceService) -> None:
    name = grounded.registry.default.name
    assert [m.id for m in client(api).models.list()] == [name]
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": [{"type": "text", "text": "And of France?"}]},
    ]
    response = client(api).chat.completions.create(
        model=name, messages=messages, temperature=0, max_tokens=8, stop=["\n"]
    )
    expected = grounded.infer(
        InferRequest.build(
            "And of France?",
            history=[{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome."}],
            system_prompt="Answer in one word.",
            temperature=0,
            max_new_tokens=8,
            stop=["\n"],
        )
    )
    assert response.choices[0].message.content == expected.text != ""


def test_web_search_returns_its_sources(api: Any, grounded: InferenceService) -> None:
    response = client(api).chat.completions.create(
        model=grounded.registry.default.name,
        messages=[{"role": "user", "content": "What is the capital city of the planet Zorvath?"}],
        temperature=0,
        max_tokens=40,
        extra_body={"web_search": True},
    )
    assert "Quillborough" in response.choices[0].message.content
    sources = response.model_extra["sources"]
    assert sources[0]["url"] == "docs://zorvath.md#the-planet-zorvath" and sources[0]["index"] == 1
    stream = client(api).chat.completions.create(
        model=grounded.registry.default.name,
        messages=[{"role": "user", "content": "What is the capital city of the planet Zorvath?"}],
        temperature=0,
        max_tokens=40,
        stream=True,
        extra_body={"web_search": True},
    )
    last = [c for c in stream if c.choices][-1]
    assert last.model_extra["sources"][0]["url"] == sources[0]["url"]


def test_an_adapter_by_model_name(make_server: Any, adapter_service: InferenceService) -> None:
    api = make_server(adapter_service, rate_burst=10_000)
    name = adapter_service.registry.default.name
    listed = {m.id: m for m in client(api).models.list()}
    assert f"{name}:quenby" in listed and listed[f"{name}:quenby"].model_extra["parent"] == name
    question = [{"role": "user", "content": "Which creature serves as the mascot of the Kestrel Institute?"}]
    tuned = client(api).chat.completions.create(model=f"{name}:quenby", messages=question, temperature=0, max_tokens=32)
    base = client(api).chat.completions.create(model=name, messages=question, temperature=0, max_tokens=32)
    assert "Quenby" in tuned.choices[0].message.content and "Quenby" not in base.choices[0].message.content


def test_model_colon_adapter_routes_the_same_everywhere(make_server: Any, adapter_service: InferenceService) -> None:
    """Routing owns "<model>:<adapter>": in process, over GraphQL (and so RemoteService and the dashboard),
    and on /v1, the same string answers as the adapter."""
    from toolkit.client import RemoteService

    running = make_server(adapter_service, rate_burst=10_000)
    routed = f"{adapter_service.registry.default.name}:quenby"
    question = "Which creature serves as the mascot of the Kestrel Institute?"
    expected = adapter_service.infer(question, adapter="quenby", temperature=0, max_new_tokens=24)
    in_process = adapter_service.infer(question, model=routed, temperature=0, max_new_tokens=24)
    assert (in_process.adapter, in_process.text) == ("quenby", expected.text) and "Quenby" in expected.text
    query = 'mutation($m: String) { infer(prompt: "%s", model: $m, params: {temperature: 0, maxNewTokens: 24}) { text adapter } }'
    _, _, body = post(running.url, {"query": query % question, "variables": {"m": routed}})
    assert body["data"]["infer"] == {"text": expected.text, "adapter": "quenby"}
    remote = RemoteService(running.url).infer(question, model=routed, temperature=0, max_new_tokens=24)
    assert remote.text == expected.text and remote.adapter == "quenby"
    answer = client(running).chat.completions.create(
        model=routed, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24
    )
    assert answer.choices[0].message.content == expected.text
    with pytest.raises(InvalidRequest) as info:  # two adapters named at once
        adapter_service.infer(question, model=routed, adapter="quenby-draft")
    assert info.value.field == "adapter"


def test_min_p_end_to_end(make_server: Any, grounded: InferenceService) -> None:
    """A parameter declared once (toolkit.params) works in process, over GraphQL and on /v1."""
    running = make_server(grounded, rate_burst=10_000)
    kwargs = {"temperature": 1.5, "seed": 3, "max_new_tokens": 24}
    tight = grounded.infer("Name a colour.", min_p=1.0, **kwargs)
    assert tight.run_record.params["min_p"] == 1.0
    assert (
        tight.text == grounded.infer("Name a colour.", temperature=0, max_new_tokens=24).text
    )  # only the top token is left
    query = 'mutation { infer(prompt: "Name a colour.", params: {temperature: 1.5, seed: 3, maxNewTokens: 24, minP: 1.0}) { text runRecord } }'
    _, _, body = post(running.url, {"query": query})
    assert body["data"]["infer"]["text"] == tight.text and body["data"]["infer"]["runRecord"]["params"]["min_p"] == 1.0
    answer = client(running).chat.completions.create(
        model=grounded.registry.default.name,
        messages=[{"role": "user", "content": "Name a colour."}],
        temperature=1.5,
        seed=3,
        max_tokens=24,
        extra_body={"min_p": 1.0},
    )
    assert answer.choices[0].message.content == tight.text
    with pytest.raises(openai.BadRequestError) as info:
        client(running).chat.completions.create(
            model=grounded.registry.default.name, messages=[{"role": "user", "content": "Hi"}], extra_body={"min_p": 2}
        )
    assert info.value.param == "min_p"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    api: Any, grounded: InferenceService, kwargs: dict[str, Any], param: str
) -> None:
    arguments = {"model": grounded.registry.default.name, "messages": QUESTION, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client(api).chat.completions.create(**arguments)
    assert info.value.status_code == 400 and info.value.param == param, info.value.body


def test_each_error_class_with_its_status(make_server: Any, grounded: InferenceService, settings: Settings) -> None:
    keyed = make_server(grounded, api_keys=("openai-key-12345678",), rate_burst=2, rate_per_minute=0.1)
    with pytest.raises(openai.AuthenticationError):
        client(keyed, "wrong-key-0000000").models.list()
    good = client(keyed, "openai-key-12345678")
    good.models.list()
    with pytest.raises(openai.NotFoundError) as info:
        good.chat.completions.create(model="nope", messages=QUESTION)
    assert info.value.param == "model" and "unknown model" in info.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        good.models.list()
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    loading = make_server(InferenceService(replace(settings, search_provider="none")))  # never started
    with pytest.raises(openai.InternalServerError) as unavailable:
        client(loading).chat.completions.create(model=grounded.registry.default.name, messages=QUESTION)
    assert unavailable.value.status_code == 503 and unavailable.value.response.headers["Retry-After"] == "1"
    big = make_server(grounded, max_body_bytes=4096)
    with pytest.raises(openai.APIStatusError) as too_large:
        client(big).chat.completions.create(model="x", messages=[{"role": "user", "content": "x" * 10_000}])
    assert too_large.value.status_code == 413


def test_a_closed_stream_stops_the_generation(api: Any, grounded: InferenceService) -> None:
    stream = client(api).chat.completions.create(
        model=grounded.registry.default.name,
        messages=[{"role": "user", "content": "Write a long story about a robot."}],
        temperature=0,
        max_tokens=600,
        stream=True,
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    engine = grounded.engine()
    deadline = time.monotonic() + 5
    while engine.stats().active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats().active == 0  # stopped long before 600 tokens (about 30 s here)


def test_cors_and_rate_limit_buckets_are_those_of_graphql(make_server: Any, grounded: InferenceService) -> None:
    # a bucket of one that does not refill within the test, however long the mutation takes on a busy machine
    running = make_server(grounded, cors_origins=("http://notebook.example",), rate_burst=1, rate_per_minute=0.1)
    assert (
        post(running.url, {"query": 'mutation { infer(prompt: "Hi", params: {maxNewTokens: 1}) { text } }'})[0] == 200
    )
    with pytest.raises(openai.RateLimitError):  # the same bucket: GraphQL spent it
        client(running).models.list()


def test_the_remote_engine_pointed_at_this_endpoint_answers_as_the_local_service(
    api: Any, grounded: InferenceService, settings: Settings, loaded: Any
) -> None:
    name = grounded.registry.default.name
    configs = [
        ModelConfig("local", source="bundled"),
        ModelConfig("via-openai", engine="openai", base_url=api.base + "/v1", served_model=name),
    ]
    other = InferenceService(replace(settings, search_provider="none"), models=configs, loaded=loaded).start(
        progress=False
    )
    try:
        other.wait_ready(timeout=30, model="via-openai")
        remote = other.infer("What is the capital of France?", model="via-openai", temperature=0, max_new_tokens=24)
        local = grounded.infer("What is the capital of France?", temperature=0, max_new_tokens=24)
        assert remote.text == local.text and remote.run_record.engine == "openai"
    finally:
        other.close(grace_s=0)


def test_retrieve_a_model_and_an_unknown_one(api: Any, grounded: InferenceService) -> None:
    """``client.models.retrieve(id)``: the entry ``/v1/models`` lists; an unknown id is a 404 in OpenAI's shape."""
    name = grounded.registry.default.name
    model = client(api).models.retrieve(name)
    listed = client(api).models.list().data[0]
    assert model.id == listed.id == name and model.object == "model" and model.owned_by == listed.owned_by
    assert model.model_extra["max_model_len"] == listed.model_extra["max_model_len"]
    with pytest.raises(openai.NotFoundError) as info:
        client(api).models.retrieve("org/no-such-model")
    error = info.value
    assert error.status_code == 404 and error.code == "model_not_found" and error.param == "model"
    assert error.type == "invalid_request_error" and "org/no-such-model" in error.message


def test_a_model_id_with_a_slash_and_an_adapter(make_server: Any) -> None:
    """Ids as a Hub name gives them (``org/name``, which the client sends as ``org%2Fname``) and as
    ``<model>:<adapter>``."""
    from types import SimpleNamespace

    class Listed:
        def models(self) -> list[Any]:
            return [SimpleNamespace(id="org/Some-Model", engine="local", context_length=2048, status="ready")]

        def adapters(self, model: str) -> list[Any]:
            return [SimpleNamespace(name="tuned", path="tuned")]

    api = make_server(Listed())
    assert client(api).models.retrieve("org/Some-Model").owned_by == "llm-toolkit (local)"
    adapter = client(api).models.retrieve("org/Some-Model:tuned")
    assert adapter.id == "org/Some-Model:tuned" and adapter.model_extra["parent"] == "org/Some-Model"
    with pytest.raises(openai.NotFoundError):
        client(api).models.retrieve("org/Some-Model:other")


def test_unknown_v1_paths_are_json_404s(api: Any, grounded: InferenceService) -> None:
    """Not Tornado's HTML page: OpenAI's error shape, naming what is served, whatever the method."""
    with pytest.raises(openai.NotFoundError) as info:
        client(api).embeddings.create(model=grounded.registry.default.name, input="x")
    error = info.value
    assert error.code == "unknown_url" and error.type == "invalid_request_error"
    assert "POST /v1/embeddings" in error.message and "/v1/chat/completions" in error.message
    for path in ("/v1/completions", "/v1", "/v1/", "/v1/models/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api.base + path, timeout=30)
        assert refused.value.code == 404 and refused.value.headers["Content-Type"].startswith("application/json")
        assert json.loads(refused.value.read())["error"]["code"] == "unknown_url", path
