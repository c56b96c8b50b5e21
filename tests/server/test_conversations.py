"""Kept conversations on the real server: GraphQL (infer, inferStream, conversations, conversation, rename,
delete), one API key's conversations hidden from another on every operation, /v1's ``conversation_id``,
``RemoteService``'s ``Conversation``, and two server processes writing to one store at once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gqlhttp import code_of, post
from websockets.asyncio.client import connect

from toolkit.client import RemoteService
from toolkit.conversation.handle import Conversation
from toolkit.service import InferenceService

ROOT = Path(__file__).resolve().parents[2]
KEY_A, KEY_B = "conv-alice-0123456789", "conv-bob-0123456789"
GREEDY = "{temperature: 0, maxNewTokens: 16}"
INFER = f"""mutation($prompt: String!, $cid: ID, $keep: Boolean) {{
  infer(prompt: $prompt, conversationId: $cid, keep: $keep, params: {GREEDY}) {{ text conversationId runRecord }}
}}"""
STREAM = f"""subscription($prompt: String!, $cid: ID) {{
  inferStream(prompt: $prompt, conversationId: $cid, params: {GREEDY}) {{ type text result {{ text conversationId }} }}
}}"""
TURNS = "turns { position prompt answer status requestId }"
CONVERSATION = f"query($id: ID!) {{ conversation(id: $id) {{ id title turnCount {TURNS} }} }}"
CONVERSATIONS = "query($q: String, $first: Int) { conversations(query: $q, first: $first) { id title turnCount } }"
RENAME = "mutation($id: ID!, $title: String!) { renameConversation(id: $id, title: $title) { id title turnCount } }"
DELETE = "mutation($id: ID!) { deleteConversation(id: $id) }"


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def gql(url: str, query: str, key: str | None = None, **variables: Any) -> dict[str, Any]:
    status, _, body = post(url, {"query": query, "variables": variables}, headers=bearer(key))
    assert status == 200 and "errors" not in body, body
    return dict(body["data"])


def gql_raw(url: str, query: str, key: str | None = None, **variables: Any) -> tuple[int, Any]:
    status, _, body = post(url, {"query": query, "variables": variables}, headers=bearer(key))
    return status, body


def chat(base: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    status, _, payload = post(base + "/v1/chat/completions", body, accept=None, headers=bearer(key))
    return status, payload


async def _subscribe(ws_url: str, query: str, variables: dict[str, Any], key: str | None) -> list[dict[str, Any]]:
    """Every message of one subscription, up to its ``complete`` or ``error``."""
    async with connect(ws_url, subprotocols=["graphql-transport-ws"], proxy=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer(key)}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
        messages = []
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
                continue
            messages.append(message)
            if message["type"] in ("complete", "error"):
                return messages


def subscribe(ws_url: str, query: str, key: str | None = None, **variables: Any) -> list[dict[str, Any]]:
    return asyncio.run(_subscribe(ws_url, query, variables, key))


def done_result(messages: list[dict[str, Any]]) -> dict[str, Any]:
    events = [m["payload"]["data"]["inferStream"] for m in messages if m["type"] == "next"]
    assert events and events[-1]["type"] == "DONE", messages
    return dict(events[-1]["result"])


def stream_error(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The one error a refused subscription answers with (a ``next`` carrying it, then ``complete``)."""
    assert [m["type"] for m in messages] == ["next", "complete"], messages
    errors = messages[0]["payload"]["errors"]
    assert len(errors) == 1 and messages[0]["payload"].get("data") is None, messages
    return dict(errors[0])


def blank(payload: Any, *ids: str) -> str:
    """``payload`` as JSON with the conversation ids put out of sight: what tells one refusal from another."""
    text = json.dumps(payload, sort_keys=True)
    for conversation_id in ids:
        text = text.replace(conversation_id, "<id>")
    return text


def unknown_id() -> str:
    return secrets.token_hex(16)  # the shape of a real one


def tag() -> str:
    """A word no other conversation of the session holds, to find this test's own by search."""
    return "ref" + secrets.token_hex(4)


# ----- 1. GraphQL ---------------------------------------------------------------------------


