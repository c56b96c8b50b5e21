"""What an OpenAI-compatible server's errors mean to the toolkit: the message of an error body (OpenAI's
shape or vLLM's older flat one) and the typed error for an HTTP status, such as ``PromptTooLong`` for a
400 about the context length, with the numbers read from the server's own message."""

from __future__ import annotations

import json
import re

from toolkit.errors import EngineUnavailable, InvalidRequest, Overloaded, PromptTooLong, ToolkitError

_NUMBER = re.compile(r"\d+")
CONTEXT_WORDS = ("context length", "max_model_len", "maximum context", "too long", "context window")
PARAM_FIELDS = {  # an OpenAI request field -> the toolkit's field, for errors a server reports by name
    "max_tokens": "params.max_new_tokens",
    "max_completion_tokens": "params.max_new_tokens",
    "temperature": "params.temperature",
    "top_p": "params.top_p",
    "top_k": "params.top_k",
    "repetition_penalty": "params.repetition_penalty",
    "seed": "params.seed",
    "stop": "params.stop",
    "presence_penalty": "params.presence_penalty",
    "frequency_penalty": "params.frequency_penalty",
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


def status_error(name: str, status: int, message: str) -> ToolkitError:
    lowered = message.lower()
    if status in (400, 422):
        if any(k in lowered for k in CONTEXT_WORDS):
            limit = _number_after(("context length is", "max_model_len", "maximum context length of"), lowered)
            count = _number_after(("requested", "messages resulted in", "prompt has"), lowered)
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
