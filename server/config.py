"""Server settings, from the environment (``.env.example`` documents them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from toolkit.errors import ConfigError
from toolkit.settings import read_env


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: no authentication
    admin_keys: tuple[str, ...] = field(default=(), repr=False)  # may also load/unload adapters
    # keys of front ends that serve many people (the dashboard's): rate limited per browser session
    frontend_keys: tuple[str, ...] = field(default=(), repr=False)
    rate_per_minute: float = 120.0  # token bucket refill, per API key (or client address)
    rate_burst: int = 30
    cors_origins: tuple[str, ...] = ()
    introspection: bool = True
    max_body_bytes: int = 1 << 20
    max_query_tokens: int = 2000
    max_query_depth: int = 12
    max_query_fields: int = 150  # field selections per document (GraphiQL's introspection query has about 70)
    max_ws_message_bytes: int = 1 << 20
    ws_init_timeout_s: float = 10.0
    shutdown_grace_s: float = 20.0

    ENV: ClassVar[dict[str, str]] = {
        "host": "SERVER_HOST",
        "port": "SERVER_PORT",
        "api_keys": "API_KEYS",
        "admin_keys": "ADMIN_API_KEYS",
        "frontend_keys": "FRONTEND_API_KEYS",
        "rate_per_minute": "RATE_LIMIT_PER_MINUTE",
        "rate_burst": "RATE_LIMIT_BURST",
        "cors_origins": "CORS_ORIGINS",
        "introspection": "GRAPHQL_INTROSPECTION",
        "max_body_bytes": "MAX_BODY_BYTES",
        "max_query_tokens": "MAX_QUERY_TOKENS",
        "max_query_depth": "MAX_QUERY_DEPTH",
        "max_query_fields": "MAX_QUERY_FIELDS",
        "max_ws_message_bytes": "MAX_WS_MESSAGE_BYTES",
        "ws_init_timeout_s": "WS_INIT_TIMEOUT",
        "shutdown_grace_s": "SHUTDOWN_GRACE",
    }

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("SERVER_PORT", f"must be a port number 0..65535, got {self.port}")
        for name, low in (
            ("rate_burst", 1),
            ("max_body_bytes", 1024),
            ("max_query_tokens", 50),
            ("max_query_depth", 2),
            ("max_query_fields", 10),
        ):
            if getattr(self, name) < low:
                raise ConfigError(self.ENV[name], f"must be >= {low}, got {getattr(self, name)}")
        if self.rate_per_minute <= 0:
            raise ConfigError("RATE_LIMIT_PER_MINUTE", f"must be > 0, got {self.rate_per_minute}")
        for name in ("api_keys", "admin_keys", "frontend_keys"):
            if any(len(k) < 8 for k in getattr(self, name)):
                raise ConfigError(self.ENV[name], "each key must be at least 8 characters")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        return cls(**read_env(cls, environ, overrides, _parse))


def _parse(name: str, var: str, raw: str) -> Any:
    if name == "host":
        return raw
    if name in ("api_keys", "admin_keys", "frontend_keys", "cors_origins"):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if name == "introspection":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(var, f"must be true or false, got {raw!r}")
    try:
        return float(raw) if name in ("rate_per_minute", "ws_init_timeout_s", "shutdown_grace_s") else int(raw)
    except ValueError:
        raise ConfigError(var, f"must be a number, got {raw!r}") from None
