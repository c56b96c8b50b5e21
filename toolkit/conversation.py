"""Conversations that last: kept in the store as they go, continued from any front end, searchable.

    conv = service.conversation(system_prompt="Answer briefly.", temperature=0)
    conv.ask("Who designed the Harlow Dam?").text
    conv.ask("When was it finished?").text       # the store supplies the turns before it
    conv.id                                        # GraphQL's conversationId, /v1's conversation_id
    Conversation.load(conv.id, service)            # any process, any front end
    service.conversations(query="Harlow")          # newest first, found by words of prompts and answers

The service keeps a conversation when a request names one (``conversation=<id>``) or asks for a new one
(``conversation=True``): it reads the turns before from the store, runs the request, and saves the turn
before the answer reaches the caller, or, when the caller goes away first, saves what was said so far as
``cancelled``. Cancelled and failed turns stay in the conversation's record but are not sent to the model
as history (their answers are not whole). Without a store (``TOOLKIT_STORE=off``) a ``Conversation`` keeps
its turns in memory and sends them as history itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from toolkit.conversation_store import (
    DEFAULT_PAGE,
    ConversationInfo,
    ConversationStore,
    ConversationTurn,
    title_of,
    turn_status,
)
from toolkit.errors import InvalidRequest, StoreUnavailable, UnknownConversation
from toolkit.params import InferRequest, Turn
from toolkit.results import Done, InferResult, Replay, RunRecord, StreamEvent, Token
from toolkit.store import Store, now

if TYPE_CHECKING:
    from toolkit.protocol import Service

log = logging.getLogger("toolkit.conversation")


@dataclass
class Thread:
    """One request's part in a kept conversation (the service's side): the history it is given, and saving
    its turn however it ends."""

    conversations: ConversationStore
    owner: str
    conversation_id: str | None  # None: a new one, made when the turn is saved
    saved: bool = False
    prior: tuple[Turn, ...] = ()  # a new conversation's history, as the client sent it: its first turns
    continues: bool = False  # the history is the store's: the service fits it to the input limit
    error: str | None = None  # why the turn could not be kept (the store failed)

    def apply(self, request: InferRequest) -> InferRequest:
        """``request`` with the conversation's history (and its model, adapter and system prompt where the
        request leaves them out)."""
        if self.conversation_id is None:
            self.prior = request.history
            return request
        info = self.conversations.get(self.conversation_id, self.owner, records=False)
        if info is None:
            raise UnknownConversation(self.conversation_id)
        if request.history:
            raise InvalidRequest("history", "give a conversation or a history, not both: the conversation has its own")
        self.continues = True
        return replace(
            request,
            history=info.history(),
            model=request.model if request.model is not None else info.model,
            adapter=request.adapter if request.adapter is not None or request.model is not None else info.adapter,
            system_prompt=request.system_prompt if request.system_prompt is not None else info.system_prompt,
        )

    def save(self, request: InferRequest, result: InferResult) -> InferResult:
        """Save the finished turn; the result, carrying the conversation's id."""
        self._save(request, result.text, result.finish_reason, result)
        return replace(result, conversation_id=self.conversation_id, conversation_error=self.error)

    def save_unfinished(self, request: InferRequest, text: str) -> None:
        """The caller went away before the answer was done: what was said so far, as cancelled."""
        if not self.saved:
            self._save(request, text, "cancelled", None)

    def refused(self, request: InferRequest, text: str) -> None:
        """The request failed with an error: a turn marked error when something was said, else none (and no
        new conversation for a request that was refused)."""
        if not self.saved:
            if text:
                self._save(request, text, "error", None)
            self.saved = True

    def _save(self, request: InferRequest, text: str, finish_reason: str, result: InferResult | None) -> None:
        """Keep the turn. A store that cannot be written (a full disk, a read-only file, a lock held past the
        busy timeout) must not lose an answer that was generated: the answer goes back without a
        conversation, and the log says why."""
        self.saved = True
        try:
            if self.conversation_id is None:
                self.conversation_id = self.conversations.start(
                    self.owner, request, text, finish_reason, result, self.prior
                )
            elif not self.conversations.add_turn(self.conversation_id, request, text, finish_reason, result):
                self.conversation_id = None  # deleted meanwhile: the answer is not a turn of anything
        except StoreUnavailable as exc:  # the store logged its cause and file
            log.warning("turn %s not kept: %s", request.request_id, exc.message)
            self.conversation_id = None
            self.error = exc.message
        self.prior = ()


