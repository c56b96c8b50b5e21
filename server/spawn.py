"""Start ``python -m server`` as a child process and learn its URL from the line it prints first."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spawn_server(
    *, port: int | None = 0, env: Mapping[str, str] | None = None, quiet: bool = True
) -> tuple[subprocess.Popen[str], str]:
    """(process, GraphQL URL). ``port=None`` takes SERVER_PORT; 0 any free port. ``quiet`` drops its log."""
    command = [sys.executable, "-m", "server"] + ([] if port is None else ["--port", str(port)])
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=None if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
    )
    assert proc.stdout is not None
    try:
        banner = proc.stdout.readline()  # "GraphQL: http://HOST:PORT/graphql   GraphiQL: ..."
    except BaseException:  # Ctrl-C or SIGTERM while the model loads: do not leave the server behind
        proc.kill()
        raise
    if not banner.startswith("GraphQL: "):
        proc.kill()
        raise RuntimeError(f"the GraphQL server did not start (it printed {banner!r}); run python -m server to see why")
    return proc, banner.split()[1]
