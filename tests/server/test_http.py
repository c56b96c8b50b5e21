"""GraphQL over HTTP against a real server on loopback, with the real bundled model."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from gqlhttp import GQL_RESPONSE, code_of, get, post

from server.config import ServerSettings
from toolkit.errors import ModelNotReady
from toolkit.params import InferRequest
from toolkit.service import InferenceService
from toolkit.settings import Settings


def test_the_seed_operations_work_as_written(server: Any) -> None:
    status, _, body = post(server.url, {"query": "{ health { status } }"})
    assert (status, body) == (200, {"data": {"health": {"status": "READY"}}})
    status, _, body = post(
        server.url, {"query": 'mutation { infer(prompt: "What is the capital of France?", webSearch: false) { text } }'}
    )
    assert status == 200 and "errors" not in body
    assert body["data"]["infer"]["text"]


def test_infer_with_every_argument(server: Any) -> None:
    query = """mutation($p: GenerationInput) {
      infer(prompt: "What is the capital of France?", systemPrompt: "Be brief.", params: $p,
            history: [{role: USER, content: "Hi"}, {role: ASSISTANT, content: "Hello!"}],
            model: "SmolLM2-135M-Instruct", requestId: "my-id-1") {
        id text finishReason searchStatus sources { index }
        usage { promptTokens completionTokens } timings { queuedSeconds firstTokenSeconds totalSeconds }
        model adapter runRecord
      }
    }"""
    variables = {
        "p": {
            "temperature": 0,
            "maxNewTokens": 24,
            "topP": 0.9,
            "topK": 40,
            "repetitionPenalty": 1.1,
            "seed": 3,
            "stop": ["\n\n"],
        }
    }
    status, _, body = post(server.url, {"query": query, "variables": variables})
    assert status == 200, body
    result = body["data"]["infer"]
    assert result["id"] == "my-id-1" and "Paris" in result["text"]
    assert result["finishReason"] in ("STOP", "LENGTH") and result["searchStatus"] == "OFF" and result["sources"] == []
    assert result["runRecord"]["params"]["seed"] == 3 and result["runRecord"]["messages"][0]["role"] == "system"
    assert result["usage"]["completionTokens"] <= 24


def test_get_runs_queries_only(server: Any) -> None:
    status, _, body = get(server.url, "{ health { status model } }")
    assert status == 200 and body["data"]["health"]["model"] == "SmolLM2-135M-Instruct"
    status, headers, body = get(server.url, 'mutation { cancel(requestId: "x") }')
    assert status == 405 and headers["Allow"] == "POST" and code_of(body) == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("accept", "status", "media"),
    [
        (GQL_RESPONSE, 200, GQL_RESPONSE),
        ("application/json", 200, "application/json"),
        (None, 200, "application/json"),
        ("*/*", 200, "application/json"),
        (f"application/json;q=0.5, {GQL_RESPONSE}", 200, GQL_RESPONSE),
        ("text/html", 406, "application/json"),
    ],
)
def test_content_negotiation(server: Any, accept: str | None, status: int, media: str) -> None:
    code, headers, _ = post(server.url, {"query": "{ health { status } }"}, accept=accept)
    assert code == status
    assert headers["Content-Type"].startswith(media)


# (name, request kwargs, expected status with graphql-response+json, expected code, field)
BAD_INPUTS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("malformed JSON", {"raw": b'{"query": "{ health { status } }"'}, 400, "BAD_REQUEST", None),
    (
        "wrong content type",
        {"raw": b"{ health { status } }", "content_type": "text/plain"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        None,
    ),
    (
        "graphql content type",
        {"raw": b"{ health { status } }", "content_type": "application/graphql"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        None,
    ),
    ("no query", {"body": {"variables": {}}}, 400, "BAD_REQUEST", None),
    (
        "batch array",
        {"body": [{"query": "{ health { status } }"}, {"query": "{ health { status } }"}]},
        400,
        "BAD_REQUEST",
        None,
    ),
    ("huge body", {"raw": b'{"query": "' + b"x" * 200_000 + b'"}'}, 413, "PAYLOAD_TOO_LARGE", None),
    ("unparsable document", {"body": {"query": "mutation { infer(prompt: "}}, 400, "GRAPHQL_PARSE_FAILED", None),
    ("unknown field", {"body": {"query": "{ health { status colour } }"}}, 400, "GRAPHQL_VALIDATION_FAILED", None),
    ("missing argument", {"body": {"query": "mutation { infer { text } }"}}, 400, "GRAPHQL_VALIDATION_FAILED", None),
    (
        "variables not an object",
        {"body": {"query": "{ health { status } }", "variables": [1]}},
        400,
        "BAD_REQUEST",
        None,
    ),
    (
        "bad variables",
        {"body": {"query": "mutation($p: String!) { infer(prompt: $p) { text } }", "variables": {"p": 42}}},
        400,
        "BAD_USER_INPUT",
        None,
    ),
    (
        "aliased infer x20",
        {
            "body": {
                "query": "mutation { " + " ".join(f'a{i}: infer(prompt: "hi") {{ text }}' for i in range(20)) + " }"
            }
        },
        400,
        "BAD_USER_INPUT",
        "query",
    ),
    (
        "infer twice through a fragment",
        {
            "body": {
                "query": 'mutation { infer(prompt: "a") { text } ...F } fragment F on Mutation { infer(prompt: "b") { text } }'
            }
        },
        400,
        "GRAPHQL_VALIDATION_FAILED",
        None,
    ),
    ("empty prompt", {"body": {"query": 'mutation { infer(prompt: "  ") { text } }'}}, 200, "BAD_USER_INPUT", "prompt"),
    (
        "temperature below 0",
        {"body": {"query": 'mutation { infer(prompt: "hi", params: {temperature: -1}) { text } }'}},
        200,
        "BAD_USER_INPUT",
        "params.temperature",
    ),
    (
        "max new tokens over the limit",
        {"body": {"query": 'mutation { infer(prompt: "hi", params: {maxNewTokens: 100000}) { text } }'}},
        200,
        "BAD_USER_INPUT",
        "params.maxNewTokens",
    ),
    (
        "history not alternating",
        {"body": {"query": 'mutation { infer(prompt: "hi", history: [{role: ASSISTANT, content: "x"}]) { text } }'}},
        200,
        "BAD_USER_INPUT",
        "history[0].role",
    ),
    (
        "unknown model",
        {"body": {"query": 'mutation { infer(prompt: "hi", model: "gpt-9") { text } }'}},
        200,
        "BAD_USER_INPUT",
        "model",
    ),
    (
        "bad request id",
        {"body": {"query": 'mutation { infer(prompt: "hi", requestId: "a b") { text } }'}},
        200,
        "BAD_USER_INPUT",
        "requestId",
    ),
    (
        "subscription over HTTP",
        {"body": {"query": 'subscription { inferStream(prompt: "hi") { type } }'}},
        400,
        "BAD_REQUEST",
        None,
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "code", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_get_their_status_and_code(
    server: Any, name: str, kwargs: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    got_status, _, body = post(server.url, **kwargs)
    assert got_status == status, body
    assert code_of(body) == code, body
    if field is not None:
        assert body["errors"][0]["extensions"]["field"] == field
    assert "Traceback" not in json.dumps(body)
    assert post(server.url, {"query": "{ health { status } }"})[0] == 200  # still serving


def test_a_query_over_the_depth_limit(make_server: Any, server_service: Any) -> None:
    running = make_server(server_service, max_query_depth=3)
    status, _, body = post(running.url, {"query": "{ health { status } models { id } }"})
    assert status == 200 and "errors" not in body
    status, _, body = post(running.url, {"query": 'mutation { infer(prompt: "x") { timings { totalSeconds } } }'})
    assert status == 200  # 3 levels: allowed
    status, _, body = post(
        running.url, {"query": 'subscription { inferStream(prompt: "x") { result { usage { promptTokens } } } }'}
    )
    assert status == 400 and code_of(body) == "BAD_USER_INPUT"
    assert "4 levels deep, over the limit of 3" in body["errors"][0]["message"]
    assert body["errors"][0]["extensions"]["limit"] == 3


def test_a_document_over_the_token_limit_names_the_limit(make_server: Any, server_service: Any) -> None:
    running = make_server(server_service, max_query_tokens=60)
    fits = "{ " + " ".join(f"a{i}: models {{ id }}" for i in range(9)) + " }"  # 9 x 6 tokens and the braces
    status, _, body = post(running.url, {"query": "# a comment is not a token\n" + fits})
    assert status == 200 and "errors" not in body
    over = "{ " + " ".join(f"a{i}: models {{ id }}" for i in range(10)) + " }"  # 62 tokens (not a free health query)
    status, _, body = post(running.url, {"query": over})
    assert status == 400 and code_of(body) == "BAD_USER_INPUT"  # was GRAPHQL_PARSE_FAILED, the limit unnamed
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "query", "limit": 60}
    assert "MAX_QUERY_TOKENS" in body["errors"][0]["message"]


def test_graphiqls_introspection_query_passes_the_limits(server: Any) -> None:
    """The deep, fixed introspection query that GraphiQL sends on load must not hit the depth limit."""
    from graphql import get_introspection_query

    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    )
    status, _, body = post(server.url, {"query": query})
    assert status == 200 and "errors" not in body and body["data"]["__schema"]["queryType"]["name"] == "Query"
    nested = "{ __schema { types { " + "fields { type { " * 12 + "name" + " } }" * 12 + " } } }"
    status, _, body = post(server.url, {"query": nested})
    assert status == 400 and "introspection" in body["errors"][0]["message"].lower()  # graphql-core bounds it too


def test_with_application_json_graphql_errors_are_200(server: Any) -> None:
    status, _, body = post(server.url, {"query": "{ health { colour } }"}, accept="application/json")
    assert status == 200 and code_of(body) == "GRAPHQL_VALIDATION_FAILED"
    status, _, body = post(server.url, raw=b"{not json", accept="application/json")
    assert status == 400


def test_cancel_of_an_unknown_request(server: Any) -> None:
    status, _, body = post(server.url, {"query": 'mutation { cancel(requestId: "nope") }'})
    assert (status, body) == (200, {"data": {"cancel": False}})


def wait_until(condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_models(server: Any) -> None:
    _, _, body = post(server.url, {"query": "{ models { id source loaded contextLength contentHash } }"})
    model = body["data"]["models"][0]
    assert model["id"] == "SmolLM2-135M-Instruct" and model["loaded"] and model["contentHash"].startswith("sha256:")


def test_overloaded_is_503_with_retry_after(make_server: Any, settings: Settings, loaded: Any) -> None:
    service = InferenceService(Settings(cache_dir=settings.cache_dir, max_batch_size=1, max_queue=1), loaded=loaded)
    running = make_server(service)
    short = 'mutation { infer(prompt: "Count to ten.", params: {temperature: 0, maxNewTokens: 4}) { finishReason } }'
    gate = service.engine().scheduler.hold()  # nothing runs: the first request waits in the queue, however fast
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(post(running.url, {"query": short})))
    first.start()
    wait_until(lambda: service.health().queue_depth == 1)
    status, headers, body = post(running.url, {"query": short})
    assert status == 503 and headers["Retry-After"] == "1"
    assert code_of(body) == "OVERLOADED" and body["errors"][0]["extensions"]["retryAfter"] == 1
    gate.set()
    first.join(60)
    assert answers[0][0] == 200 and answers[0][2]["data"]["infer"]["finishReason"] == "LENGTH"  # accepted, answered
    service.close(grace_s=0)


def test_a_full_queue_refuses_before_the_request_is_read(make_server: Any, settings: Settings, loaded: Any) -> None:
    """A refusal costs nothing: with the queue full, a request is refused (503, Overloaded) before its
    variables or messages are coerced and checked, so a long history waits on nobody's refusal. The proof: a
    request that is wrong in its history gets the refusal, not the history's error; with room, the error."""
    service = InferenceService(Settings(cache_dir=settings.cache_dir, max_batch_size=1, max_queue=1), loaded=loaded)
    running = make_server(service)
    short = 'mutation { infer(prompt: "Count to ten.", params: {temperature: 0, maxNewTokens: 4}) { finishReason } }'
    wrong = {
        "query": 'mutation($h: [TurnInput!]) { infer(prompt: "Hi", history: $h) { text } }',
        "variables": {"h": [{"role": "narrator", "content": "x"}] * 2000},
    }
    chat = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "narrator", "content": "x"}] * 2000}
    gate = service.engine().scheduler.hold()
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(post(running.url, {"query": short})))
    first.start()
    wait_until(lambda: service.health().queue_depth == 1)
    status, headers, body = post(running.url, wrong)
    assert (status, headers["Retry-After"], code_of(body)) == (503, "1", "OVERLOADED")
    status, headers, body = post(running.base + "/v1/chat/completions", chat, accept=None)
    assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "1", "overloaded")
    gate.set()
    first.join(60)
    wait_until(lambda: service.health().queue_depth == 0 and service.health().active == 0)
    assert code_of(post(running.url, wrong)[2]) == "BAD_USER_INPUT"  # with room, the history's own error
    assert post(running.base + "/v1/chat/completions", chat, accept=None)[0] == 400
    service.close(grace_s=0)