def kept(thread: Thread | None, request: InferRequest, events: Iterator[StreamEvent]) -> Iterator[StreamEvent]:
    """``events`` with the turn saved: before ``Done`` passes on, or as cancelled if the stream is closed first."""
    if thread is None:
        yield from events
        return
    text = ""
    try:
        for event in events:
            if isinstance(event, Token):
                text = event.text
            elif isinstance(event, Done):
                event = Done(thread.save(request, event.result))
            yield event
    except Exception:
        thread.refused(request, text)
        raise
    finally:
        thread.save_unfinished(request, text)


async def akept(
    thread: Thread | None, request: InferRequest, events: AsyncGenerator[StreamEvent, None]
) -> AsyncGenerator[StreamEvent, None]:
    """``kept`` for an event loop: the finished turn is saved off the loop (another process may hold the
    store's write lock for a moment)."""
    import asyncio
    from contextlib import aclosing

    if thread is None:
        async with aclosing(events):  # closed with this one: the request's steps end at once, not at collection
            async for event in events:
                yield event
        return
    text = ""
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Token):
                    text = event.text
                elif isinstance(event, Done):
                    thread.saved = True  # the save runs on even if this task is cancelled while it waits
                    event = Done(await asyncio.to_thread(thread.save, request, event.result))
                yield event
    except Exception:
        if not thread.saved:  # as refused(), off the loop and unawaited (the store's lock may wait on another process)
            thread.saved = True
            if text:
                asyncio.get_running_loop().run_in_executor(None, thread._save, request, text, "error", None)
        raise
    finally:
        if not thread.saved:  # a cancelled task must not await: hand the write to a worker, unawaited
            thread.saved = True
            asyncio.get_running_loop().run_in_executor(None, thread._save, request, text, "cancelled", None)


ConversationArg = str | Literal[True] | None


class Conversation:
    """A conversation with a model, on any ``Service`` (in process or remote): ``ask``/``stream`` and their
    async twins add turns; with a store they are kept as they go (``id`` once the first is saved)."""

    def __init__(
        self,
        service: Service,
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
    def load(cls, conversation_id: str, service: Service, **params: Any) -> Conversation:
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
        from toolkit.conversation_export import to_markdown

        return to_markdown(self)

    def to_notebook(self, path: str | None = None) -> dict[str, Any]:
        """A notebook whose cells rebuild this conversation with the toolkit (``path``: also written there)."""
        from toolkit.conversation_export import to_notebook

        return to_notebook(self, path)


def keeper(owner: str) -> str:
    """Whose conversations a caller sees: its API key's (``key:<fingerprint>``, the server's identity for a
    caller with a key); without keys, everyone's are one list (the identity is then an address, which a
    restart or another network would change)."""
    return owner if owner.startswith("key:") else ""


def conversations(service: Service | None = None, query: str | None = None, first: int = DEFAULT_PAGE) -> Any:
    """Kept conversations as a pandas DataFrame, newest first: id, title, model, turns, adapter, created,
    updated. ``service``: whose (a ``RemoteService``: the server's); default: the store ``TOOLKIT_STORE``
    names, read without loading a model."""
    try:
        import pandas as pd
    except ImportError:
        from toolkit.errors import MissingDependency

        raise MissingDependency("pandas", "toolkit.conversations") from None
    if service is not None:
        found = service.conversations(query=query, first=first)
    else:
        from toolkit.settings import Settings

        path = Settings.from_env().store
        found = ConversationStore(Store(path)).list(query=query, first=first) if path is not None else []
    columns = ["id", "title", "model", "turns", "adapter", "created", "updated"]
    rows = [[c.id, c.title, c.model, c.turn_count, c.adapter, c.created_at, c.updated_at] for c in found]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("created", "updated"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame
