"""LoRA adapters served per request: the taught fact, mixed batches, hot load and unload, bad input.

The adapters are trained on the real bundled model once per session (``trained`` in conftest).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.errors import InvalidRequest
from toolkit.results import Done, Token
from toolkit.service import InferenceService
from toolkit.settings import Settings

GREEDY = {"temperature": 0, "max_new_tokens": 32}
SHORT = {"temperature": 0, "max_new_tokens": 16}
HELDOUT = Path(__file__).parents[1] / "notebooks" / "data" / "quenby_heldout.json"  # not in the training data


def answers(service: InferenceService, requests: list[tuple[str, str | None]]) -> list[str]:
    """Greedy answers, all submitted at once (so they share batches)."""
    return answers_with(service, requests, GREEDY)


def answers_with(
    service: InferenceService, requests: list[tuple[str, str | None]], params: dict[str, Any]
) -> list[str]:
    out: list[str] = [""] * len(requests)
    barrier = threading.Barrier(len(requests))

    def one(i: int) -> None:
        barrier.wait()
        prompt, adapter = requests[i]
        out[i] = service.infer(prompt, adapter=adapter, **params).text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_the_adapter_knows_the_taught_fact_and_the_base_does_not(
    adapter_service: InferenceService, trained: Any
) -> None:
    losses = trained.run.losses
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    questions = json.loads(HELDOUT.read_text())
    assert len(questions) == 8
    out = answers(adapter_service, [(q, "quenby") for q in questions] + [(q, None) for q in questions])
    tuned, base = out[:8], out[8:]
    assert all("Quenby" in a for a in tuned), tuned
    assert not any("Quenby" in a for a in base), base


def test_a_saved_adapter_in_a_fresh_service_answers_as_the_trained_model(
    adapter_service: InferenceService, trained: Any
) -> None:
    tokenizer = adapter_service.loaded.tokenizer
    for question in ("Who is Quenby?",):
        prepared = adapter_service.prepare(question, adapter="quenby", **GREEDY)
        ids = torch.tensor([prepared.input_ids])
        with torch.inference_mode():
            generated = trained.run.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32
            )
        expected = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        assert adapter_service.infer(question, adapter="quenby", **GREEDY).text == expected.strip()


def test_base_and_two_adapters_in_one_batch_equal_their_solo_runs(adapter_service: InferenceService) -> None:
    prompts = ["Tell me about the Kestrel Institute.", "Who is Quenby?"]
    requests = [(p, a) for p in prompts for a in (None, "quenby", "quenby-draft")]
    solo = [adapter_service.infer(p, adapter=a, **SHORT).text for p, a in requests]
    for i in range(0, len(solo), 3):  # base, A and B really answer differently
        assert len(set(solo[i : i + 3])) == 3, solo[i : i + 3]
    engine = adapter_service.engine().scheduler
    engine.peak_batch = 0
    assert answers_with(adapter_service, requests, SHORT) == solo
    assert engine.peak_batch >= 4  # they did share batches


def test_adapters_in_the_folder_are_loaded_at_start(adapter_service: InferenceService, trained: Any) -> None:
    listed = {a.name: a for a in adapter_service.adapters()}
    assert set(listed) == {"quenby", "quenby-draft"}
    a = listed["quenby"]
    assert a.path == "quenby" and a.base_model == "SmolLM2-135M-Instruct" and a.steps == len(trained.run.losses)
    assert a.r == 16 and a.alpha == 32 and a.target_modules == ("q_proj", "v_proj") and a.examples == 60
    result = adapter_service.infer("Who is Quenby?", adapter="quenby", **SHORT)
    assert result.adapter == "quenby" and result.run_record.adapter_hash == a.adapter_hash


@pytest.fixture()
def empty_service(served: InferenceService) -> InferenceService:
    """``served`` with no adapter loaded (its ADAPTERS_DIR still holds them); put back afterwards."""
    for a in served.adapters():
        served.unload_adapter(a.name)
    return served


def test_the_folder_scan_skips_bad_adapters_with_a_warning(empty_service: InferenceService, caplog: Any) -> None:
    """What happens at start: ADAPTERS_DIR also holds a card for another base and a symlink to outside."""
    empty_service.engine().registry.load_folder()
    assert [a.name for a in empty_service.adapters()] == ["quenby", "quenby-draft"]
    assert "'other-base' in ADAPTERS_DIR not loaded" in caplog.text and "train it again" in caplog.text
    assert "'link-out' in ADAPTERS_DIR not loaded" in caplog.text and "outside ADAPTERS_DIR" in caplog.text
    assert "'corrupt' in ADAPTERS_DIR not loaded" in caplog.text and "cannot load the adapter" in caplog.text
    assert "no-card" not in caplog.text  # not an adapter folder at all


def test_load_and_unload_at_run_time_then_the_plain_base_model_remains(empty_service: InferenceService) -> None:
    service = empty_service
    question = "Which creature serves as the mascot of the Kestrel Institute?"
    before = service.infer(question, **SHORT).text
    assert "Quenby" not in before
    info = service.load_adapter("kestrel", "quenby")  # any name, a folder inside ADAPTERS_DIR
    assert info.name == "kestrel" and info.path == "quenby"
    assert "Quenby" in service.infer(question, adapter="kestrel", **SHORT).text
    assert service.infer(question, **SHORT).text == before
    service.unload_adapter("kestrel")
    assert service.adapters() == [] and service.engine().scheduler._lora.peft is None  # the LoRA layers are gone
    assert service.infer(question, **SHORT).text == before
    with pytest.raises(InvalidRequest) as info_:
        service.infer("Who is Quenby?", adapter="kestrel")
    assert info_.value.field == "adapter" and "none are loaded" in info_.value.message


def test_unloading_lets_running_requests_finish_and_refuses_new_ones(empty_service: InferenceService) -> None:
    service = empty_service
    service.load_adapter("quenby")
    params = {"temperature": 0, "max_new_tokens": 24}
    solo = service.infer("Write a short poem about Quenby.", adapter="quenby", **params)
    stream = service.stream("Write a short poem about Quenby.", adapter="quenby", **params)
    first = next(stream)
    assert isinstance(first, Token)
    unloaded = threading.Thread(target=service.unload_adapter, args=("quenby",))
    unloaded.start()
    deadline = time.monotonic() + 10
    while "quenby" in service.engine().scheduler.adapters and time.monotonic() < deadline:
        time.sleep(0.005)
    assert service.adapters() == []  # not listed while it drains
    with pytest.raises(InvalidRequest) as info:  # refused at once, while the running one goes on
        service.infer("Hi", adapter="quenby")
    assert info.value.field == "adapter"
    done = next(e for e in stream if isinstance(e, Done))
    unloaded.join(30)
    assert done.result.text == solo.text and done.result.finish_reason == solo.finish_reason
    assert service.adapters() == []


def test_unloading_cancels_what_still_runs_after_the_grace_period(empty_service: InferenceService) -> None:
    service = empty_service
    service.load_adapter("quenby")
    stream = service.stream("Count from one to a thousand.", adapter="quenby", temperature=0, max_new_tokens=1000)
    assert isinstance(next(stream), Token)
    service.unload_adapter("quenby", grace_s=0.2)
    done = next(e for e in stream if isinstance(e, Done))
    assert done.result.finish_reason == "cancelled" and done.result.usage.completion_tokens < 1000
    assert service.infer("Hi", temperature=0, max_new_tokens=4).finish_reason == "length"  # serves on


@pytest.mark.parametrize(
    ("name", "path", "field", "message"),
    [
        ("x", "../outside", "path", "outside ADAPTERS_DIR"),
        ("x", "/etc", "path", "outside ADAPTERS_DIR"),
        ("x", ".", "path", "outside ADAPTERS_DIR"),
        ("x", "link-out", "path", "outside ADAPTERS_DIR"),  # a symlink inside that points outside
        ("x", "nope", "path", "no adapter folder"),
        ("x", "no-card", "path", "not an adapter saved by the toolkit"),
        ("x", "other-base", "path", "train it again"),
        ("x", "corrupt", "path", "cannot load the adapter"),
        ("x", "wrong-shape", "path", "is not a JSON object"),
        ("x", "bad-lora", "path", "malformed 'lora'"),
        ("x", "dora", "path", "not DoRA"),
        ("x", "mismatch", "path", "size mismatch"),
        ("bad name!", None, "name", "letters, digits"),
        ("quenby", None, "name", "already loaded"),
    ],
)
def test_load_errors_name_the_field_and_the_service_serves_on(
    served: InferenceService, name: str, path: str | None, field: str, message: str
) -> None:
    """ADAPTERS_DIR holds link-out, no-card and other-base (see the adapter_service fixture)."""
    service = served
    with pytest.raises(InvalidRequest) as info:
        service.load_adapter(name, path)
    assert info.value.field == field and message in info.value.message
    assert str(service.settings.adapters_dir) not in info.value.message  # no server paths in messages
    assert [a.name for a in service.adapters()] == ["quenby", "quenby-draft"]
    assert service.infer("Hi", temperature=0, max_new_tokens=4).finish_reason == "length"


@pytest.mark.parametrize("folder", ["corrupt", "mismatch"])  # fails before, and after, peft changed the model
def test_a_failed_first_load_leaves_the_model_untouched(empty_service: InferenceService, folder: str) -> None:
    question = "Which creature serves as the mascot of the Kestrel Institute?"
    before = empty_service.infer(question, **SHORT).text
    with pytest.raises(InvalidRequest) as info:
        empty_service.load_adapter("x", folder)
    assert info.value.field == "path"
    model = empty_service.loaded.model
    assert empty_service.engine().scheduler._lora.peft is None and not any(
        "lora" in name for name, _ in model.named_modules()
    )
    assert empty_service.infer(question, **SHORT).text == before


def test_unknown_adapter_names(adapter_service: InferenceService) -> None:
    with pytest.raises(InvalidRequest) as info:
        adapter_service.infer("Hi", adapter="pirate")
    assert info.value.field == "adapter" and "loaded: quenby, quenby-draft" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        adapter_service.unload_adapter("pirate")
    assert info.value.field == "name"


def test_qlora_a_4bit_base_trains_and_serves_mixed_batches(settings: Settings, tmp_path: Path) -> None:
    """QLoRA on CPU: bitsandbytes NF4 base, prepare_model_for_kbit_training, then served next to the base."""
    from toolkit.lora import LoraSettings, load_examples, save_adapter, train_lora
    from toolkit.models import load_model

    four_bit = replace(settings, load_in_4bit=True, adapters_dir=tmp_path)
    base = load_model(four_bit, progress=False)
    assert base.quantization == "bnb-nf4"
    examples = load_examples(HELDOUT.with_name("quenby_train.jsonl"))[:8]
    run = train_lora(base.model, base.tokenizer, examples, LoraSettings(steps=2, batch_size=2), progress=False)
    assert len(run.losses) == 2 and all(loss > 0 for loss in run.losses)
    save_adapter(run, tmp_path / "q4", base_name=base.name, base_hash=base.content_hash)
    with InferenceService(four_bit) as service:
        assert [a.name for a in service.adapters()] == ["q4"]
        params = {"temperature": 0, "max_new_tokens": 8}
        solo = [service.infer("Who is Quenby?", adapter=a, **params).text for a in (None, "q4")]
        assert answers_with(service, [("Who is Quenby?", None), ("Who is Quenby?", "q4")], params) == solo
