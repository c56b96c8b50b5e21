"""A store on a full disk or a read-only file, for tests: SQLite's own conditions, reached through its connect."""

from __future__ import annotations

import sqlite3
from typing import Any


def limited(pages: int | None = None, read_only: bool = False) -> Any:
    """``sqlite3.connect`` for a store on a full disk (SQLite's own SQLITE_FULL, at ``pages`` pages) or a
    read-only file (SQLite's read-only mode: the tests run as root, which file modes do not stop)."""
    real = sqlite3.connect

    def connect(path: Any, **kwargs: Any) -> sqlite3.Connection:
        if read_only:
            return real(f"file:{path}?mode=ro", uri=True, **kwargs)
        db = real(path, **kwargs)
        if pages is not None:
            db.execute(f"PRAGMA max_page_count = {pages}")
        return db

    return connect
