"""``python -m dashboard --with-server`` (what ``make run`` runs) and the backend choice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dashboard.__main__ import content_security_policy
from dashboard.app import backend_from_env
from dashboard.config import DashboardSettings
from dashboard.healthcheck import PROBE
from dashboard.voila_hooks import prelaunch
from toolkit.client import RemoteService
from toolkit.errors import ConfigError, ServiceUnavailable
from toolkit.service import InferenceService

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_run_starts_both_prints_both_urls_and_stops_both(cache_dir: Path, first_load: Any) -> None:
    port = free_port()
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(cache_dir), "SERVER_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "--with-server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        graphql_line, dashboard_line = proc.stdout.readline(), proc.stdout.readline()
        assert graphql_line.startswith("GraphQL: http://127.0.0.1:") and "GraphiQL" in graphql_line
        assert dashboard_line.startswith(f"Dashboard: http://127.0.0.1:{port}/") and "stops both" in dashboard_line
        remote = RemoteService(graphql_line.split()[1])
        deadline = time.monotonic() + 90
        page = None
        while time.monotonic() < deadline and page is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    page = response.read().decode()
                    policy = response.headers["Content-Security-Policy"]
            except OSError:
                time.sleep(0.5)
        assert page is not None and "default-src 'self'" in policy and "frame-src http://127.0.0.1:" in policy
        assert remote.health().status in ("loading", "ready")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        assert proc.wait(60) == 0
        with pytest.raises(ServiceUnavailable):  # the server went down with it
            remote.health()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def launch(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m dashboard`` alone (no server there: GRAPHQL_URL points nowhere), in its own session."""
    return subprocess.Popen(
        [sys.executable, "-m", "dashboard", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "GRAPHQL_URL": "http://127.0.0.1:9/graphql", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_sigterm_stops_voila_too() -> None:
    """``kill`` (or a test's ``terminate()``) on the launcher must not leave Voila and its kernel running."""
    port = free_port()
    proc = launch(port, {})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).close()
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the dashboard did not come up")
        proc.terminate()  # SIGTERM to the launcher alone, not its process group
        assert proc.wait(60) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_content_security_policy_allows_only_the_explorer_frame() -> None:
    policy = content_security_policy("http://127.0.0.1:8080/graphiql")
    assert "default-src 'self'" in policy and "frame-src http://127.0.0.1:8080" in policy
    assert "frame-src 'none'" in content_security_policy(None)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch, cache_dir: Path, first_load: Any) -> None:
    monkeypatch.setenv("GRAPHQL_URL", "http://127.0.0.1:9999/graphql")
    monkeypatch.setenv("GRAPHQL_API_KEY", "dash-key-12345678")
    remote = backend_from_env()
    assert (
        isinstance(remote, RemoteService)
        and remote.url == "http://127.0.0.1:9999/graphql"
        and remote.api_key == "dash-key-12345678"
    )
    monkeypatch.setenv("DASHBOARD_BACKEND", "inprocess")
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(cache_dir))
    local = backend_from_env()
    try:
        assert isinstance(local, InferenceService)
        local.wait_ready(timeout=120)
        assert local.health().status == "ready"
    finally:
        local.close(grace_s=0)


REBIND = "rebind.attacker.example"


def page_status(port: int, host: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_launched_dashboard_refuses_a_rebinding_name() -> None:
    """Voila turns jupyter_server's Host check off: the dashboard's page hook refuses a page asked for by a
    name it does not answer to (before any kernel starts), and serves one named in ALLOWED_HOSTS."""
    port = free_port()
    proc = launch(port, {"ALLOWED_HOSTS": "toolkit.example"})
    try:
        deadline = time.monotonic() + 60
        while True:  # a static file: starts no kernel
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{PROBE}", timeout=10).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.3)
        status, page = page_status(port, f"{REBIND}:{port}")
        assert status == 403 and "ALLOWED_HOSTS" in page
        assert page_status(port, f"toolkit.example:{port}")[0] == 200
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_page_hook_checks_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import tornado.web

    def handler(host: str, bound: str = "0.0.0.0") -> Any:
        voila = SimpleNamespace(ip=bound)
        return SimpleNamespace(
            settings={"voila": voila}, request=SimpleNamespace(headers={"Host": host}), xsrf_token="t"
        )

    monkeypatch.delenv("ALLOWED_HOSTS", raising=False)
    for host in ("localhost:3000", "127.0.0.1:3000", "[::1]:3000", "192.168.1.20:3000", "dashboard:3000"):
        prelaunch(handler(host))  # answered: no HTTPError
    with pytest.raises(tornado.web.HTTPError) as refused:
        prelaunch(handler(f"{REBIND}:3000"))
    assert refused.value.status_code == 403 and "ALLOWED_HOSTS" in (refused.value.reason or "")
    prelaunch(handler("dash.internal:3000", bound="dash.internal"))  # the name it is bound to
    monkeypatch.setenv("ALLOWED_HOSTS", "toolkit.example")
    prelaunch(handler("toolkit.example:3000"))
    monkeypatch.setenv("ALLOWED_HOSTS", "*")
    prelaunch(handler(f"{REBIND}:3000"))
    with pytest.raises(ConfigError, match="ALLOWED_HOSTS"):  # a bad value stops the launch
        DashboardSettings.from_env({"ALLOWED_HOSTS": "http://toolkit.example"})
