"""Facts declared once, checked where they are derived: the GraphQL input of the generation parameters,
and each error's code, status and retry on both endpoints and back through both clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from gqlhttp import post
from graphql import GraphQLList, GraphQLNonNull, build_schema
from loopback import serve_in_thread

from server.app import make_app, make_http_server
from server.config import ServerSettings
from server.resolvers import SCHEMA_FILE
from toolkit.client import RemoteService
from toolkit.errors import (
    ClientGone,
    ConfigError,
    DatasetError,
    EngineClosed,
    EngineUnavailable,
    Forbidden,
    GenerationError,
    InvalidRequest,
    MissingDependency,
    ModelLoadError,
    ModelNotReady,
    Overloaded,
    PromptTooLong,
    RateLimited,
    RemoteError,
    RequestTimeout,
    SearchFailure,
    ServiceUnavailable,
    StoreUnavailable,
    ToolkitError,
    Unauthenticated,
    UnknownConversation,
    UnknownModel,
    error_classes,
)
from toolkit.modelsfile import ModelConfig
from toolkit.params import PARAMS
from toolkit.results import Health, ModelInfo
from toolkit.service import InferenceService
from toolkit.wire import camel

GRAPHQL_TYPES = {"int": "Int", "float": "Float", "strings": "[String!]"}


def type_name(t: Any) -> str:
    if isinstance(t, GraphQLNonNull):
        return type_name(t.of_type) + "!"
    if isinstance(t, GraphQLList):
        return f"[{type_name(t.of_type)}]"
    return str(t.name)


def test_the_schemas_generation_input_is_the_declaration() -> None:
    schema = build_schema(SCHEMA_FILE.read_text())
    declared = {camel(name): GRAPHQL_TYPES[spec.kind] for name, spec in PARAMS.items()}
    served = {name: type_name(f.type) for name, f in schema.type_map["GenerationInput"].fields.items()}  # type: ignore[union-attr]
    assert served == declared


def test_the_served_descriptions_state_each_parameters_bounds() -> None:
    """The descriptions GraphiQL shows come from the declarations (they repeated bounds by hand, unchecked)."""
    from server.resolvers import make_schema

    fields = make_schema().type_map["GenerationInput"].fields  # type: ignore[union-attr]
    for name, spec in PARAMS.items():
        description = fields[camel(name)].description or ""
        assert spec.bound() in description and spec.hint in description and spec.doc in description, name
    assert "between -2 and 2" in fields["presencePenalty"].description
    assert "Local models only" in fields["dryMultiplier"].description


# ----- every error, on every wire ---------------------------------------------------------------

SAMPLES: dict[type[ToolkitError], ToolkitError] = {
    ToolkitError: ToolkitError("something broke"),
    ConfigError: ConfigError("MODELS_FILE", "not valid TOML"),
    InvalidRequest: InvalidRequest("params.temperature", "must be >= 0 (0 means greedy), got -1"),
    UnknownModel: UnknownModel("unknown model 'nope'; this service serves 'm'"),
    UnknownConversation: UnknownConversation("0" * 32, "id"),
    PromptTooLong: PromptTooLong("prompt", 5000, 4096),
    Unauthenticated: Unauthenticated(True),
    Forbidden: Forbidden("loading adapters needs an admin key"),
    RateLimited: RateLimited(3),
    Overloaded: Overloaded(64, 64),
    EngineUnavailable: EngineUnavailable("m", "its server cannot be reached"),
    StoreUnavailable: StoreUnavailable("full", "written"),
    EngineClosed: EngineClosed(),
    ModelLoadError: ModelLoadError("the weights are broken"),
    ModelNotReady: ModelNotReady("the model is still loading"),
    GenerationError: GenerationError("generation failed (RuntimeError, error id 1, logged)"),
    RequestTimeout: RequestTimeout("the request timed out"),
    ClientGone: ClientGone("the client closed the connection"),
    MissingDependency: MissingDependency("peft", "LoRA adapters"),
    SearchFailure: SearchFailure("timeout", "the search took too long"),
}
# made by a client, never sent by a server (a dataset is read where the evaluation runs)
CLIENT_SIDE = (ServiceUnavailable, RemoteError, DatasetError)
# what the remote engine gives for an error of a toolkit server behind it: the same error again, or the
# model is unavailable for now (the remote server's own keys, models, shutdowns and failures)
VIA_REMOTE_ENGINE = {
    InvalidRequest: InvalidRequest,
    PromptTooLong: PromptTooLong,
    Overloaded: Overloaded,
    RateLimited: Overloaded,
    RequestTimeout: RequestTimeout,
    GenerationError: GenerationError,
}


class Raising:
    """A service whose requests raise the error it is set to: each error's wire forms, end to end."""

    def __init__(self) -> None:
        self.error: ToolkitError = ToolkitError("unset")

    def health(self) -> Health:
        return Health("ready", "m", None, None, None, 0, 0, 0.0, "0")

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("m", "local", True, 2048, None)]

    def adapters(self, model: str | None = None) -> list[Any]:
        return []

    def check_room(self, model: str | None = None) -> None:
        """Room always: the error is raised by the request itself."""

    def validate(self, request: Any, **kwargs: Any) -> Any:
        return request, request.params

    async def ainfer(self, request: Any, **kwargs: Any) -> Any:
        raise self.error

    async def astream(self, request: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise self.error
        yield


@dataclass
class Running:
    base: str
    url: str


@pytest.fixture(scope="module")
def raising() -> Iterator[tuple[Raising, Running]]:
    service = Raising()
    served = serve_in_thread(lambda: make_http_server(make_app(service, ServerSettings(port=0, rate_burst=10_000))))
    base = f"http://127.0.0.1:{served.port}"
    yield service, Running(base, base + "/graphql")
    served.stop()


def test_every_error_class_has_a_sample() -> None:
    assert set(error_classes()) - set(CLIENT_SIDE) == set(SAMPLES)


def same(error: ToolkitError, sample: ToolkitError) -> None:
    assert type(error) is type(sample), (error, sample)
    assert error.message == sample.message and error.retry_after_s == sample.retry_after_s
    for name in sample.wire_fields:
        assert getattr(error, name) == getattr(sample, name), name


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_each_error_on_both_endpoints_and_back(cls: type[ToolkitError], raising: tuple[Raising, Any]) -> None:
    service, running = raising
    sample = service.error = SAMPLES[cls]
    # GraphQL: the code and fields; an error a retry may cure has its class's status (as on /v1) with Retry-After
    # when nothing ran
    status, headers, body = post(running.url, {"query": 'mutation { infer(prompt: "Hi") { text } }'})
    extensions = body["errors"][0]["extensions"]
    assert extensions["code"] == cls.code
    assert status == (cls.status if sample.retry_after_s is not None else 200)
    assert (headers.get("Retry-After") is not None) == (sample.retry_after_s is not None)
    # the OpenAI endpoint: the class's status and code
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    status, headers, body = post(running.base + "/v1/chat/completions", chat, accept=None)
    assert status == cls.status and body["error"]["code"] == sample.wire_code
    assert (headers.get("Retry-After") is not None) == (sample.retry_after_s is not None)
    # back through RemoteService: the same class, message and fields (not sent again: test_client has that)
    with pytest.raises(ToolkitError) as info:
        RemoteService(running.url, max_retries=0).infer("Hi")
    same(info.value, sample)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_each_error_back_through_the_remote_engine(
    cls: type[ToolkitError], raising: tuple[Raising, Any], settings: Any
) -> None:
    service, running = raising
    service.error = SAMPLES[cls]
    configs = [ModelConfig("via", engine="openai", base_url=running.base + "/v1", served_model="m")]
    other = InferenceService(replace(settings, search_provider="none"), models=configs).start(progress=False)
    try:
        with pytest.raises(ToolkitError) as info:
            other.infer("Hi", model="via", max_new_tokens=4)
        assert type(info.value) is VIA_REMOTE_ENGINE.get(cls, EngineUnavailable), info.value
        if cls is InvalidRequest:
            assert info.value.field == "params.temperature"  # type: ignore[attr-defined]
        assert "127.0.0.1" not in info.value.message
    finally:
        other.close(grace_s=0)


def test_rate_limited_during_execution_is_429_on_both_endpoints(raising: tuple[Raising, Any]) -> None:
    """One status per class: a ``RateLimited`` raised while executing (a remote server's limit, say) is 429 with
    Retry-After on GraphQL as on /v1 (GraphQL answered 503)."""
    service, running = raising
    service.error = RateLimited(7)
    status, headers, body = post(running.url, {"query": 'mutation { infer(prompt: "Hi") { text } }'})
    assert (status, headers["Retry-After"], body["errors"][0]["extensions"]["code"]) == (429, "7", "RATE_LIMITED")
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    status, headers, body = post(running.base + "/v1/chat/completions", chat, accept=None)
    assert (status, headers["Retry-After"], body["error"]["code"]) == (429, "7", "rate_limit_exceeded")


def test_an_invalid_v1_request_names_its_parameter_once(raising: tuple[Raising, Any]) -> None:
    """``param`` is OpenAI's name of the error's field; the message names it once, in OpenAI's terms (not the
    toolkit's ``params.max_new_tokens: ...``)."""
    service, running = raising
    url = running.base + "/v1/chat/completions"
    hi = [{"role": "user", "content": "Hi"}]
    cases = [  # (the request's fields, param, the field as the message names it, what the message says of it)
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "messages[0]", "role 'tool' is not served"),
        (
            {"messages": hi, "max_completion_tokens": 0},
            "max_completion_tokens",
            "max_completion_tokens",
            "must be >= 1",
        ),
        ({"messages": hi, "max_tokens": 0}, "max_tokens", "max_tokens", "must be >= 1"),
    ]
    for fields, param, field, detail in cases:
        status, _, body = post(url, {"model": "m", **fields}, accept=None)
        error = body["error"]
        assert (status, error["param"], error["code"], error["type"]) == (
            400,
            param,
            "bad_user_input",
            "invalid_request_error",
        ), body
        assert error["message"].startswith(f"{field}: {detail}") and error["message"].count(field) == 1, body
        assert "params." not in error["message"], body
    service.error = SAMPLES[InvalidRequest]  # raised by the service: params.temperature
    status, _, body = post(url, {"model": "m", "messages": hi}, accept=None)
    assert (status, body["error"]["param"]) == (400, "temperature")
    assert body["error"]["message"] == "temperature: must be >= 0 (0 means greedy), got -1"


