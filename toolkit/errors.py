"""Typed errors, and the one table of what each means on the wire. Every message says what went wrong
and what to do next.

Each class declares its ``code`` (GraphQL's ``extensions.code``, stable and machine-readable), its HTTP
``status`` (the OpenAI endpoint's, and GraphQL's when nothing ran), its ``openai_code`` (the ``code`` of
OpenAI's error shape) and whether a retry may help (``retry_after_s``). Front ends translate an error
into their shape by reading these; clients map a wire error back with ``ToolkitError.from_wire``. No
one decides by reading an error's message.
"""

from __future__ import annotations

from typing import Any

_ALL: list[type[ToolkitError]] = []  # every subclass, parents first (``__init_subclass__``)
# the status of the first class declared with each code: a class whose status differs says so on the wire
_CANONICAL_STATUS: dict[str, int] = {}


class ToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    code: str = "INTERNAL"
    status: int = 500
    # the code in OpenAI's error shape; None: this class's ``code`` in lower case
    openai_code: str | None = None
    # seconds after which the same request may succeed (busy, loading, a server down for now); HTTP front
    # ends answer 503 with Retry-After, GraphQL adds extensions.retryAfter. None: retrying will not help.
    retry_after_s: int | None = None
    # what goes into the wire forms beside the message (GraphQL's extensions), by attribute name
    wire_fields: tuple[str, ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _ALL.append(cls)
        _CANONICAL_STATUS.setdefault(cls.code, cls.status)  # subclasses come after their parents

    @property
    def wire_code(self) -> str:
        """The code in OpenAI's error shape."""
        return self.openai_code or self.code.lower()

    def extensions(self) -> dict[str, Any]:
        """What GraphQL's ``extensions`` (and ``to_dict``) carry beside the message."""
        out: dict[str, Any] = {"code": self.code}
        out.update({name: getattr(self, name) for name in self.wire_fields if getattr(self, name, None) is not None})
        if self.retry_after_s is not None:
            out["retryAfter"] = self.retry_after_s
        if self.status != _CANONICAL_STATUS.get(self.code, self.status):
            out["status"] = self.status  # tells apart classes that share a code (an unknown model: 404)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"message": self.message, **self.extensions()}

    @staticmethod
    def from_wire(code: str, message: str, extensions: dict[str, Any] | None = None) -> ToolkitError:
        """The error a wire form stands for (GraphQL's code and extensions, or an OpenAI body's ``code``):
        the most specific class declared with that code (and status, and fields), rebuilt with its message."""
        ext = extensions or {}
        everyone: list[type[ToolkitError]] = [ToolkitError, *_ALL]
        candidates = [c for c in everyone if code in (c.code, c.openai_code or c.code.lower()) and c is not RemoteError]
        if not candidates:
            return RemoteError(code, message)
        status = ext.get("status")

        def fit(cls: type[ToolkitError]) -> tuple[bool, int, int]:
            wanted = status if status is not None else _CANONICAL_STATUS.get(cls.code)
            present = sum((name in ext) - (name not in ext) for name in cls.wire_fields)
            return cls.status == wanted, present, -len(cls.__mro__)

        cls = max(candidates, key=fit)
        error = cls.__new__(cls)
        ToolkitError.__init__(error, message)
        for name in cls.wire_fields:
            setattr(error, name, ext.get(name))
        if "retryAfter" in ext:
            error.retry_after_s = ext["retryAfter"]
        if isinstance(error, (InvalidRequest, ConfigError)):  # its wire message is "<field>: <detail>"
            error.detail = message.removeprefix(f"{error.field}: ")
        return error


class RemoteError(ToolkitError):
    """A wire error whose code no class here declares (a newer server, another service)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(ToolkitError, ValueError):
    """A setting (keyword argument or environment variable) is invalid."""

    code = "CONFIG_ERROR"
    wire_fields: tuple[str, ...] = ("field",)

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message  # the message without its "field: " prefix (a front end names the field its way)


class InvalidRequest(ToolkitError, ValueError):
    """A request field is out of bounds or malformed; ``field`` names it."""

    code = "BAD_USER_INPUT"
    status = 400
    wire_fields: tuple[str, ...] = ("field",)

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message  # the message without its "field: " prefix (a front end names the field its way)


class UnknownModel(InvalidRequest):
    """A request names a model this service does not serve (``field`` is ``model``)."""

    status = 404
    openai_code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__("model", message)


class UnknownConversation(InvalidRequest):
    """No kept conversation with this id: unknown, deleted, or another API key's (which answers the same)."""

    code = "NOT_FOUND"
    status = 404
    openai_code = "conversation_not_found"

    def __init__(self, conversation_id: str, field: str = "conversation_id") -> None:
        super().__init__(field, f"no conversation {conversation_id!r}; list them with conversations()")


class PromptTooLong(InvalidRequest):
    """Prompt plus history (plus system prompt) do not fit the input budget."""

    openai_code = "context_length_exceeded"
    wire_fields: tuple[str, ...] = ("field", "count", "limit")

    def __init__(self, field: str, count: int, limit: int, hint: str = "") -> None:
        message = f"the input is {count} tokens, over the limit of {limit} tokens"
        message += f"; {hint}" if hint else "; shorten the prompt or drop older history turns"
        super().__init__(field, message)
        self.count = count
        self.limit = limit


class Unauthenticated(ToolkitError):
    """No API key, or a key that is not one of API_KEYS."""

    code = "UNAUTHENTICATED"
    status = 401
    openai_code = "invalid_api_key"

    def __init__(self, presented: bool) -> None:
        super().__init__(
            "the API key is not valid" if presented else "a valid API key is required: send Authorization: Bearer <key>"
        )


class Forbidden(ToolkitError):
    """The caller is known but may not do this (e.g. load an adapter without an admin key)."""

    code = "FORBIDDEN"
    status = 403


class RateLimited(ToolkitError):
    """Over the per-key (or per-address) rate limit."""

    code = "RATE_LIMITED"
    status = 429
    openai_code = "rate_limit_exceeded"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"rate limit exceeded; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Overloaded(ToolkitError):
    """The request queue is full; the request was not accepted."""

    code = "OVERLOADED"
    status = 503
    retry_after_s = 1

    def __init__(self, queued: int, limit: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the server is busy: {queued} requests are waiting (limit {limit}); "
            "retry in a few seconds or raise MAX_QUEUE"
        )
        self.queued = queued
        self.limit = limit


# a StoreUnavailable reason: (what is wrong, what to do, seconds after which a retry may help)
STORE_REASONS: dict[str, tuple[str, str, int | None]] = {
    "full": ("the disk is full", "retry once space is freed", 30),
    "busy": ("another writer holds it", "retry in a moment", 1),
    "read-only": ("its file is read-only", "make the file and its folder writable", None),
    "corrupt": ("its file is damaged", "restore it from a backup or move it aside", None),
    "newer": ("it was written by a newer toolkit", "upgrade the toolkit", None),
    "unopenable": ("its file cannot be opened", "check TOOLKIT_STORE's folder", None),
    "error": ("it failed", "see the server's log", None),
}


class StoreUnavailable(ToolkitError):
    """The toolkit's store (``TOOLKIT_STORE``) cannot be read or written now: a full disk, a read-only or corrupt
    file, a lock held too long. The message never names the server's files (the log does)."""

    code = "STORE_UNAVAILABLE"
    status = 503
    wire_fields: tuple[str, ...] = ("reason",)

    def __init__(self, reason: str, doing: str = "used") -> None:
        what, fix, retry = STORE_REASONS.get(reason, STORE_REASONS["error"])
        super().__init__(f"the store (TOOLKIT_STORE) cannot be {doing}: {what}; {fix}")
        self.reason = reason
        self.retry_after_s = retry


class EngineUnavailable(ToolkitError):
    """The engine of a model cannot answer now: its remote server is down, refuses, times out or sent
    a broken stream. The message names the model, never the server's URL or key; retry later."""

    code = "ENGINE_UNAVAILABLE"
    status = 503
    retry_after_s = 1
    wire_fields: tuple[str, ...] = ("model",)

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"model {model!r} is unavailable: {why}; retry later, or ask another model")
        self.model = model


