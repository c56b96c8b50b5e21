"""``OpenAIEngine``: a model served by any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server,
Ollama, Ray Serve LLM, or another toolkit server), behind the same ``Engine`` protocol as the
local one, so web search, run records, the dashboard, GraphQL, typed errors and cancel all work
on top of it.

Requests stream ``/v1/chat/completions`` with the official ``openai`` client on an event loop of
the engine's own (one thread), which calls each request's sink with ``Delta``/``Finished`` events
as the local scheduler does. Closing a request's stream (cancel, timeout) closes its connection,
which vLLM and the others take as an abort. At most ``max_in_flight`` requests run at once; one
more is ``Overloaded`` at once. A server that is down, refuses, times out or sends a broken stream
gives ``EngineUnavailable`` (HTTP 503), naming the model and never the URL or the key; a 400 for
an over-long prompt is ``PromptTooLong``. The client retries connections before the first token.

Token counts (for the input budget and the web-search caps): the server's ``/tokenize`` when it
has one (vLLM does), else a local tokenizer when the models file names one, else an estimate
that errs on the long side: one token per ``ESTIMATE_BYTES_PER_TOKEN`` bytes of UTF-8, plus 8 per
message. A request's input check asks the server only when the messages could be over the limit: a
token is at least one byte, so UTF-8 bytes plus ``TEMPLATE_MARGIN`` per message bound the count, and a
request within that bound goes out without the extra round trip (at 16 concurrent on a busy vLLM,
/tokenize added 150 ms to the first token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from toolkit.controltokens import COMMON_MARKERS, ControlTokens
from toolkit.engines.base import (
    Capabilities,
    Encoded,
    EngineInfo,
    EngineRequest,
    EngineStats,
    Messages,
    new_seed,
)
from toolkit.engines.openai_adapters import RemoteAdapters
from toolkit.engines.openai_errors import HTTPStatus, error_message, status_error
from toolkit.errors import (
    EngineClosed,
    EngineUnavailable,
    InvalidRequest,
    MissingDependency,
    Overloaded,
    ToolkitError,
)
from toolkit.events import Delta, Event, Finished, Sink, Streams
from toolkit.loopguard import MAX_PERIOD_CHARS, MIN_SPAN_CHARS, TAIL_CHARS, LoopGuard, looping
from toolkit.params import PARAMS, openai_name
from toolkit.results import AdapterInfo

log = logging.getLogger("toolkit.engines.openai")
ESTIMATE_BYTES_PER_TOKEN = 3  # English text runs about 4 bytes a token in common vocabularies: 3 overcounts
ESTIMATE_PER_MESSAGE = 8  # role markers and separators of a chat template
# what a chat template may add around one message, with the default system prompt some add: the bound's margin
TEMPLATE_MARGIN = 64
CONNECT_RETRIES = 2
FINISH = {
    "stop": "stop",
    "length": "length",
    "abort": "cancelled",
    "repetition": "repetition",
    "content_filter": "stop",
    "tool_calls": "stop",
}


@dataclass(frozen=True)
class RemoteConfig:
    """One ``engine = "openai"`` model (see ``toolkit.registry``)."""

    name: str  # the toolkit's name for the model
    base_url: str  # ends in /v1
    served_model: str  # the name the remote server knows
    api_key: str | None = field(default=None, repr=False)
    max_in_flight: int = 16
    timeout_s: float = 60.0  # to connect, and between two chunks of an answer
    tokenizer: str | None = None  # a local tokenizer (folder or Hub id in the cache) for token counts
    context_length: int | None = None  # when the server does not say (vLLM does: max_model_len)

    @property
    def root(self) -> str:
        """The server's root, for its endpoints beside the OpenAI API (/tokenize, /version, /metrics)."""
        return self.base_url.rstrip("/").removesuffix("/v1")


@dataclass(eq=False)
class _Job:
    request_id: str
    adapter: str | None
    done: bool = False
    future: Any = None


