"""API keys, rate limits, introspection, CORS and the document limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from gqlhttp import code_of, post
from graphql import parse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.security import (
    AllowedHosts,
    ApiKeys,
    FailedKeys,
    TokenBucket,
    host_of,
    is_free,
    limit_errors,
    select_operation,
    shape,
)
from toolkit.errors import RateLimited
from toolkit.service import InferenceService

KEY = "test-key-0123456789"


@pytest.fixture()
def keyed(make_server: Any, server_service: InferenceService) -> Any:
    return make_server(server_service, api_keys=(KEY, "other-key-abcdefgh"))


def test_api_keys_on_http(keyed: Any) -> None:
    infer = {"query": 'mutation { infer(prompt: "Hi", params: {maxNewTokens: 2}) { text } }'}
    status, headers, body = post(keyed.url, infer)
    assert status == 401 and code_of(body) == "UNAUTHENTICATED" and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = post(keyed.url, infer, headers={"Authorization": "Bearer wrong-key-000000"})
    assert status == 401 and "not valid" in body["errors"][0]["message"]
    status, _, body = post(keyed.url, infer, headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["data"]["infer"]["text"] is not None
    status, _, body = post(keyed.url, {"query": "{ models { id } }"})
    assert status == 401


def test_health_stays_public_and_tells_nothing_secret(keyed: Any) -> None:
    status, _, body = post(keyed.url, {"query": "{ health { status model device version error } }"})
    assert status == 200 and body["data"]["health"]["status"] == "READY"
    assert KEY not in json.dumps(body)


def test_api_keys_on_websocket(keyed: Any) -> None:
    async def attempt(payload: Any) -> Any:
        ws = await connect(keyed.ws_url, subprotocols=["graphql-transport-ws"], proxy=None)  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        try:
            return json.loads(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
        finally:
            await ws.close()

    assert asyncio.run(attempt({})) == (4403, "Forbidden")
    assert asyncio.run(attempt({"Authorization": "Bearer nope-nope-nope"})) == (4403, "Forbidden")
    assert asyncio.run(attempt({"Authorization": f"Bearer {KEY}"})) == {"type": "connection_ack"}  # GraphiQL's headers
    assert asyncio.run(attempt({"apiKey": KEY})) == {"type": "connection_ack"}


def test_rate_limit_per_key(make_server: Any, server_service: InferenceService) -> None:
    running = make_server(server_service, rate_per_minute=1, rate_burst=2)
    infer = {"query": 'mutation { infer(prompt: "Hi", params: {maxNewTokens: 1}) { text } }'}
    assert post(running.url, infer)[0] == 200
    assert post(running.url, infer)[0] == 200
    status, headers, body = post(running.url, infer)
    assert status == 429 and code_of(body) == "RATE_LIMITED"
    assert int(headers["Retry-After"]) == body["errors"][0]["extensions"]["retryAfter"] > 0
    assert post(running.url, {"query": "{ health { status } }"})[0] == 200  # health is never limited


def test_a_front_ends_browser_sessions_are_limited_one_by_one(
    make_server: Any, server_service: InferenceService
) -> None:
    """A dashboard serves many people through one key: with that key in FRONTEND_API_KEYS each browser session
    (X-Toolkit-Session) has its own bucket; the header from any other caller changes nothing."""
    from toolkit.client import RemoteService

    front, other = "front-end-key-1", "plain-key-0001"
    running = make_server(server_service, api_keys=(other,), frontend_keys=(front,), rate_per_minute=1, rate_burst=1)
    infer = {"query": 'mutation { infer(prompt: "Hi", params: {maxNewTokens: 1}) { text } }'}

    def ask(key: str, session: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}", **({"X-Toolkit-Session": session} if session else {})}
        return post(running.url, infer, headers=headers)[0]

    assert [ask(front, f"browser-{i:04d}") for i in range(4)] == [200] * 4  # four people, one request each
    assert ask(front, "browser-0000") == 429  # the first one's second request: its own limit
    assert ask(other, "session-aaaa") == 200 and ask(other, "session-bbbb") == 429  # not a front end: one bucket
    # the dashboard's client sends its session on HTTP and on the WebSocket alike
    client = RemoteService(running.url, api_key=front, session="browser-9999", max_retries=0)
    assert list(client.stream("Hi", max_new_tokens=1))[-1].result.usage.completion_tokens == 1
    with pytest.raises(RateLimited):
        client.infer("Hi", max_new_tokens=1)


def test_introspection_can_be_switched_off(make_server: Any, server_service: InferenceService, server: Any) -> None:
    introspect = {"query": "{ __schema { queryType { name } } }"}
    assert post(server.url, introspect)[2] == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
    running = make_server(server_service, introspection=False)
    status, _, body = post(running.url, introspect)
    assert status == 400 and code_of(body) == "GRAPHQL_VALIDATION_FAILED"


def test_cors_only_for_configured_origins(make_server: Any, server_service: InferenceService) -> None:
    running = make_server(server_service, cors_origins=("http://notebook.example",))
    _, headers, _ = post(running.url, {"query": "{ health { status } }"}, headers={"Origin": "http://notebook.example"})
    assert headers["Access-Control-Allow-Origin"] == "http://notebook.example"
    _, headers, _ = post(running.url, {"query": "{ health { status } }"}, headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=60, burst=2, clock=lambda: now[0])
    assert bucket.take("a") is None and bucket.take("a") is None
    wait = bucket.take("a")
    assert wait is not None and 0.9 < wait <= 1.0
    assert bucket.take("b") is None  # per identity
    now[0] += 1.0
    assert bucket.take("a") is None


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("LocalHost", "localhost"),
        ("toolkit.example.:443", "toolkit.example"),
        ("rebind.attacker.example:8080", "rebind.attacker.example"),
        ("toolkit.example:http", None),
        ("[::1]x", None),
        ("[::1", None),
        (":8080", None),
    ],
)
def test_host_of(header: str, name: str | None) -> None:
    assert host_of(header) == name


def test_allowed_hosts() -> None:
    hosts = AllowedHosts(["toolkit.example"])
    accepted = [
        None,  # no Host: not a browser
        "127.0.0.1:8080",
        "192.168.1.20:8080",  # any IP address: rebinding needs a name
        "[::1]:8080",
        "[fe80::1]",
        "localhost:8080",
        "app.localhost",
        "server:8080",  # a name without a dot: a compose service
        "my_host-2",
        "Toolkit.Example:8443",
        "toolkit.example.",
    ]
    refused = ["rebind.attacker.example:8080", "toolkit.example.attacker.example", "localhost.attacker.example", ""]
    refused += ["evil@127.0.0.1", "127.0.0.1:8080/x", "a b", "server:port"]
    assert [h for h in accepted if not hosts.allows(h)] == []
    assert [h for h in refused if hosts.allows(h)] == []
    assert AllowedHosts(["*"]).allows("rebind.attacker.example")
    # the name it is bound to; an address bound to every interface names nothing
    assert AllowedHosts(bound="toolkit.internal").allows("toolkit.internal:8080")
    for wildcard in ("0.0.0.0", "::", ""):
        assert not AllowedHosts(bound=wildcard).allows("rebind.attacker.example")
    assert "ALLOWED_HOSTS" in AllowedHosts.refusal("rebind.attacker.example:8080")


def test_failed_keys_refuse_an_address_until_the_oldest_failure_is_old() -> None:
    now = [0.0]
    failed = FailedKeys(limit=3, window_s=60, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert failed.wait("a") is None
        failed.failed("a")
    assert failed.wait("a") == 40  # until the first failure is 60 s old
    assert failed.wait("b") is None  # per address
    now[0] = 59.5
    assert failed.wait("a") == 1  # rounded up, never 0
    now[0] = 60.0
    assert failed.wait("a") is None  # one more try ...
    failed.failed("a")
    assert failed.wait("a") == 10  # ... and refused until the second failure is 60 s old


def test_api_key_helpers() -> None:
    keys = ApiKeys(["k1-aaaaaaaa"])
    assert keys.enabled and keys.check("k1-aaaaaaaa") and not keys.check("k1-aaaaaaab") and not keys.check(None)
    assert ApiKeys([]).check(None)
    assert ApiKeys.from_authorization("Bearer  abc ") == "abc"
    assert ApiKeys.from_authorization("Basic abc") is None
    assert keys.identity("k1-aaaaaaaa", "1.2.3.4").startswith("key:") and "k1" not in keys.identity("k1-aaaaaaaa", "")
    assert ApiKeys([]).identity(None, "1.2.3.4") == "addr:1.2.3.4"


def test_document_shape_through_fragments() -> None:
    doc = parse(
        'mutation M { ...F a: cancel(requestId: "x") } fragment F on Mutation { infer(prompt: "p") { usage { promptTokens } } }'
    )
    op = select_operation(doc, None)
    assert op is not None
    s = shape(doc, op)
    assert s.root_fields == {"infer", "cancel"} and s.model_calls == 1 and s.depth == 3
    assert limit_errors(s, max_depth=3) == []
    assert "3 levels deep" in limit_errors(s, max_depth=2)[0].message
    assert is_free(
        shape(
            parse("{ health { status } __typename }"), select_operation(parse("{ health { status } __typename }"), None)
        )
    )  # type: ignore[arg-type]


def test_a_fragment_bomb_is_measured_in_linear_time() -> None:
    """Each fragment spreads the next twice: 2^40 paths if expanded, one visit each when memoized."""

    n = 40
    doc = "query { ...F0 } " + " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(n))
    doc += f" fragment F{n} on Query {{ health {{ status }} }}"
    parsed = parse(doc)
    op = select_operation(parsed, None)
    assert op is not None
    s = shape(parsed, op)  # expanded, 2^40 visits would never end (the suite's timeout): memoized, one each
    assert s.root_fields == {"health"} and s.depth == 2


def test_the_same_infer_twice_is_one_call_but_aliases_are_two() -> None:
    same = parse('mutation { ...A ...A } fragment A on Mutation { infer(prompt: "x") { text } }')
    assert shape(same, select_operation(same, None)).model_calls == 1  # type: ignore[arg-type]
    aliased = parse('mutation { a: infer(prompt: "x") { text } b: infer(prompt: "y") { text } }')
    assert shape(aliased, select_operation(aliased, None)).model_calls == 2  # type: ignore[arg-type]
