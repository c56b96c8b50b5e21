"""A request's part in a kept conversation, the service's side: the history it is given (the store's,
fitted by the service), and its turn saved however the request ends (``kept``/``akept`` wrap its events)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, replace

from toolkit.conversation.records import ConversationArg
from toolkit.conversation.store import ConversationStore
from toolkit.errors import InvalidRequest, StoreUnavailable, UnknownConversation
from toolkit.params import InferRequest, Turn
from toolkit.results import Done, InferResult, StreamEvent, Token

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


def keeper(owner: str) -> str:
    """Whose conversations a caller sees: its API key's (``key:<fingerprint>``, the server's identity for a
    caller with a key); without keys, everyone's are one list (the identity is then an address, which a
    restart or another network would change)."""
    return owner if owner.startswith("key:") else ""


def thread_for(
    conversations: ConversationStore | None, request: InferRequest, conversation: ConversationArg
) -> tuple[InferRequest, Thread | None]:
    """The request, with its conversation's history when it continues one, and the ``Thread`` that will save
    its turn (None: not kept). ``conversations``: the service's store of them (None: TOOLKIT_STORE=off)."""
    if conversation is None or conversation is False:
        return request, None
    if conversation is not True and not isinstance(conversation, str):
        raise InvalidRequest("conversation_id", f"must be a conversation's id, got {conversation!r}")
    if conversations is None:
        if conversation is True:  # nowhere to keep it: answered, not kept
            return request, None
        raise InvalidRequest("conversation_id", "this service keeps no conversations (TOOLKIT_STORE=off)")
    thread = Thread(conversations, keeper(request.owner), None if conversation is True else conversation)
    return thread.apply(request), thread
