"""Requests and their validation: ``GenerationParams`` and ``InferRequest``.

Validation happens here, once, when the dataclass is built: every problem is
an ``InvalidRequest`` naming the field and the bound. Limits that depend on
the deployment (the largest ``max_new_tokens``, the input budget) are checked
by ``InferRequest.check_limits`` against a ``Limits`` from the settings.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from toolkit.errors import InvalidRequest

DEFAULT_MAX_NEW_TOKENS = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**63 - 1
ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Limits:
    """Per-deployment bounds, built from ``Settings``."""

    max_new_tokens: int = 1024
    max_input_tokens: int = 4096


# The sampling parameters a model can have defaults for (its generation_config.json, the toolkit's recipe
# for the bundled model, the models file or GENERATION_DEFAULTS), and the toolkit's own where none is said.
FALLBACK_DEFAULTS: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": 0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
DEFAULTABLE = (*FALLBACK_DEFAULTS, "max_new_tokens")


@dataclass(frozen=True)
class GenerationParams:
    """How to sample. ``temperature == 0`` means greedy decoding.

    A field left as None takes the model's default (see ``ModelInfo.defaults``): its
    generation_config.json, the toolkit's recipe for the bundled model, the models file; the
    toolkit's ``FALLBACK_DEFAULTS`` where none says. ``max_new_tokens=None`` takes the model's
    default or 256 (at most the deployment's limit).
    """

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # OpenAI's (and vLLM's) penalties, over the generated tokens only: copying a source is not punished
    presence_penalty: float | None = None  # subtracted once from every token already generated
    frequency_penalty: float | None = None  # subtracted per time a token was generated

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None:
            _int("params.max_new_tokens", self.max_new_tokens, low=1)
        if self.temperature is not None:
            _number("params.temperature", self.temperature)
            if self.temperature < 0:
                raise InvalidRequest("params.temperature", f"must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_p is not None:
            _number("params.top_p", self.top_p)
            if not 0 < self.top_p <= 1:
                raise InvalidRequest("params.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k is not None:
            _int("params.top_k", self.top_k, low=0)
        if self.repetition_penalty is not None:
            _number("params.repetition_penalty", self.repetition_penalty)
            if self.repetition_penalty <= 0:
                raise InvalidRequest(
                    "params.repetition_penalty", f"must be > 0 (1 means none), got {self.repetition_penalty}"
                )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is None:
                continue
            _number(f"params.{name}", value)
            if not -2.0 <= value <= 2.0:
                raise InvalidRequest(f"params.{name}", f"must be between -2 and 2 (0 means none), got {value}")
        if self.seed is not None:
            _int("params.seed", self.seed, low=0, high=MAX_SEED)
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, Iterable):
            raise InvalidRequest("params.stop", f"must be a list of strings, got {type(stop).__name__}")
        stop = tuple(stop)
        if len(stop) > MAX_STOP_STRINGS:
            raise InvalidRequest("params.stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
        for s in stop:
            if not isinstance(s, str) or not s:
                raise InvalidRequest("params.stop", f"each stop string must be a non-empty string, got {s!r}")
            if len(s) > MAX_STOP_CHARS:
                raise InvalidRequest(
                    "params.stop", f"each stop string is at most {MAX_STOP_CHARS} characters, got {len(s)}"
                )
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def complete(self) -> bool:
        """Every sampling field is set (what an engine needs)."""
        return all(getattr(self, name) is not None for name in FALLBACK_DEFAULTS)

    def with_defaults(self, defaults: Mapping[str, Any]) -> GenerationParams:
        """The fields left as None taken from ``defaults``, then from ``FALLBACK_DEFAULTS``."""
        merged = {**FALLBACK_DEFAULTS, **{k: v for k, v in defaults.items() if v is not None}}
        filled = {name: merged[name] for name in DEFAULTABLE if getattr(self, name) is None and name in merged}
        return replace(self, **filled) if filled else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class InferRequest:
    """One question to the model, with its context and parameters."""

    prompt: str
    history: tuple[Turn, ...] = ()
    system_prompt: str | None = None
    web_search: bool = False
    model: str | None = None
    adapter: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout_s: float | None = None
    # Who sent it (the server's caller identity; "" in process). Request ids are unique per owner,
    # and only the owner can cancel one: another owner's id answers as an unknown id does.
    owner: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest("prompt", "must be a non-empty string")
        object.__setattr__(self, "history", _history(self.history))
        if self.system_prompt is not None:
            if not isinstance(self.system_prompt, str):
                raise InvalidRequest("system_prompt", "must be a string")
            if not self.system_prompt.strip():
                object.__setattr__(self, "system_prompt", None)
        if not isinstance(self.web_search, bool):
            raise InvalidRequest("web_search", f"must be true or false, got {self.web_search!r}")
        for name in ("model", "adapter"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidRequest(name, "must be a non-empty string or null")
        params = self.params
        if isinstance(params, Mapping):
            params = _params_from_mapping(params)
        if not isinstance(params, GenerationParams):
            raise InvalidRequest("params", f"must be GenerationParams, got {type(params).__name__}")
        object.__setattr__(self, "params", params)
        if not isinstance(self.request_id, str) or not self.request_id:
            raise InvalidRequest("request_id", "must be a non-empty string")
        if not isinstance(self.owner, str):
            raise InvalidRequest("owner", "must be a string")
        if self.timeout_s is not None:
            _number("timeout_s", self.timeout_s)
            if self.timeout_s <= 0:
                raise InvalidRequest("timeout_s", f"must be > 0 seconds, got {self.timeout_s}")

    @classmethod
    def build(cls, prompt: str, **kwargs: Any) -> InferRequest:
        """Convenience for notebooks: generation parameters may be passed flat.

        ``InferRequest.build("Hi", temperature=0, max_new_tokens=32)``
        """
        param_names = {f.name for f in fields(GenerationParams)}
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in param_names}
        params = kwargs.pop("params", None) or GenerationParams()
        if isinstance(params, Mapping):
            params = _params_from_mapping(params)
        if flat:
            params = replace(params, **flat)
        request_names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - request_names
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(name, f"unknown field; known: {', '.join(sorted(request_names | param_names))}")
        return cls(prompt=prompt, params=params, **kwargs)

    def resolved_params(self, limits: Limits, defaults: Mapping[str, Any] | None = None) -> GenerationParams:
        """Params with the model's ``defaults`` (and the deployment's) filled in, checked against its limits.

        (The input length is checked by the service, which has the tokenizer.)
        """
        params = self.params.with_defaults(defaults or {})
        wanted = params.max_new_tokens
        if wanted is None:
            return replace(params, max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens))
        if wanted > limits.max_new_tokens:
            if self.params.max_new_tokens is None:  # the model's default is over this deployment's limit
                return replace(params, max_new_tokens=limits.max_new_tokens)
            raise InvalidRequest(
                "params.max_new_tokens", f"must be between 1 and {limits.max_new_tokens}, got {wanted}"
            )
        return params

    def messages(self) -> list[dict[str, str]]:
        """Chat messages for the model: system prompt, history, then the prompt."""
        out: list[dict[str, str]] = []
        if self.system_prompt:
            out.append({"role": "system", "content": self.system_prompt})
        out.extend({"role": t.role, "content": t.content} for t in self.history)
        out.append({"role": "user", "content": self.prompt})
        return out


def _params_from_mapping(data: Mapping[str, Any]) -> GenerationParams:
    known = {f.name for f in fields(GenerationParams)}
    unknown = set(data) - known
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"params.{name}", f"unknown parameter; known: {', '.join(sorted(known))}")
    return GenerationParams(**dict(data))


def _history(history: Any) -> tuple[Turn, ...]:
    if history is None:
        return ()
    if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
        raise InvalidRequest("history", "must be a list of {role, content} turns")
    turns: list[Turn] = []
    for i, item in enumerate(history):
        where = f"history[{i}]"
        if isinstance(item, Turn):
            turn = item
        elif isinstance(item, Mapping):
            if set(item) - {"role", "content"}:
                raise InvalidRequest(where, "a turn has only 'role' and 'content'")
            turn = Turn(role=item.get("role"), content=item.get("content"))  # type: ignore[arg-type]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            turn = Turn(role=item[0], content=item[1])
        else:
            raise InvalidRequest(where, "must be a {role, content} mapping or a (role, content) pair")
        if turn.role not in ROLES:
            raise InvalidRequest(f"{where}.role", f"must be 'user' or 'assistant', got {turn.role!r}")
        expected = ROLES[i % 2]
        if turn.role != expected:
            raise InvalidRequest(
                f"{where}.role",
                f"turns must alternate user/assistant starting with user; expected {expected!r}, got {turn.role!r}",
            )
        if not isinstance(turn.content, str) or not turn.content.strip():
            raise InvalidRequest(f"{where}.content", "must be a non-empty string")
        turns.append(turn)
    if turns and turns[-1].role != "assistant":
        raise InvalidRequest(
            f"history[{len(turns) - 1}].role",
            "history must end with an assistant turn: the new user message is the prompt",
        )
    return tuple(turns)


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value!r}")


def _int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidRequest(name, f"must be {bound}, got {value}")
