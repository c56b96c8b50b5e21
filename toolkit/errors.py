"""Typed errors. Every message says what went wrong and what to do next.

Front ends translate these into their own shapes (GraphQL ``extensions.code``,
a banner in the dashboard); they never show a traceback. ``code`` is the
stable, machine-readable name of each kind of failure.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    code = "INTERNAL"
    # seconds after which the same request may succeed (busy, loading, a server down for now); HTTP front
    # ends answer 503 with Retry-After, GraphQL adds extensions.retryAfter. None: retrying will not help.
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class ConfigError(ToolkitError, ValueError):
    """A setting (keyword argument or environment variable) is invalid."""

    code = "CONFIG_ERROR"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "field": self.field}


class InvalidRequest(ToolkitError, ValueError):
    """A request field is out of bounds or malformed; ``field`` names it."""

    code = "BAD_USER_INPUT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "field": self.field}


class PromptTooLong(InvalidRequest):
    """Prompt plus history (plus system prompt) do not fit the input budget."""

    def __init__(self, field: str, count: int, limit: int, hint: str = "") -> None:
        message = f"the input is {count} tokens, over the limit of {limit} tokens"
        message += f"; {hint}" if hint else "; shorten the prompt or drop older history turns"
        super().__init__(field, message)
        self.count = count
        self.limit = limit

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "count": self.count, "limit": self.limit}


class Overloaded(ToolkitError):
    """The request queue is full; the request was not accepted."""

    code = "OVERLOADED"
    retry_after_s = 1

    def __init__(self, queued: int, limit: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the server is busy: {queued} requests are waiting (limit {limit}); "
            "retry in a few seconds or raise MAX_QUEUE"
        )
        self.queued = queued
        self.limit = limit


class EngineUnavailable(ToolkitError):
    """The engine of a model cannot answer now: its remote server is down, refuses, times out or sent
    a broken stream. The message names the model, never the server's URL or key; retry later."""

    code = "ENGINE_UNAVAILABLE"
    retry_after_s = 1

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"model {model!r} is unavailable: {why}; retry later, or ask another model")
        self.model = model


class ModelLoadError(ToolkitError):
    """The model could not be resolved or loaded."""

    code = "MODEL_ERROR"


class ModelNotReady(ToolkitError):
    """A request arrived while the model is still loading (``loading``: retry soon), or after it failed
    to load or was stopped (retrying will not help)."""

    code = "MODEL_LOADING"

    def __init__(self, message: str, *, loading: bool = True) -> None:
        super().__init__(message)
        self.retry_after_s = 1 if loading else None


class GenerationError(ToolkitError):
    """The model failed while generating (out of memory, a kernel error, ...)."""

    code = "MODEL_ERROR"


class RequestTimeout(ToolkitError):
    """A request ran out of time (REQUEST_TIMEOUT or its own timeout) before producing anything."""

    code = "TIMEOUT"


class ClientGone(ToolkitError):
    """The caller closed the connection before the answer; the request was cancelled."""

    code = "CANCELLED"


class EngineClosed(ToolkitError):
    """The engine is shutting down and takes no new requests."""

    code = "UNAVAILABLE"
    retry_after_s = 1  # this process is going away; a restarted one (or another replica) will answer


class Forbidden(ToolkitError):
    """The caller is known but may not do this (e.g. load an adapter without an admin key)."""

    code = "FORBIDDEN"


class MissingDependency(ToolkitError, ImportError):
    """An optional package is not installed; the message says what to install."""

    code = "MISSING_DEPENDENCY"

    def __init__(self, package: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the package '{package}': pip install '{package}' (or run make install)")
        self.package = package
