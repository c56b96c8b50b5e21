from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import ConfigError
from toolkit.settings import Settings


def test_defaults_mean_the_bundled_model() -> None:
    s = Settings.from_env({})
    assert s.model_id is None
    assert s.model_label == "bundled:SmolLM2-135M-Instruct"
    assert (s.dtype, s.device, s.load_in_4bit) == ("auto", "auto", False)


def test_reads_every_variable() -> None:
    env = {
        "MODEL_ID": "meta-llama/Llama-3.2-3B-Instruct",
        "HF_TOKEN": "hf_secret",
        "LOAD_IN_4BIT": "true",
        "DTYPE": "bfloat16",
        "DEVICE": "cpu",
        "TOOLKIT_CACHE_DIR": "/tmp/somewhere",
        "MAX_NEW_TOKENS_LIMIT": "512",
        "MAX_INPUT_TOKENS": "2048",
        "MAX_BATCH_SIZE": "8",
        "MAX_QUEUE": "10",
        "REQUEST_TIMEOUT": "30.5",
    }
    s = Settings.from_env(env)
    assert s.model_id == "meta-llama/Llama-3.2-3B-Instruct"
    assert s.hf_token == "hf_secret"
    assert s.load_in_4bit is True
    assert s.dtype == "bfloat16" and s.device == "cpu"
    assert s.cache_dir == Path("/tmp/somewhere")
    assert (s.max_new_tokens_limit, s.max_input_tokens, s.max_batch_size, s.max_queue) == (512, 2048, 8, 10)
    assert s.request_timeout_s == 30.5
    assert "hf_secret" not in repr(s)


def test_keyword_arguments_win() -> None:
    s = Settings.from_env({"MODEL_ID": "a/b", "DTYPE": "float16"}, model_id="c/d")
    assert s.model_id == "c/d"
    assert s.dtype == "float16"


def test_empty_model_id_is_the_default() -> None:
    assert Settings.from_env({"MODEL_ID": "  "}).model_id is None


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"DTYPE": "fp8"}, "DTYPE"),
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"LOAD_IN_4BIT": "maybe"}, "LOAD_IN_4BIT"),
        ({"MAX_QUEUE": "lots"}, "MAX_QUEUE"),
        ({"MAX_QUEUE": "0"}, "MAX_QUEUE"),
        ({"MAX_BATCH_SIZE": "-1"}, "MAX_BATCH_SIZE"),
        ({"MAX_NEW_TOKENS_LIMIT": "0"}, "MAX_NEW_TOKENS_LIMIT"),
        ({"REQUEST_TIMEOUT": "soon"}, "REQUEST_TIMEOUT"),
        ({"REQUEST_TIMEOUT": "0"}, "REQUEST_TIMEOUT"),
        ({"ALLOWED_HOSTS": "http://toolkit.example"}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "toolkit.example:8080"}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "*.example.com"}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "toolkit.example/path"}, "ALLOWED_HOSTS"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.field == var
    assert var in str(info.value)


def test_allowed_hosts_are_names_in_lower_case() -> None:
    assert Settings.from_env({}).allowed_hosts == ()
    hosts = Settings.from_env({"ALLOWED_HOSTS": " Toolkit.Example. , lab.internal,[::1],10.0.0.7, lab.internal"})
    assert hosts.allowed_hosts == ("toolkit.example", "lab.internal", "::1", "10.0.0.7")
    assert Settings.from_env({"ALLOWED_HOSTS": "*"}).allowed_hosts == ("*",)
    assert Settings(allowed_hosts=("A.example",)).allowed_hosts == ("a.example",)  # in code too
    with pytest.raises(ConfigError, match="ALLOWED_HOSTS"):
        Settings(allowed_hosts="a.example")  # type: ignore[arg-type]  # a string is not a list of names


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="modle_id"):
        Settings.from_env({}, modle_id="x")


def test_nothing_is_read_or_imported_at_import_time() -> None:
    code = (
        "import sys, toolkit, toolkit.settings, toolkit.params, toolkit.service, toolkit.models;"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print(','.join(heavy) or 'light')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"DTYPE": "not-a-dtype", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "light"
