"""``LocalEngine``: one loaded transformers model behind the ``Engine`` protocol.

It renders messages with the model's chat template, tokenizes, and hands token ids to the
scheduler (``toolkit.engines.local.engine.Scheduler``: continuous batching, per-row sampling, cancel,
timeouts). Its LoRA adapters are an ``AdapterRegistry`` over ``ADAPTERS_DIR`` bound to this
model's content hash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from toolkit.adapters import AdapterRegistry
from toolkit.controltokens import ControlTokens
from toolkit.engines.base import Capabilities, Encoded, EngineInfo, EngineRequest, EngineStats, Messages
from toolkit.engines.local.engine import Scheduler
from toolkit.events import Event
from toolkit.rag import merge_system_messages
from toolkit.results import AdapterInfo


class LocalEngine:
    def __init__(
        self,
        loaded: Any,
        *,
        max_batch_size: int,
        max_queue: int,
        default_timeout_s: float | None,
        adapters_dir: Path,
        prefix_cache_mb: int = 0,
        prefill_chunk: int = 0,
        compile_decode: bool = False,
        max_loras: int = 0,
        max_lora_rank: int = 16,
    ) -> None:
        self.loaded = loaded  # LoadedModel: model, tokenizer, hashes
        self.scheduler = Scheduler(
            loaded.model,
            loaded.tokenizer,
            eos_token_ids=loaded.eos_token_ids,
            context_length=loaded.context_length,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            default_timeout_s=default_timeout_s,
            prefix_cache_bytes=prefix_cache_mb * 2**20,
            prefill_chunk=prefill_chunk,
            compile_decode=compile_decode,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
        )
        self.registry = AdapterRegistry(adapters_dir, self.scheduler, loaded.content_hash)
        self._info = EngineInfo(
            kind="local",
            served_model=loaded.source.location if loaded.source.kind == "hub" else loaded.name,
            context_length=loaded.context_length,
            capabilities=Capabilities(adapters=True, load_adapters=True, token_count="tokenizer"),
            content_hash=loaded.content_hash,
            device=loaded.device,
            dtype=loaded.dtype,
            quantization=loaded.quantization,
            defaults=dict(loaded.defaults),
            batch_size=max_batch_size,
            linear=self.scheduler.linear,
            control=ControlTokens.from_tokenizer(loaded.tokenizer),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        compiled = scheduler.compiled.compiled if scheduler.compiled else ()
        paths = ("eager", "compiled") if scheduler.can_compile else ("eager",)
        return EngineStats(scheduler.queue_depth, scheduler.active, compiled, paths)

    # ----- prompts --------------------------------------------------------------------

    def render(self, messages: Messages) -> str:
        """The messages as the model sees them; one leading system message for templates that insist."""
        tokenizer = self.loaded.tokenizer
        try:
            return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except Exception:
            merged = merge_system_messages(messages)
            return str(tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False))

    def _ids(self, text: str) -> list[int]:
        return list(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def count_messages(self, messages: Messages, *, limit: int | None = None) -> int:
        return self.count_tokens(self.render(messages))

    def encode(self, messages: Messages, *, limit: int | None = None) -> Encoded:
        text = self.render(messages)  # tokenized in any case: the engine generates from these ids
        ids = self._ids(text)
        return Encoded(len(ids), "tokenizer", text, tuple(ids))

    # ----- requests -------------------------------------------------------------------

    def check_room(self, waiting: int = 0) -> None:
        self.scheduler.check_room(waiting)

    def _options(self, request: EngineRequest) -> dict[str, Any]:
        assert request.encoded.input_ids is not None, "encode() with this engine first"
        return {
            "input_ids": list(request.encoded.input_ids),
            "params": request.params,
            "request_id": request.engine_id,
            "timeout_s": request.timeout_s,
            "adapter": request.adapter,
            "decode": request.decode,
        }

    def stream(self, request: EngineRequest) -> Iterator[Event]:
        return self.scheduler.stream(**self._options(request))

    def astream(self, request: EngineRequest) -> AsyncIterator[Event]:
        return self.scheduler.astream(**self._options(request))

    def cancel(self, engine_id: str) -> bool:
        return self.scheduler.cancel(engine_id)

    # ----- adapters -------------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        return self.registry.list()

    def adapter_hash(self, name: str) -> str | None:
        return self.registry.get(name).adapter_hash

    def check_adapter(self, name: str) -> None:
        self.registry.get(name)

    def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo:
        return self.registry.load(name, path)

    def unload_adapter(self, name: str, grace_s: float) -> AdapterInfo:
        return self.registry.unload(name, grace_s)

    def close(self, grace_s: float = 10.0) -> None:
        self.scheduler.close(grace_s)
