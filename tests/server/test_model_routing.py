"""Several models over GraphQL: listing, per-model health, routing by `model`, a remote model's adapters,
and a remote server's failure as 503 ENGINE_UNAVAILABLE; the same through RemoteService."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gqlhttp import code_of, post

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
from fake_openai import ANSWER, FakeServer, start_fake

from toolkit.client import RemoteService
from toolkit.errors import EngineUnavailable, InvalidRequest
from toolkit.modelsfile import ModelConfig
from toolkit.service import InferenceService
from toolkit.settings import Settings


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = start_fake()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def multi(settings: Settings, loaded: Any, fake: FakeServer) -> Iterator[InferenceService]:
    configs = [
        ModelConfig(name=loaded.name),
        ModelConfig("remote", engine="openai", base_url=fake.base_url, served_model="ok"),
        ModelConfig("remote-down", engine="openai", base_url=fake.base_url, served_model="error500"),
    ]
    svc = InferenceService(replace(settings, search_provider="none"), models=configs, loaded=loaded)
    svc.start(wait=False, progress=False)
    svc.wait_ready(timeout=30, model="remote")
    svc.wait_ready(timeout=30, model="remote-down")
    yield svc
    svc.close(grace_s=0)


@pytest.fixture(scope="module")
def running(multi: InferenceService) -> Iterator[Any]:
    from conftest import start_server

    from server.config import ServerSettings

    server = start_server(multi, ServerSettings(port=0, rate_burst=10_000))
    yield server
    server.stop()


def test_models_and_health_list_every_model(running: Any, loaded: Any) -> None:
    query = "{ models { id engine status default servedModel contextLength } health { status models { name engine status } } }"
    _, _, body = post(running.url, {"query": query})
    models = {m["id"]: m for m in body["data"]["models"]}
    assert models[loaded.name] == {**models[loaded.name], "engine": "local", "status": "READY", "default": True}
    assert models["remote"] == {
        "id": "remote",
        "engine": "openai",
        "status": "READY",
        "default": False,
        "servedModel": "ok",
        "contextLength": 2048,
    }
    assert {m["name"]: m["engine"] for m in body["data"]["health"]["models"]} == {
        loaded.name: "local",
        "remote": "openai",
        "remote-down": "openai",
    }


def test_model_routes_every_operation(running: Any) -> None:
    infer = 'mutation($m: String) { infer(prompt: "Capital of France?", model: $m, params: {temperature: 0, maxNewTokens: 12}) { text model runRecord } }'
    _, _, body = post(running.url, {"query": infer, "variables": {"m": "remote"}})
    assert body["data"]["infer"]["text"] == ANSWER and body["data"]["infer"]["runRecord"]["engine"] == "openai"
    _, _, body = post(running.url, {"query": '{ adapters(model: "remote") { name baseModel } }'})
    assert body["data"]["adapters"] == [{"name": "ok-lora", "baseModel": "ok"}]
    _, _, body = post(running.url, {"query": infer, "variables": {"m": "nope"}})
    assert code_of(body) == "BAD_USER_INPUT" and body["errors"][0]["extensions"]["field"] == "model"


def test_a_remote_failure_is_503_engine_unavailable_with_retry_after(running: Any) -> None:
    infer = 'mutation { infer(prompt: "Hi", model: "remote-down", params: {maxNewTokens: 4}) { text } }'
    status, headers, body = post(running.url, {"query": infer})
    assert status == 503 and headers["Retry-After"] == "1" and code_of(body) == "ENGINE_UNAVAILABLE"
    assert "remote-down" in body["errors"][0]["message"] and "127.0.0.1" not in body["errors"][0]["message"]


def test_remote_service_has_the_same_view(running: Any, loaded: Any) -> None:
    remote = RemoteService(running.url)
    models = {m.id: m for m in remote.models()}
    assert models["remote"].engine == "openai" and models["remote"].status == "ready" and models[loaded.name].default
    assert [m.name for m in remote.health().models] == [loaded.name, "remote", "remote-down"]
    assert remote.infer("Hi", model="remote", temperature=0, max_new_tokens=8).text == ANSWER
    assert [a.name for a in remote.adapters("remote")] == ["ok-lora"]
    with pytest.raises(EngineUnavailable, match="remote-down"):
        remote.infer("Hi", model="remote-down", max_new_tokens=4)
    with pytest.raises(InvalidRequest) as info:
        remote.infer("Hi", model="nope")
    assert info.value.field == "model"