def test_a_loading_model_says_retry_and_a_failed_one_does_not(make_server: Any, settings: Settings) -> None:
    """The same rule on both HTTP APIs: 503 with Retry-After while a retry may succeed, none once it cannot."""
    infer = {"query": 'mutation { infer(prompt: "hi") { text } }'}
    chat: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]}
    loading = make_server(InferenceService(settings))  # not started yet: as while the weights load
    status, headers, body = post(loading.url, infer)
    assert (status, headers["Retry-After"], code_of(body)) == (503, "1", "MODEL_LOADING")
    assert body["errors"][0]["extensions"]["retryAfter"] == 1
    status, headers, _ = post(loading.url.replace("/graphql", "/v1/chat/completions"), chat)
    assert (status, headers["Retry-After"]) == (503, "1")

    broken = InferenceService(Settings(model_id="./no/such/model", cache_dir=settings.cache_dir))
    broken.start(wait=False, progress=False)
    with pytest.raises(ModelNotReady):
        broken.wait_ready(timeout=30)
    failed = make_server(broken)
    status, headers, body = post(failed.url, infer)
    assert status == 200 and code_of(body) == "MODEL_LOADING" and "failed to load" in body["errors"][0]["message"]
    assert "retryAfter" not in body["errors"][0]["extensions"] and "Retry-After" not in headers
    chat["model"] = broken.registry.default.name
    status, headers, body = post(failed.url.replace("/graphql", "/v1/chat/completions"), chat)
    assert status == 503 and "Retry-After" not in headers and "failed to load" in body["error"]["message"]


