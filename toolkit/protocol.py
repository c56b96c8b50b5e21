"""``Service``: the one typed interface that ``InferenceService`` (in process) and ``RemoteService``
(over GraphQL) both satisfy, and that the server, the dashboard and the magic call.

mypy checks that both implementations conform (``_conforms`` below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.compare import Comparison
from toolkit.conversation import Conversation, ConversationArg, ConversationInfo
from toolkit.params import GenerationParams, InferRequest
from toolkit.results import AdapterInfo, Health, InferResult, ModelInfo, Replay, RunRecord, StreamEvent
from toolkit.search import SearchOutcome

if TYPE_CHECKING:
    from toolkit.evals.results import EvalRun


class Service(Protocol):
    def health(self) -> Health: ...

    def models(self) -> list[ModelInfo]: ...

    def adapters(self, model: str | None = None) -> list[AdapterInfo]: ...

    def load_adapter(self, name: str, path: str | None = None, model: str | None = None) -> AdapterInfo: ...

    def unload_adapter(self, name: str, grace_s: float | None = None, model: str | None = None) -> AdapterInfo: ...

    def validate(self, request: InferRequest | str, **kwargs: Any) -> tuple[InferRequest, GenerationParams]: ...

    def search(self, query: str) -> SearchOutcome: ...

    # search: a snapshot (search()'s, or a run record's) to ground in instead of a new search;
    # conversation: a kept conversation's id to continue, or True to start one (toolkit.conversation)
    def infer(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> InferResult: ...

    async def ainfer(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> InferResult: ...

    def stream(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> Iterator[StreamEvent]: ...

    def astream(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> AsyncIterator[StreamEvent]: ...

    def conversation(
        self,
        *,
        model: str | None = None,
        adapter: str | None = None,
        system_prompt: str | None = None,
        web_search: bool = False,
        **params: Any,
    ) -> Conversation: ...

    def conversations(
        self, query: str | None = None, first: int = 50, before: str | None = None, owner: str = ""
    ) -> list[ConversationInfo]: ...

    def conversation_info(self, conversation_id: str, owner: str = "") -> ConversationInfo | None: ...

    def rename_conversation(self, conversation_id: str, title: str, owner: str = "") -> ConversationInfo: ...

    def delete_conversation(self, conversation_id: str, owner: str = "") -> bool: ...

    def cancel(self, request_id: str, owner: str = "") -> bool: ...

    def compare(self, prompt: str, variants: Any, **common: Any) -> Comparison: ...

    def compare_stream(self, prompt: str, variants: Any, **common: Any) -> Iterator[tuple[str, Any]]: ...

    def evaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun: ...

    async def aevaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun: ...

    def replay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay: ...

    async def areplay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay: ...


if TYPE_CHECKING:
    from toolkit.client import RemoteService
    from toolkit.service import InferenceService

    def _conforms(local: InferenceService, remote: RemoteService) -> list[Service]:
        return [local, remote]
