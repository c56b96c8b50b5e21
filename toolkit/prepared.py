"""A request on its way through the service: validated, its chat messages built and encoded for
its model (``Prepared``), and, once accepted, what ``cancel`` needs to stop it (``Live``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from toolkit.engines.base import Encoded, EngineRequest
from toolkit.params import GenerationParams, InferRequest
from toolkit.rag import BuiltMessages
from toolkit.registry import ServedModel
from toolkit.search import SearchOutcome


@dataclass
class Prepared:
    """A validated request, its chat messages and their encoding for its model, ready for the engine."""

    request: InferRequest
    params: GenerationParams
    built: BuiltMessages
    encoded: Encoded
    model: ServedModel
    search: SearchOutcome | None = None
    adapter_hash: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    replay_of: str | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.built.messages

    @property
    def prompt_text(self) -> str | None:
        """The messages rendered by the chat template (local models; a remote server renders its own)."""
        return self.encoded.prompt_text

    @property
    def input_ids(self) -> list[int]:
        return list(self.encoded.input_ids or ())

    def engine_request(self, live: Live) -> EngineRequest:
        r = self.request
        return EngineRequest(live.engine_id, self.messages, self.encoded, self.params, r.adapter, r.timeout_s)


@dataclass(eq=False)
class Live:
    """A request from its acceptance to its last event: what ``cancel`` needs to stop it.

    The engine knows it by ``engine_id``, fresh for every request, so two callers' ids never meet there.
    """

    engine_id: str = field(default_factory=lambda: secrets.token_hex(12))
    engine: Any = None  # set once the request is in the engine
    cancelled: bool = False