def test_health_answers_fast_while_16_generations_run(make_server: Any, settings: Settings, loaded: Any) -> None:
    service = InferenceService(settings, loaded=loaded)
    running = make_server(service)
    query = 'mutation { infer(prompt: "Write a long story about a dragon.", params: {temperature: 0, maxNewTokens: 120}) { text } }'
    threads = [threading.Thread(target=post, args=(running.url, {"query": query})) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while service.health().active < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.health().active == 16
    service.engine().scheduler.hold()  # the 16 stay running, and the rest of their stories is not needed
    for _ in range(10):  # how fast: bench/server.py
        status, _, body = post(running.url, {"query": "{ health { status active } }"})
        assert status == 200 and body["data"]["health"]["active"] == 16
    service.close(grace_s=0)
    for t in threads:
        t.join(120)
    service.close(grace_s=0)


def test_a_client_that_goes_away_cancels_its_generation(server: Any, server_service: InferenceService) -> None:
    body = json.dumps(
        {
            "query": 'mutation { infer(prompt: "Count to one thousand.", params: {temperature: 0, maxNewTokens: 500}) { text } }'
        }
    ).encode()
    port = int(server.base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 10
    while server_service.health().active == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server_service.health().active == 1
    sock.close()
    deadline = time.monotonic() + 5
    while server_service.health().active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server_service.health().active == 0  # the abandoned one holds no place: the next runs at once
    result = server_service.infer(InferRequest.build("Hi", temperature=0, max_new_tokens=2))
    assert result.finish_reason == "length"


def test_an_unexpected_error_is_masked_with_a_request_id(
    make_server: Any, server_service: InferenceService, caplog: Any
) -> None:
    class Broken(InferenceService):
        def models(self) -> Any:
            raise RuntimeError("secret internal detail")

    broken = Broken(server_service.settings, loaded=server_service.loaded)
    running = make_server(broken)
    status, _, body = post(running.url, {"query": "{ models { id } }"})
    err = body["errors"][0]
    assert status == 200 and err["extensions"]["code"] == "INTERNAL"
    assert "secret" not in json.dumps(body) and err["extensions"]["requestId"] in err["message"]
    assert any(err["extensions"]["requestId"] in r.getMessage() for r in caplog.records)
    broken.close(grace_s=0)


def test_graphiql_page_and_redirect(server: Any) -> None:
    with urllib.request.urlopen(server.base + "/graphiql") as response:
        page = response.read().decode()
    assert "graphiql.min.js" in page and "http" not in page.split("<body>")[1].replace("href", "")
    with urllib.request.urlopen(server.base + "/") as response:
        assert response.url.endswith("/graphiql")
    with urllib.request.urlopen(server.base + "/graphiql/assets/graphiql.min.js") as response:
        assert response.status == 200 and len(response.read()) > 100_000
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.base + "/graphiql/assets/../../pyproject.toml")
    assert info.value.code == 404


def test_server_settings_from_env() -> None:
    s = ServerSettings.from_env(
        {"SERVER_PORT": "9000", "API_KEYS": "key-aaaaaaaa, key-bbbbbbbb", "CORS_ORIGINS": "http://a.example"}
    )
    assert s.port == 9000 and s.api_keys == ("key-aaaaaaaa", "key-bbbbbbbb") and s.cors_origins == ("http://a.example",)


def test_timeouts_a_result_with_text_or_TIMEOUT_without(make_server: Any, settings: Settings, loaded: Any) -> None:
    # time runs out while generating: the text so far comes back, with finish reason TIMEOUT
    service = InferenceService(Settings(cache_dir=settings.cache_dir, request_timeout_s=1.0), loaded=loaded)
    running = make_server(service)
    long = 'mutation { infer(prompt: "Count to one thousand.", params: {temperature: 0, maxNewTokens: 500}) { text finishReason } }'
    _, _, body = post(running.url, {"query": long})
    assert body["data"]["infer"]["finishReason"] == "TIMEOUT" and body["data"]["infer"]["text"]
    service.close(grace_s=0)
    # time runs out before the first token (a long prompt to read): nothing to return, so an error
    service = InferenceService(Settings(cache_dir=settings.cache_dir, request_timeout_s=0.1), loaded=loaded)
    running = make_server(service)
    prompt = "Summarize this. " + "The quick brown fox jumps over the lazy dog. " * 150
    status, _, body = post(
        running.url, {"query": "mutation($p: String!) { infer(prompt: $p) { text } }", "variables": {"p": prompt}}
    )
    assert status == 200 and code_of(body) == "TIMEOUT" and "REQUEST_TIMEOUT" in body["errors"][0]["message"]
    service.close(grace_s=0)