def test_graphql_keeps_continues_finds_renames_and_deletes_a_conversation(server: Any) -> None:
    word = tag()
    first_prompt = f"What is the capital of France? ({word})"
    first = gql(server.url, INFER, prompt=first_prompt)["infer"]
    cid = first["conversationId"]
    assert cid, first  # a new conversation, kept without being asked for

    second = gql(server.url, INFER, prompt="And of Italy?", cid=cid)["infer"]
    assert second["conversationId"] == cid
    sent = second["runRecord"]["messages"]
    assert {"role": "user", "content": first_prompt} in sent
    assert [m["content"] for m in sent if m["role"] == "assistant"] == [first["text"]]
    assert sent[-1] == {"role": "user", "content": "And of Italy?"}

    kept = gql(server.url, CONVERSATION, id=cid)["conversation"]
    assert kept["id"] == cid and kept["turnCount"] == 2
    assert [(t["position"], t["prompt"], t["answer"], t["status"]) for t in kept["turns"]] == [
        (0, first_prompt, first["text"], "DONE"),
        (1, "And of Italy?", second["text"], "DONE"),
    ]
    assert kept["title"].startswith("What is the capital of France?")

    found = gql(server.url, CONVERSATIONS, q=word)["conversations"]
    assert [c["id"] for c in found] == [cid] and found[0]["turnCount"] == 2
    answer_words = re.findall(r"[^\W\d_]{4,}", second["text"])
    if answer_words:  # a word of an answer finds it too
        found = gql(server.url, CONVERSATIONS, q=answer_words[0], first=500)["conversations"]
        assert cid in [c["id"] for c in found]

    one_off = gql(server.url, INFER, prompt=f"Say hello. ({word})", keep=False)["infer"]
    assert one_off["conversationId"] is None and one_off["text"]
    assert [c["id"] for c in gql(server.url, CONVERSATIONS, q=word)["conversations"]] == [cid]

    messages = subscribe(server.ws_url, STREAM, prompt="And of Spain?", cid=cid)
    streamed = done_result(messages)
    assert streamed["conversationId"] == cid and messages[-1]["type"] == "complete"
    kept = gql(server.url, CONVERSATION, id=cid)["conversation"]
    assert [t["prompt"] for t in kept["turns"]] == [first_prompt, "And of Italy?", "And of Spain?"]
    assert kept["turns"][2]["answer"] == streamed["text"] and kept["turns"][2]["status"] == "DONE"

    renamed = gql(server.url, RENAME, id=cid, title="  Capitals   of Europe ")["renameConversation"]
    assert renamed == {"id": cid, "title": "Capitals of Europe", "turnCount": 3}
    assert gql(server.url, CONVERSATION, id=cid)["conversation"]["title"] == "Capitals of Europe"
    assert cid in [c["id"] for c in gql(server.url, CONVERSATIONS, q="Capitals of Europe", first=500)["conversations"]]

    assert gql(server.url, DELETE, id=cid) == {"deleteConversation": True}
    assert gql(server.url, CONVERSATION, id=cid) == {"conversation": None}
    assert gql(server.url, DELETE, id=cid) == {"deleteConversation": False}
    assert gql(server.url, CONVERSATIONS, q=word)["conversations"] == []

    _, body = gql_raw(server.url, INFER, prompt="Hello?", cid=cid)  # deleted: as unknown as any
    assert code_of(body) == "NOT_FOUND" and body["errors"][0]["extensions"]["field"] == "conversationId"
    _, body = gql_raw(server.url, INFER, prompt="Hello?", cid=unknown_id())
    assert code_of(body) == "NOT_FOUND" and body["data"] is None
    error = stream_error(subscribe(server.ws_url, STREAM, prompt="Hello?", cid=unknown_id()))
    assert error["extensions"] == {"code": "NOT_FOUND", "field": "conversationId"}


# ----- 2. another key's conversation answers as an unknown one ---------------------------------


@pytest.fixture()
def two_keys(make_server: Any, server_service: InferenceService) -> Any:
    return make_server(server_service, api_keys=(KEY_A, KEY_B), rate_burst=10_000)


