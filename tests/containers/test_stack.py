"""The containers built and run for real, the way a new user runs them on a machine without a GPU.

Runs with ``make test-containers`` (CONTAINER_TESTS=1; ``.ci/run`` runs it after the suite); skipped
otherwise. It needs root, debootstrap and Docker (a daemon is started, and stopped again by its
process id, if none runs). Where Docker Hub is out of reach, the two base images are built from
Debian packages first (scripts/base-images.sh). Docker's own data stays where the machine keeps it,
so that the next run rebuilds only what changed.

Timings are printed and written to tests/screenshots/containers.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "screenshots"
PROJECT = "llmtoolkit-smoke"
TOKEN = "smoke-token-0123456789"
PORTS = (8080, 3000, 8888)
CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    os.environ.get("CONTAINER_TESTS") != "1", reason="the container tests run with make test-containers"
)
TIMINGS: dict[str, Any] = {}


def docker_client() -> str:
    # Debian's client (20.10) talks to Debian's engine; another one earlier on PATH may not
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


DOCKER = docker_client()


def run(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 1800) -> str:
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def engine_up() -> bool:
    return subprocess.run([DOCKER, "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    """A running Docker engine; one this test starts is stopped by this test, by its own process id."""
    started = None
    if not engine_up():
        if shutil.which("dockerd") is None:
            pytest.fail("no Docker engine: apt-get install docker.io (.ci/run installs it)")
        log = open(SHOTS.parent / "dockerd.log", "w")  # noqa: SIM115  (open while the daemon runs)
        started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not engine_up():
            assert started.poll() is None, (SHOTS.parent / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd did not come up within 60 s"
            time.sleep(0.5)
    yield
    if started is not None:
        started.send_signal(signal.SIGTERM)
        started.wait(60)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .env of the test's own (a developer's .env is left alone): the bundled model, empty MODEL_ID."""
    text = (ROOT / ".env.example").read_text().replace("JUPYTER_TOKEN=\n", f"JUPYTER_TOKEN={TOKEN}\n")
    text += "\nDASHBOARD_KERNEL_IDLE=20\n"
    path = tmp_path_factory.mktemp("containers") / "smoke.env"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def compose_env(env_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DOCKER": DOCKER,
        "ENV_FILE": str(env_file),
        "COMPOSE_PROJECT_NAME": PROJECT,
        "BUILD_NETWORK": "host",  # this machine reaches the package registries from the host's network only
    }


