"""OpenAI's chat-completions shapes as the toolkit reads and writes them: a request body into an
``InferRequest``, an ``InferResult`` into the response's fields, the model list, and errors into OpenAI's
error body. No I/O: the handlers are ``server.openai_api``.

- ``model`` routes like GraphQL's; an adapter is ``<model>:<adapter>`` as ``/v1/models`` lists it.
- ``messages``: leading system (or developer) messages are the system prompt, then user and
  assistant turns alternating, the last one the user's prompt.
- ``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``seed``, ``stop``,
  ``presence_penalty``, ``frequency_penalty``; ``top_k``, ``repetition_penalty`` as extra fields (as
  vLLM takes them); ``web_search: true`` as an extra field, whose ``sources`` come back in an extra
  field of the response (and of the last stream chunk), beside ``run_record_id``.
- Fields that would change the meaning and are not served (``n`` > 1, ``tools``, ``response_format``,
  ``logprobs``, ...) are refused naming the field, never ignored.
- A request is refused with the toolkit's own errors (``InvalidRequest`` naming the field); an error's body
  takes its status, code and retry from its class (``toolkit.errors``), and ``param`` from its field, in
  OpenAI's name for it (as vLLM's validation errors carry ``parameter``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from toolkit.errors import InvalidRequest, RateLimited, ToolkitError
from toolkit.params import PARAMS as GENERATION
from toolkit.params import GenerationParams, InferRequest, Turn, openai_name, openai_names
from toolkit.results import InferResult
from toolkit.version import __version__ as TOOLKIT_VERSION
from toolkit.wire import to_wire

FINISH = {"stop": "stop", "length": "length", "timeout": "length", "cancelled": "stop", "repetition": "stop"}
PARAMS = openai_names()  # OpenAI field -> GenerationParams field, from the declaration (toolkit.params)
# the request's other fields: what it asks, and fields that change nothing about the answer
FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "request_id", "web_search", "conversation_id"}
    | {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier", "prompt_cache_key"}
)
UNSUPPORTED = {  # fields that change what an answer is, with the value that changes nothing
    "tools": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: not v,
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "logprobs": lambda v: not v,
    "top_logprobs": lambda v: not v,
    "logit_bias": lambda v: not v,
    "n": lambda v: v in (None, 1),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
}


# ----- errors ---------------------------------------------------------------------------------


def param_name(field: str, used: Mapping[str, str] | None = None) -> str:
    """The OpenAI request field a toolkit error's field stands for (``used``: parameter -> the field the
    request named it by, e.g. ``max_completion_tokens``)."""
    if field.startswith("params."):
        name = field.removeprefix("params.")
        return (used or {}).get(name) or (openai_name(name) if name in GENERATION else None) or name
    if field in ("prompt", "system_prompt") or field.startswith(("history", "messages[")):
        return "messages"
    if field == "adapter":
        return "model"
    return field


def field_name(field: str, used: Mapping[str, str] | None = None) -> str:
    """A toolkit error's field in OpenAI's terms, for its message: the field itself where it is a part of the
    request's own (``messages[2]``), else the parameter it stands for (``params.top_p``: ``top_p``)."""
    param = param_name(field, used)
    return field if field.startswith(f"{param}[") else param


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an error's status."""
    if status == RateLimited.status:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def toolkit_error_body(exc: ToolkitError, used: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A toolkit error in OpenAI's shape: the code its class declares; a request field's error names the
    parameter in ``param``, and the field in OpenAI's terms in its message."""
    if isinstance(exc, InvalidRequest):
        message = f"{field_name(exc.field, used)}: {exc.detail}"
        return error_body(exc.status, message, exc.wire_code, param_name(exc.field, used))
    return error_body(exc.status, exc.message, exc.wire_code)


# ----- requests -------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(where, "only text content parts are served")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(where, "content must be a string or a list of text parts")


def _conversation(body: Mapping[str, Any]) -> tuple[str | None, list[Turn]]:
    """The system prompt and the turns of ``messages``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages", "must be a non-empty list")
    system: list[str] = []
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(where, "must be an object")
        role = message.get("role")
        content = _text(message.get("content"), where)
        if role in ("system", "developer"):
            if turns:
                raise InvalidRequest(where, "system messages come before the conversation")
            system.append(content)
        elif role in ("user", "assistant"):
            turns.append(Turn(role, content))
        else:
            raise InvalidRequest(where, f"role {role!r} is not served (system, user, assistant)")
    if not turns or turns[-1].role != "user":
        raise InvalidRequest("messages", "the last message must be the user's")
    return "\n\n".join(system) or None, turns


def parameters(body: Mapping[str, Any]) -> dict[str, str]:
    """Generation parameter -> the request field that sets it (``max_completion_tokens`` wins over
    ``max_tokens``): errors name a parameter as the request did."""
    used: dict[str, str] = {}
    for key in sorted(body, key=lambda k: k != "max_completion_tokens"):
        name = PARAMS.get(key)
        if name is not None and body[key] is not None and name not in used:
            used[name] = key
    return used


def to_request(body: Mapping[str, Any], owner: str) -> InferRequest:
    """The ``InferRequest`` a chat-completions body stands for.

    A field that changes the answer is served or refused, never ignored: an unknown field is an
    ``InvalidRequest`` naming it, as is every other field that cannot be served."""
    for name in body:
        if name not in FIELDS and name not in PARAMS and name not in UNSUPPORTED:
            known = ", ".join(sorted(FIELDS | set(PARAMS)))
            raise InvalidRequest(name, f"not a field this server knows; it takes {known}")
    for name, harmless in UNSUPPORTED.items():
        if name in body and not harmless(body[name]):
            raise InvalidRequest(name, "not supported by this server; leave it out")
    system, turns = _conversation(body)
    conversation = body.get("conversation_id")
    if conversation is not None:
        if not isinstance(conversation, str) or not conversation:
            raise InvalidRequest("conversation_id", "must be a conversation's id")
        if len(turns) > 1:
            message = "with 'conversation_id', send only the new user message: the server has the conversation's turns"
            raise InvalidRequest("messages", message)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream", f"must be true or false, got {stream!r}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise InvalidRequest("stream_options", "must be an object")
    extra: dict[str, Any] = {}
    if body.get("request_id") is not None:
        extra["request_id"] = body["request_id"]
    return InferRequest(
        prompt=turns[-1].content,
        history=tuple(turns[:-1]),
        system_prompt=system,
        web_search=body.get("web_search", False),
        model=body.get("model"),  # "<model>:<adapter>" too: the service's routing resolves it
        params=GenerationParams(**{name: body[key] for name, key in parameters(body).items()}),
        owner=owner,
        **extra,
    )


# ----- responses ------------------------------------------------------------------------------


def extras(result: InferResult) -> dict[str, Any]:
    """What the toolkit adds to OpenAI's shapes: the run record's id, the timings, and the sources."""
    out: dict[str, Any] = {"run_record_id": result.run_record.request_id, "timings": to_wire(result.timings)}
    if result.conversation_id is not None:
        out["conversation_id"] = result.conversation_id
    if result.conversation_error is not None:
        out["conversation_error"] = result.conversation_error
    if result.search_status != "off":
        out["sources"] = to_wire(result.sources)
        out["search_status"] = result.search_status
    return out


def fingerprint(result: InferResult) -> str:
    return result.run_record.engine_version or f"llm-toolkit-{TOOLKIT_VERSION}"


def usage_of(result: InferResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def model_list(service: Any) -> list[dict[str, Any]]:
    """Every model, and each model's adapters as ``<model>:<adapter>`` with its parent, as ``/v1/models``
    lists them."""
    created = int(time.time())
    data = []
    for model in service.models():
        data.append(
            {
                "id": model.id,
                "object": "model",
                "created": created,
                "owned_by": f"llm-toolkit ({model.engine})",
                "parent": None,
                "max_model_len": model.context_length,
            }
        )
        for adapter in service.adapters(model.id) if model.status == "ready" else []:
            data.append(
                {
                    "id": f"{model.id}:{adapter.name}",
                    "object": "model",
                    "created": created,
                    "owned_by": "llm-toolkit (adapter)",
                    "parent": model.id,
                    "root": adapter.path,
                }
            )
    return data
