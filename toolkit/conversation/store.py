"""Kept conversations in the toolkit's SQLite store (``toolkit.store``): the ``ConversationStore`` (turns,
full-text search, owners, retention), answering with ``records``' ``ConversationInfo``/``ConversationTurn``."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from toolkit.conversation.records import DEFAULT_PAGE, ConversationInfo, ConversationTurn, title_of, turn_status
from toolkit.errors import InvalidRequest, UnknownConversation
from toolkit.params import InferRequest, Turn
from toolkit.results import InferResult, Source
from toolkit.search import clean_text
from toolkit.store import Store, now

log = logging.getLogger("toolkit.conversation")
MAX_TITLE = 200
MAX_PAGE = 500
MAX_QUERY = 500
MAX_QUERY_WORDS = 16  # each word is a lookup in the search index
SEARCH_BUDGET_S = 2.0  # a search stops past this (RequestTimeout): one caller's searches cannot hold the store
PRUNE_EVERY_S = 3600.0


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
        """A new conversation, with no turns yet; its id."""
        with self.store.transaction() as db:
            conversation_id = self._create(db, owner, request, first_prompt)
        self.prune()
        return conversation_id

    def start(
        self,
        owner: str,
        request: InferRequest,
        answer: str,
        finish_reason: str,
        result: InferResult | None = None,
        prior: tuple[Turn, ...] = (),
    ) -> str:
        """A new conversation and its first turn (after the ``prior`` turns a client sent as history), written
        together: a store that fails leaves neither, never an empty conversation."""
        with self.store.transaction() as db:
            conversation_id = self._create(db, owner, request, prior[0].content if prior else None)
            self._add(db, conversation_id, request, answer, finish_reason, result, prior)
        self.prune()
        return conversation_id

    @staticmethod
    def _create(db: Any, owner: str, request: InferRequest, first_prompt: str | None) -> str:
        conversation_id = secrets.token_hex(16)
        stamp = now()
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
        the newest, with the turn's model, adapter, system prompt and search as its own. False: the
        conversation was deleted meanwhile (nothing is kept)."""
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                return False  # deleted while the turn ran: the answer stands, nothing is kept
            self._add(db, conversation_id, request, answer, finish_reason, result, prior)
        return True

    @staticmethod
    def _add(
        db: Any,
        conversation_id: str,
        request: InferRequest,
        answer: str,
        finish_reason: str,
        result: InferResult | None,
        prior: tuple[Turn, ...],
    ) -> None:
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
                    turn_status(finish),
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

    def rename(self, conversation_id: str, title: str, owner: str = "") -> ConversationInfo:
        if not isinstance(title, str) or len(title) > MAX_TITLE:
            raise InvalidRequest("title", f"must be 1 to {MAX_TITLE} characters")
        title = " ".join(clean_text(title).split())  # no control, zero-width or bidi characters (U+202E, NUL)
        if not title:
            raise InvalidRequest("title", f"must be 1 to {MAX_TITLE} characters, not only spaces or control characters")
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE conversations SET title = ? WHERE id = ? AND owner = ?",
                (title, conversation_id, owner),
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
            if len(words) > MAX_QUERY_WORDS:
                raise InvalidRequest("query", f"must have at most {MAX_QUERY_WORDS} words, got {len(words)}")
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
        budget = SEARCH_BUDGET_S if query is not None else None
        return [self._info(row) for row in self.store.query(sql, (*args, first), budget_s=budget)]