class OpenAIEngine(Streams):
    def __init__(self, config: RemoteConfig, *, default_timeout_s: float | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise MissingDependency("openai", f"model {config.name!r} (engine = openai)") from None
        self.config = config
        self.default_timeout_s = default_timeout_s
        self._openai = openai
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._closing = False
        self._tokenize: bool | None = None  # does the server have /tokenize? None: not asked yet
        self._tokenizer: Any = None
        self._info = self._make_info(config.context_length or 4096, None)
        self._adapters = RemoteAdapters(config.name, config.served_model, config.base_url, self._call)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"openai-{config.name}", daemon=True)
        self._thread.start()
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "none",  # servers without keys ignore it; the client insists on one
            timeout=config.timeout_s,
            max_retries=0,  # the engine retries connections itself, and only before the answer starts
        )

    def _make_info(self, context_length: int, version: str | None) -> EngineInfo:
        count = "tokenizer" if self.config.tokenizer else ("server" if self._tokenize else "estimate")
        return EngineInfo(
            kind="openai",
            served_model=self.config.served_model,
            context_length=context_length,
            capabilities=Capabilities(adapters=True, load_adapters=True, token_count=count),
            version=version,
            control=ControlTokens.from_tokenizer(self._tokenizer)
            if self._tokenizer is not None
            else ControlTokens.of(COMMON_MARKERS),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(0, len(self._jobs))

    # ----- the server's side endpoints (sync, small) ---------------------------------------

    def _call(self, method: str, url: str, body: Any = None, timeout: float = 10.0, *, text: bool = False) -> Any:
        """JSON in and out (``text``: the answer as text); ``EngineUnavailable`` (naming the model only)
        when the server cannot answer."""
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise HTTPStatus(exc.code, error_message(exc.read())) from None
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(self.config.name, f"its server cannot be reached ({type(exc).__name__})") from None
        if text:
            return raw.decode(errors="replace")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise EngineUnavailable(self.config.name, "its server answered with something that is not JSON") from None

    def probe(self) -> None:
        """Ask the server what it serves: the model (its context length), its LoRA adapters, its version.

        Raises ``EngineUnavailable`` while the server is down, or does not serve ``served_model``.
        """
        try:
            listing = self._call("GET", self.config.base_url.rstrip("/") + "/models")
        except HTTPStatus as exc:
            raise EngineUnavailable(self.config.name, f"its server answered HTTP {exc.status} to /models") from None
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            raise EngineUnavailable(self.config.name, "its server's /models answer is not an OpenAI model list")
        served = next((e for e in entries if isinstance(e, dict) and e.get("id") == self.config.served_model), None)
        if served is None:
            names = ", ".join(str(e.get("id")) for e in entries if isinstance(e, dict))
            raise EngineUnavailable(
                self.config.name, f"its server does not serve {self.config.served_model!r} (it serves: {names})"
            )
        context = served.get("max_model_len") or self.config.context_length or 4096
        version = None
        try:
            answer = self._call("GET", self.config.root + "/version", timeout=5)
            version = str(answer.get("version")) if isinstance(answer, dict) and answer.get("version") else None
        except (ToolkitError, HTTPStatus):
            pass  # not every server has /version
        self._adapters.refresh(entries)
        if self._tokenize is None and not self.config.tokenizer:
            self._tokenize = self._has_tokenize()
        if self.config.tokenizer and self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer)
        self._info = self._make_info(int(context), version)

    def _has_tokenize(self) -> bool:
        try:
            self._call("POST", self.config.root + "/tokenize", {"model": self.config.served_model, "prompt": "hi"})
            return True
        except (HTTPStatus, ToolkitError):
            return False

    # ----- token counts ------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        if self._tokenize:
            body = {"model": self.config.served_model, "prompt": text, "add_special_tokens": False}
            return int(self._tokenize_call(body))
        return self.estimate_tokens(text)

    @staticmethod
    def estimate_tokens(text: str) -> int:
        return -(-len(text.encode()) // ESTIMATE_BYTES_PER_TOKEN)

    def count_messages(self, messages: Messages, *, limit: int | None = None) -> int:
        return self._count(messages, limit)[0]

    def _count(self, messages: Messages, limit: int | None) -> tuple[int, str]:
        """The count and how it was made. Within ``limit`` for certain (a token is at least one byte), the
        server is not asked: every trimming pass of a grounded prompt, and its encoding, would pay a round
        trip (150 ms at 16 concurrent on a busy vLLM)."""
        if self._tokenizer is not None:
            text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(self._tokenizer(str(text), add_special_tokens=False)["input_ids"]), "tokenizer"
        estimate = sum(self.estimate_tokens(m["content"]) + ESTIMATE_PER_MESSAGE for m in messages)
        if limit is not None and sum(len(m["content"].encode()) + TEMPLATE_MARGIN for m in messages) <= limit:
            return estimate, "estimate"
        if self._tokenize:
            body = {"model": self.config.served_model, "messages": messages, "add_generation_prompt": True}
            return int(self._tokenize_call(body)), "server"
        return estimate, "estimate"

    def _tokenize_call(self, body: dict[str, Any]) -> int:
        try:
            answer = self._call("POST", self.config.root + "/tokenize", body)
        except HTTPStatus as exc:
            raise EngineUnavailable(self.config.name, f"its server answered HTTP {exc.status} to /tokenize") from None
        return int(answer["count"])

    def encode(self, messages: Messages, *, limit: int | None = None) -> Encoded:
        return Encoded(*self._count(messages, limit))

    # ----- requests ----------------------------------------------------------------------

    def check_room(self, waiting: int = 0) -> None:
        with self._lock:
            if len(self._jobs) + waiting >= self.config.max_in_flight:
                raise self._overloaded()

    def _overloaded(self) -> Overloaded:
        limit = self.config.max_in_flight
        return Overloaded(
            len(self._jobs),
            limit,
            f"model {self.config.name!r} is busy: {limit} requests are running on its server (max_in_flight); "
            "retry in a few seconds",
        )

    def submit(self, request: EngineRequest, *, sink: Sink) -> _Job:
        """Start a request on the engine's loop; its events go to ``sink`` from there."""
        if request.adapter is not None:
            self.check_adapter(request.adapter)
        job = _Job(request.engine_id, request.adapter)
        with self._lock:
            if self._closing:
                raise EngineClosed("the engine is shutting down; retry against a running service")
            if len(self._jobs) >= self.config.max_in_flight:
                raise self._overloaded()
            if request.engine_id in self._jobs:
                raise InvalidRequest("request_id", f"a request with id {request.engine_id!r} is already running")
            self._jobs[request.engine_id] = job
        job.future = asyncio.run_coroutine_threadsafe(self._run(job, request, sink), self._loop)
        return job

    def stream(self, request: EngineRequest) -> Iterator[Event]:
        return super().stream(request)

    def astream(self, request: EngineRequest) -> AsyncIterator[Event]:
        return super().astream(request)

    def cancel(self, engine_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(engine_id)
        if job is None or job.done or job.future is None:
            return False
        job.future.cancel()  # the task is cancelled on the loop: its connection closes, the server aborts
        return True

    def _body(self, request: EngineRequest, seed: int) -> dict[str, Any]:
        """The request's fields as sent: every parameter that is set (the service resolved them: a parameter
        still None is left to the server's own default), by its OpenAI name; extras (``top_k``, ...) beside
        OpenAI's own fields, as vLLM takes them."""
        body: dict[str, Any] = {"model": request.adapter or self.config.served_model, "seed": seed}
        extra: dict[str, Any] = {}
        for name, spec in PARAMS.items():
            value, key = getattr(request.params, name), openai_name(name)
            if name == "seed" or key is None or not spec.remote or value is None or value == ():
                continue  # (a parameter a remote server cannot take was refused when set: see service._resolve)
            (extra if spec.extra else body)[key] = list(value) if isinstance(value, tuple) else value
        if extra:
            body["extra_body"] = extra
        return body

    async def _run(self, job: _Job, request: EngineRequest, sink: Sink) -> None:
        submitted = time.perf_counter()
        seed = request.params.seed if request.params.seed is not None else new_seed()
        body = self._body(request, seed)
        timeout = request.timeout_s if request.timeout_s is not None else self.default_timeout_s
        state: dict[str, Any] = {
            "guard": LoopGuard(),  # the answer, near copies held back (toolkit.loopguard)
            "tail": "",  # the answer's last TAIL_CHARS characters, for the loop guard's period rule
            "chunks": 0,
            "first": None,
            "usage": None,
            "finish": None,
            "fp": None,
        }
        reason, error = "error", cast("ToolkitError | None", None)
        try:
            async with asyncio.timeout(timeout):
                await self._stream(request, body, state, sink)
            reason = FINISH.get(state["finish"] or "", "stop")
            if state["finish"] is None:
                error = EngineUnavailable(self.config.name, "its server ended the answer without a finish reason")
                reason = "error"
        except TimeoutError:
            reason = "timeout"
        except asyncio.CancelledError:
            reason = "cancelled"
        except ToolkitError as exc:
            error = exc
        except Exception as exc:  # whatever the transport raised: typed, named by model, no URL
            error = self._translate(exc)
        if error is not None:
            reason = "error"
        usage = state["usage"]
        guard: LoopGuard = state["guard"]
        rest = guard.finish()
        if rest:
            with contextlib.suppress(Exception):  # the consumer is gone
                sink(Delta(request.engine_id, rest))
        raw = {"raw_text": guard.raw} if guard.loop is not None and guard.raw != guard.visible else {}
        now = time.perf_counter()
        finished = Finished(
            request_id=request.engine_id,
            text=guard.visible,
            finish_reason=reason,
            prompt_tokens=usage.prompt_tokens if usage else request.encoded.tokens,
            prompt_tokens_estimated=usage is None and request.encoded.counted_by == "estimate",
            completion_tokens=usage.completion_tokens if usage else state["chunks"],
            seed=seed,
            queued_s=0.0,
            first_token_s=(state["first"] - submitted) if state["first"] is not None else None,
            total_s=now - submitted,
            error=error,
            extra={
                "system_fingerprint": state["fp"],
                "sent": {k: v for k, v in body.items() if k != "messages"},
                **raw,
            },
        )
        job.done = True
        with self._lock:
            self._jobs.pop(request.engine_id, None)
        with contextlib.suppress(Exception):  # the consumer is gone
            sink(finished)

    async def _open(self, request: EngineRequest, body: dict[str, Any]) -> Any:
        """The answer's stream, once the server has started it. A connection that fails before that is
        tried again (``CONNECT_RETRIES`` times, with a short backoff); nothing is retried after."""
        fields = {k: v for k, v in body.items() if k != "extra_body"}
        create: Any = self._client.chat.completions.create  # the request's fields are built above, as sent
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                return await create(
                    messages=request.messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=body.get("extra_body"),
                    **fields,
                )
            except self._openai.APIConnectionError as exc:
                if isinstance(exc, self._openai.APITimeoutError) or attempt == CONNECT_RETRIES:
                    raise
                await asyncio.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream(self, request: EngineRequest, body: dict[str, Any], state: dict[str, Any], sink: Sink) -> None:
        stream = await self._open(request, body)
        async with stream:
            async for chunk in stream:
                state["fp"] = getattr(chunk, "system_fingerprint", None) or state["fp"]
                if getattr(chunk, "usage", None) is not None:
                    state["usage"] = chunk.usage
                for choice in chunk.choices or ():
                    content = choice.delta.content if choice.delta is not None else None
                    if content:
                        if state["first"] is None:
                            state["first"] = time.perf_counter()
                        guard: LoopGuard = state["guard"]
                        state["tail"] = (state["tail"] + content)[-TAIL_CHARS:]  # (not the whole answer again)
                        state["chunks"] += 1
                        shown = guard.push(content)
                        if shown:
                            sink(Delta(request.engine_id, shown))
                        period = (
                            0
                            if guard.loop
                            else looping(state["tail"], max_period=MAX_PERIOD_CHARS, min_span=MIN_SPAN_CHARS)
                        )
                        if period:  # the visible answer keeps the span's first turn
                            guard.stop("period", len(guard.raw) - max(MIN_SPAN_CHARS, 4 * period) + period)
                        if guard.loop is not None:
                            state["finish"] = "repetition"  # closing the stream stops the server too
                            return
                    if choice.finish_reason:
                        state["finish"] = choice.finish_reason

    def _translate(self, exc: Exception) -> ToolkitError:
        """A transport error as the toolkit's typed error; the server's URL and key never appear."""
        openai, name = self._openai, self.config.name
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}  # the client's parse of the error body
            code = body.get("code") if isinstance(body.get("code"), str) else None
            return status_error(name, exc.status_code, str(body.get("message") or exc.message or exc), code)
        if isinstance(exc, openai.APITimeoutError):
            return EngineUnavailable(name, f"its server did not answer within {self.config.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            return EngineUnavailable(name, "its server cannot be reached, or the connection broke")
        log.warning("model %s: unexpected answer from its server: %s: %s", name, type(exc).__name__, exc)
        return EngineUnavailable(name, f"its server sent a broken stream ({type(exc).__name__})")

    # ----- adapters: the server's own (toolkit.engines.openai_adapters) ----------------

    def adapters(self) -> list[AdapterInfo]:
        return self._adapters.listed()

    def adapter_hash(self, name: str) -> str | None:
        return None  # the server does not say

    def check_adapter(self, name: str) -> None:
        self._adapters.check(name)

    def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo:
        return self._adapters.load(name, path)

    def unload_adapter(self, name: str, grace_s: float) -> AdapterInfo:
        return self._adapters.unload(name)

    def close(self, grace_s: float = 10.0) -> None:
        with self._lock:
            self._closing = True
            jobs = list(self._jobs.values())
        deadline = time.monotonic() + grace_s
        while any(not j.done for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for job in jobs:
            if not job.done and job.future is not None:
                job.future.cancel()
        with contextlib.suppress(Exception):  # already closed, or the loop is gone
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
