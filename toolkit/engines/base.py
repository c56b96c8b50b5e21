"""The seam between the service and whatever generates: one small ``Engine`` protocol.

The service validates a request, searches, builds the chat messages within the model's input
budget (counting tokens with the engine), then hands an ``EngineRequest`` to the engine of the
model the request names and reads ``Delta``/``Finished`` events back (``toolkit.events``).
Two engines implement it: ``LocalEngine`` (transformers, continuous batching, LoRA adapters in
mixed batches) and ``OpenAIEngine`` (any OpenAI-compatible server: vLLM, SGLang, llama.cpp,
Ollama, Ray Serve LLM). No torch here.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from toolkit.controltokens import COMMON_MARKERS, ControlTokens
from toolkit.errors import InvalidRequest
from toolkit.events import Event
from toolkit.params import PARAMS, GenerationParams
from toolkit.results import AdapterInfo

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Encoded:
    """The messages as one model sees them: rendered by its chat template and tokenized where the
    engine can (local), and their size in tokens, counted as ``counted_by`` says."""

    tokens: int
    counted_by: str  # tokenizer | server | estimate
    prompt_text: str | None = None
    input_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EngineRequest:
    """One chat request, as the service hands it to an engine."""

    engine_id: str  # unique in the service: ``cancel`` names it
    messages: Messages
    encoded: Encoded
    params: GenerationParams  # resolved: max_new_tokens is set
    adapter: str | None = None
    timeout_s: float | None = None
    decode: str | None = None  # a local model's decode path, eager | compiled (a replay's); None: the engine's choice


@dataclass(frozen=True)
class Capabilities:
    adapters: bool  # requests may name a LoRA adapter
    load_adapters: bool  # adapters can be loaded and unloaded at run time
    token_count: str  # how prompts are counted: tokenizer | server | estimate


@dataclass(frozen=True)
class EngineInfo:
    """What the run record and ``models`` say about the engine serving a model."""

    kind: str  # local | openai
    served_model: str  # the model's name where it runs (the Hub id, or the remote server's name)
    context_length: int
    capabilities: Capabilities
    content_hash: str | None = None  # the weights' sha256 (local); None where the engine cannot tell
    device: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    version: str | None = None  # the remote server's version or system_fingerprint, when it says
    defaults: dict[str, Any] = field(default_factory=dict)  # generation defaults the model comes with
    batch_size: int | None = None  # the most requests it generates together; None where it cannot tell
    linear: str | None = None  # a bfloat16 CPU model's linear layers: packed (oneDNN) or plain (F.linear)
    extra: dict[str, Any] = field(default_factory=dict)
    # the model's turn markers, which text from outside must never spell (toolkit.controltokens)
    control: ControlTokens = field(default_factory=lambda: ControlTokens.of(COMMON_MARKERS))


@dataclass(frozen=True)
class EngineStats:
    queue_depth: int  # accepted, waiting for a slot
    active: int  # generating now
    compiled: tuple[str, ...] = ()  # the decode-step shapes it runs compiled (``1 row``, ``2+ rows``)
    paths: tuple[str, ...] = ()  # the decode paths a request can be held to now (eager, compiled); (): remote


@runtime_checkable
class Engine(Protocol):
    """What the service needs from an engine; ``submit``'s sink gets ``Delta``s then one ``Finished``."""

    @property
    def info(self) -> EngineInfo: ...

    def stats(self) -> EngineStats: ...

    def count_tokens(self, text: str) -> int: ...

    def count_messages(self, messages: Messages, *, limit: int | None = None) -> int:
        """The messages' size as the model sees them. With ``limit``, an engine may skip an exact count that
        costs a round trip when it can prove they fit (it answers an estimate that is within the limit)."""

    def encode(self, messages: Messages, *, limit: int | None = None) -> Encoded:
        """The messages as the model sees them. With ``limit``, an engine may skip an exact count that
        costs a round trip when it can prove the messages fit (``Encoded.tokens`` is then an estimate)."""

    def check_room(self, waiting: int = 0) -> None:
        """Raise ``Overloaded`` at once when no request could be accepted now, counting ``waiting`` more that
        were accepted and are not yet here (being searched for or prepared)."""

    def stream(self, request: EngineRequest) -> Iterator[Event]:
        """Submit now; the events. Closing the iterator early cancels the request."""

    def astream(self, request: EngineRequest) -> AsyncIterator[Event]: ...

    def cancel(self, engine_id: str) -> bool: ...

    def adapters(self) -> list[AdapterInfo]: ...

    def adapter_hash(self, name: str) -> str | None:
        """The weights hash of a served adapter, for the run record (None where unknown)."""

    def check_adapter(self, name: str) -> None:
        """Raise ``InvalidRequest`` on ``adapter`` when requests cannot name ``name``."""

    def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo: ...

    def unload_adapter(self, name: str, grace_s: float) -> AdapterInfo: ...

    def close(self, grace_s: float = 10.0) -> None: ...


def new_seed() -> int:
    """The seed of a request that gives none: chosen here only (the service when it resolves a request, an engine
    driven directly), below 2**31 so any OpenAI-compatible server takes it."""
    return secrets.randbelow(2**31)


@dataclass(frozen=True)
class Sampling:
    """What the local engine samples with: ``GenerationParams`` with every parameter set, the seed included
    (``Sampling.of``). Its fields are the declaration's, not Optional (a test keeps them the same)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    dry_multiplier: float
    dry_base: float
    dry_allowed_length: int
    no_repeat_ngram_size: int
    seed: int
    stop: tuple[str, ...]
    presence_penalty: float
    frequency_penalty: float

    @classmethod
    def of(cls, params: GenerationParams) -> Sampling:
        """``params`` resolved (``resolve``): ``InvalidRequest`` naming the first one not set; a missing seed is
        chosen (``new_seed``). Numbers as the engine reads them (a float parameter given as 1 is 1.0)."""
        missing = params.missing()
        if missing:
            raise InvalidRequest(f"params.{missing[0]}", "the engine needs every parameter set; resolve them first")
        values: dict[str, Any] = {
            name: float(value) if PARAMS[name].kind == "float" else value
            for name in PARAMS
            if (value := getattr(params, name)) is not None
        }
        return cls(**{**values, "seed": params.seed if params.seed is not None else new_seed()})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
