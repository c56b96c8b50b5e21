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

import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from toolkit.errors import ConfigError, InvalidRequest, UnknownConversation
from toolkit.params import InferRequest, Turn
from toolkit.results import Done, InferResult, Replay, RunRecord, Source, StreamEvent, Token
from toolkit.store import Store, now
from toolkit.wire import ENUM, JSON

if TYPE_CHECKING:
    from toolkit.protocol import Service

log = logging.getLogger("toolkit.conversation")
TITLE_CHARS = 80  # a title made from the first prompt
MAX_TITLE = 200
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_QUERY = 500
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class ConversationTurn:
    """A prompt and its answer. ``status``: done, cancelled (the caller went away or cancelled: ``answer`` is
    what was said by then) or error."""

    position: int
    prompt: str
    answer: str
    status: str = field(metadata=ENUM)
    finish_reason: str | None
    request_id: str
    created_at: str
    model: str | None = None
    adapter: str | None = None
    sources: tuple[Source, ...] = ()
    run_record: dict[str, Any] | None = field(default=None, metadata=JSON)

    @property
    def whole(self) -> bool:
        """Sent to the model as history: a finished answer."""
        return self.status == "done" and bool(self.answer.strip())


@dataclass(frozen=True)
class ConversationInfo:
    """A kept conversation: what its list shows, and (when opened) its turns, oldest first."""

    id: str
    title: str
    model: str | None
    adapter: str | None
    system_prompt: str | None
    web_search: bool
    created_at: str
    updated_at: str
    turn_count: int
    turns: tuple[ConversationTurn, ...] = ()

    def history(self) -> tuple[Turn, ...]:
        """The whole turns, as the model is sent them."""
        out: list[Turn] = []
        for turn in self.turns:
            if turn.whole:
                out += [Turn("user", turn.prompt), Turn("assistant", turn.answer)]
        return tuple(out)