class EngineClosed(ToolkitError):
    """This service (or the engine of a model) is shutting down and takes no new requests: a restarted
    one, or another replica, will answer."""

    code = "UNAVAILABLE"
    status = 503
    retry_after_s = 1

    def __init__(self, message: str = "the service is shutting down; retry against a running one") -> None:
        super().__init__(message)


class ModelLoadError(ToolkitError):
    """The model could not be resolved or loaded."""

    code = "MODEL_LOAD_ERROR"


class ModelNotReady(ToolkitError):
    """A request arrived while the model is still loading (``loading``: retry soon), or after it failed
    to load (retrying will not help)."""

    code = "MODEL_LOADING"
    status = 503

    def __init__(self, message: str, *, loading: bool = True) -> None:
        super().__init__(message)
        self.retry_after_s = 1 if loading else None


class GenerationError(ToolkitError):
    """The model failed while generating (out of memory, a kernel error, ...)."""

    code = "MODEL_ERROR"


class RequestTimeout(ToolkitError):
    """A request ran out of time (REQUEST_TIMEOUT or its own timeout) before producing anything."""

    code = "TIMEOUT"
    status = 504


class ClientGone(ToolkitError):
    """The caller closed the connection before the answer; the request was cancelled."""

    code = "CANCELLED"
    status = 499  # nobody is left to read it: the status nginx logs for a client that closed


class MissingDependency(ToolkitError, ImportError):
    """An optional package is not installed; the message says what to install."""

    code = "MISSING_DEPENDENCY"
    wire_fields: tuple[str, ...] = ("package",)

    def __init__(self, package: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the package '{package}': pip install '{package}' (or run make install)")
        self.package = package


# why a search gave no results (``SearchFailure.kind``; a search snapshot's ``status`` when not ok)
FAILURE_KINDS = ("timeout", "rate_limited", "no_results", "network", "error")


class SearchFailure(ToolkitError):
    """A search that gave no results; ``kind`` says why."""

    code = "SEARCH_FAILED"
    wire_fields: tuple[str, ...] = ("kind",)

    def __init__(self, kind: str, message: str) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {FAILURE_KINDS}, got {kind!r}")
        super().__init__(message)
        self.kind = kind

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "kind": self.kind}


class ServiceUnavailable(ToolkitError):
    """The server cannot be reached (down, wrong URL) or answered with something that is not GraphQL."""

    code = "SERVER_UNREACHABLE"
    status = 503

    def __init__(self, message: str, *, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed  # the server's model failed to load: waiting will not help


class DatasetError(InvalidRequest):
    """A dataset that cannot run: ``where`` names the file, the line or row, and the field."""

    def __init__(self, source: str, line: int | None, where: str, message: str) -> None:
        place = f"{source}, line {line}" if line is not None else source
        super().__init__(where, message)
        self.message = f"{place}, {where}: {message}"  # "quality.yaml, line 12, assert[0].type: unknown ..."
        self.args = (self.message,)
        self.source, self.line, self.where = source, line, where


def error_classes() -> list[type[ToolkitError]]:
    """Every ``ToolkitError`` class (all are declared in this module), parents before children."""
    return [ToolkitError, *_ALL]
