"""``Conversation``: a conversation with a model on any service (in process or remote), and
``conversations()``, the kept ones as a DataFrame. The handle asks its service (``Conversing``: what it
needs of one) and reads or writes nothing itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from toolkit.conversation.export import to_markdown, to_notebook
from toolkit.conversation.records import (
    DEFAULT_PAGE,
    ConversationArg,
    ConversationInfo,
    ConversationTurn,
    title_of,
    turn_status,
)
from toolkit.conversation.store import ConversationStore
from toolkit.errors import InvalidRequest, MissingDependency, UnknownConversation
from toolkit.params import InferRequest, Turn
from toolkit.results import Done, InferResult, Replay, RunRecord, StreamEvent, Token
from toolkit.search import SearchOutcome
from toolkit.settings import Settings
from toolkit.store import Store, now


class Conversing(Protocol):
    """What a ``Conversation`` needs of a service: its part of ``toolkit.protocol.Service``, which extends this."""

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

    def conversations(
        self, query: str | None = None, first: int = 50, before: str | None = None, owner: str = ""
    ) -> list[ConversationInfo]: ...

    def conversation_info(self, conversation_id: str, owner: str = "") -> ConversationInfo | None: ...

    def rename_conversation(self, conversation_id: str, title: str, owner: str = "") -> ConversationInfo: ...

    def delete_conversation(self, conversation_id: str, owner: str = "") -> bool: ...

    def replay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay: ...


class Conversation:
    """A conversation with a model, on any ``Service`` (in process or remote): ``ask``/``stream`` and their
    async twins add turns; with a store they are kept as they go (``id`` once the first is saved)."""

    def __init__(
        self,
        service: Conversing,
        *,
        model: str | None = None,
        adapter: str | None = None,
        system_prompt: str | None = None,
        web_search: bool = False,
        info: ConversationInfo | None = None,
        **params: Any,
    ) -> None:
        self.service = service
        self.model, self.adapter, self.system_prompt, self.web_search = model, adapter, system_prompt, web_search
        self.params = params
        self.id: str | None = info.id if info is not None else None
        self.title: str | None = info.title if info is not None else None
        self.turns: list[ConversationTurn] = list(info.turns) if info is not None else []

    @classmethod
    def load(cls, conversation_id: str, service: Conversing, **params: Any) -> Conversation:
        """A kept conversation, to read, continue, replay or export; ``UnknownConversation`` if there is none."""
        info = service.conversation_info(conversation_id)
        if info is None:
            raise UnknownConversation(conversation_id, "id")
        return cls(
            service,
            model=info.model,
            adapter=info.adapter,
            system_prompt=info.system_prompt,
            web_search=info.web_search,
            info=info,
            **params,
        )

    def __repr__(self) -> str:
        return f"<Conversation {self.id or '(not kept)'} {self.title or ''!r}: {len(self.turns)} turns>"

    @property
    def history(self) -> tuple[Turn, ...]:
        return ConversationInfo("", "", None, None, None, False, "", "", 0, tuple(self.turns)).history()

    def _request(self, prompt: str, params: dict[str, Any]) -> tuple[InferRequest, dict[str, Any]]:
        fields = {"model": self.model, "adapter": self.adapter, "system_prompt": self.system_prompt}
        turn = {k: params.pop(k, None) for k in ("model", "adapter", "system_prompt")}
        fields |= {k: v for k, v in turn.items() if v is not None}  # this turn's own
        fields["web_search"] = params.pop("web_search", self.web_search)
        extra = {k: params.pop(k) for k in ("search",) if k in params}
        request = InferRequest.build(
            prompt,
            **fields,
            **{**self.params, **params},
            history=self.history if self.id is None else (),
        )
        return request, {"conversation": self.id if self.id is not None else True, **extra}

    def _add(self, request: InferRequest, result: InferResult | None, text: str) -> None:
        if result is not None and result.conversation_id:
            self.id = result.conversation_id
            self.title = self.title or title_of(request.prompt)
        finish = result.finish_reason if result is not None else "cancelled"
        self.turns.append(
            ConversationTurn(
                len(self.turns),
                request.prompt,
                result.text if result is not None else text,
                turn_status(finish),
                finish,
                request.request_id,
                now(),
                result.model if result is not None else request.model,
                result.adapter if result is not None else request.adapter,
                result.sources if result is not None else (),
                result.run_record.to_dict() if result is not None else None,
            )
        )

    def stream(self, prompt: str, **params: Any) -> Iterator[StreamEvent]:
        """The next turn, streamed (``service.stream``'s events); closing it early keeps the turn as cancelled."""
        request, extra = self._request(prompt, params)
        text, added = "", False
        try:
            for event in self.service.stream(request, **extra):
                if isinstance(event, Token):
                    text = event.text
                elif isinstance(event, Done):
                    self._add(request, event.result, text)  # before the caller sees it: the next ask continues
                    added = True
                yield event
        finally:
            if not added:
                self._add(request, None, text)

    def ask(self, prompt: str, **params: Any) -> InferResult:
        """The next turn's answer. Parameters here are for this turn; those given to the conversation, for all."""
        for event in self.stream(prompt, **params):
            if isinstance(event, Done):
                return event.result
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    async def astream(self, prompt: str, **params: Any) -> AsyncIterator[StreamEvent]:
        request, extra = self._request(prompt, params)
        text, added = "", False
        try:
            async for event in self.service.astream(request, **extra):
                if isinstance(event, Token):
                    text = event.text
                elif isinstance(event, Done):
                    self._add(request, event.result, text)  # an abandoned async generator's finally runs late
                    added = True
                yield event
        finally:
            if not added:
                self._add(request, None, text)

    async def aask(self, prompt: str, **params: Any) -> InferResult:
        async for event in self.astream(prompt, **params):
            if isinstance(event, Done):
                return event.result
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    def replay(self, *, force: bool = False) -> list[Replay]:
        """Every turn that has a run record, run again (``service.replay``): each says whether it is identical."""
        return [self.service.replay(RunRecord.from_dict(t.run_record), force=force) for t in self.turns if t.run_record]

    def rename(self, title: str) -> None:
        if self.id is None:
            raise InvalidRequest("id", "this conversation is not kept (no turn yet, or TOOLKIT_STORE=off)")
        self.title = self.service.rename_conversation(self.id, title).title

    def delete(self) -> bool:
        """Delete it from the store: turns, run records and all."""
        gone = self.id is not None and self.service.delete_conversation(self.id)
        self.id, self.title = None, None
        self.turns = []  # else the next ask sends them as history, and a new conversation keeps them again
        return gone

    def to_markdown(self) -> str:
        return to_markdown(self)

    def to_notebook(self, path: str | None = None) -> dict[str, Any]:
        """A notebook whose cells rebuild this conversation with the toolkit (``path``: also written there)."""
        return to_notebook(self, path)


def conversations(service: Conversing | None = None, query: str | None = None, first: int = DEFAULT_PAGE) -> Any:
    """Kept conversations as a pandas DataFrame, newest first: id, title, model, turns, adapter, created,
    updated. ``service``: whose (a ``RemoteService``: the server's); default: the store ``TOOLKIT_STORE``
    names, read without loading a model."""
    try:
        import pandas as pd
    except ImportError:
        raise MissingDependency("pandas", "toolkit.conversations") from None
    if service is not None:
        found = service.conversations(query=query, first=first)
    else:
        path = Settings.from_env().store
        found = ConversationStore(Store(path)).list(query=query, first=first) if path is not None else []
    columns = ["id", "title", "model", "turns", "adapter", "created", "updated"]
    rows = [[c.id, c.title, c.model, c.turn_count, c.adapter, c.created_at, c.updated_at] for c in found]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("created", "updated"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame
