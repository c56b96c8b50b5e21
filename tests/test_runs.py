"""The run log (RUN_LOG): whole lines under concurrent requests, a torn line skipped, a DataFrame back;
and generation defaults that reach every request that leaves a parameter out."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from toolkit import runs
from toolkit.errors import ConfigError
from toolkit.modelsfile import ModelConfig
from toolkit.service import InferenceService
from toolkit.settings import Settings


def test_the_run_log_has_one_whole_line_per_answer_under_concurrency(
    settings: Settings, loaded: Any, tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "runs.jsonl"
    svc = InferenceService(replace(settings, run_log=path), loaded=loaded)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: svc.infer(f"Name a fruit, {i}.", max_new_tokens=8), range(16)))
    finally:
        svc.close(grace_s=0)
    lines = path.read_text().splitlines()
    assert len(lines) == 16
    frame = runs.load(path)
    assert len(frame) == 16 and set(frame["request_id"]) == {r.id for r in results}
    assert set(frame.columns) >= {
        "time",
        "model",
        "adapter",
        "params",
        "search_status",
        "completion_tokens",
        "first_token_s",
        "tokens_per_s",
        "finish_reason",
        "text",
    }
    assert frame["model"].unique().tolist() == [loaded.name] and (frame["completion_tokens"] > 0).all()
    with path.open("a") as f:
        f.write(lines[0][: len(lines[0]) // 2])  # a crash in the middle of a line
    with caplog.at_level(logging.WARNING):
        assert len(runs.load(path)) == 16
    assert "line 17 is not whole JSON" in caplog.text
    records = runs.records(path)
    assert records[0].answer is not None and records[0].messages


def test_models_file_defaults_are_the_models_own(settings: Settings, loaded: Any) -> None:
    configs = [
        ModelConfig(name=loaded.name, defaults={"temperature": 0.3, "frequency_penalty": 0.2, "max_new_tokens": 9})
    ]
    svc = InferenceService(settings, models=configs, loaded=loaded)
    try:
        info = svc.models()[0]
        assert info.defaults["temperature"] == 0.3 and info.defaults["max_new_tokens"] == 9
        record = svc.infer("Hi").run_record
        assert record.params["temperature"] == 0.3 and record.params["frequency_penalty"] == 0.2
        assert record.params["max_new_tokens"] == 9
    finally:
        svc.close(grace_s=0)
    with pytest.raises(ValueError, match="defaults has no 'temprature'"):
        ModelConfig(name="x", defaults={"temprature": 0})


def test_generation_defaults_from_the_environment() -> None:
    settings = Settings.from_env({"GENERATION_DEFAULTS": "temperature=0.2, top_k=40, frequency_penalty=0.3"})
    assert settings.generation_defaults == {"temperature": 0.2, "top_k": 40, "frequency_penalty": 0.3}
    with pytest.raises(ConfigError, match="GENERATION_DEFAULTS"):
        Settings.from_env({"GENERATION_DEFAULTS": "temperature=-1"})
    with pytest.raises(ConfigError, match="keys among"):
        Settings.from_env({"GENERATION_DEFAULTS": "temp=1"})
