"""``Service``: the one typed interface that ``InferenceService`` (in process) and ``RemoteService``
(over GraphQL) both satisfy, and that the server, the dashboard and the magic call.

mypy checks that both implementations conform (``_conforms`` below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.compare import Comparison
from toolkit.params import GenerationParams, InferRequest
from toolkit.results import AdapterInfo, Health, InferResult, ModelInfo, Replay, RunRecord, StreamEvent


class Service(Protocol):
    def health(self) -> Health: ...

    def models(self) -> list[ModelInfo]: ...

    def adapters(self, model: str | None = None) -> list[AdapterInfo]: ...

    def load_adapter(self, name: str, path: str | None = None, model: str | None = None) -> AdapterInfo: ...

    def unload_adapter(self, name: str, grace_s: float | None = None, model: str | None = None) -> AdapterInfo: ...

    def validate(self, request: InferRequest | str, **kwargs: Any) -> tuple[InferRequest, GenerationParams]: ...

    def infer(self, request: InferRequest | str, **kwargs: Any) -> InferResult: ...

    async def ainfer(self, request: InferRequest | str, **kwargs: Any) -> InferResult: ...

    def stream(self, request: InferRequest | str, **kwargs: Any) -> Iterator[StreamEvent]: ...

    def astream(self, request: InferRequest | str, **kwargs: Any) -> AsyncIterator[StreamEvent]: ...

    def cancel(self, request_id: str, owner: str = "") -> bool: ...

    def compare(self, prompt: str, variants: Any, **common: Any) -> Comparison: ...

    def compare_stream(self, prompt: str, variants: Any, **common: Any) -> Iterator[tuple[str, Any]]: ...

    def replay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay: ...

    async def areplay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay: ...


if TYPE_CHECKING:
    from toolkit.client import RemoteService
    from toolkit.service import InferenceService

    def _conforms(local: InferenceService, remote: RemoteService) -> list[Service]:
        return [local, remote]