def test_a_fields_error_keeps_its_message_without_the_field() -> None:
    """``detail``: the message without its "field: " prefix, for a front end that names the field its own way
    (nobody splits a message apart again), also on an error rebuilt from the wire."""
    assert InvalidRequest("params.top_p", "must be <= 1").detail == "must be <= 1"
    assert ConfigError("MODELS_FILE", "not valid TOML: x: y").detail == "not valid TOML: x: y"
    dataset = DatasetError("quality.yaml", 12, "assert[0].type", "unknown type 'x'")
    assert dataset.message == "quality.yaml, line 12, assert[0].type: unknown type 'x'"
    assert dataset.detail == "unknown type 'x'" and dataset.field == "assert[0].type"
    wire = ToolkitError.from_wire("BAD_USER_INPUT", "params.topP: must be <= 1: got 2", {"field": "params.topP"})
    assert isinstance(wire, InvalidRequest) and wire.detail == "must be <= 1: got 2"


# ----- every declared field, through GraphQL: a good value served, a bad one refused naming it ---------------

INFER = (
    "mutation($p: GenerationInput, $w: Boolean) "
    '{ infer(prompt: "Say hi.", params: $p, webSearch: $w, keep: false) { text runRecord } }'
)


def _good_and_bad(name: str) -> tuple[Any, Any]:
    spec = PARAMS[name]
    if spec.kind == "strings":
        return ["END"], ["a", "b", "c", "d", "e"]
    low = spec.low if spec.low is not None else 0
    good = low + 1 if spec.kind == "int" or spec.high is None else (low + spec.high) / 2
    bad = low if spec.low_open else low - 1  # under the low bound (GraphQL's Int has no room above a seed's)
    return (int(good), int(bad)) if spec.kind == "int" else (float(good), float(bad))


