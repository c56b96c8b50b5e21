"""One SQLite database for what must outlive a process: evaluation runs, their cells, the answers they
cache, and conversations (``TOOLKIT_STORE``, default ``<data folder>/toolkit.db``).

WAL mode and a busy timeout make it safe with several processes at once (two servers, a notebook and
the CLI): readers never wait for a writer, and a writer waits for another instead of failing with
"database is locked". The schema is versioned: each entry of ``MIGRATIONS`` runs once, in order, and
``PRAGMA user_version`` records how far a file has come.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolkit.errors import RequestTimeout, StoreUnavailable

MIGRATIONS: tuple[str, ...] = (
    # 1: evaluations
    """
    CREATE TABLE eval_runs (
        id TEXT PRIMARY KEY, created_at TEXT NOT NULL, name TEXT, dataset TEXT NOT NULL,
        dataset_hash TEXT NOT NULL, variants TEXT NOT NULL, repeats INTEGER NOT NULL,
        status TEXT NOT NULL, finished_at TEXT, seconds REAL
    );
    CREATE TABLE eval_samples (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE, position INTEGER NOT NULL,
        sample_id TEXT NOT NULL, sample TEXT NOT NULL, search TEXT, PRIMARY KEY (run_id, sample_id)
    );
    CREATE TABLE eval_cells (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE, sample_id TEXT NOT NULL,
        variant TEXT NOT NULL, repeat INTEGER NOT NULL, key TEXT, row TEXT NOT NULL,
        PRIMARY KEY (run_id, sample_id, variant, repeat)
    );
    CREATE TABLE answers (key TEXT PRIMARY KEY, result TEXT NOT NULL, created_at TEXT NOT NULL);
    """,
    # 2: conversations (toolkit.conversation); ``seq`` orders them by their last turn, across processes
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT NOT NULL, model TEXT, adapter TEXT,
        system_prompt TEXT, web_search INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX conversations_by_owner ON conversations (owner, seq);
    CREATE INDEX conversations_by_seq ON conversations (seq);
    CREATE INDEX conversations_by_update ON conversations (updated_at);
    CREATE TABLE conversation_turns (
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL, request_id TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
        status TEXT NOT NULL, finish_reason TEXT, model TEXT, adapter TEXT, sources TEXT NOT NULL,
        run_record TEXT, created_at TEXT NOT NULL, PRIMARY KEY (conversation_id, position)
    );
    CREATE VIRTUAL TABLE conversation_text USING fts5 (text);
    """,
)
BUSY_TIMEOUT_MS = 30_000
log = logging.getLogger("toolkit.store")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def failure(exc: sqlite3.Error) -> str:
    """What a SQLite error says about the store: a ``StoreUnavailable`` reason."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "full"
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return "read-only"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "busy"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return "corrupt"
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return "unopenable"
    return "error"


class NewerStore(Exception):
    """A store whose schema is newer than this toolkit knows."""


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is still open. SQLite has already rolled back after some errors (a full disk): a second
    ROLLBACK would fail and hide the real error."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class Store:
    """The database at ``path``, opened (and migrated) on first use: a connection per thread, so readers never
    wait on each other (WAL) and a writer waits for another in SQLite (``BEGIN IMMEDIATE``, busy timeout).

    A failure is a ``StoreUnavailable`` naming what is wrong (full, read-only, corrupt, busy): its cause and the
    file go to the log, never to the caller. ``state`` is the last failure's reason, until a write succeeds
    ("ok"), for ``health``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._generation = 0  # close() makes every thread's connection stale
        self._migrated = False
        self.state = "ok"

    def _fail(self, exc: sqlite3.Error | OSError, doing: str) -> StoreUnavailable:
        reason = failure(exc) if isinstance(exc, sqlite3.Error) else "unopenable"
        self.state = reason
        log.error("TOOLKIT_STORE %s cannot be %s: %s (%s)", self.path, doing, reason, exc)
        return StoreUnavailable(reason, doing)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.generation == self._generation:
            return db
        try:
            self._create()
            db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc, "opened") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")  # what is deleted (a conversation) is overwritten
            with self._lock:
                if not self._migrated:
                    db.execute("PRAGMA journal_mode = WAL")  # kept in the file: once is enough
                    self._migrate(db)
                    self._migrated = True
            db.execute("PRAGMA synchronous = NORMAL")
        except NewerStore as exc:
            db.close()
            self.state = "newer"
            log.error("TOOLKIT_STORE %s: %s", self.path, exc)
            raise StoreUnavailable("newer", "opened") from None
        except sqlite3.Error as exc:
            db.close()
            raise self._fail(exc, "opened") from None
        with self._lock:
            self._connections.append(db)
            self._local.db, self._local.generation = db, self._generation
        return db

    def _create(self) -> None:
        """A new store is made readable by its owner only: it holds every caller's prompts (0600 in a 0700
        folder that it creates)."""
        if self.path.exists():
            return
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # SQLite takes an empty file

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise NewerStore(
                    f"schema version {version}, from a newer toolkit; this one knows up to {len(MIGRATIONS)}"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    @property
    def version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements that land together (``BEGIN IMMEDIATE``: a writer waits its turn, never fails)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._fail(exc, "written") from None
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise self._fail(exc, "written") from None
        except BaseException:
            _rollback(db)
            raise
        self.state = "ok"

    def query(self, sql: str, args: tuple[Any, ...] = (), *, budget_s: float | None = None) -> list[tuple[Any, ...]]:
        """The rows of a read. ``budget_s``: SQLite stops it past that many seconds (``RequestTimeout``)."""
        db = self._connect()
        if budget_s is not None:
            deadline = time.monotonic() + budget_s
            db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # a true value interrupts
        try:
            return list(db.execute(sql, args).fetchall())
        except sqlite3.OperationalError as exc:
            if budget_s is not None and "interrupted" in str(exc):
                raise RequestTimeout(f"the search took longer than {budget_s:g} s; use fewer or rarer words") from None
            raise self._fail(exc, "read") from None
        except sqlite3.Error as exc:
            raise self._fail(exc, "read") from None
        finally:
            if budget_s is not None:
                db.set_progress_handler(None, 0)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self.transaction() as db:
            db.execute(sql, args)

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._connections.clear()
            self._generation += 1

    # ----- the answer cache -------------------------------------------------------------------

    def cached(self, key: str) -> dict[str, Any] | None:
        rows = self.query("SELECT result FROM answers WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def cache(self, key: str, result: dict[str, Any]) -> None:
        self.execute(
            "INSERT OR REPLACE INTO answers (key, result, created_at) VALUES (?, ?, ?)",
            (key, json.dumps(result), now()),
        )
