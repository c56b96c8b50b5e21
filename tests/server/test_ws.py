"""graphql-transport-ws against a real server: the gql client, and raw frames for the protocol's edges."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from toolkit.params import InferRequest
from toolkit.service import InferenceService

PROTOCOL = "graphql-transport-ws"
STREAM = """subscription($prompt: String!, $n: Int) {
  inferStream(prompt: $prompt, params: {temperature: 0, maxNewTokens: $n}) {
    type requestId delta text result { text finishReason usage { completionTokens } }
  }
}"""


def gql_ws(url: str, **kwargs: Any) -> WebsocketsTransport:
    # gql looks the Sec-WebSocket-Protocol response header up case-sensitively; Tornado writes
    # Sec-Websocket-Protocol (HTTP headers are case-insensitive). Offering only graphql-transport-ws
    # makes gql fall back to it, without bending the server for one client.
    return WebsocketsTransport(url=url, subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], **kwargs)


def test_gql_subscription_streams_tokens_then_the_result(server: Any) -> None:
    async def run() -> list[dict[str, Any]]:
        async with Client(transport=gql_ws(server.ws_url)) as session:
            request = gql(STREAM)
            request.variable_values = {"prompt": "What is the capital of France?", "n": 24}
            return [e async for e in session.subscribe(request)]

    events = [e["inferStream"] for e in asyncio.run(run())]
    assert [e["type"] for e in events[:-1]] == ["TOKEN"] * (len(events) - 1) and events[-1]["type"] == "DONE"
    text = "".join(e["delta"] for e in events[:-1])
    assert text == events[-1]["result"]["text"] and "Paris" in text
    assert events[-2]["text"] == text  # each token carries the text so far


def test_gql_mutation_and_query_over_websocket(server: Any) -> None:
    async def run() -> tuple[Any, Any]:
        async with Client(transport=gql_ws(server.ws_url)) as session:
            health = await session.execute(gql("{ health { status } }"))
            infer = await session.execute(
                gql(
                    'mutation { infer(prompt: "Hi", params: {maxNewTokens: 3, temperature: 0}) { usage { completionTokens } } }'
                )
            )
            return health, infer

    health, infer = asyncio.run(run())
    assert health == {"health": {"status": "READY"}}
    assert infer["infer"]["usage"]["completionTokens"] <= 3


async def _open(server: Any, subprotocols: list[str] | None = None, **kwargs: Any) -> Any:
    return await connect(server.ws_url, subprotocols=subprotocols or [PROTOCOL], proxy=None, **kwargs)  # type: ignore[list-item]


async def _init(ws: Any, payload: Any = None) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "connection_init", **({"payload": payload} if payload is not None else {})}))
    return json.loads(await ws.recv())


async def _closed_with(ws: Any) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(50):
            await asyncio.wait_for(ws.recv(), 5)
    rcvd = info.value.rcvd
    assert rcvd is not None
    return rcvd.code, rcvd.reason


def test_protocol_violations_close_with_their_codes(server: Any) -> None:
    async def run() -> dict[str, tuple[int, str]]:
        out = {}
        ws = await _open(server, subprotocols=["graphql-ws"])  # the legacy Apollo protocol
        out["no subprotocol"] = await _closed_with(ws)

        ws = await _open(server)
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "{ health { status } }"}}))
        out["subscribe before init"] = await _closed_with(ws)

        ws = await _open(server)
        assert (await _init(ws))["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "connection_init"}))
        out["second init"] = await _closed_with(ws)

        ws = await _open(server)
        await ws.send("this is not json")
        out["not json"] = await _closed_with(ws)

        ws = await _open(server)
        await ws.send(json.dumps({"type": "shout"}))
        out["unknown type"] = await _closed_with(ws)

        ws = await _open(server)
        await _init(ws)
        await ws.send(json.dumps({"type": "subscribe", "payload": {"query": "{ health { status } }"}}))
        out["subscribe without id"] = await _closed_with(ws)

        ws = await _open(server)
        await _init(ws)
        long = {"query": STREAM, "variables": {"prompt": "Count to one thousand.", "n": 300}}
        await ws.send(json.dumps({"id": "same", "type": "subscribe", "payload": long}))
        await ws.send(json.dumps({"id": "same", "type": "subscribe", "payload": long}))
        out["duplicate id"] = await _closed_with(ws)
        return out

    closes = asyncio.run(run())
    assert closes["no subprotocol"][0] == 4406
    assert closes["subscribe before init"] == (4401, "Unauthorized")
    assert closes["second init"] == (4429, "Too many initialisation requests")
    assert closes["not json"][0] == 4400
    assert closes["unknown type"][0] == 4400
    assert closes["subscribe without id"][0] == 4400
    assert closes["duplicate id"] == (4409, "Subscriber for same already exists")


def test_init_timeout_closes_4408(make_server: Any, server_service: InferenceService) -> None:
    running = make_server(server_service, ws_init_timeout_s=0.3)

    async def run() -> tuple[int, str]:
        ws = await _open(running)
        return await _closed_with(ws)

    assert asyncio.run(run()) == (4408, "Connection initialisation timeout")


def test_ping_pong_and_errors_keep_the_connection(server: Any) -> None:
    async def run() -> list[dict[str, Any]]:
        ws = await _open(server)
        await _init(ws)
        await ws.send(json.dumps({"type": "ping"}))
        pong = json.loads(await ws.recv())
        await ws.send(json.dumps({"id": "v", "type": "subscribe", "payload": {"query": "{ health { colour } }"}}))
        validation = json.loads(await ws.recv())
        bad = {"query": 'subscription { inferStream(prompt: "") { type } }'}
        await ws.send(json.dumps({"id": "e", "type": "subscribe", "payload": bad}))
        execution = [json.loads(await ws.recv()), json.loads(await ws.recv())]
        await ws.send(json.dumps({"id": "h", "type": "subscribe", "payload": {"query": "{ health { status } }"}}))
        health = [json.loads(await ws.recv()), json.loads(await ws.recv())]
        await ws.close()
        return [pong, validation, *execution, *health]

    pong, validation, exec_next, exec_complete, health_next, health_complete = asyncio.run(run())
    assert pong == {"type": "pong"}
    assert validation["type"] == "error" and validation["id"] == "v"
    assert validation["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert exec_next["type"] == "next" and exec_next["payload"]["errors"][0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "field": "prompt",
    }
    assert exec_complete == {"id": "e", "type": "complete"}
    assert health_next["payload"] == {"data": {"health": {"status": "READY"}}}
    assert health_complete == {"id": "h", "type": "complete"}


@pytest.mark.parametrize("how", ["complete", "drop the socket"])
def test_stopping_a_subscription_mid_stream_frees_the_engine(
    server: Any, server_service: InferenceService, how: str
) -> None:
    async def run() -> int:
        ws = await _open(server)
        await _init(ws)
        payload = {"query": STREAM, "variables": {"prompt": "Count to one thousand.", "n": 400}}
        await ws.send(json.dumps({"id": "s", "type": "subscribe", "payload": payload}))
        tokens = 0
        while tokens < 3:
            message = json.loads(await ws.recv())
            tokens += message["type"] == "next"
        if how == "complete":
            await ws.send(json.dumps({"id": "s", "type": "complete"}))
            deadline = time.monotonic() + 30
            while server_service.health().active and time.monotonic() < deadline:  # complete stops it, open or not
                await asyncio.sleep(0.01)
            await ws.close()
        else:
            ws.transport.abort()  # no close handshake: the client just vanishes
        return tokens

    assert asyncio.run(run()) == 3
    deadline = time.monotonic() + 5
    while server_service.health().active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server_service.health().active == 0  # the abandoned generation holds no place
    result = server_service.infer(InferRequest.build("Hi", temperature=0, max_new_tokens=2))
    assert result.finish_reason == "length"


def test_foreign_origins_are_refused(server: Any) -> None:
    async def run() -> None:
        await _open(server, origin="http://evil.example")  # type: ignore[arg-type]

    with pytest.raises(InvalidStatus) as info:
        asyncio.run(run())
    assert info.value.response.status_code == 403


def test_an_oversized_message_closes_the_socket(make_server: Any, server_service: InferenceService) -> None:
    running = make_server(server_service, max_ws_message_bytes=4096)

    async def run() -> tuple[int, str]:
        ws = await _open(running)
        await _init(ws)
        await ws.send(
            json.dumps(
                {"id": "big", "type": "subscribe", "payload": {"query": "{ health { status } }", "x": "y" * 10_000}}
            )
        )
        return await _closed_with(ws)

    assert asyncio.run(run())[0] == 1009  # message too big


def test_errors_raised_while_streaming_keep_their_code(make_server: Any, server_service: InferenceService) -> None:
    from toolkit.settings import Settings

    small = InferenceService(
        Settings(cache_dir=server_service.settings.cache_dir, max_input_tokens=32), loaded=server_service.loaded
    )
    running = make_server(small)

    async def run() -> list[dict[str, Any]]:
        ws = await _open(running)
        await _init(ws)
        payload = {"query": STREAM, "variables": {"prompt": "word " * 200, "n": 8}}
        await ws.send(json.dumps({"id": "long", "type": "subscribe", "payload": payload}))
        out = [json.loads(await ws.recv()), json.loads(await ws.recv())]
        await ws.close()
        return out

    first, second = asyncio.run(run())
    assert first["type"] == "next"
    ext = first["payload"]["errors"][0]["extensions"]
    assert ext["code"] == "BAD_USER_INPUT" and ext["field"] == "prompt" and ext["limit"] == 32
    assert second == {"id": "long", "type": "complete"}
    small.close(grace_s=0)


def test_a_client_that_selects_deltas_only_gets_no_running_text(server: Any) -> None:
    """A 1,000-token answer with the running text in every TOKEN event is about 500,000 characters."""

    async def run() -> list[dict[str, Any]]:
        async with connect(server.ws_url, subprotocols=[PROTOCOL], proxy=None) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init"}))
            await ws.recv()
            query = 'subscription { inferStream(prompt: "Count to twenty.", params: {temperature: 0, maxNewTokens: 40}) { type delta } }'
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            frames = []
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "complete":
                    return frames
                frames.append(message["payload"]["data"]["inferStream"])
        return frames

    frames = asyncio.run(run())
    assert frames and all(set(f) == {"type", "delta"} for f in frames)
    from toolkit.client import RemoteService

    events = list(RemoteService(server.url).stream("Count to twenty.", temperature=0, max_new_tokens=40))
    tokens = [e for e in events if hasattr(e, "delta")]
    assert tokens[-1].text == "".join(t.delta for t in tokens) == events[-1].result.text  # put together client-side
