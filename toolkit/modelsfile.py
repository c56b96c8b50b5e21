"""The models a service serves: from ``MODELS_FILE`` (TOML, one ``[[models]]`` table each) or, without
it, the one model ``MODEL_ID`` names. Each has its own engine and a status.

    [[models]]
    name = "smollm2"            # the id clients pass as `model`; the first is the default
    engine = "local"            # local | openai
    source = "bundled"          # local: bundled | a directory | a .gguf file | a Hub id
    load_in_4bit = false

    [[models]]
    name = "smollm2-vllm"
    engine = "openai"
    base_url = "http://127.0.0.1:8011/v1"
    served_model = "smollm2"    # the name the remote server knows
    api_key_env = "VLLM_API_KEY"

A bad file fails at start with a ``ConfigError`` naming the file, the table and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from toolkit.errors import ConfigError
from toolkit.settings import DEVICES, DTYPES, Settings

ENGINES = ("local", "openai")
COMMON_KEYS: dict[str, type | tuple[type, ...]] = {"name": str, "engine": str, "defaults": dict}
LOCAL_KEYS: dict[str, type | tuple[type, ...]] = {"source": str, "load_in_4bit": bool, "dtype": str, "device": str}
OPENAI_KEYS: dict[str, type | tuple[type, ...]] = {
    "base_url": str,
    "served_model": str,
    "api_key_env": str,
    "max_in_flight": int,
    "timeout_s": (int, float),
    "tokenizer": str,
    "context_length": int,
}


@dataclass(frozen=True)
class ModelConfig:
    """One model: a local one (``source``, ...) or one on an OpenAI-compatible server (``base_url``, ...)."""

    name: str
    engine: str = "local"
    # engine = "local"
    source: str = "bundled"  # bundled | a model directory | a .gguf file | a Hub id
    load_in_4bit: bool = False
    dtype: str = "auto"
    device: str = "auto"
    # engine = "openai"
    base_url: str | None = None
    served_model: str | None = None
    api_key: str | None = field(default=None, repr=False)  # read from api_key_env
    api_key_env: str | None = None
    max_in_flight: int = 16
    timeout_s: float = 60.0
    tokenizer: str | None = None
    context_length: int | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # generation defaults: over the model's own
    aliases: tuple[str, ...] = ()  # other names requests may use (MODEL_ID, the source's path)

    def __post_init__(self) -> None:
        from toolkit.errors import InvalidRequest
        from toolkit.params import DEFAULTABLE, GenerationParams

        unknown = set(self.defaults) - set(DEFAULTABLE)
        if unknown:
            raise ValueError(f"defaults has no {sorted(unknown)[0]!r}; known: {', '.join(DEFAULTABLE)}")
        try:
            GenerationParams(**self.defaults)
        except InvalidRequest as exc:
            raise ValueError(f"defaults: {exc.message}") from None
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be local or openai, got {self.engine!r}")
        if self.engine == "openai":
            if not self.base_url:
                raise ValueError("base_url is required for engine = openai")
            url = urlparse(self.base_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
            if self.max_in_flight < 1:
                raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
            if self.timeout_s <= 0:
                raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        else:
            if self.dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
            if self.device not in DEVICES:
                raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @property
    def model_id(self) -> str | None:
        """The local source as ``MODEL_ID`` would name it (None: the bundled model)."""
        return None if self.source == "bundled" else self.source

    def local_settings(self, settings: Settings) -> Settings:
        from dataclasses import replace

        return replace(
            settings, model_id=self.model_id, load_in_4bit=self.load_in_4bit, dtype=self.dtype, device=self.device
        )

    def remote(self, default_timeout_s: float | None = None) -> Any:
        from toolkit.engines.openai import RemoteConfig

        assert self.base_url is not None
        return RemoteConfig(
            name=self.name,
            base_url=self.base_url.rstrip("/"),
            served_model=self.served_model or self.name,
            api_key=self.api_key,
            max_in_flight=self.max_in_flight,
            timeout_s=float(self.timeout_s),
            tokenizer=self.tokenizer,
            context_length=self.context_length,
        )


def configured_models(settings: Settings, environ: Mapping[str, str] | None = None) -> list[ModelConfig]:
    """The models ``settings`` describe: MODELS_FILE's, or the one of MODEL_ID (LOAD_IN_4BIT, DTYPE, DEVICE)."""
    if settings.models_file is not None:
        return read_models_file(settings.models_file, environ)
    from toolkit.errors import ToolkitError
    from toolkit.models import resolve_model

    aliases: tuple[str, ...] = ()
    try:
        source = resolve_model(settings.model_id)
        name, aliases = source.name, (source.location,)
    except ToolkitError:  # reported as the model's load error, at start
        name = settings.model_label
    if settings.model_id:
        aliases += (settings.model_id,)
    return [
        ModelConfig(
            name=name,
            source=settings.model_id or "bundled",
            load_in_4bit=settings.load_in_4bit,
            dtype=settings.dtype,
            device=settings.device,
            defaults=dict(settings.generation_defaults),
            aliases=tuple(a for a in aliases if a != name),
        )
    ]


def read_models_file(path: Path, environ: Mapping[str, str] | None = None) -> list[ModelConfig]:
    """Parse and check a models file; every problem names the file, the table and the key."""
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("MODELS_FILE", f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("MODELS_FILE", f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("MODELS_FILE", f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - {"models"}
    if unknown:
        raise ConfigError("MODELS_FILE", f"{path}: unknown top-level key {sorted(unknown)[0]!r}; use [[models]] tables")
    tables = data.get("models")
    if not isinstance(tables, list) or not tables:
        raise ConfigError("MODELS_FILE", f"{path}: no [[models]] table; add one per model")
    models: list[ModelConfig] = []
    for i, table in enumerate(tables, start=1):
        label = f"{path}: [[models]] #{i}" + (f" ({table.get('name')!r})" if isinstance(table.get("name"), str) else "")
        models.append(_model(table, label, environ))
        if models[-1].name in {m.name for m in models[:-1]}:
            raise ConfigError("MODELS_FILE", f"{label}: duplicate name {models[-1].name!r}; each model needs its own")
    return models


def _model(table: dict[str, Any], label: str, environ: Mapping[str, str]) -> ModelConfig:
    engine = table.get("engine", "local")
    if engine not in ENGINES:
        raise ConfigError("MODELS_FILE", f"{label}: key 'engine' must be local or openai, got {engine!r}")
    allowed = {**COMMON_KEYS, **(LOCAL_KEYS if engine == "local" else OPENAI_KEYS)}
    for key, value in table.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError("MODELS_FILE", f"{label}: unknown key {key!r} for engine = {engine}; known: {known}")
        kind = allowed[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError("MODELS_FILE", f"{label}: key {key!r} has the wrong type ({type(value).__name__})")
    if not isinstance(table.get("name"), str) or not table["name"].strip():
        raise ConfigError("MODELS_FILE", f"{label}: missing key 'name' (the id clients pass as `model`)")
    if engine == "openai" and "base_url" not in table:
        raise ConfigError("MODELS_FILE", f"{label}: missing key 'base_url' (e.g. http://127.0.0.1:8000/v1)")
    values = dict(table)
    secret = values.get("api_key_env")
    if secret:
        if not environ.get(secret):
            raise ConfigError("MODELS_FILE", f"{label}: key 'api_key_env' names {secret}, which is not set")
        values["api_key"] = environ[secret]
    try:
        return ModelConfig(**values)
    except ValueError as exc:
        key = str(exc).split(" ", 1)[0]
        raise ConfigError("MODELS_FILE", f"{label}: key {key!r}: {exc}") from None
