"""Settings: one dataclass, read from the environment only when asked.

``Settings.from_env()`` reads the variables documented in ``.env.example``;
keyword arguments passed to it win over the environment. Nothing is read at
import time, and every field is validated in ``__post_init__`` with an error
that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from toolkit.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llm-toolkit"


def default_store() -> Path:
    return default_data_dir() / "toolkit.db"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-toolkit"


@dataclass(frozen=True)
class Settings:
    """Everything a service needs to know before it loads a model.

    ``model_id`` None means the bundled SmolLM2-135M-Instruct.
    """

    model_id: str | None = None
    hf_token: str | None = field(default=None, repr=False)
    load_in_4bit: bool = False
    dtype: str = "auto"
    device: str = "auto"
    cache_dir: Path = field(default_factory=default_cache_dir)
    # Request limits.
    max_new_tokens_limit: int = 1024
    max_input_tokens: int = 4096
    max_batch_size: int = 16
    max_queue: int = 64
    request_timeout_s: float = 300.0
    # KV of finished answers kept per local model, for prompts that start the same way; 0: none.
    prefix_cache_mb: int = 256
    # While answers stream, a longer new prompt is prefilled this many tokens a step; 0: in one piece.
    prefill_chunk: int = 256
    # The decode step compiled (torch.compile) in the background at start, kept where it measured faster.
    compile_decode: bool = False
    # With COMPILE_DECODE and MAX_LORAS > 0, adapters are served inside the compiled step from a bank of this many
    # slots of this rank; 0: by peft, eager while one is loaded (the bank's work in the graph costs every step).
    max_loras: int = 0
    max_lora_rank: int = 16
    # Web search.
    search_provider: str = "ddgs"  # ddgs | local:<folder> | none
    search_timeout_s: float = 5.0
    search_region: str = "us-en"
    search_safesearch: str = "moderate"
    search_cache_ttl_s: float = 600.0
    search_per_minute: int = 30
    # LoRA adapters: found here at start, loaded at run time only from folders inside it.
    adapters_dir: Path = Path("adapters")
    # Several models (local and remote), one [[models]] table each; when set, MODEL_ID and friends are not used.
    models_file: Path | None = None
    # Every answer's run record as a JSON line here (toolkit.runs.load reads it back); None: no log.
    run_log: Path | None = None
    # Generation defaults for the MODEL_ID model, over its own: "temperature=0,frequency_penalty=0.3".
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    # A model (by name) that decides the grounding claims the rules are unsure of; None: the rules decide.
    grounding_judge: str | None = None
    # The SQLite store (evaluation runs, their cells and cached answers, conversations); None: off.
    store: Path | None = field(default_factory=default_store)
    # Conversations untouched for this many days are deleted; 0: kept until deleted.
    conversation_retention_days: int = 0
    # The secret that keys the fence around search results (toolkit.fence); None: a key made once and kept
    # in cache_dir. Replicas that must render the same prompt for the same request share one.
    fence_key: str | None = field(default=None, repr=False)
    # Names the server and the dashboard answer to (a request's Host) besides those always accepted (IP
    # addresses, localhost, names without a dot, the bound name): the guard against DNS rebinding. "*": any.
    allowed_hosts: tuple[str, ...] = ()

    # environment variable for each field; the names users already know
    ENV: ClassVar[dict[str, str]] = {
        "model_id": "MODEL_ID",
        "hf_token": "HF_TOKEN",
        "load_in_4bit": "LOAD_IN_4BIT",
        "dtype": "DTYPE",
        "device": "DEVICE",
        "cache_dir": "TOOLKIT_CACHE_DIR",
        "max_new_tokens_limit": "MAX_NEW_TOKENS_LIMIT",
        "max_input_tokens": "MAX_INPUT_TOKENS",
        "max_batch_size": "MAX_BATCH_SIZE",
        "max_queue": "MAX_QUEUE",
        "request_timeout_s": "REQUEST_TIMEOUT",
        "prefix_cache_mb": "PREFIX_CACHE_MB",
        "prefill_chunk": "PREFILL_CHUNK",
        "compile_decode": "COMPILE_DECODE",
        "max_loras": "MAX_LORAS",
        "max_lora_rank": "MAX_LORA_RANK",
        "search_provider": "SEARCH_PROVIDER",
        "search_timeout_s": "SEARCH_TIMEOUT",
        "search_region": "SEARCH_REGION",
        "search_safesearch": "SEARCH_SAFESEARCH",
        "search_cache_ttl_s": "SEARCH_CACHE_TTL",
        "search_per_minute": "SEARCH_PER_MINUTE",
        "adapters_dir": "ADAPTERS_DIR",
        "models_file": "MODELS_FILE",
        "generation_defaults": "GENERATION_DEFAULTS",
        "run_log": "RUN_LOG",
        "grounding_judge": "GROUNDING_JUDGE",
        "store": "TOOLKIT_STORE",
        "conversation_retention_days": "CONVERSATION_RETENTION_DAYS",
        "fence_key": "FENCE_KEY",
        "allowed_hosts": "ALLOWED_HOSTS",
    }

    def __post_init__(self) -> None:
        env = self.ENV
        if self.model_id is not None and not self.model_id.strip():
            object.__setattr__(self, "model_id", None)
        if self.dtype not in DTYPES:
            raise ConfigError(env["dtype"], f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ConfigError(env["device"], f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        object.__setattr__(self, "adapters_dir", Path(self.adapters_dir).expanduser())
        for name in ("models_file", "run_log", "store"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).expanduser())
        for name, low in (
            ("max_new_tokens_limit", 1),
            ("max_input_tokens", 16),
            ("max_batch_size", 1),
            ("max_queue", 1),
            ("prefix_cache_mb", 0),
            ("prefill_chunk", 0),
            ("max_loras", 0),
            ("max_lora_rank", 1),
            ("search_per_minute", 1),
            ("conversation_retention_days", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(env[name], f"must be an integer >= {low}, got {value!r}")
        for name in ("request_timeout_s", "search_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(env[name], f"must be a number of seconds > 0, got {value!r}")
        ttl = self.search_cache_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
            raise ConfigError(env["search_cache_ttl_s"], f"must be a number of seconds >= 0, got {ttl!r}")
        provider = self.search_provider
        if provider not in ("ddgs", "none") and not (provider.startswith("local:") and provider[6:].strip()):
            raise ConfigError(env["search_provider"], f"must be ddgs, none or local:<folder>, got {provider!r}")
        if self.fence_key is not None and len(self.fence_key.strip()) < 16:
            raise ConfigError(env["fence_key"], "must be a secret of at least 16 characters (or empty: one is made)")
        if self.search_safesearch not in ("on", "moderate", "off"):
            raise ConfigError(env["search_safesearch"], f"must be on, moderate or off, got {self.search_safesearch!r}")
        object.__setattr__(self, "allowed_hosts", _host_names(self.allowed_hosts, env["allowed_hosts"]))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        return cls(**read_env(cls, environ, overrides, _parse))

    @property
    def model_label(self) -> str:
        return self.model_id or "bundled:SmolLM2-135M-Instruct"


def read_env(
    cls: Any, environ: Mapping[str, str] | None, overrides: dict[str, Any], parse: Callable[[str, str, str], Any]
) -> dict[str, Any]:
    """Field values for the dataclass ``cls`` from the variables in ``cls.ENV``; ``overrides`` win.

    An empty variable counts as unset, as in ``.env.example``.
    """
    environ = os.environ if environ is None else environ
    unknown = set(overrides) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        var = cls.ENV[f.name]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif environ.get(var, "").strip():
            values[f.name] = parse(f.name, var, environ[var].strip())
    return values


def _host_names(names: Any, var: str) -> tuple[str, ...]:
    """``names`` in lower case, without a trailing dot or an IPv6 address's brackets (``*``: any name); an
    error naming ``var`` for anything else (a scheme, a port, a path, a wildcard other than ``*``)."""
    if not isinstance(names, (tuple, list)):
        raise ConfigError(var, f"must be a list of host names, got {names!r}")
    out: list[str] = []
    for name in names:
        value = str(name).strip().lower()
        value = value[1:-1] if value.startswith("[") and value.endswith("]") else value.rstrip(".")
        if not (value == "*" or _HOST_NAME.fullmatch(value) or is_ip(value)):
            raise ConfigError(var, f"expected comma-separated host names without scheme or port (or *), got {name!r}")
        out.append(value)
    return tuple(dict.fromkeys(out))


def is_ip(value: str) -> bool:
    """Whether ``value`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _defaults(var: str, raw: str) -> dict[str, Any]:
    """``key=value,key=value`` with numbers, checked as generation parameters."""
    from toolkit.errors import InvalidRequest
    from toolkit.params import DEFAULTABLE, PARAMS, GenerationParams

    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in DEFAULTABLE:
            raise ConfigError(var, f"expected key=value pairs with keys among {', '.join(DEFAULTABLE)}, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(var, f"{key} must be a number, got {value.strip()!r}") from None
        out[key] = int(number) if PARAMS[key].kind == "int" and number.is_integer() else number
    try:
        GenerationParams(**out)
    except InvalidRequest as exc:
        raise ConfigError(var, exc.message) from None
    return out


def _parse(name: str, var: str, raw: str) -> Any:
    raw = raw.strip()
    if name in ("model_id", "hf_token", "grounding_judge", "fence_key"):
        return raw or None
    if name == "load_in_4bit":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(var, f"must be true or false, got {raw!r}")
    if name in ("search_provider", "search_region", "search_safesearch"):
        return raw if name == "search_provider" and raw.startswith("local:") else raw.lower()
    if name in ("dtype", "device"):
        return raw.lower() or "auto"
    if name == "cache_dir":
        return Path(raw) if raw else default_cache_dir()
    if name in ("adapters_dir", "models_file"):
        return Path(raw)
    if name in ("store", "run_log"):  # "off" is no file, as for TOOLKIT_STORE (not a file named "off")
        return None if raw.lower() in ("off", "none") else Path(raw)
    if name == "generation_defaults":
        return _defaults(var, raw)
    if name == "allowed_hosts":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if name in ("request_timeout_s", "search_timeout_s", "search_cache_ttl_s"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(var, f"must be a number of seconds, got {raw!r}") from None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(var, f"must be an integer, got {raw!r}") from None
