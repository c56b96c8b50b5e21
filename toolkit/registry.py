"""The models a service serves (``toolkit.modelsfile``: which), each with its engine and a status: loading
them in threads of their own, routing a request's ``model`` to one, the service's health and each model's
information."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from toolkit.engines.base import new_seed
from toolkit.errors import ConfigError, EngineClosed, InvalidRequest, ModelNotReady
from toolkit.heap import freeze as freeze_heap
from toolkit.heap import unfreeze as unfreeze_heap
from toolkit.modelsfile import ModelConfig, configured_models
from toolkit.params import PARAMS, GenerationParams, Limits, resolve, split_model
from toolkit.results import Health, ModelHealth, ModelInfo
from toolkit.settings import Settings
from toolkit.version import __version__ as TOOLKIT_VERSION

# loading -> ready | error; a remote model: ready <-> unavailable (its server stopped answering); -> stopped
STATUSES = ("loading", "ready", "unavailable", "error", "stopped")


@dataclass(eq=False)
class ServedModel:
    """A model and its engine, as the service holds it; ``status`` moves loading -> ready | error -> stopped,
    and a remote model's between ready and unavailable as its server answers or not (``since``: when)."""

    config: ModelConfig
    default: bool
    status: str = "loading"
    error: str | None = None
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    engine: Any = None  # an Engine (toolkit.engines.base), once built
    loaded: Any = None  # the LoadedModel of a local engine
    stop: threading.Event = field(default_factory=threading.Event)
    settled: threading.Event = field(default_factory=threading.Event)  # loaded, or failed to: no longer loading
    frozen: bool = False  # its load's objects are out of the collector's full passes (toolkit.heap)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def serving(self) -> bool:
        """Its engine takes requests: ready, or a remote model whose server stopped answering (a request
        may find it back)."""
        return self.engine is not None and self.status in ("ready", "unavailable")

    def set_status(self, status: str, error: str | None = None) -> None:
        if status != self.status:
            self.since = datetime.now(UTC).isoformat(timespec="seconds")
        self.status, self.error = status, error
        if status != "loading":
            self.settled.set()

    @property
    def names(self) -> set[str]:
        return {self.config.name, *self.config.aliases}

    @property
    def defaults(self) -> dict[str, Any]:
        """What a request that leaves a parameter out gets (``toolkit.params.model_defaults``): a local
        model's engine defaults (generation_config.json, the bundled recipe) over the toolkit's fallbacks; a
        remote model's from the models file only (the rest is its server's own); the models file's (or
        GENERATION_DEFAULTS') over both."""
        from toolkit.params import model_defaults

        engine = self.engine.info.defaults if self.serving else {}
        return model_defaults(engine, self.config.defaults, fallback=self.config.engine == "local")

    @property
    def server_defaults(self) -> tuple[str, ...]:
        """The parameters left to a remote model's server when a request does not set them."""
        from toolkit.params import DEFAULTABLE

        defaults = self.defaults
        return tuple(n for n in DEFAULTABLE if n not in defaults)

    def resolve(self, limits: Limits, params: GenerationParams, where: str = "params") -> GenerationParams:
        """The parameters its engine runs with, filled once (``toolkit.params.resolve``), the seed included; a
        parameter that this model's engine cannot take is refused, naming it."""
        resolved = resolve(params, self.defaults, limits, where=where)
        if self.config.engine != "local":
            for name, spec in PARAMS.items():
                value = getattr(resolved, name)
                if not spec.remote and value is not None and value != spec.neutral:
                    why = f"model {self.name!r} is served by an OpenAI-compatible server, which cannot take it"
                    raise InvalidRequest(f"{where}.{name}", why + "; leave it out")
        # the seed too: one chosen here is the one the engine uses, the run record keeps and a replay reuses
        return resolved if resolved.seed is not None else replace(resolved, seed=new_seed())

    def model_info(self) -> ModelInfo:
        """What ``models()`` says of it."""
        info = self.engine.info if self.serving else None
        if self.config.engine == "openai":
            source = "openai"
        else:
            source = self.loaded.source.kind if self.loaded is not None else "pending"
        return ModelInfo(
            id=self.name,
            source=source,
            loaded=self.status == "ready",
            context_length=info.context_length if info else None,
            content_hash=info.content_hash if info else None,
            engine=self.config.engine,
            status=self.status,
            error=self.error,
            default=self.default,
            served_model=info.served_model if info else self.config.served_model,
            device=info.device if info else None,
            dtype=info.dtype if info else None,
            quantization=info.quantization if info else None,
            defaults=self.defaults,
            server_defaults=self.server_defaults,
            since=self.since,
            batch_size=info.batch_size if info else None,
            linear=info.linear if info else None,
        )