def test_another_keys_conversation_is_unknown_on_every_operation(two_keys: Any) -> None:
    url, word = two_keys.url, tag()
    prompt = f"What is the capital of France? ({word})"
    made = gql(url, INFER, KEY_A, prompt=prompt)["infer"]
    cid, other = made["conversationId"], unknown_id()
    assert cid

    def same_as_unknown(ask: Any) -> Any:
        """B's answer about A's conversation, and that it is exactly B's answer about an id that never was."""
        theirs, nobodys = ask(cid), ask(other)
        assert blank(theirs, cid) == blank(nobodys, other)
        return theirs

    # list and search
    assert cid in [c["id"] for c in gql(url, CONVERSATIONS, KEY_A, q=word)["conversations"]]
    assert gql(url, CONVERSATIONS, KEY_B, q=word)["conversations"] == []
    assert cid not in [c["id"] for c in gql(url, CONVERSATIONS, KEY_B, first=500)["conversations"]]
    # read
    assert same_as_unknown(lambda i: gql(url, CONVERSATION, KEY_B, id=i)) == {"conversation": None}
    # continue, over HTTP and over WebSocket
    status, body = same_as_unknown(lambda i: gql_raw(url, INFER, KEY_B, prompt="And of Italy?", cid=i))
    assert code_of(body) == "NOT_FOUND" and body["errors"][0]["extensions"]["field"] == "conversationId", (status, body)
    messages = same_as_unknown(lambda i: subscribe(two_keys.ws_url, STREAM, KEY_B, prompt="And of Italy?", cid=i))
    assert stream_error(messages)["extensions"] == {"code": "NOT_FOUND", "field": "conversationId"}
    # rename
    status, body = same_as_unknown(lambda i: gql_raw(url, RENAME, KEY_B, id=i, title="Mine now"))
    assert code_of(body) == "NOT_FOUND", (status, body)
    # delete
    assert same_as_unknown(lambda i: gql(url, DELETE, KEY_B, id=i)) == {"deleteConversation": False}
    # /v1
    status, body = same_as_unknown(
        lambda i: chat(
            two_keys.base,
            {
                "messages": [{"role": "user", "content": "And of Italy?"}],
                "conversation_id": i,
                "temperature": 0,
                "max_tokens": 16,
            },
            KEY_B,
        )
    )
    assert status == 404 and body["error"]["code"] == "conversation_not_found", body
    assert body["error"]["param"] == "conversation_id"
    status, body = same_as_unknown(
        lambda i: chat(
            two_keys.base,
            {"messages": [{"role": "user", "content": "Hi"}], "conversation_id": i, "stream": True, "max_tokens": 4},
            KEY_B,
        )
    )
    assert status == 404, body
    # RemoteService with B's key
    assert RemoteService(url, api_key=KEY_B).conversation_info(cid) is None
    assert RemoteService(url, api_key=KEY_B).delete_conversation(cid) is False

    # A's conversation is untouched: its one turn, its title, still there
    kept = gql(url, CONVERSATION, KEY_A, id=cid)["conversation"]
    assert kept["turnCount"] == 1 and [t["prompt"] for t in kept["turns"]] == [prompt]
    assert kept["title"] == prompt
    info = RemoteService(url, api_key=KEY_A).conversation_info(cid)
    assert info is not None and info.id == cid and info.turn_count == 1
    # and A continues it
    assert gql(url, INFER, KEY_A, prompt="And of Italy?", cid=cid)["infer"]["conversationId"] == cid
    assert gql(url, DELETE, KEY_A, id=cid) == {"deleteConversation": True}


# ----- 3. /v1/chat/completions ------------------------------------------------------------


