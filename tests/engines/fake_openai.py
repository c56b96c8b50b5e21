"""A small OpenAI-compatible server at the network boundary, shaped exactly like vLLM's output
(its chunks, usage chunk, system_fingerprint, ``data: [DONE]``, error bodies: copied from vLLM 0.32
on this machine), whose served model names pick a behaviour:

    ok          answers ANSWER, word by word
    slow        a word every 0.1 s, for 200 words (cancel, overload)
    hang        never sends a byte
    cut         three chunks, then the connection is closed
    error500    HTTP 500
    context     HTTP 400 with vLLM's context-length message
    malformed   a chunk that is not JSON
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from loopback import serve_in_thread
from tornado.httpserver import HTTPServer

ANSWER = "The capital of France is Paris."
MODES = ("ok", "slow", "hang", "cut", "error500", "context", "malformed")
FINGERPRINT = "vllm-0.32.0-93ac9b1f"


@dataclass
class Seen:
    """What the fake server saw: requests by model, and connections the client closed mid-answer."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    closed_early: list[str] = field(default_factory=list)
    tokenize_calls: int = 0


def chunk(model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish:
        choice["stop_reason"] = None
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    return b"data: " + json.dumps({**body, "choices": [choice], **extra}).encode() + b"\n\n"


class Models(tornado.web.RequestHandler):
    def get(self) -> None:
        data = [
            {
                "id": m,
                "object": "model",
                "owned_by": "vllm",
                "root": f"/models/{m}",
                "parent": None,
                "max_model_len": 2048,
            }
            for m in MODES
        ]
        data.append({"id": "ok-lora", "object": "model", "owned_by": "vllm", "root": "/adapters/x", "parent": "ok"})
        self.finish({"object": "list", "data": data})


class Tokenize(tornado.web.RequestHandler):
    def initialize(self, seen: Seen) -> None:
        self.seen = seen

    def post(self) -> None:
        self.seen.tokenize_calls += 1
        body = json.loads(self.request.body)
        text = body.get("prompt") or json.dumps(body.get("messages"))
        count = len(text.split()) + 5
        self.finish({"count": count, "max_model_len": 2048, "tokens": list(range(count)), "token_strs": None})


class Chat(tornado.web.RequestHandler):
    def initialize(self, seen: Seen) -> None:
        self.seen = seen
        self.model = ""
        self.done = False

    def on_connection_close(self) -> None:
        if not self.done:
            self.seen.closed_early.append(self.model)

    async def post(self) -> None:
        body = json.loads(self.request.body)
        self.seen.bodies.append(body)
        self.model = model = body["model"]
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "error500":
            self.set_status(500)
            self.finish(
                {
                    "error": {
                        "message": "EngineCore encountered an issue",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                }
            )
            return
        if model == "context":
            self.set_status(400)
            message = (
                "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens "
                "(2990 in the messages, 10 in the completion). Please reduce the length of the messages or completion."
            )
            self.finish({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.write(chunk(model, {"role": "assistant", "content": ""}))
        await self.flush()
        words = ANSWER.split(" ") if model != "slow" else [f"w{i}" for i in range(200)]
        for i, word in enumerate(words):
            if model == "cut" and i == 3:
                self.request.connection.stream.close()  # type: ignore[union-attr]
                return
            if model == "malformed" and i == 2:
                self.write(b"data: {this is not json\n\n")
                await self.flush()
                continue
            self.write(chunk(model, {"content": word if i == 0 else " " + word}))
            await self.flush()
            if model == "slow":
                await asyncio.sleep(0.1)
        self.write(chunk(model, {"content": ""}, "stop"))
        usage = {"prompt_tokens": 37, "total_tokens": 37 + len(words), "completion_tokens": len(words)}
        self.write(
            b"data: "
            + json.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                    "system_fingerprint": FINGERPRINT,
                }
            ).encode()
            + b"\n\n"
        )
        self.write(b"data: [DONE]\n\n")
        self.done = True
        self.finish()


@dataclass
class FakeServer:
    base_url: str  # .../v1
    seen: Seen
    stop: Callable[[], None]


def start_fake(*, tokenize: bool = True, port: int = 0) -> FakeServer:
    seen = Seen()
    routes: list[Any] = [
        (r"/v1/models", Models),
        (r"/v1/chat/completions", Chat, {"seen": seen}),
    ]
    if tokenize:
        routes.append((r"/tokenize", Tokenize, {"seen": seen}))
    served = serve_in_thread(lambda: HTTPServer(tornado.web.Application(routes)), port)
    return FakeServer(f"http://127.0.0.1:{served.port}/v1", seen, served.stop)


def beside_the_bundled(settings: Any, loaded: Any, fake: FakeServer) -> Any:
    """A service with the bundled model (the default) and ``remote``, the fake's ``ok`` model, READY."""
    from dataclasses import replace

    from toolkit.modelsfile import ModelConfig
    from toolkit.service import InferenceService

    configs = [
        ModelConfig(name=loaded.name),
        ModelConfig("remote", engine="openai", base_url=fake.base_url, served_model="ok"),
    ]
    svc = InferenceService(replace(settings, search_provider="none"), models=configs, loaded=loaded)
    svc.start(progress=False)
    try:
        svc.wait_ready(timeout=30, model="remote")
    except BaseException:
        svc.close(grace_s=0)
        raise
    return svc