def compose(compose_env: dict[str, str], *args: str, check: bool = True, cwd: Path = ROOT) -> str:
    script = "source scripts/compose.sh --cpu && compose " + " ".join(args)
    out = subprocess.run(["bash", "-c", script], cwd=cwd, env=compose_env, capture_output=True, text=True, timeout=1800)
    if check and out.returncode != 0:
        raise AssertionError(
            f"compose {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out.stdout


def timed(name: str) -> Any:
    class Timer:
        def __enter__(self) -> None:
            self.start = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            TIMINGS[name] = round(time.monotonic() - self.start, 1)
            print(f"{name}: {TIMINGS[name]} s", flush=True)

    return Timer()


def image_size() -> float:
    return int(run(DOCKER, "image", "inspect", "-f", "{{.Size}}", "llm-toolkit:latest").strip()) / 1e9


@pytest.fixture(scope="module")
def image(engine: None, compose_env: dict[str, str]) -> None:
    with timed("base_images_s"):
        print(run("bash", "scripts/base-images.sh", env=compose_env), end="")
    previous = run(DOCKER, "images", "-q", "llm-toolkit:latest").strip()
    with timed("image_build_s"):
        compose(compose_env, "build")
    TIMINGS["image_build_cache"] = "warm (an earlier build's layers)" if previous else "cold"
    if previous and previous != run(DOCKER, "images", "-q", "llm-toolkit:latest").strip():
        # the image this build replaced (~6 GB, nameless now): its layers stay cached only while they are shared
        run(DOCKER, "image", "rm", previous, check=False)
    TIMINGS["image_size_gb"] = round(image_size(), 2)


def test_a_one_line_code_change_rebuilds_in_under_two_minutes(
    image: None, compose_env: dict[str, str], tmp_path: Path
) -> None:
    context = tmp_path / "context"
    files = run("git", "ls-files", "--cached", "--others", "--exclude-standard").split()
    for name in files:
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    init = context / "toolkit" / "__init__.py"
    init.write_text(init.read_text() + "\n# a one-line change\n")
    with timed("rebuild_after_code_change_s"):
        # the way a user rebuilds (make restart): compose. The docker CLI packs the context with other
        # file owners than compose does, so its COPY layers would not match compose's cache.
        compose({**compose_env, "IMAGE": "llm-toolkit:smoke-rebuild"}, "build", "server", cwd=context)
    run(DOCKER, "image", "rm", "llm-toolkit:smoke-rebuild")
    assert TIMINGS["rebuild_after_code_change_s"] < 120


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def stack(image: None, compose_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    busy = [p for p in PORTS if not port_free(p)]
    assert not busy, f"ports {busy} are taken on this machine: stop what listens there first"
    compose(compose_env, "down", "--remove-orphans", check=False)
    start = time.monotonic()
    compose(compose_env, "up", "-d")
    try:
        from toolkit.client import RemoteService

        RemoteService("http://127.0.0.1:8080/graphql").wait_ready(timeout_s=300)
        TIMINGS["stack_ready_s"] = round(time.monotonic() - start, 1)
        print(f"stack_ready_s (server READY after up): {TIMINGS['stack_ready_s']} s", flush=True)
        yield {"graphql": "http://127.0.0.1:8080/graphql", "dashboard": "http://127.0.0.1:3000/", "up_at": start}
    finally:
        with timed("down_s"):
            run("bash", "scripts/stop.sh", "--cpu", env=compose_env)
        SHOTS.mkdir(exist_ok=True)
        (SHOTS / "containers.json").write_text(json.dumps(TIMINGS, indent=2))
        print("container timings:", json.dumps(TIMINGS), flush=True)


def containers(compose_env: dict[str, str]) -> dict[str, str]:
    """service -> container id, of this project."""
    out = run(
        DOCKER,
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
        "--format",
        '{{.ID}} {{.Label "com.docker.compose.service"}}',
    )
    return {line.split()[1]: line.split()[0] for line in out.splitlines() if line.strip()}


def test_every_health_check_passes(stack: dict[str, Any], compose_env: dict[str, str]) -> None:
    ids = containers(compose_env)
    assert set(ids) == {"server", "dashboard", "lab"}
    deadline = time.monotonic() + 180
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {s: run(DOCKER, "inspect", "-f", "{{.State.Health.Status}}", c).strip() for s, c in ids.items()}
        if set(states.values()) == {"healthy"}:
            break
        time.sleep(2)
    assert set(states.values()) == {"healthy"}, states
    TIMINGS["all_healthy_s"] = round(time.monotonic() - stack["up_at"], 1)


def test_the_server_answers_over_graphql(stack: dict[str, str]) -> None:
    from toolkit.client import RemoteService

    remote = RemoteService(stack["graphql"])
    health = remote.health()
    assert health.status == "ready" and "SmolLM2" in health.model  # MODEL_ID= in .env: the bundled model
    assert "Paris" in remote.infer("What is the capital of France?", temperature=0, max_new_tokens=24).text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_dashboard_answers_in_chromium(stack: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(stack["dashboard"])
        page.wait_for_selector(".tk-prompt input", timeout=120_000)
        # the page opens the newest kept conversation (the volume keeps earlier runs'): a new chat, so that the
        # answer waited for is this one, not a finished one that was there before the question
        page.click(".tk-new-chat")
        page.wait_for_function("() => document.querySelectorAll('.tk-answer').length === 0", timeout=30_000)
        page.fill(".tk-prompt input", "What is the capital of France?")
        page.press(".tk-prompt input", "Enter")
        page.wait_for_function(
            "() => { const a = document.querySelectorAll('.tk-answer'); return a.length === 1 && a[0].querySelector('.tk-stats, .tk-error'); }",
            timeout=120_000,
        )
        answer = page.locator(".tk-answer").all_inner_texts()[-1]
        page.screenshot(path=str(SHOTS / "containers-dashboard.png"))
        browser.close()
    assert "Paris" in answer, answer


def lab(path: str, *, token: str | None = TOKEN, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:8888{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_the_lab_needs_its_token_and_can_save_a_notebook(stack: dict[str, str]) -> None:
    assert lab("/api/contents", token=None)[0] == 403
    status, listing = lab("/api/contents")
    assert status == 200 and any(item["name"] == "01_quickstart.ipynb" for item in listing["content"])
    name = f"smoke-{os.getpid()}.ipynb"
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    try:
        status, _ = lab(f"/api/contents/{name}", method="PUT", body={"type": "notebook", "content": notebook})
        assert status == 201, "the lab could not save into ./notebooks"
        assert (ROOT / "notebooks" / name).is_file()  # it landed in the bind mount, on the host
    finally:
        lab(f"/api/contents/{name}", method="DELETE")  # JupyterLab moves it to notebooks/.Trash-<uid>
        (ROOT / "notebooks" / name).unlink(missing_ok=True)
        for left in (ROOT / "notebooks").glob(f".Trash-*/*/{name}*"):
            left.unlink()


def dashboard_kernels(compose_env: dict[str, str]) -> int:
    container = containers(compose_env)["dashboard"]
    return sum("ipykernel" in line for line in run(DOCKER, "top", container, "-o", "pid,args").splitlines())


def test_health_probes_start_no_dashboard_kernels(stack: dict[str, str], compose_env: dict[str, str]) -> None:
    container = containers(compose_env)["dashboard"]
    before = dashboard_kernels(compose_env)
    end = time.monotonic() + 60
    probes = 0
    while time.monotonic() < end:  # the container's own health check, as Docker runs it, every 2 s
        run(DOCKER, "exec", container, "python", "-m", "dashboard.healthcheck", "http://127.0.0.1:3000")
        probes += 1
        time.sleep(2)
    after = dashboard_kernels(compose_env)
    TIMINGS["dashboard_kernels_before_after_a_minute_of_probes"] = [before, after, probes]
    assert after <= before, (before, after)


def test_the_dashboard_keeps_evaluations_on_the_volume(stack: dict[str, str], compose_env: dict[str, str]) -> None:
    """The Evaluate tab's store is TOOLKIT_STORE on the toolkit-cache volume (kept across restarts), writable there."""
    container = containers(compose_env)["dashboard"]
    where = run(
        DOCKER,
        "exec",
        container,
        "python",
        "-c",
        "from toolkit.settings import Settings; print(Settings.from_env().store)",
    )
    assert where.strip() == "/data/toolkit/toolkit.db"
    assert run(DOCKER, "exec", container, "python", "-m", "toolkit.evals", "list").startswith("id")


def test_down_leaves_nothing_running(stack: dict[str, str], compose_env: dict[str, str]) -> None:
    run("bash", "scripts/stop.sh", "--cpu", env=compose_env)
    assert containers(compose_env) == {}
    assert all(port_free(p) for p in PORTS)
