"""``InferenceService``: the one facade that notebooks, the dashboard and the server call.

    service = InferenceService().start()          # loads MODEL_ID (or the bundled default)
    result = service.infer("What is the capital of France?", temperature=0)
    for event in service.stream(InferRequest(prompt="Tell me a story")):
        ...                                        # Token(delta, text) ..., then Done(result)

The service validates the request (once, here), formats the chat messages,
checks the input budget, hands token ids to the engine and turns engine
events into ``Token``/``Done`` with a full ``InferResult``.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from toolkit import __version__ as TOOLKIT_VERSION
from toolkit.errors import InvalidRequest, ModelNotReady, PromptTooLong, ToolkitError
from toolkit.params import GenerationParams, InferRequest, Limits
from toolkit.results import Done, Health, InferResult, ModelInfo, RunRecord, StreamEvent, Timings, Token, Usage
from toolkit.settings import Settings


def _versions() -> dict[str, str]:
    out = {"toolkit": TOOLKIT_VERSION, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


class _Prepared:
    """A validated request, ready for the engine."""

    def __init__(
        self,
        request: InferRequest,
        params: GenerationParams,
        messages: list[dict[str, str]],
        prompt_text: str,
        input_ids: list[int],
    ) -> None:
        self.request = request
        self.params = params
        self.messages = messages
        self.prompt_text = prompt_text
        self.input_ids = input_ids
        self.created_at = datetime.now(UTC).isoformat(timespec="seconds")


class InferenceService:
    """Load one model, then answer requests: ``infer``, ``stream`` and their async twins."""

    def __init__(self, settings: Settings | None = None, *, loaded: Any = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.limits = Limits(self.settings.max_new_tokens_limit, self.settings.max_input_tokens)
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._status = "loading"
        self._error: str | None = None
        self._loaded: Any = None
        self._engine: Any = None
        self._versions: dict[str, str] = {}
        self._loader: threading.Thread | None = None
        if loaded is not None:
            self._attach(loaded)

    # ----- lifecycle -------------------------------------------------------------------

    def start(self, *, wait: bool = True, progress: bool = True) -> InferenceService:
        """Load the model (in a background thread). With ``wait``, block and raise a load error."""
        with self._lock:
            if self._loaded is None and self._loader is None:
                self._status, self._error = "loading", None
                self._loader = threading.Thread(target=self._load, args=(progress,), name="toolkit-loader", daemon=True)
                self._loader.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        if self._loader is not None:
            self._loader.join(timeout)
        if self._status == "error":
            raise ModelNotReady(f"the model failed to load: {self._error}")
        if self._status != "ready":
            raise ModelNotReady("the model is still loading; wait and retry")

    def _load(self, progress: bool) -> None:
        from toolkit.models import load_model

        try:
            self._attach(load_model(self.settings, progress=progress))
        except ToolkitError as exc:
            self._status, self._error = "error", exc.message
        except Exception as exc:  # a load must never kill the process silently
            self._status, self._error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._loader = None

    def _attach(self, loaded: Any) -> None:
        from toolkit.engine import Engine

        self._engine = Engine(
            loaded.model,
            loaded.tokenizer,
            eos_token_ids=loaded.eos_token_ids,
            context_length=loaded.context_length,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            default_timeout_s=self.settings.request_timeout_s,
        )
        self._versions = _versions()
        self._loaded = loaded
        self._status = "ready"

    def close(self, grace_s: float = 10.0) -> None:
        """Finish (or after ``grace_s`` cancel) in-flight requests and stop the engine."""
        if self._engine is not None:
            self._engine.close(grace_s)
        self._status = "stopped"

    def __enter__(self) -> InferenceService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- information -------------------------------------------------------------

    @property
    def loaded(self) -> Any:
        """The ``LoadedModel`` (model, tokenizer, hashes) once ready, else None."""
        return self._loaded

    def health(self) -> Health:
        loaded, engine = self._loaded, self._engine
        return Health(
            status=self._status,
            model=loaded.name if loaded else self.settings.model_label,
            device=loaded.device if loaded else None,
            dtype=loaded.dtype if loaded else None,
            quantization=loaded.quantization if loaded else None,
            queue_depth=engine.queue_depth if engine else 0,
            active=engine.active if engine else 0,
            uptime_s=time.monotonic() - self._started_at,
            version=TOOLKIT_VERSION,
            error=self._error,
        )

    def models(self) -> list[ModelInfo]:
        loaded = self._loaded
        if loaded is None:
            return [ModelInfo(self.settings.model_label, "pending", False, None, None)]
        return [ModelInfo(loaded.name, loaded.source.kind, True, loaded.context_length, loaded.content_hash)]

    # ----- requests ----------------------------------------------------------------

    def prepare(self, request: InferRequest | str, **kwargs: Any) -> _Prepared:
        """Validate a request against this deployment and tokenize it (no generation)."""
        if isinstance(request, str):
            request = InferRequest.build(request, **kwargs)
        elif kwargs:
            raise TypeError("pass keyword arguments only with a prompt string, not with an InferRequest")
        loaded = self._loaded
        if loaded is None or self._status != "ready":
            if self._status == "error":
                raise ModelNotReady(f"the model failed to load: {self._error}")
            raise ModelNotReady("the model is still loading; wait and retry (see health())")
        if request.model is not None and request.model not in self._model_names():
            raise InvalidRequest("model", f"unknown model {request.model!r}; this service serves {loaded.name!r}")
        if request.adapter is not None:
            raise InvalidRequest("adapter", f"unknown adapter {request.adapter!r}: no LoRA adapters are loaded")
        if request.web_search:
            raise InvalidRequest("web_search", "web search is not available in this version of the toolkit")
        params = request.resolved_params(self.limits)
        messages = request.messages()
        tokenizer = loaded.tokenizer
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        input_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        limit = min(self.limits.max_input_tokens, loaded.context_length - 1)
        if len(input_ids) > limit:
            field = "history" if request.history else "prompt"
            raise PromptTooLong(field, len(input_ids), limit)
        return _Prepared(request, params, messages, prompt_text, input_ids)

    def stream(self, request: InferRequest | str, **kwargs: Any) -> Iterator[StreamEvent]:
        """``Token`` events as text is generated, then one ``Done``. Closing early cancels."""
        prepared = self.prepare(request, **kwargs)
        from toolkit.engine import Finished

        text = ""
        for event in self._engine.stream(
            prepared.input_ids,
            prepared.params,
            request_id=prepared.request.request_id,
            timeout_s=prepared.request.timeout_s,
        ):
            if isinstance(event, Finished):
                yield Done(self._result(prepared, event))
                return
            text += event.text
            yield Token(event.request_id, event.text, text)

    async def astream(self, request: InferRequest | str, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        prepared = self.prepare(request, **kwargs)
        from toolkit.engine import Finished

        text = ""
        async for event in self._engine.astream(
            prepared.input_ids,
            prepared.params,
            request_id=prepared.request.request_id,
            timeout_s=prepared.request.timeout_s,
        ):
            if isinstance(event, Finished):
                yield Done(self._result(prepared, event))
                return
            text += event.text
            yield Token(event.request_id, event.text, text)

    def infer(self, request: InferRequest | str, **kwargs: Any) -> InferResult:
        for event in self.stream(request, **kwargs):
            if isinstance(event, Done):
                return event.result
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    async def ainfer(self, request: InferRequest | str, **kwargs: Any) -> InferResult:
        async for event in self.astream(request, **kwargs):
            if isinstance(event, Done):
                return event.result
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; False if there is no such request."""
        return bool(self._engine and self._engine.cancel(request_id))

    # ----- helpers -----------------------------------------------------------------

    def _model_names(self) -> set[str]:
        loaded = self._loaded
        names = {loaded.name, loaded.source.location}
        if self.settings.model_id:
            names.add(self.settings.model_id)
        return names

    def _result(self, prepared: _Prepared, finished: Any) -> InferResult:
        if finished.error is not None:
            raise finished.error
        loaded, request = self._loaded, prepared.request
        record = RunRecord(
            request_id=request.request_id,
            created_at=prepared.created_at,
            model=loaded.name,
            model_source=loaded.source.kind,
            model_hash=loaded.content_hash,
            adapter=request.adapter,
            device=loaded.device,
            dtype=loaded.dtype,
            quantization=loaded.quantization,
            params={**prepared.params.to_dict(), "seed": finished.seed},
            messages=prepared.messages,
            prompt_text=prepared.prompt_text,
            versions=self._versions,
        )
        return InferResult(
            id=request.request_id,
            text=finished.text,
            finish_reason=finished.finish_reason,
            usage=Usage(finished.prompt_tokens, finished.completion_tokens),
            timings=Timings(finished.queued_s, finished.first_token_s, finished.total_s),
            model=loaded.name,
            adapter=request.adapter,
            run_record=record,
        )