def test_every_declared_field_through_graphql(server: Any) -> None:
    for name in PARAMS:
        good, bad = _good_and_bad(name)
        params = {camel(name): good} if name == "max_new_tokens" else {camel(name): good, "maxNewTokens": 1}
        status, _, body = post(server.url, {"query": INFER, "variables": {"p": params}})
        assert status == 200 and "errors" not in body, (name, body)
        assert body["data"]["infer"]["runRecord"]["params"][name] == good, name
        bad_params = {camel(name): bad, "maxNewTokens": 1} if name != "max_new_tokens" else {camel(name): bad}
        _, _, body = post(server.url, {"query": INFER, "variables": {"p": bad_params}})
        error = body["errors"][0]
        assert (
            error["extensions"]["code"] == "BAD_USER_INPUT" and error["extensions"]["field"] == f"params.{camel(name)}"
        )
    _, _, body = post(server.url, {"query": INFER, "variables": {"p": {"maxNewTokens": 1}, "w": "false"}})
    assert "errors" in body and "Boolean" in body["errors"][0]["message"]  # a string is not a boolean on this wire
    status, _, body = post(server.url, {"query": INFER, "variables": {"p": {"maxNewTokens": 1}, "w": False}})
    assert status == 200 and body["data"]["infer"]["runRecord"]["search"] is None
