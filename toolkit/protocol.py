"""``Service``: the one typed interface that ``InferenceService`` (in process) and ``RemoteService``
(over GraphQL) both satisfy, and that the server, the dashboard and the magic call.

mypy checks that both implementations conform (``_conforms`` in each implementation's module). The part a
``Conversation`` needs (``Conversing``) is declared beside it and extended here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.compare import Comparison
from toolkit.conversation.handle import Conversation, Conversing
from toolkit.conversation.records import ConversationArg
from toolkit.params import GenerationParams, InferRequest
from toolkit.results import AdapterInfo, Health, InferResult, ModelInfo, Replay, RunRecord
from toolkit.search import SearchOutcome

if TYPE_CHECKING:
    from toolkit.evals.results import EvalRun


class Service(Conversing, Protocol):
    def health(self) -> Health: ...

    def models(self) -> list[ModelInfo]: ...

    def adapters(self, model: str | None = None) -> list[AdapterInfo]: ...

    def load_adapter(self, name: str, path: str | None = None, model: str | None = None) -> AdapterInfo: ...

    def unload_adapter(self, name: str, grace_s: float | None = None, model: str | None = None) -> AdapterInfo: ...

    def validate(self, request: InferRequest | str, **kwargs: Any) -> tuple[InferRequest, GenerationParams]: ...

    def check_room(self, model: str | None = None) -> None: ...

    def search(self, query: str) -> SearchOutcome: ...

    # search: a snapshot (search()'s, or a run record's) to ground in instead of a new search;
    # conversation: a kept conversation's id to continue, or True to start one (toolkit.conversation.thread)
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

    def conversation(
        self,
        *,
        model: str | None = None,
        adapter: str | None = None,
        system_prompt: str | None = None,
        web_search: bool = False,
        **params: Any,
    ) -> Conversation: ...

    def cancel(self, request_id: str, owner: str = "") -> bool: ...

    def compare(self, prompt: str, variants: Any, **common: Any) -> Comparison: ...

    def compare_stream(self, prompt: str, variants: Any, **common: Any) -> Iterator[tuple[str, Any]]: ...

    def evaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun: ...

    async def aevaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun: ...

    async def areplay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay: ...
