"""What an OpenAI-compatible server's errors mean to the toolkit: the message of an error body (OpenAI's
shape or vLLM's older flat one) and the typed error for an HTTP status, such as ``PromptTooLong`` for a
400 about the context length, with the numbers read from the server's own message."""

from __future__ import annotations

import json
import re

from toolkit.errors import (
    EngineUnavailable,
    GenerationError,
    InvalidRequest,
    Overloaded,
    PromptTooLong,
    RequestTimeout,
    ToolkitError,
)
from toolkit.params import openai_names

_NUMBER = re.compile(r"\d+")
CONTEXT_WORDS = ("context length", "max_model_len", "maximum context", "too long", "context window")
# an OpenAI request field -> the toolkit's field, for errors a server reports by name (from the declaration)
PARAM_FIELDS = {
    **{key: f"params.{name}" for key, name in openai_names().items()},
    "messages": "prompt",
    "model": "model",
}


class HTTPStatus(Exception):
    """An HTTP error status from one of the server's side endpoints (/tokenize, /v1/load_lora_adapter, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_message(raw: bytes) -> str:
    """The message of an OpenAI-shaped error body (``{"error": {"message"}}`` or vLLM's older flat form)."""
    try:
        body = json.loads(raw)
    except (ValueError, TypeError):
        return raw.decode(errors="replace")[:300] if isinstance(raw, bytes) else ""
    if isinstance(body, dict):
        inner = body["error"] if isinstance(body.get("error"), dict) else body
        return str(inner.get("message") or "")[:1000]
    return ""


def _number_after(phrases: tuple[str, ...], text: str) -> int:
    """The first number after one of ``phrases`` in ``text`` (0 when none is there)."""
    for phrase in phrases:
        at = text.find(phrase)
        if at >= 0:
            found = _NUMBER.search(text, at + len(phrase))
            if found:
                return int(found.group())
    return 0


# upstream errors that mean the same for a request to the model it serves, by the body's code (a toolkit
# server answers with these); the others say the model is unavailable for now, or name a field
PASSED_ON = (Overloaded, RequestTimeout, GenerationError)


def status_error(name: str, status: int, message: str, code: str | None = None) -> ToolkitError:
    lowered = message.lower()
    upstream = ToolkitError.from_wire(code, message) if code else None
    if isinstance(upstream, PASSED_ON):
        return upstream
    if status in (400, 422):
        if isinstance(upstream, PromptTooLong) or any(k in lowered for k in CONTEXT_WORDS):
            limit = _number_after(
                ("context length is", "max_model_len", "maximum context length of", "limit of"), lowered
            )
            count = _number_after(("requested", "messages resulted in", "prompt has", "input is"), lowered)
            return PromptTooLong("prompt", count, limit, f"the model's server says: {message}")
        field = next((f for k, f in PARAM_FIELDS.items() if re.search(rf"\b{k}\b", lowered)), "params")
        return InvalidRequest(field, f"the model's server refused the request: {message}")
    if status == 404:
        return EngineUnavailable(name, "its server does not serve this model or adapter")
    if status in (401, 403):
        return EngineUnavailable(name, "its server refused the API key (see api_key_env in the models file)")
    if status == 429:
        return Overloaded(0, 0, f"model {name!r} is busy: its server is rate limiting; retry in a few seconds")
    return EngineUnavailable(name, f"its server failed (HTTP {status})")
