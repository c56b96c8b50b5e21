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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dashboard.config import DashboardSettings
from toolkit.errors import ToolkitError

NOTEBOOK = Path(__file__).with_name("chat.ipynb")
SHARE = Path(__file__).with_name("share")  # the dashboard's Voila template: share/voila/templates/toolkit
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


def voila_config(explorer: str | None) -> dict[str, Any]:
    """Voila's configuration: the page's headers, and the dashboard's template (Voila's lab template
    without its CDN stylesheets)."""
    return {
        "Voila": {"tornado_settings": {"headers": {"Content-Security-Policy": content_security_policy(explorer)}}},
        "VoilaConfiguration": {"template": "toolkit"},
    }


def voila_command(
    settings: DashboardSettings, explorer: str | None = None, config_dir: Path | None = None
) -> list[str]:
    """Voila's command line; its configuration goes in a file in ``config_dir`` (a dict on the command line
    is deprecated in traitlets), found before Voila's usual config paths. ``JUPYTER_PATH`` must include
    ``SHARE`` (``voila_env``), where the dashboard's template lies."""
    from jupyter_core.paths import jupyter_config_path

    folder = config_dir or Path(tempfile.mkdtemp(prefix="dashboard-voila-"))
    (folder / "voila.json").write_text(json.dumps(voila_config(explorer)))
    # a callable cannot be said in JSON: the hook that sets the _xsrf cookie Voila's unload beacon sends back
    (folder / "voila.py").write_text(
        "from dashboard.voila_hooks import prelaunch\n\nc.VoilaConfiguration.prelaunch_hook = prelaunch\n"
    )
    paths = [str(folder), str(ROOT), *jupyter_config_path()]
    return [
        sys.executable,
        "-m",
        "voila",
        str(NOTEBOOK),
        f"--port={settings.port}",
        "--no-browser",
        f"--Voila.ip={settings.host}",
        "--show_tracebacks=False",  # a failing cell shows a short message, never a traceback
        *(f"--Voila.config_file_paths={path}" for path in paths),
        # every page view starts a kernel: one whose tab has closed (or a probe that never connected)
        # is shut down after DASHBOARD_KERNEL_IDLE seconds; a page still open keeps its kernel
        f"--MappingKernelManager.cull_idle_timeout={settings.kernel_idle_s}",
        f"--MappingKernelManager.cull_interval={settings.cull_interval_s}",
        "--MappingKernelManager.cull_connected=False",
    ]


def voila_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the dashboard's share folder first on ``JUPYTER_PATH`` (Voila finds templates there)."""
    paths = [str(SHARE), *filter(None, env.get("JUPYTER_PATH", "").split(os.pathsep))]
    return {**env, "JUPYTER_PATH": os.pathsep.join(paths)}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__)
    parser.add_argument("--host", default=None, help="address to bind (DASHBOARD_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (DASHBOARD_PORT, default 3000)")
    parser.add_argument("--with-server", action="store_true", help="also run the GraphQL server (python -m server)")
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # kill, docker stop: stop the children too, as Ctrl-C does
    env = dict(os.environ)
    children: list[subprocess.Popen[Any]] = []
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = DashboardSettings.from_env(**overrides)
    except ToolkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
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

        explorer = explorer_url(RemoteService.from_env(env), settings)
        voila = subprocess.Popen(voila_command(settings, explorer), cwd=ROOT, env=voila_env(env))
        children.append(voila)
        print(
            f"Dashboard: http://{settings.host}:{settings.port}/   "
            f"(Ctrl-C stops {'both' if args.with_server else 'it'})",
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
