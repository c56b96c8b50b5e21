"""``python -m dashboard``: the chat dashboard with Voila (``make dashboard``).

``--with-server`` also starts the GraphQL server (``make run``): both on the
configured model, both URLs printed, both stopped on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

NOTEBOOK = Path(__file__).with_name("chat.ipynb")
ROOT = Path(__file__).resolve().parents[1]


def content_security_policy(explorer: str | None) -> str:
    """Nothing from outside this server (Voila's lab template links a CDN stylesheet it also bundles),
    except the GraphQL Explorer's frame."""
    frame = "'none'"
    if explorer:
        parts = urlsplit(explorer)
        frame = f"{parts.scheme}://{parts.netloc}"
    return (
        "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' ws: wss:; frame-src {frame}"
    )


def voila_command(host: str, port: int, explorer: str | None = None) -> list[str]:
    settings = {"headers": {"Content-Security-Policy": content_security_policy(explorer)}}
    return [
        sys.executable,
        "-m",
        "voila",
        str(NOTEBOOK),
        f"--port={port}",
        "--no-browser",
        f"--Voila.ip={host}",
        "--show_tracebacks=False",  # a failing cell shows a short message, never a traceback
        f"--Voila.tornado_settings={json.dumps(settings)}",
    ]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("DASHBOARD_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DASHBOARD_PORT", "3000")))
    parser.add_argument("--with-server", action="store_true", help="also run the GraphQL server (python -m server)")
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # kill, docker stop: stop the children too, as Ctrl-C does
    env = dict(os.environ)
    children: list[subprocess.Popen[Any]] = []
    try:
        if args.with_server:
            from server.spawn import spawn_server

            try:
                server, env["GRAPHQL_URL"] = spawn_server(port=None, env=env, quiet=False)
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            children.append(server)
            print(
                f"GraphQL: {env['GRAPHQL_URL']}   GraphiQL: {env['GRAPHQL_URL'].rsplit('/graphql', 1)[0]}/graphiql",
                flush=True,
            )
        from dashboard.app import explorer_url
        from toolkit.client import RemoteService

        graphql = env.get("GRAPHQL_URL", "").strip() or "http://127.0.0.1:8080/graphql"
        explorer = env.get("EXPLORER_URL", "").strip() or explorer_url(RemoteService(graphql))
        voila = subprocess.Popen(voila_command(args.host, args.port, explorer), cwd=ROOT, env=env)
        children.append(voila)
        print(
            f"Dashboard: http://{args.host}:{args.port}/   (Ctrl-C stops {'both' if args.with_server else 'it'})",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return next(child.returncode for child in children if child.poll() is not None) or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    raise SystemExit(main())
