"""The fence around search results: a boundary derived from a secret of this installation and the request.

The search block in a prompt is fenced by ``BEGIN_SEARCH_RESULTS <boundary>`` and ``END_SEARCH_RESULTS
<boundary>`` (``toolkit.rag``). The boundary must be one a document cannot predict, or a page could close the
fence and speak outside it; and it must be the same for the same request, or a greedy answer with sources
changes from run to run (the prompt differs by its fence). So it is a keyed hash (HMAC-SHA256) of what the
request puts in the prompt, under a key that never leaves this installation: ``FENCE_KEY``, or 32 random bytes
made once and kept (mode 0600) in the cache directory as ``fence.key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEY_FILE = "fence.key"
log = logging.getLogger("toolkit.fence")


def installation_key(cache_dir: Path, configured: str | None = None) -> bytes:
    """``configured`` (FENCE_KEY), else the key kept in ``cache_dir``, made on first use (two processes making
    it at once agree: the first write wins, the other reads it)."""
    if configured:
        return configured.strip().encode()
    path = Path(cache_dir) / KEY_FILE
    try:
        return _written(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _written(path)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex())
    return key


def _written(path: Path, wait_s: float = 5.0) -> bytes:
    """The key another process has just made: it may not have written it yet (created, still empty)."""
    deadline = time.monotonic() + wait_s
    while True:
        text = path.read_text().strip()
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    raise OSError(f"{path} does not hold a key (64 hex characters): delete it to make a new one")


def boundary(key: bytes, parts: Sequence[Any]) -> str:
    """16 hex characters keyed by ``key`` over ``parts`` (the request's prompt, history, system prompt and
    sources, as JSON): the same request, the same fence; another request or another key, another one."""
    text = json.dumps(list(parts), ensure_ascii=False, sort_keys=True, default=str)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:16]


class Fence:
    """The boundaries of one service: its installation's key read (or made) on the first search, once."""

    def __init__(self, cache_dir: Path, configured: str | None = None) -> None:
        self.cache_dir, self.configured = Path(cache_dir), configured
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def key(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    try:
                        self._key = installation_key(self.cache_dir, self.configured)
                    except OSError as exc:  # a read-only cache: still secret, the same within this process
                        log.warning(
                            "the fence key cannot be kept in %s (%s): one for this process", self.cache_dir, exc
                        )
                        self._key = secrets.token_bytes(32)
        return self._key

    def around(self, parts: Sequence[Any]) -> str:
        """``boundary`` under this installation's key."""
        return boundary(self.key(), parts)