_LOCAL_LOADS = threading.Lock()  # local models load one after another, in any service of the process


class ModelRegistry:
    """The service's models by name, the first the default; each loads in a thread of its own.

    A local model loads its weights (then the adapters in ADAPTERS_DIR that fit it); a remote one
    asks its server what it serves, and asks again every ``REMOTE_RETRY_S`` while the server is not
    up yet (status ``loading``, with the reason in ``error``), then every ``REMOTE_PROBE_S``: a server
    that stops answering makes the model ``unavailable`` (with the reason, and ``since`` when) until it
    answers again, as do requests that find it down (``observe``).
    """

    REMOTE_RETRY_S = 2.0
    REMOTE_PROBE_S = 10.0  # a ready remote model's server is asked again this often

    def __init__(self, configs: list[ModelConfig], settings: Settings) -> None:
        if not configs:
            raise ConfigError("MODELS_FILE", "no models to serve")
        self.settings = settings
        self.entries = {c.name: ServedModel(c, default=i == 0) for i, c in enumerate(configs)}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    @classmethod
    def serving(cls, settings: Settings, models: list[ModelConfig] | None = None, loaded: Any = None) -> ModelRegistry:
        """The models a service serves: ``models`` (the first is the default), else the settings' (MODELS_FILE, or
        MODEL_ID alone); ``loaded``, an already loaded local model, serves as the default (alone, without
        ``models``; else as the first of them). GROUNDING_JUDGE must name one of them."""
        if models is not None:
            configs = models
        elif loaded is not None:
            aliases = tuple({loaded.source.location, settings.model_id or loaded.name} - {loaded.name})
            configs = [ModelConfig(name=loaded.name, source=settings.model_id or "bundled", aliases=aliases)]
        else:
            configs = configured_models(settings)
        registry = cls(configs, settings)
        if settings.grounding_judge is not None:
            try:
                registry.route(settings.grounding_judge)
            except InvalidRequest:
                served = ", ".join(repr(e.name) for e in registry)
                why = f"{settings.grounding_judge!r} is not a model this service serves ({served})"
                raise ConfigError("GROUNDING_JUDGE", why) from None
        if loaded is not None:
            registry.attach(registry.default, loaded)
        return registry

    @property
    def default(self) -> ServedModel:
        return next(iter(self.entries.values()))

    def __iter__(self) -> Any:
        return iter(list(self.entries.values()))

    # ----- loading ---------------------------------------------------------------------

    def health(self, preparing: int, store: str, uptime_s: float) -> Health:
        """The service's health: the default model's status and engine, the requests queued and running in
        every engine, ``preparing`` (accepted, not yet in an engine), the store's state, each model's status."""
        default = self.default
        info = default.engine.info if default.serving else None
        queued = active = 0
        for entry in self:
            if entry.serving:
                stats = entry.engine.stats()
                queued, active = queued + stats.queue_depth, active + stats.active
        return Health(
            status=default.status,
            model=default.name,
            device=info.device if info else None,
            dtype=info.dtype if info else None,
            quantization=info.quantization if info else None,
            queue_depth=queued,
            active=active,
            preparing=preparing,
            store=store,
            uptime_s=uptime_s,
            version=TOOLKIT_VERSION,
            error=default.error,
            models=tuple(
                ModelHealth(
                    e.name, e.config.engine, e.status, e.error, e.since, e.engine.stats().compiled if e.serving else ()
                )
                for e in self
            ),
        )

    def start(self, progress: bool) -> None:
        with self._lock:
            for entry in self.entries.values():
                if entry.engine is None and entry.name not in self._threads and entry.status == "loading":
                    thread = threading.Thread(
                        target=self._load, args=(entry, progress), name=f"load-{entry.name}", daemon=True
                    )
                    self._threads[entry.name] = thread
                    thread.start()

    def _load(self, entry: ServedModel, progress: bool) -> None:
        from toolkit.errors import ToolkitError

        try:
            if entry.config.engine == "local":
                from toolkit.models import load_model

                with _LOCAL_LOADS:  # one at a time: transformers' loading patches process-wide state (meta device)
                    loaded = load_model(entry.config.local_settings(self.settings), progress=progress)
                self.attach(entry, loaded)
            else:
                self._connect(entry)
        except ToolkitError as exc:
            entry.set_status("error", exc.message)
        except Exception as exc:  # a load must never kill the process silently
            entry.set_status("error", f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._threads.pop(entry.name, None)

    def attach(self, entry: ServedModel, loaded: Any) -> None:
        """Serve an already loaded local model (its adapters from ADAPTERS_DIR load now)."""
        from toolkit.engines.local.model import LocalEngine

        s = self.settings
        engine = LocalEngine(
            loaded,
            max_batch_size=s.max_batch_size,
            max_queue=s.max_queue,
            default_timeout_s=s.request_timeout_s,
            adapters_dir=s.adapters_dir,
            prefix_cache_mb=s.prefix_cache_mb,
            prefill_chunk=s.prefill_chunk,
            compile_decode=s.compile_decode,
            max_loras=s.max_loras,
            max_lora_rank=s.max_lora_rank,
        )
        entry.engine, entry.loaded = engine, loaded
        engine.registry.load_folder()
        freeze_heap()
        entry.frozen = True
        entry.set_status("ready")

    def _connect(self, entry: ServedModel) -> None:
        """Ask a remote model's server what it serves until it answers; then keep asking, every
        ``REMOTE_PROBE_S``, so that the model's status follows its server (unavailable, and back)."""
        from toolkit.engines.openai import OpenAIEngine
        from toolkit.errors import EngineUnavailable

        engine = OpenAIEngine(entry.config.remote(), default_timeout_s=self.settings.request_timeout_s)
        entry.engine = engine
        while not entry.stop.is_set():
            try:
                engine.probe()
            except EngineUnavailable as exc:
                if entry.status == "loading":
                    entry.error = exc.message  # not up yet
                else:
                    entry.set_status("unavailable", exc.message)
                entry.stop.wait(self.REMOTE_RETRY_S)
                continue
            entry.set_status("ready")
            entry.stop.wait(self.REMOTE_PROBE_S)

    def observe(self, entry: ServedModel, error: Exception | None) -> None:
        """What a request to a remote model found: its server unavailable, or answering again."""
        from toolkit.errors import EngineUnavailable

        if entry.config.engine == "local" or entry.status not in ("ready", "unavailable"):
            return
        if isinstance(error, EngineUnavailable):
            entry.set_status("unavailable", error.message)
        elif error is None and entry.status == "unavailable":
            entry.set_status("ready")

    def wait(self, entry: ServedModel, timeout: float | None) -> None:
        """Until ``entry`` is no longer loading (a remote model's thread goes on probing its server)."""
        if entry.name in self._threads:
            entry.settled.wait(timeout)

    def close(self, grace_s: float) -> None:
        for entry in self:
            entry.stop.set()
            if entry.engine is not None:
                entry.engine.close(grace_s)
            if entry.frozen:
                entry.frozen = False
                unfreeze_heap()
            entry.set_status("stopped")

    # ----- routing ---------------------------------------------------------------------

    def ready(self, entry: ServedModel, *, started: bool = True, stopping: bool = False) -> ServedModel:
        """The model, ready (or a remote one whose server stopped answering: a request may find it back);
        or ``ModelNotReady`` saying why not (``started``: the service was started; ``stopping``: it is closing)."""
        if entry.serving:
            return entry
        which = "the model" if entry.default and len(self.entries) == 1 else f"model {entry.name!r}"
        if entry.status == "error":
            raise ModelNotReady(f"{which} failed to load: {entry.error}", loading=False)
        if entry.status == "stopped" or stopping:  # going away: another replica, or a restart, will answer
            raise EngineClosed(f"{which} is stopped: the service is shutting down; retry against a running one")
        if not started:
            raise ModelNotReady(
                "the service was not started: call service.start() first (start(wait=False) loads in the background)"
            )
        reason = f" ({entry.error})" if entry.error else ""
        raise ModelNotReady(f"{which} is still loading{reason}; wait and retry (its health says when it is ready)")

    def route(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default); ``UnknownModel`` (BAD_USER_INPUT on ``model``)
        listing the names."""
        return self.resolve(name)[0]

    def resolve(self, name: str | None) -> tuple[ServedModel, str | None]:
        """The model and adapter a name stands for: a model's name or alias, or ``<model>:<adapter>``
        (an adapter of that model, as ``/v1/models`` lists it). A name that is a model's own wins over the
        split, so a remote model named ``llama3:8b`` routes as itself."""
        from toolkit.errors import UnknownModel

        if name is None:
            return self.default, None
        by_name = {n: entry for entry in self.entries.values() for n in entry.names}
        found = split_model(name, by_name)
        if found is not None:
            return by_name[found[0]], found[1]
        served = ", ".join(repr(n) for n in self.entries)
        raise UnknownModel(f"unknown model {name!r}; this service serves {served} (an adapter as '<model>:<adapter>')")
