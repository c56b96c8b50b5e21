"""Dashboard settings, from the environment (``.env.example`` documents them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from toolkit.errors import ConfigError
from toolkit.settings import Settings, read_env

BACKENDS = ("remote", "inprocess")


@dataclass(frozen=True)
class DashboardSettings:
    host: str = "127.0.0.1"
    port: int = 3000
    backend: str = "remote"  # remote: the GraphQL server (RemoteService.from_env); inprocess: the model in the kernel
    explorer_url: str | None = None  # where the browser finds GraphiQL; default: GRAPHQL_URL with /graphiql
    # A page's kernel is shut down once it has been idle this long with no browser connected
    # (a closed tab); open tabs keep theirs.
    kernel_idle_s: int = 120
    evals_dir: str | None = None  # the Evaluate tab's dataset files; default: the repository's evals/ folder

    ENV: ClassVar[dict[str, str]] = {
        "host": "DASHBOARD_HOST",
        "port": "DASHBOARD_PORT",
        "backend": "DASHBOARD_BACKEND",
        "explorer_url": "EXPLORER_URL",
        "kernel_idle_s": "DASHBOARD_KERNEL_IDLE",
        "evals_dir": "DASHBOARD_EVALS_DIR",
    }

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("DASHBOARD_PORT", f"must be a port number 0..65535, got {self.port}")
        if self.backend not in BACKENDS:
            raise ConfigError("DASHBOARD_BACKEND", f"must be remote or inprocess, got {self.backend!r}")
        if self.kernel_idle_s < 1:
            raise ConfigError("DASHBOARD_KERNEL_IDLE", f"must be a number of seconds >= 1, got {self.kernel_idle_s}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> DashboardSettings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win. ALLOWED_HOSTS is checked
        here too, so that a bad value stops the launch (the page's hook reads it, ``allowed_hosts``)."""
        allowed_hosts(environ)
        return cls(**read_env(cls, environ, overrides, _parse))

    @property
    def evals_path(self) -> Path:
        """Where the Evaluate tab lists dataset files (the kernel's working folder is the notebook's)."""
        return Path(self.evals_dir).expanduser() if self.evals_dir else Path(__file__).resolve().parents[1] / "evals"

    @property
    def cull_interval_s(self) -> int:
        """How often idle kernels are looked for."""
        return max(1, min(60, self.kernel_idle_s // 2))


def allowed_hosts(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """ALLOWED_HOSTS, as ``toolkit.settings`` declares and checks it: the dashboard answers to the same names
    as the server (``voila_hooks.prelaunch`` refuses a page asked for by any other)."""
    env = os.environ if environ is None else environ
    var = Settings.ENV["allowed_hosts"]
    return Settings.from_env({var: env.get(var, "")}).allowed_hosts


def _parse(name: str, var: str, raw: str) -> Any:
    if name in ("port", "kernel_idle_s"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(var, f"must be an integer, got {raw!r}") from None
    return raw.lower() if name == "backend" else raw
