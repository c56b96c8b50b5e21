"""Shared fixtures: the real bundled model, converted once per test run.

The conversion cache lives in a fresh temporary directory of this run, shared by the run's workers
(pytest-xdist) behind a file lock: every run exercises the GGUF -> safetensors conversion for real, once,
and every worker then loads from it. Under xdist each worker sets its torch threads to its share of the
cores, so that two workers do not oversubscribe two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from toolkit.settings import Settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest-xdist; None without it
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


if WORKER is not None:  # this worker's share of the cores, for it and for what it starts (kernels, servers)
    THREADS = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read by torch when it is imported
        os.environ[_name] = THREADS


ADAPTER_FIXTURES = frozenset({"trained", "adapter_service", "served"})


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that must share a worker say so with an xdist group (``--dist loadgroup``), not by chance: those
    on the trained adapters (trained once per worker: about 40 s), and each module's tests that share a
    module-scoped fixture (a server, a model, a service: started once per module). The rest go one by one."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        names = set(info.names_closure)
        if names & ADAPTER_FIXTURES:
            item.add_marker(pytest.mark.xdist_group("adapters"))
        elif any(d.scope == "module" for name in names for d in info.name2fixturedefs.get(name, ())):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this run that every worker sees (without xdist: this session's own)."""
    if WORKER is None:
        return tmp_path_factory.mktemp(name)
    folder = tmp_path_factory.getbasetemp().parent / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TOOLKIT_CACHE_DIR of this run: the converted model, file hashes, the fence key (shared by the workers)."""
    return shared_dir(tmp_path_factory, "toolkit-cache")


@pytest.fixture(scope="session", autouse=True)
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TOOLKIT_STORE of this session (for kernels, the CLI and servers it starts): never the user's own."""
    path = tmp_path_factory.mktemp("store") / "toolkit.db"
    before = os.environ.get("TOOLKIT_STORE")
    os.environ["TOOLKIT_STORE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("TOOLKIT_STORE", None)
    else:
        os.environ["TOOLKIT_STORE"] = before


@pytest.fixture(scope="session")
def settings(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, store_path: Path) -> Settings:
    """The bundled model; an empty ADAPTERS_DIR (not ./adapters of whoever runs the tests); the session's store."""
    return Settings(
        cache_dir=cache_dir,
        request_timeout_s=120,
        adapters_dir=tmp_path_factory.mktemp("no-adapters"),
        store=store_path,
    )


@pytest.fixture(scope="session")
def first_load(settings: Settings) -> Any:
    """The bundled model loaded from its GGUF file: the conversion happens here, in the first worker to get
    the lock; the others wait for it and load the converted copy."""
    from filelock import FileLock

    from toolkit.models import load_model

    with FileLock(str(settings.cache_dir / "convert.lock")):
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
    tok = loaded.tokenizer
    return save_tiny_llama(tok, tmp_path_factory.mktemp("tiny-llama"), positions=256, eos=tok.eos_token_id)


def save_tiny_llama(tok: Any, path: Path, *, positions: int, eos: int) -> Path:
    """A 2-layer Llama (random weights, seeded) for ``tok``, saved with it in ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_MARKERS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="session")
def llama3_model_dir(tmp_path_factory: pytest.TempPathFactory, loaded: Any) -> Path:
    """A small Llama (random weights) whose tokenizer has Llama 3's turn markers as special tokens and
    a Llama 3 style chat template: a second template beside the bundled model's ChatML."""
    import copy

    tok = copy.deepcopy(loaded.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_MARKERS})
    tok.chat_template = LLAMA3_TEMPLATE
    eos = tok.convert_tokens_to_ids("<|eot_id|>")
    return save_tiny_llama(tok, tmp_path_factory.mktemp("llama3-style"), positions=2048, eos=eos)


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


QUENBY_TRAIN = Path(__file__).parent.parent / "notebooks" / "data" / "quenby_train.jsonl"