def sse_chunks(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    import urllib.request

    request = urllib.request.Request(
        base + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    lines = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", text
    return [json.loads(line) for line in lines[:-1]]


def test_v1_continues_a_kept_conversation_and_keeps_none_unasked(server: Any) -> None:
    word = tag()
    greedy = {"temperature": 0.0, "max_tokens": 16}
    status, body = chat(server.base, {"messages": [{"role": "user", "content": f"Hi there ({word})"}], **greedy})
    assert status == 200 and "conversation_id" not in body, body
    assert gql(server.url, CONVERSATIONS, q=word)["conversations"] == []  # nothing new appeared

    first_prompt = f"What is the capital of France? ({word})"
    cid = gql(server.url, INFER, prompt=first_prompt)["infer"]["conversationId"]
    status, body = chat(
        server.base, {"messages": [{"role": "user", "content": "And of Italy?"}], "conversation_id": cid, **greedy}
    )
    assert status == 200 and body["conversation_id"] == cid, body
    kept = gql(server.url, CONVERSATION, id=cid)["conversation"]
    assert [t["prompt"] for t in kept["turns"]] == [first_prompt, "And of Italy?"]
    assert kept["turns"][1]["answer"] == body["choices"][0]["message"]["content"]

    history = [
        {"role": "user", "content": first_prompt},
        {"role": "assistant", "content": kept["turns"][0]["answer"]},
        {"role": "user", "content": "And of Spain?"},
    ]
    status, body = chat(server.base, {"messages": history, "conversation_id": cid, **greedy})
    assert status == 400 and body["error"]["param"] == "messages", body
    assert gql(server.url, CONVERSATION, id=cid)["conversation"]["turnCount"] == 2  # refused: no turn

    chunks = sse_chunks(
        server.base,
        {"messages": [{"role": "user", "content": "And of Spain?"}], "conversation_id": cid, "stream": True, **greedy},
    )
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(final) == 1 and final[0]["conversation_id"] == cid and final[0] is chunks[-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    kept = gql(server.url, CONVERSATION, id=cid)["conversation"]
    assert kept["turnCount"] == 3 and kept["turns"][2]["prompt"] == "And of Spain?"
    assert kept["turns"][2]["answer"] == text and kept["turns"][2]["status"] == "DONE"
    assert gql(server.url, DELETE, id=cid) == {"deleteConversation": True}


# ----- 4. RemoteService -------------------------------------------------------------------


def test_remote_service_conversation(server: Any) -> None:
    remote = RemoteService(server.url)
    word = tag()
    conv = remote.conversation(temperature=0.0, max_new_tokens=16)
    assert conv.id is None
    first = conv.ask(f"What is the capital of France? ({word})")
    assert conv.id is not None and first.conversation_id == conv.id
    second = conv.ask("And of Italy?")
    assert second.conversation_id == conv.id
    assert any(m["content"] == first.text for m in second.run_record.messages if m["role"] == "assistant")

    loaded = Conversation.load(conv.id, remote)
    assert [(t.position, t.prompt, t.answer, t.status) for t in loaded.turns] == [
        (0, f"What is the capital of France? ({word})", first.text, "done"),
        (1, "And of Italy?", second.text, "done"),
    ]
    assert [t.answer for t in loaded.turns] == [t.answer for t in conv.turns]
    assert remote.conversations()[0].id == conv.id  # newest first
    assert [c.id for c in remote.conversations(query=word)] == [conv.id]

    conv.rename("Two capitals")
    assert conv.title == "Two capitals"
    info = remote.conversation_info(conv.id)
    assert info is not None and info.title == "Two capitals" and info.turn_count == 2
    kept_id = conv.id
    assert conv.delete() is True and conv.id is None
    assert remote.conversation_info(kept_id) is None
    assert remote.delete_conversation(kept_id) is False


# ----- 5. two server processes, one store -----------------------------------------------------


def start_process(env: dict[str, str], log: Path, procs: list[subprocess.Popen[str]]) -> str:
    """A ``python -m server`` on a free port (in ``procs`` at once, to be killed whatever happens); its URL."""
    with log.open("w") as stderr:  # the child writes its log there; a pipe nobody reads would fill up
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    procs.append(proc)
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # printed once it listens: the port it was given
    assert "GraphiQL" in banner, (banner, log.read_text())
    return banner.split()[1]


def wait_ready(url: str, proc: subprocess.Popen[str], log: Path, deadline: float) -> None:
    while True:
        assert proc.poll() is None, log.read_text()
        status, _, body = post(url, {"query": "{ health { status } }"})
        if status == 200 and body["data"]["health"]["status"] == "READY":
            return
        assert time.monotonic() < deadline, (body, log.read_text())
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_two_server_processes_share_one_store(cache_dir: Path, first_load: Any, tmp_path: Path) -> None:
    store = tmp_path / "shared.db"
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "ADMIN_API_KEYS", "MODELS_FILE", "RUN_LOG")}
    env |= {
        "TOOLKIT_STORE": str(store),
        "TOOLKIT_CACHE_DIR": str(cache_dir),
        "ADAPTERS_DIR": str(tmp_path / "no-adapters"),
        "RATE_LIMIT_BURST": "10000",
        "REQUEST_TIMEOUT": "300",
        "SHUTDOWN_GRACE": "1",
    }
    (tmp_path / "no-adapters").mkdir()
    infer = """mutation($prompt: String!, $cid: ID) {
      infer(prompt: $prompt, conversationId: $cid, params: {temperature: 0, maxNewTokens: 8}) { conversationId }
    }"""
    procs: list[subprocess.Popen[str]] = []
    logs = [tmp_path / "server-1.log", tmp_path / "server-2.log"]
    try:
        urls = [start_process(env, log, procs) for log in logs]
        deadline = time.monotonic() + 300
        for proc, url, log in zip(procs, urls, logs, strict=True):
            wait_ready(url, proc, log, deadline)

        word = tag()
        shared_prompt = f"Let us count things together. ({word})"
        shared = gql(urls[0], infer, prompt=shared_prompt)["infer"]["conversationId"]
        assert shared

        jobs = []  # (server, prompt, conversation or None)
        for s in range(2):
            for i in range(8):
                continues = i % 2 == 0
                prompt = f"Server {s + 1}, question {i}: name a colour. ({word})"
                jobs.append((s, prompt, shared if continues else None))

        def send(job: tuple[int, str, str | None]) -> tuple[tuple[int, str, str | None], int, Any]:
            s, prompt, cid = job
            status, _, body = post(urls[s], {"query": infer, "variables": {"prompt": prompt, "cid": cid}})
            return job, status, body

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(send, jobs))
        for job, status, body in answers:
            assert status == 200 and "errors" not in body, (job, body)  # no "database is locked", no error at all
            cid = body["data"]["infer"]["conversationId"]
            assert (cid == shared) if job[2] is not None else (cid and cid != shared), (job, body)

        continued = sorted(prompt for _, prompt, cid in jobs if cid is not None)
        made = {body["data"]["infer"]["conversationId"]: job for job, _, body in answers if job[2] is None}
        assert len(made) == 8  # a new conversation each, none merged into another

        views = [gql(url, CONVERSATION, id=shared)["conversation"] for url in urls]
        assert views[0] == views[1]  # both servers read the same conversation
        turns = views[0]["turns"]
        assert views[0]["turnCount"] == len(turns) == 1 + len(continued)
        assert [t["position"] for t in turns] == list(range(len(turns)))
        assert turns[0]["prompt"] == shared_prompt and sorted(t["prompt"] for t in turns[1:]) == continued
        assert len({t["requestId"] for t in turns}) == len(turns) and {t["status"] for t in turns} == {"DONE"}

        for cid, (s, prompt, _) in made.items():  # each one read by the server that did not write it
            kept = gql(urls[1 - s], CONVERSATION, id=cid)["conversation"]
            assert kept is not None and [t["prompt"] for t in kept["turns"]] == [prompt], (cid, kept)
        for url in urls:
            listed = {c["id"] for c in gql(url, CONVERSATIONS, q=word, first=50)["conversations"]}
            assert listed == {shared, *made}
        for log in logs:
            text = log.read_text()
            assert "Traceback" not in text and "locked" not in text, text
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()


