"""One SQLite database for what must outlive a process: evaluation runs, their cells, the answers they
cache, and conversations (``TOOLKIT_STORE``, default ``<data folder>/toolkit.db``).

WAL mode and a busy timeout make it safe with several processes at once (two servers, a notebook and
the CLI): readers never wait for a writer, and a writer waits for another instead of failing with
"database is locked". The schema is versioned: each entry of ``MIGRATIONS`` runs once, in order, and
``PRAGMA user_version`` records how far a file has come.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError

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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """The database at ``path``, opened (and migrated) on first use; one connection, shared by threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
                )
            except (OSError, sqlite3.Error) as exc:
                raise ConfigError("TOOLKIT_STORE", f"{self.path}: cannot open the store ({exc})") from None
            try:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("PRAGMA foreign_keys = ON")
                db.execute("PRAGMA secure_delete = ON")  # what is deleted (a conversation) is overwritten
                self._migrate(db)
            except sqlite3.DatabaseError as exc:
                db.close()
                raise ConfigError("TOOLKIT_STORE", f"{self.path}: not a toolkit store ({exc})") from None
            self._db = db
        return self._db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise sqlite3.DatabaseError(
                    f"schema version {version}, from a newer toolkit; this one knows up to {len(MIGRATIONS)}"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements that land together (``BEGIN IMMEDIATE``: a writer waits its turn, never fails)."""
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._connect().execute(sql, args).fetchall())

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self.transaction() as db:
            db.execute(sql, args)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ----- the answer cache -------------------------------------------------------------------

    def cached(self, key: str) -> dict[str, Any] | None:
        rows = self.query("SELECT result FROM answers WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def cache(self, key: str, result: dict[str, Any]) -> None:
        self.execute(
            "INSERT OR REPLACE INTO answers (key, result, created_at) VALUES (?, ?, ?)",
            (key, json.dumps(result), now()),
        )