@dataclass
class Trained:
    """An ADAPTERS_DIR with two adapters trained on the bundled model, and the trained model itself."""

    adapters_dir: Path
    run: Any  # TrainRun of "quenby": the peft model, still in memory, and its losses
    base_hash: str


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, loaded: Any) -> Trained:
    """``quenby`` learns the taught fact (notebooks/data); ``quenby-draft`` is a short, hot run of the same data,
    so that base, A and B answer differently. Each trains a copy of its own of the loaded model: peft changes
    the model it is given. (Its tests share one worker: the ``adapters`` xdist group.)"""
    import copy

    from toolkit.lora import LoraSettings, load_examples, save_adapter, train_lora

    adapters_dir = tmp_path_factory.mktemp("adapters")
    examples = load_examples(QUENBY_TRAIN)
    runs = {}
    for name, lora in (
        ("quenby", LoraSettings(steps=24, batch_size=2, learning_rate=2e-3)),
        ("quenby-draft", LoraSettings(steps=3, batch_size=2, learning_rate=5e-3, warmup_steps=1, seed=1)),
    ):
        model = copy.deepcopy(loaded.model)
        assert not any("lora_" in n for n, _ in model.named_parameters()), "the loaded model carries an adapter"
        runs[name] = train_lora(model, loaded.tokenizer, examples, lora, progress=False)
        save_adapter(runs[name], adapters_dir / name, base_name=loaded.name, base_hash=loaded.content_hash)
    return Trained(adapters_dir, runs["quenby"], loaded.content_hash)


ADAPTERS = ("quenby", "quenby-draft")


@pytest.fixture(scope="session")
def adapter_service(settings: Settings, trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A service on a model of its own (adapters are injected into the served model) whose ADAPTERS_DIR holds
    the trained adapters and bad folders: no card, a card for another base, a symlink to outside, broken
    weights, cards of the wrong shape, a DoRA config and weights that do not fit their config ("corrupt" and "mismatch" come before
    "quenby" in the scan at start: a failed first load must leave the model untouched)."""
    import shutil
    from dataclasses import replace

    from toolkit.cards import CARD
    from toolkit.service import InferenceService

    folder = tmp_path_factory.mktemp("served-adapters")
    for name in ADAPTERS:
        shutil.copytree(trained.adapters_dir / name, folder / name)
    (folder / "no-card").mkdir()
    shutil.copytree(trained.adapters_dir / "quenby-draft", folder / "other-base")
    card = json.loads((folder / "other-base" / CARD).read_text())
    (folder / "other-base" / CARD).write_text(json.dumps({**card, "base_model_hash": "sha256:" + "1" * 64}))
    outside = tmp_path_factory.mktemp("outside-adapters-dir")
    shutil.copytree(trained.adapters_dir / "quenby", outside / "quenby")
    (folder / "link-out").symlink_to(outside / "quenby")
    shutil.copytree(trained.adapters_dir / "quenby-draft", folder / "corrupt")
    (folder / "corrupt" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    for name, card_text in (("wrong-shape", "[1, 2]"), ("bad-lora", json.dumps({**card, "lora": [16]}))):
        shutil.copytree(trained.adapters_dir / "quenby-draft", folder / name)  # valid JSON, wrong shape
        (folder / name / CARD).write_text(card_text)
    for name, change in (("dora", {"use_dora": True}), ("mismatch", {"r": 8})):  # r=8 config, r=16 weights
        shutil.copytree(trained.adapters_dir / "quenby-draft", folder / name)
        config = json.loads((folder / name / "adapter_config.json").read_text())
        (folder / name / "adapter_config.json").write_text(json.dumps({**config, **change}))
    svc = InferenceService(replace(settings, adapters_dir=folder)).start(progress=False)
    yield svc
    svc.close(grace_s=1)


@pytest.fixture()
def served(adapter_service: Any) -> Iterator[Any]:
    """``adapter_service``, put back afterwards to exactly its two adapters, each under its folder's name."""
    yield adapter_service
    for info in adapter_service.adapters():
        if info.name not in ADAPTERS or info.path != info.name:
            adapter_service.unload_adapter(info.name)
    loaded = {info.name for info in adapter_service.adapters()}
    for name in ADAPTERS:
        if name not in loaded:
            adapter_service.load_adapter(name)
