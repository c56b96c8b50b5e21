"""Shared fixtures: the real bundled model, converted once per test session.

The conversion cache lives in a fresh temporary directory, so every session
exercises the GGUF -> safetensors conversion for real, then loads from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from toolkit.settings import Settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toolkit-cache")


@pytest.fixture(scope="session")
def settings(cache_dir: Path) -> Settings:
    return Settings(cache_dir=cache_dir, request_timeout_s=120)


@pytest.fixture(scope="session")
def first_load(settings: Settings) -> Any:
    """The bundled model loaded from its GGUF file: the conversion happens here."""
    from toolkit.models import load_model

    return load_model(settings, progress=False)


@pytest.fixture(scope="session")
def loaded(first_load: Any) -> Any:
    return first_load


@pytest.fixture(scope="session")
def service(settings: Settings, loaded: Any) -> Iterator[Any]:
    from toolkit.service import InferenceService

    svc = InferenceService(settings, loaded=loaded)
    yield svc
    svc.close(grace_s=1)


@pytest.fixture(scope="session")
def tokenizer(loaded: Any) -> Any:
    return loaded.tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, loaded: Any) -> Path:
    """A small Llama built from a config (random weights) with the bundled tokenizer, saved as a model dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = loaded.tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def no_template_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny model with its chat template removed."""
    import shutil

    target = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config_file = target / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    return target
