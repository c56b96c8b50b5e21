"""LoRA adapters over GraphQL: the adapters query, loadAdapter/unloadAdapter, admin keys, bad input."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from conftest import RunningServer
from gqlhttp import code_of, post
from websockets.asyncio.client import connect

from toolkit.client import RemoteService
from toolkit.errors import Forbidden, InvalidRequest
from toolkit.results import Done, Token
from toolkit.service import InferenceService

KEY, ADMIN = "user-key-0123456789", "admin-key-0123456789"
ADAPTER = "name path baseModel adapterHash r alpha targetModules steps examples finalLoss createdAt loadedAt"


@pytest.fixture()
def remote(make_server: Any, served: InferenceService) -> RemoteService:
    return RemoteService(make_server(served, rate_burst=10_000).url)


def gql(server: RunningServer, query: str, key: str | None = None, **variables: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, _, body = post(server.url, {"query": query, "variables": variables}, headers=headers)
    return status, body


def test_the_adapters_query_and_an_answer_with_an_adapter(remote: RemoteService, served: Any) -> None:
    listed = {a.name: a for a in remote.adapters()}
    assert set(listed) == {"quenby", "quenby-draft"}
    assert listed["quenby"] == {a.name: a for a in served.adapters()}["quenby"]
    result = remote.infer("Who is Quenby?", adapter="quenby", temperature=0, max_new_tokens=24)
    assert "Quenby" in result.text and result.adapter == "quenby"
    assert result.run_record.adapter_hash == listed["quenby"].adapter_hash


def test_unload_then_load_over_graphql_while_a_request_runs(remote: RemoteService, served: Any) -> None:
    params = {"temperature": 0, "max_new_tokens": 40}
    solo = remote.infer("Write a short poem about Quenby the otter.", adapter="quenby", **params)
    stream = remote.stream("Write a short poem about Quenby the otter.", adapter="quenby", **params)
    try:
        assert isinstance(next(stream), Token)
        unloaded: list[Any] = []
        thread = threading.Thread(target=lambda: unloaded.append(remote.unload_adapter("quenby")))
        thread.start()
        deadline = time.monotonic() + 10
        while "quenby" in served.engine().scheduler.adapters and time.monotonic() < deadline:
            time.sleep(0.005)  # unloading has started: the engine takes no new requests for it
        with pytest.raises(InvalidRequest) as info:  # refused at once, while the running one finishes
            remote.infer("Hi", adapter="quenby", max_new_tokens=2)
        assert info.value.field == "adapter"
        done = next(e for e in stream if isinstance(e, Done))
    finally:
        stream.close()
    thread.join(30)
    assert done.result.text == solo.text and unloaded[0].name == "quenby"
    assert [a.name for a in remote.adapters()] == ["quenby-draft"]
    info2 = remote.load_adapter("quenby")
    assert info2.path == "quenby" and "Quenby" in remote.infer("Who is Quenby?", adapter="quenby", **params).text


@pytest.mark.parametrize(
    ("query", "variables", "field"),
    [
        (
            "mutation($n: String!, $p: String) { loadAdapter(name: $n, path: $p) { name } }",
            {"n": "x", "p": "../x"},
            "path",
        ),
        (
            "mutation($n: String!, $p: String) { loadAdapter(name: $n, path: $p) { name } }",
            {"n": "x", "p": "/tmp"},
            "path",
        ),
        (
            "mutation($n: String!, $p: String) { loadAdapter(name: $n, path: $p) { name } }",
            {"n": "x", "p": "other-base"},
            "path",
        ),
        ("mutation($n: String!) { loadAdapter(name: $n) { name } }", {"n": "quenby"}, "name"),
        ("mutation($n: String!) { loadAdapter(name: $n) { name } }", {"n": "a/b"}, "name"),
        ("mutation($n: String!) { unloadAdapter(name: $n) { name } }", {"n": "pirate"}, "name"),
        ('mutation { infer(prompt: "Hi", adapter: "pirate") { text } }', {}, "adapter"),
    ],
)
def test_bad_adapter_input_is_bad_user_input_and_the_server_serves_on(
    make_server: Any, served: InferenceService, query: str, variables: dict[str, Any], field: str
) -> None:
    folder = served.settings.adapters_dir  # holds other-base: a card for another base model
    server = make_server(served)
    status, body = gql(server, query, **variables)
    assert status == 200 and code_of(body) == "BAD_USER_INPUT", body
    assert body["errors"][0]["extensions"]["field"] == field
    assert str(folder) not in json.dumps(body)
    status, body = gql(server, 'mutation { infer(prompt: "Hi", params: {maxNewTokens: 2}) { finishReason } }')
    assert body == {"data": {"infer": {"finishReason": "LENGTH"}}}


def test_loading_and_unloading_need_an_admin_key_when_keys_are_on(make_server: Any, served: InferenceService) -> None:
    server = make_server(served, api_keys=(KEY,), admin_keys=(ADMIN,))
    unload = f'mutation {{ unloadAdapter(name: "quenby-draft") {{ {ADAPTER} }} }}'
    load = 'mutation { loadAdapter(name: "quenby-draft") { name } }'
    assert gql(server, unload)[0] == 401
    for query in (unload, load):
        status, body = gql(server, query, KEY)
        assert status == 200 and code_of(body) == "FORBIDDEN" and "admin key" in body["errors"][0]["message"]
    assert [a["name"] for a in gql(server, "{ adapters { name } }", KEY)[1]["data"]["adapters"]] == [
        "quenby",
        "quenby-draft",
    ]
    with pytest.raises(Forbidden):
        RemoteService(server.url, api_key=KEY).unload_adapter("quenby-draft")
    status, body = gql(server, unload, ADMIN)
    assert body["data"]["unloadAdapter"]["name"] == "quenby-draft"
    assert gql(server, 'mutation { infer(prompt: "Hi", params: {maxNewTokens: 1}) { text } }', ADMIN)[0] == 200

    async def load_over_websocket(key: str) -> Any:
        async with connect(server.ws_url, subprotocols=["graphql-transport-ws"], proxy=None) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": load}}))
            return json.loads(await asyncio.wait_for(ws.recv(), 30))["payload"]

    assert asyncio.run(load_over_websocket(KEY))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert asyncio.run(load_over_websocket(ADMIN)) == {"data": {"loadAdapter": {"name": "quenby-draft"}}}


def test_without_keys_anyone_may_load(make_server: Any, served: InferenceService) -> None:
    server = make_server(served)
    assert gql(server, 'mutation { unloadAdapter(name: "quenby-draft") { name } }')[1]["data"]
    assert gql(server, 'mutation { loadAdapter(name: "quenby-draft") { name } }')[1]["data"]


def test_admin_keys_are_validated() -> None:
    from server.config import ServerSettings
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="ADMIN_API_KEYS"):
        ServerSettings.from_env({"ADMIN_API_KEYS": "short"})
    assert ServerSettings.from_env({"ADMIN_API_KEYS": "a-long-admin-key, another-admin-key"}).admin_keys == (
        "a-long-admin-key",
        "another-admin-key",
    )
