from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import ConfigError, ModelLoadError
from toolkit.models import (
    BUNDLED_NAME,
    CONVERSION_MARKER,
    bundled_gguf_path,
    cpu_computes_bfloat16,
    load_model,
    pick_dtype,
    resolve_model,
)
from toolkit.settings import Settings


def greedy(loaded: Any, question: str, n: int = 16) -> str:
    tok = loaded.tokenizer
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = loaded.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return str(tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


def test_bundled_default_resolves_to_the_packaged_gguf() -> None:
    source = resolve_model(None)
    assert source.kind == "gguf" and source.bundled
    assert source.name == BUNDLED_NAME
    assert Path(source.location) == bundled_gguf_path()


def test_loads_from_gguf_then_from_the_cache(first_load: Any, settings: Settings) -> None:
    """The run's cache starts empty (conftest): the bundled GGUF was converted for real in this run, by the
    first worker to need it, and every load since reads the converted copy."""
    import json

    import transformers

    marker = json.loads((Path(first_load.path) / CONVERSION_MARKER).read_text())
    assert marker["source"] == str(bundled_gguf_path()) and marker["transformers"] == transformers.__version__
    assert first_load.content_hash == f"sha256:{marker['sha256']}" and marker["seconds"] > 0
    assert (first_load.device, first_load.dtype, first_load.quantization) == ("cpu", pick_dtype("auto", "cpu"), None)
    assert first_load.context_length == 8192
    started = time.perf_counter()
    again = load_model(settings, progress=False)
    elapsed = time.perf_counter() - started
    assert again.from_cache is True
    assert again.content_hash == first_load.content_hash
    assert Path(again.path).parent == settings.cache_dir / "gguf"
    # the weights are the same: the same greedy answer
    assert greedy(again, "What is the capital of France?") == greedy(first_load, "What is the capital of France?")
    print(f"load from cache: {elapsed:.2f} s")


def test_capital_of_france(loaded: Any) -> None:
    assert "Paris" in greedy(loaded, "What is the capital of France?")


def test_4bit_load_generates_text(settings: Settings, loaded: Any) -> None:
    import bitsandbytes as bnb

    quantized = load_model(Settings(cache_dir=settings.cache_dir, load_in_4bit=True), progress=False)
    assert quantized.quantization == "bnb-nf4"
    assert isinstance(quantized.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert "Paris" in greedy(quantized, "What is the capital of France?")


def test_a_local_model_directory(tiny_model_dir: Path, settings: Settings) -> None:
    source = resolve_model(str(tiny_model_dir))
    assert source.kind == "local"
    tiny = load_model(Settings(model_id=str(tiny_model_dir), cache_dir=settings.cache_dir), progress=False)
    assert tiny.from_cache is True and tiny.source.kind == "local"
    assert tiny.context_length == 256
    assert tiny.content_hash.startswith("sha256:")
    assert isinstance(greedy(tiny, "hello", n=4), str)


def test_while_converting_each_gguf_file_is_parsed_once_and_gguf_is_put_back(tmp_path: Path) -> None:
    """transformers parses a GGUF file three times for one conversion and builds gguf's tensor-name table once per
    module (half the bundled model's conversion time): during a conversion both are made once, and afterwards,
    a failed conversion included, ``gguf`` is as it was."""
    import gguf
    import numpy as np

    from toolkit.models import _gguf_read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    with pytest.raises(RuntimeError, match="a conversion that fails"), _gguf_read_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(str(path))
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        raise RuntimeError("a conversion that fails")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)


def test_a_gguf_file_path(settings: Settings) -> None:
    source = resolve_model(str(bundled_gguf_path()))
    assert source.kind == "gguf" and not source.bundled


def test_a_model_without_chat_template_fails_clearly(no_template_dir: Path, settings: Settings) -> None:
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_model(Settings(model_id=str(no_template_dir), cache_dir=settings.cache_dir), progress=False)


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("./missing-model-dir", "neither an existing file or directory"),
        ("/nowhere/model.gguf", "neither an existing file or directory"),
        ("a/b/c", "Hub id like 'owner/name'"),
    ],
)
def test_unresolvable_ids(model_id: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(model_id)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"without config\.json"):
        resolve_model(str(tmp_path))


def test_offline_hub_id_fails_with_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: the real Hub client is asked, and the answer names MODEL_ID and the network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError) as info:
        load_model(Settings(model_id="meta-llama/Llama-3.2-3B-Instruct", cache_dir=tmp_path), progress=False)
    message = str(info.value)
    assert "MODEL_ID='meta-llama/Llama-3.2-3B-Instruct'" in message
    assert "network" in message
    assert "\n" not in message and "Traceback" not in message
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, ModelLoadError)


def test_hub_offline_mode_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model(Settings(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=tmp_path), progress=False)


def test_dtype_and_device_choice() -> None:
    assert pick_dtype("auto", "cpu") == "float32"  # bfloat16 batches are not batch invariant: see pick_dtype
    assert pick_dtype("auto", "cuda") == "bfloat16"
    assert pick_dtype("float16", "cpu") == "float16"
    assert pick_dtype("float32", "cpu") == "float32"


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 amx_tile", True),  # Cooper Lake and later
        ("fpu sse2 avx2 avx512f amx_bf16 amx_tile", True),
        ("fpu sse2 avx2 avx512f avx512_vnni", False),  # AVX-512 without BF16: emulated, float32 stays
        ("fp asimd bf16", False),  # an ARM CPU's "bf16" is not an x86 flag this reads
    ],
)
def test_bfloat16_is_detected_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_computes_bfloat16(cpuinfo) is native
    assert cpu_computes_bfloat16(tmp_path / "missing") is False


def test_cuda_asked_without_a_gpu_is_a_config_error(settings: Settings) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="DEVICE"):
        load_model(Settings(device="cuda", cache_dir=settings.cache_dir), progress=False)


def test_generation_defaults_read_every_declared_parameter_the_config_states() -> None:
    """A model's generation_config.json: each declared parameter it names (min_p and no_repeat_ngram_size were
    dropped), the sampling ones only when it samples, a value out of bounds left out."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from toolkit.models import generation_defaults

    sampled = GenerationConfig(
        do_sample=True, temperature=0.6, top_p=0.9, min_p=0.05, repetition_penalty=1.1, no_repeat_ngram_size=3,
        max_new_tokens=300,
    )  # fmt: skip
    assert generation_defaults(SimpleNamespace(generation_config=sampled)) == {
        "temperature": 0.6, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3,
        "max_new_tokens": 300,
    }  # fmt: skip
    greedy_config = GenerationConfig(do_sample=False, top_k=20, repetition_penalty=1.2)
    assert generation_defaults(SimpleNamespace(generation_config=greedy_config)) == {
        "temperature": 0.0,
        "repetition_penalty": 1.2,
    }
    odd = GenerationConfig(do_sample=True, top_p=1.5, temperature=0.8)
    assert generation_defaults(SimpleNamespace(generation_config=odd)) == {"temperature": 0.8}