def title_of(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rsplit(" ", 1)[0] + "…"


def _turn_status(finish_reason: str) -> str:
    """A turn's status from its finish reason: a timed-out answer is cut off, so it counts as failed (kept,
    not sent as history)."""
    return {"cancelled": "cancelled", "error": "error", "timeout": "error"}.get(finish_reason, "done")


class ConversationStore:
    """Conversations and their turns in the toolkit's SQLite store (``toolkit.store``); each belongs to an
    ``owner`` (an API key's fingerprint on a server with keys, else ""): another owner's conversation
    answers exactly as an unknown one does."""

    def __init__(self, store: Store, retention_days: int = 0) -> None:
        self.store = store
        self.retention_days = retention_days
        self._pruned_at = float("-inf")

    # ----- writing ---------------------------------------------------------------------

    def create(self, owner: str, request: InferRequest, first_prompt: str | None = None) -> str:
        conversation_id = secrets.token_hex(16)
        stamp = now()
        with self.store.transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM conversations").fetchone()[0]
            db.execute(
                "INSERT INTO conversations (id, owner, title, model, adapter, system_prompt, web_search, created_at, "
                "updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    owner,
                    title_of(first_prompt or request.prompt),
                    request.model,
                    request.adapter,
                    request.system_prompt,
                    int(request.web_search),
                    stamp,
                    stamp,
                    seq,
                ),
            )
        self.prune()
        return conversation_id

    def add_turn(
        self,
        conversation_id: str,
        request: InferRequest,
        answer: str,
        finish_reason: str,
        result: InferResult | None = None,
        prior: tuple[Turn, ...] = (),
    ) -> bool:
        """Save a turn (its position is the next one, even with two processes adding at once), after the
        ``prior`` turns a client sent as history when it started the conversation; the conversation becomes
        the newest, with the turn's model, adapter, system prompt and search as its own."""
        stamp = now()
        model = result.model if result is not None else request.model
        adapter = result.adapter if result is not None else request.adapter
        sources = [s.__dict__ for s in result.sources] if result is not None else []
        record = result.run_record.to_dict() if result is not None else None
        rows: list[tuple[str, str, str, str, str | None, str | None, list[dict[str, Any]], dict[str, Any] | None]]
        rows = [
            (f"{request.request_id}.h{i}", user.content, bot.content, "stop", model, adapter, [], None)
            for i, (user, bot) in enumerate(zip(prior[::2], prior[1::2], strict=True))
        ]
        rows.append((request.request_id, request.prompt, answer, finish_reason, model, adapter, sources, record))
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                return False  # deleted while the turn ran: the answer stands, nothing is kept
            position = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM conversation_turns WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()[0]
            for offset, (request_id, prompt, text, finish, model_, adapter_, sources_, record_) in enumerate(rows):
                cursor = db.execute(
                    "INSERT INTO conversation_turns (conversation_id, position, request_id, prompt, answer, status, "
                    "finish_reason, model, adapter, sources, run_record, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        conversation_id,
                        position + offset,
                        request_id,
                        prompt,
                        text,
                        _turn_status(finish),
                        finish,
                        model_,
                        adapter_,
                        json.dumps(sources_),
                        json.dumps(record_) if record_ is not None else None,
                        stamp,
                    ),
                )
                db.execute(
                    "INSERT INTO conversation_text (rowid, text) VALUES (?, ?)", (cursor.lastrowid, f"{prompt}\n{text}")
                )
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM conversations").fetchone()[0]
            db.execute(
                "UPDATE conversations SET updated_at = ?, seq = ?, model = ?, adapter = ?, system_prompt = ?, "
                "web_search = ? WHERE id = ?",
                (stamp, seq, model, adapter, request.system_prompt, int(request.web_search), conversation_id),
            )
        return True

    def rename(self, conversation_id: str, title: str, owner: str = "") -> ConversationInfo:
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
            raise InvalidRequest("title", f"must be 1 to {MAX_TITLE} characters")
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE conversations SET title = ? WHERE id = ? AND owner = ?",
                (" ".join(title.split()), conversation_id, owner),
            )
            if cursor.rowcount == 0:
                raise UnknownConversation(conversation_id, "id")
            row = db.execute(
                f"SELECT {self._COLUMNS} FROM conversations c WHERE c.id = ?", (conversation_id,)
            ).fetchone()
        return self._info(row)  # read in the write: a delete meanwhile cannot make it None

    def delete(self, conversation_id: str, owner: str = "") -> bool:
        """The conversation, its turns, their run records and their words in the search index: gone (the
        store zeroes deleted content: ``PRAGMA secure_delete``)."""
        with self.store.transaction() as db:
            gone = self._delete(db, "id = ? AND owner = ?", (conversation_id, owner)) > 0
        if gone:
            self._scrub()
        return gone

    @staticmethod
    def _delete(db: Any, where: str, args: tuple[Any, ...]) -> int:
        chosen = f"SELECT id FROM conversations WHERE {where}"
        db.execute(
            "DELETE FROM conversation_text WHERE rowid IN (SELECT rowid FROM conversation_turns "
            f"WHERE conversation_id IN ({chosen}))",
            args,
        )
        gone = int(db.execute(f"DELETE FROM conversations WHERE {where}", args).rowcount)
        if gone:
            # FTS5 keeps a deleted row's terms in its index segments (and writes them again in the delete
            # marker) until the segments are merged: merge them now, or the words stay in the file
            db.execute("INSERT INTO conversation_text (conversation_text) VALUES ('optimize')")
        return gone

    def _scrub(self) -> None:
        """The WAL still holds the pages as they were before the delete: checkpoint and truncate it (best
        effort: a reader in another process may keep part of it until its read ends)."""
        self.store.query("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, *, force: bool = False) -> int:
        """Delete conversations untouched for longer than the retention (``CONVERSATION_RETENTION_DAYS``; 0:
        kept for ever). Runs at most once an hour unless ``force``."""
        if self.retention_days <= 0:
            return 0
        if not force and time.monotonic() - self._pruned_at < PRUNE_EVERY_S:
            return 0
        self._pruned_at = time.monotonic()
        cutoff = (datetime.now(UTC) - timedelta(days=self.retention_days)).isoformat(timespec="seconds")
        with self.store.transaction() as db:
            gone = self._delete(db, "updated_at < ?", (cutoff,))
        if gone:
            self._scrub()
        return gone

    # ----- reading ---------------------------------------------------------------------

    _COLUMNS = (
        "c.id, c.title, c.model, c.adapter, c.system_prompt, c.web_search, c.created_at, c.updated_at, "
        "(SELECT COUNT(*) FROM conversation_turns t WHERE t.conversation_id = c.id)"
    )

    @staticmethod
    def _info(row: tuple[Any, ...], turns: tuple[ConversationTurn, ...] = ()) -> ConversationInfo:
        cid, title, model, adapter, system_prompt, web_search, created, updated, count = row
        return ConversationInfo(
            cid, title, model, adapter, system_prompt, bool(web_search), created, updated, count, turns
        )

    def get(
        self, conversation_id: str, owner: str = "", *, turns: bool = True, records: bool = True
    ) -> ConversationInfo | None:
        """The conversation with its turns; None for an unknown id or another owner's. ``records=False``: the
        turns without their sources and run records (the history a continuation needs: 0.1 ms for 100 turns
        instead of decoding every record)."""
        rows = self.store.query(
            f"SELECT {self._COLUMNS} FROM conversations c WHERE c.id = ? AND c.owner = ?", (conversation_id, owner)
        )
        if not rows:
            return None
        if not turns:
            return self._info(rows[0])
        found = self.store.query(
            "SELECT position, prompt, answer, status, finish_reason, request_id, created_at, model, adapter, "
            + ("sources, run_record" if records else "'[]', NULL")
            + " FROM conversation_turns WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        )
        return self._info(
            rows[0],
            tuple(
                ConversationTurn(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    row[5],
                    row[6],
                    row[7],
                    row[8],
                    tuple(Source(**s) for s in json.loads(row[9])),
                    json.loads(row[10]) if row[10] else None,
                )
                for row in found
            ),
        )

    def list(
        self, owner: str = "", *, query: str | None = None, first: int = DEFAULT_PAGE, before: str | None = None
    ) -> list[ConversationInfo]:
        """The owner's conversations, newest first (by their last turn); ``query``: only those whose prompts or
        answers hold every word of it; ``before``: those after that id in this order (the next page)."""
        if isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= MAX_PAGE:
            raise InvalidRequest("first", f"must be between 1 and {MAX_PAGE}, got {first!r}")
        where, args = ["c.owner = ?"], [owner]
        if before is not None:
            seq = self.store.query("SELECT seq FROM conversations WHERE id = ? AND owner = ?", (before, owner))
            if not seq:
                raise UnknownConversation(before, "before")
            where.append("c.seq < ?")
            args.append(seq[0][0])
        if query is not None:
            if not isinstance(query, str) or len(query) > MAX_QUERY:
                raise InvalidRequest("query", f"must be at most {MAX_QUERY} characters")
            words = re.findall(r"\w+", query)
            if words:  # every word somewhere in the conversation (each turn is a row of the index)
                found = " AND ".join(
                    "c.id IN (SELECT t.conversation_id FROM conversation_turns t WHERE t.rowid IN "
                    "(SELECT rowid FROM conversation_text WHERE conversation_text MATCH ?))"
                    for _ in words
                )
                where.append(f"({found}) OR c.title LIKE ? ESCAPE '\\'")
                like = "%" + re.sub(r"([%_\\])", r"\\\1", query.strip()) + "%"
                args += [*(f'"{w}"*' for w in words), like]
        sql = f"SELECT {self._COLUMNS} FROM conversations c WHERE ({') AND ('.join(where)}) ORDER BY c.seq DESC LIMIT ?"
        return [self._info(row) for row in self.store.query(sql, (*args, first))]


@dataclass
class Thread:
    """One request's part in a kept conversation (the service's side): the history it is given, and saving
    its turn however it ends."""

    conversations: ConversationStore
    owner: str
    conversation_id: str | None  # None: a new one, made when the turn is saved
    saved: bool = False
    prior: tuple[Turn, ...] = ()  # a new conversation's history, as the client sent it: its first turns

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
        return replace(result, conversation_id=self.conversation_id)

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
                first = self.prior[0].content if self.prior else None
                self.conversation_id = self.conversations.create(self.owner, request, first)
            if not self.conversations.add_turn(self.conversation_id, request, text, finish_reason, result, self.prior):
                self.conversation_id = None  # deleted meanwhile: the answer is not a turn of anything
        except (sqlite3.Error, ConfigError) as exc:
            log.warning(
                "TOOLKIT_STORE %s: turn %s not kept: %s", self.conversations.store.path, request.request_id, exc
            )
            self.conversation_id = None
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
    thread: Thread | None, request: InferRequest, events: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    """``kept`` for an event loop: the finished turn is saved off the loop (another process may hold the
    store's write lock for a moment)."""
    import asyncio

    if thread is None:
        async for event in events:
            yield event
        return
    text = ""
    try:
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
                _turn_status(finish),
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