# ----- a turn that cannot be kept -------------------------------------------------------------


def test_a_refused_request_keeps_no_conversation(server: Any) -> None:
    """A request refused with an error (here: too long) starts no conversation and adds no empty turn."""
    word = tag()
    _, body = gql_raw(server.url, INFER, prompt=f"{word} " + "word " * 5000)
    assert code_of(body) == "BAD_USER_INPUT" and body["errors"][0]["extensions"]["field"] == "prompt"
    assert gql(server.url, CONVERSATIONS, q=word)["conversations"] == []


def test_deleting_a_conversation_while_its_turn_runs(server: Any, server_service: InferenceService) -> None:
    """The answer still comes (not INTERNAL); it is a turn of nothing, and the conversation stays deleted."""
    import threading

    cid = gql(server.url, INFER, prompt="Hi")["infer"]["conversationId"]
    request_id = "conv-" + secrets.token_hex(6)
    long = """mutation($cid: ID, $rid: ID) { infer(prompt: "Write a long story about a robot.", conversationId: $cid,
      requestId: $rid, params: {temperature: 0, maxNewTokens: 400}) { conversationId finishReason } }"""
    box: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: box.update(answer=gql_raw(server.url, long, cid=cid, rid=request_id)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while server_service.health().active < 1:
            assert time.monotonic() < deadline and worker.is_alive(), "the request never started"
            time.sleep(0.02)
        assert gql(server.url, DELETE, id=cid) == {"deleteConversation": True}
    finally:
        post(server.url, {"query": "mutation($id: ID!) { cancel(requestId: $id) }", "variables": {"id": request_id}})
        worker.join(120)
    status, body = box["answer"]
    assert status == 200 and ("errors" not in body or code_of(body) == "NOT_FOUND"), body
    assert gql(server.url, CONVERSATION, id=cid) == {"conversation": None}
