"""The attack table: what an outsider tried against the real server, with a key of their own or with none.

Each test is an attack that worked once (issue 11); the server must now refuse it with a clear status
and a JSON error, keep serving everyone else, and never touch another caller's request.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import statistics
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from gqlhttp import code_of, post
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from toolkit.service import InferenceService

KEY_A, KEY_B = "alice-key-0123456789", "bob-key-0123456789"
LONG = (
    'mutation($id: ID, $n: Int) { infer(prompt: "Write a long story about a robot.", requestId: $id, '
    "params: {temperature: 0, maxNewTokens: $n}) { finishReason usage { completionTokens } } }"
)
CANCEL = "mutation($id: ID!) { cancel(requestId: $id) }"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def two_keys(make_server: Any, server_service: InferenceService) -> Any:
    return make_server(server_service, api_keys=(KEY_A, KEY_B))


class Background:
    """One request in a thread; ``result`` once it is done."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.result: Any = None
        self.thread = threading.Thread(target=lambda: setattr(self, "result", post(url, body, headers=headers)))
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(120)
        return self.result


def wait_running(service: InferenceService, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while service.health().active < count:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)


def send_and_drop(base: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Send a POST and close the socket at once, without reading the answer."""
    port = int(urllib.parse.urlsplit(base).port or 80)
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Type": "application/json"}.items())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST /graphql HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)


async def ws_execute(url: str, key: str, query: str, variables: dict[str, Any]) -> Any:
    async with connect(url, subprotocols=["graphql-transport-ws"], proxy=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer(key)}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
        return json.loads(await asyncio.wait_for(ws.recv(), 30))["payload"]


# ----- 1. request ids belong to their caller ----------------------------------------------


def test_another_key_can_neither_cancel_nor_collide_with_a_request(
    two_keys: Any, server_service: InferenceService
) -> None:
    victim = Background(two_keys.url, {"query": LONG, "variables": {"id": "victim-1", "n": 60}}, bearer(KEY_A))
    wait_running(server_service)
    # B cancels A's id over HTTP and over WebSocket: false, as for an id that does not exist
    _, _, body = post(two_keys.url, {"query": CANCEL, "variables": {"id": "victim-1"}}, headers=bearer(KEY_B))
    assert body == {"data": {"cancel": False}}
    unknown = post(two_keys.url, {"query": CANCEL, "variables": {"id": "no-such-id"}}, headers=bearer(KEY_B))[2]
    assert unknown == body
    assert asyncio.run(ws_execute(two_keys.ws_url, KEY_B, CANCEL, {"id": "victim-1"})) == {"data": {"cancel": False}}
    # B sends the same id (its own request: no collision, no hint that A's exists), and drops a second one
    _, _, body = post(two_keys.url, {"query": LONG, "variables": {"id": "victim-1", "n": 2}}, headers=bearer(KEY_B))
    assert body["data"]["infer"] == {"finishReason": "LENGTH", "usage": {"completionTokens": 2}}
    send_and_drop(two_keys.base, {"query": LONG, "variables": {"id": "victim-1", "n": 2}}, bearer(KEY_B))
    # A's own duplicate is refused, and its disconnect touches nothing
    send_and_drop(two_keys.base, {"query": LONG, "variables": {"id": "victim-1", "n": 2}}, bearer(KEY_A))
    _, _, body = post(two_keys.url, {"query": LONG, "variables": {"id": "victim-1", "n": 2}}, headers=bearer(KEY_A))
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "requestId"}
    time.sleep(0.5)  # the dropped connections have been seen as closed
    status, _, body = victim.join()
    assert status == 200 and body["data"]["infer"] == {"finishReason": "LENGTH", "usage": {"completionTokens": 60}}


def test_the_owner_cancels_its_request_from_another_transport(two_keys: Any, server_service: InferenceService) -> None:
    victim = Background(two_keys.url, {"query": LONG, "variables": {"id": "mine-2", "n": 200}}, bearer(KEY_A))
    wait_running(server_service)
    assert asyncio.run(ws_execute(two_keys.ws_url, KEY_A, CANCEL, {"id": "mine-2"})) == {"data": {"cancel": True}}
    _, _, body = victim.join()
    assert body["data"]["infer"]["finishReason"] == "CANCELLED"


# ----- 2. no unauthenticated (or costly) way to stall the event loop ----------------------


def flood_document(rng: random.Random) -> str:
    """400 copies of ``health { status }``, spaced at random so that no two documents are alike."""
    return "{" + "".join(" " * rng.randint(1, 4) + "health {status}" for _ in range(400)) + "}"


def health_ms(url: str) -> float:
    start = time.perf_counter()
    status, _, _ = post(url, {"query": "{ health { status } }"})
    assert status == 200
    return (time.perf_counter() - start) * 1000


def health_under_flood(url: str, headers: dict[str, str]) -> tuple[float, float, list[int]]:
    """Median idle health time, the slowest health time while 8 flood documents arrive, their statuses."""
    idle = statistics.median(health_ms(url) for _ in range(15))
    statuses: list[int] = []
    rng = random.Random(0)
    documents = [flood_document(rng) for _ in range(8)]
    threads = [
        threading.Thread(target=lambda d=d: statuses.append(post(url, {"query": d}, headers=headers)[0]))
        for d in documents
    ]
    for thread in threads:
        thread.start()
    during = []
    while any(t.is_alive() for t in threads) or len(during) < 5:
        during.append(health_ms(url))
    for thread in threads:
        thread.join()
    return idle, max(during), statuses


@pytest.mark.parametrize("keys", ["with keys, no key sent", "without keys"])
def test_a_flood_of_huge_documents_does_not_stall_health(
    make_server: Any, server_service: InferenceService, keys: str
) -> None:
    running = make_server(server_service, api_keys=(KEY_A,) if keys.startswith("with") else ())
    idle, slowest, statuses = health_under_flood(running.url, {})
    assert statuses == [401 if keys.startswith("with") else 400] * 8  # no key: 401 unparsed; else the field limit
    print(f"health: idle {idle:.1f} ms, slowest under the flood {slowest:.1f} ms")
    # 400 fields used to keep the loop busy for seconds; now health stays within a small multiple of idle
    assert slowest < max(30 * idle, 100), (idle, slowest)


def test_the_field_limit_names_the_limit(server: Any) -> None:
    status, _, body = post(server.url, {"query": "{" + " health { status }" * 151 + "}"})
    assert status == 400 and body["errors"][0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "field": "query",
        "limit": 150,
    }
    assert "302 fields" in body["errors"][0]["message"]


# ----- 3. deeply nested JSON -----------------------------------------------------------------


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_deeply_nested_json_gets_a_400_with_a_json_error(server: Any) -> None:
    raw = ('{"query": "{ health { status } }", "variables": {"a": ' + nested(5000) + "}}").encode()
    status, _, body = post(server.url, raw=raw)
    assert status == 400 and code_of(body) == "BAD_REQUEST" and "nests too deeply" in body["errors"][0]["message"]
    url = server.url + "?" + urllib.parse.urlencode({"query": "{ health { status } }", "variables": nested(5000)})
    try:
        urllib.request.urlopen(urllib.request.Request(url), timeout=30)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and code_of(json.loads(exc.read())) == "BAD_REQUEST"
    # within Python's own limit, but deeper than any request needs
    raw = ('{"query": "{ health { status } }", "variables": {"a": ' + nested(100) + "}}").encode()
    status, _, body = post(server.url, raw=raw)
    assert status == 400 and body["errors"][0]["extensions"]["limit"] == 32


def test_deeply_nested_json_over_websocket_closes_with_4400(server: Any) -> None:
    async def run() -> Any:
        async with connect(server.ws_url, subprotocols=["graphql-transport-ws"], proxy=None) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init"}))
            await ws.recv()
            await ws.send('{"type": "subscribe", "id": "1", "payload": ' + nested(5000) + "}")
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

    assert asyncio.run(run()) == 4400


# ----- 4. every oversize request gets its status and a JSON error -------------------------


def test_an_oversized_body_gets_413_with_urllib_and_requests(server: Any) -> None:
    big = json.dumps({"query": "{ health { status } }", "variables": {"x": "a" * (5 << 20)}}).encode()
    status, _, body = post(server.url, raw=big)  # urllib, Content-Length
    assert status == 413 and body["errors"][0]["extensions"] == {"code": "PAYLOAD_TOO_LARGE", "limit": 64 * 1024}
    response = requests.post(server.url, data=big, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413 and code_of(response.json()) == "PAYLOAD_TOO_LARGE"
    assert post(server.url, {"query": "{ health { status } }"})[0] == 200  # and the server goes on


def test_an_oversized_chunked_body_gets_413(server: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "{ health { status } }", "variables": {"x": "'
        for _ in range(100):
            yield b"a" * 10_000
        yield b'"}}'

    port = int(urllib.parse.urlsplit(server.base).port or 80)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(
        "POST", "/graphql", body=chunks(), headers={"Content-Type": "application/json"}, encode_chunked=True
    )
    response = connection.getresponse()
    assert response.status == 413 and code_of(json.loads(response.read())) == "PAYLOAD_TOO_LARGE"
    connection.close()


def test_an_over_long_url_gets_414(server: Any) -> None:
    url = server.url + "?" + urllib.parse.urlencode({"query": "{ health { status } }", "pad": "x" * 70_000})
    try:
        urllib.request.urlopen(urllib.request.Request(url), timeout=30)
        raise AssertionError("expected 414")
    except urllib.error.HTTPError as exc:
        assert exc.code == 414 and code_of(json.loads(exc.read())) == "URI_TOO_LONG"


# ----- 5. nothing about the schema for a caller without a key -----------------------------


def test_no_schema_suggestions_without_a_key_or_with_introspection_off(
    make_server: Any, server_service: InferenceService
) -> None:
    keyed = make_server(server_service, api_keys=(KEY_A,))
    status, _, body = post(keyed.url, {"query": 'mutation { infr(prompt: "x") { text } }'})
    assert status == 401 and code_of(body) == "UNAUTHENTICATED"
    assert "infer" not in json.dumps(body) and "Did you mean" not in json.dumps(body)
    closed = make_server(server_service, introspection=False)
    probes = [
        {"query": 'mutation { infr(prompt: "x") { text } }'},
        {"query": "{ helth { status } }"},
        {"query": 'mutation { infer(prompt: "x", history: [{role: USR, content: "a"}]) { text } }'},
        {
            "query": 'mutation($h: [TurnInput!]) { infer(prompt: "x", history: $h) { text } }',
            "variables": {"h": [{"role": "USR", "content": "a"}]},
        },
    ]
    for probe in probes:
        status, _, body = post(closed.url, probe)
        assert status == 400 and "errors" in body, probe
        assert "Did you mean" not in json.dumps(body), body
    # with introspection on (the default), suggestions help the developer
    open_server = make_server(server_service)
    assert "Did you mean" in json.dumps(post(open_server.url, probes[0])[2])
