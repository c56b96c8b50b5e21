"""``python -m server`` as a process: health while loading, then a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gqlhttp import post

ROOT = Path(__file__).resolve().parents[2]


def test_serves_health_while_loading_and_shuts_down_cleanly(cache_dir: Path, first_load: Any) -> None:
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(cache_dir), "SHUTDOWN_GRACE": "30"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "GraphiQL" in banner
        url = banner.split()[1]
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, _, body = post(url, {"query": "{ health { status } }"})
            statuses.append(body["data"]["health"]["status"])
            if statuses[-1] == "READY":
                break
            time.sleep(0.1)
        assert statuses[0] == "LOADING" and statuses[-1] == "READY"

        result: dict[str, Any] = {}
        query = 'mutation { infer(prompt: "Write a long story about a dragon.", params: {temperature: 0, maxNewTokens: 60}) { finishReason text } }'
        worker = threading.Thread(
            target=lambda: result.update(zip(("status", "headers", "body"), post(url, {"query": query}), strict=True))
        )
        worker.start()
        while post(url, {"query": "{ health { active } }"})[2]["data"]["health"]["active"] == 0:  # until it runs
            assert time.monotonic() < deadline + 60 and worker.is_alive(), "the request never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert result["status"] == 200
        assert result["body"]["data"]["infer"]["finishReason"] == "LENGTH"  # finished within the grace period
        assert proc.wait(60) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_settings_exit_with_one_line(cache_dir: Path) -> None:
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(cache_dir), "API_KEYS": "short"}
    out = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "API_KEYS" in out.stderr and "Traceback" not in out.stderr
