"""Several models behind one service: the models file, its errors, and two local models at once."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import ConfigError, InvalidRequest, ModelNotReady
from toolkit.modelsfile import ModelConfig, configured_models, read_models_file
from toolkit.service import InferenceService
from toolkit.settings import Settings

GOOD = """
[[models]]
name = "smollm2"
engine = "local"
source = "bundled"

[[models]]
name = "smollm2-4bit"
source = "bundled"
load_in_4bit = true

[[models]]
name = "smollm2-vllm"
engine = "openai"
base_url = "http://127.0.0.1:8011/v1"
served_model = "smollm2"
api_key_env = "VLLM_API_KEY"
max_in_flight = 8
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_a_models_file_lists_local_and_remote_models(tmp_path: Path) -> None:
    models = read_models_file(write(tmp_path, GOOD), {"VLLM_API_KEY": "secret-key-123"})
    assert [m.name for m in models] == ["smollm2", "smollm2-4bit", "smollm2-vllm"]
    assert models[1].load_in_4bit and models[1].engine == "local"
    remote = models[2]
    assert remote.engine == "openai" and remote.served_model == "smollm2" and remote.max_in_flight == 8
    assert remote.api_key == "secret-key-123" and "secret-key-123" not in repr(remote)  # never in logs


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[models]]\nname = "a"\nsorce = "bundled"\n', "[[models]] #1 ('a'): unknown key 'sorce' for engine = local"),
        ('[[models]]\nname = "a"\n[[models]]\nname = "a"\n', "[[models]] #2 ('a'): duplicate name 'a'"),
        ('[[models]]\nsource = "bundled"\n', "[[models]] #1: missing key 'name'"),
        ('[[models]]\nname = "r"\nengine = "openai"\n', "[[models]] #1 ('r'): missing key 'base_url'"),
        (
            '[[models]]\nname = "r"\nengine = "openai"\nbase_url = "localhost:8000"\n',
            "key 'base_url': base_url must be an http(s) URL",
        ),
        ('[[models]]\nname = "a"\nload_in_4bit = "yes"\n', "key 'load_in_4bit' has the wrong type (str)"),
        ('[[models]]\nname = "a"\nengine = "tgi"\n', "key 'engine' must be local or openai"),
        (
            '[[models]]\nname = "r"\nengine = "openai"\nbase_url = "http://x/v1"\napi_key_env = "NOPE_KEY"\n',
            "api_key_env' names NOPE_KEY, which is not set",
        ),
        (
            '[[models]]\nname = "r"\nengine = "openai"\nbase_url = "http://x/v1"\nsource = "bundled"\n',
            "unknown key 'source' for engine = openai",
        ),
        ("models = 3\n", "no [[models]] table"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_a_bad_models_file_names_the_file_the_table_and_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_models_file(path, {})
    assert info.value.field == "MODELS_FILE" and str(path) in info.value.message and words in info.value.message


def test_a_models_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_bytes('[[models]]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        read_models_file(path, {})
    assert info.value.field == "MODELS_FILE" and str(path) in info.value.message and "UTF-8" in info.value.message


def test_a_bad_models_file_fails_the_start_of_the_server(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = write(tmp_path, '[[models]]\nname = "a"\nsorce = "bundled"\n')
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0"],
        cwd=root,
        env={**os.environ, "MODELS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "MODELS_FILE: " in out.stderr and "unknown key 'sorce'" in out.stderr
    assert "Traceback" not in out.stderr


def test_without_a_models_file_model_id_works_as_before(settings: Settings) -> None:
    (model,) = configured_models(settings)
    assert model.name == "SmolLM2-135M-Instruct" and model.source == "bundled" and model.engine == "local"
    (hub,) = configured_models(replace(settings, model_id="meta-llama/Llama-3.2-3B-Instruct", load_in_4bit=True))
    assert hub.name == "meta-llama/Llama-3.2-3B-Instruct" and hub.load_in_4bit


@pytest.fixture(scope="module")
def two_local(settings: Settings, tmp_path_factory: pytest.TempPathFactory, loaded: Any) -> Any:
    """The bundled model in full precision and in 4-bit, as two names; and a third that cannot load."""
    path = tmp_path_factory.mktemp("models") / "models.toml"
    path.write_text(
        '[[models]]\nname = "full"\nsource = "bundled"\n\n'
        '[[models]]\nname = "nf4"\nsource = "bundled"\nload_in_4bit = true\n\n'
        '[[models]]\nname = "broken"\nsource = "./no/such/model"\n'
    )
    svc = InferenceService(replace(settings, models_file=path, search_provider="none"))
    svc.start(wait=False, progress=False)
    svc.wait_ready(timeout=300)
    svc.wait_ready(timeout=300, model="nf4")
    broken = svc.registry.route("broken")  # its load fails: wait for that too, not only for the two that load
    svc.registry.wait(broken, timeout=300)
    yield svc
    svc.close(grace_s=0)


def test_two_local_models_at_once_each_answers_as_itself(two_local: InferenceService) -> None:
    statuses = {m.name: m.status for m in two_local.health().models}
    assert statuses == {"full": "ready", "nf4": "ready", "broken": "error"}  # one failing leaves the others serving
    assert two_local.health().status == "ready"
    info = {m.id: m for m in two_local.models()}
    assert info["nf4"].quantization == "bnb-nf4" and info["full"].quantization is None
    assert info["broken"].error and "neither an existing file" in info["broken"].error
    question = {"temperature": 0, "max_new_tokens": 24}
    answers: dict[str, Any] = {}
    threads = [
        threading.Thread(
            target=lambda m=m: answers.__setitem__(
                m, two_local.infer("What is the capital of France?", model=m, **question)
            )
        )
        for m in ("full", "nf4", "full", "nf4")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(answers) == {"full", "nf4"}
    for name, result in answers.items():  # each request was answered by the model it named
        record = result.run_record
        assert result.model == record.model == name
        assert record.quantization == ("bnb-nf4" if name == "nf4" else None)
        assert record.model_hash == info[name].content_hash
    assert "Paris" in answers["full"].text
    with pytest.raises(ModelNotReady, match="'broken' failed to load"):
        two_local.infer("Hi", model="broken")
    with pytest.raises(InvalidRequest, match="'full', 'nf4', 'broken'"):
        two_local.infer("Hi", model="unknown")


def test_each_local_model_has_its_own_engine_and_adapters(two_local: InferenceService) -> None:
    assert two_local.engine("full") is not two_local.engine("nf4")
    assert two_local.engine() is two_local.engine("full")  # the first is the default
    assert two_local.adapters("nf4") == [] and two_local.adapters("broken") == []
    config = two_local.registry.entries["nf4"].config
    assert isinstance(config, ModelConfig) and config.load_in_4bit
