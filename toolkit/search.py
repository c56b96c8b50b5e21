"""Web search for grounding: backends, a hard timeout, a TTL cache and a rate limit.

    backend = DDGSBackend(region="us-en")            # DuckDuckGo & co. through `ddgs`, no API key
    backend = LocalDocsBackend("notes/")             # BM25 over .md/.txt/.html files, offline
    searcher = Searcher(backend, timeout_s=5)
    outcome = searcher.search("who won the 2026 world cup")   # never raises, never waits past the timeout

A backend raises ``SearchFailure`` with a ``kind`` (timeout, rate_limited,
no_results, network, error). ``Searcher`` turns every failure into an
``SearchOutcome`` with ``failure`` set, so a failed search never fails a request.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from toolkit.errors import FAILURE_KINDS, ConfigError, MissingDependency, SearchFailure, ToolkitError
from toolkit.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    name: str

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Top results for ``query``; raises ``SearchFailure``."""
        ...


# ----- DuckDuckGo (ddgs) ------------------------------------------------------------

_RATE_LIMIT = re.compile(r"rate ?limit|ratelimit|\b429\b|\b202\b|too many requests", re.I)
_NETWORK = re.compile(r"dns|resolv|connect|network|unreachable|ssl|tls|proxy|socket", re.I)
_TIMEOUT = re.compile(r"timed? ?out|timeout", re.I)


def classify_ddgs_error(exc: Exception) -> SearchFailure:
    """Map a ddgs exception to a failure kind (ddgs reports most problems as a plain DDGSException)."""
    name, text = type(exc).__name__, str(exc)
    if name == "RatelimitException" or _RATE_LIMIT.search(text):
        return SearchFailure("rate_limited", "the search provider is rate limiting us; try again in a minute")
    if name == "TimeoutException" or _TIMEOUT.search(text):
        return SearchFailure("timeout", "the search provider did not answer in time")
    if text.strip().rstrip(".").lower() == "no results found":
        return SearchFailure("no_results", "the search found no results")
    if _NETWORK.search(text):
        return SearchFailure("network", "the search provider cannot be reached (no network?)")
    return SearchFailure("error", f"the search failed: {name}: {_first_line(text)}")


class DDGSBackend:
    """Text search through the ``ddgs`` metasearch library (no API key)."""

    name = "ddgs"

    def __init__(
        self, *, timeout_s: float = 5.0, region: str = "us-en", safesearch: str = "moderate", backend: str = "auto"
    ) -> None:
        try:
            import ddgs  # noqa: F401
        except ImportError:
            raise MissingDependency("ddgs", "web search with SEARCH_PROVIDER=ddgs") from None
        self.timeout_s = timeout_s
        self.region = region
        self.safesearch = safesearch
        self.backend = backend

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        from ddgs import DDGS

        try:
            rows = DDGS(timeout=max(1, round(self.timeout_s))).text(
                query, max_results=max_results, region=self.region, safesearch=self.safesearch, backend=self.backend
            )
        except Exception as exc:
            log.info("ddgs search for %r failed: %r", query, exc)
            raise classify_ddgs_error(exc) from None
        results = [
            SearchResult(
                title=str(r.get("title") or ""), url=str(r.get("href") or ""), snippet=str(r.get("body") or "")
            )
            for r in rows or []
            if r.get("href")
        ]
        if not results:
            raise SearchFailure("no_results", "the search found no results")
        return results[:max_results]


# ----- local documents (BM25) -------------------------------------------------------

DOC_SUFFIXES = (".md", ".txt", ".html", ".htm")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_HTML_HEADING = re.compile(r"<h([1-6])[^>]*>(.*?)</h\1>", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")
_SCRIPT = re.compile(r"<(script|style)[^>]*>.*?</\1>", re.I | re.S)


@dataclass(frozen=True)
class Chunk:
    path: Path
    section: str
    text: str
    name: str = ""  # the file's path relative to the documents folder (posix); default: its file name
    within: tuple[str, ...] = ()  # the headings the section is under ("The Harrowgate Bridge" for "Maintenance")

    @property
    def title(self) -> str:
        """``file.md › Heading › Subheading``: a section's subject is often named only by a heading above it
        (the grounding check reads "the bridge" in "Maintenance" as the document's "Harrowgate Bridge")."""
        headings = [*self.within, self.section] if self.section != self.path.stem else list(self.within)
        return " › ".join([self.name or self.path.name, *headings])

    @property
    def url(self) -> str:
        """``docs://<path in the folder>#<section>``: stable, and it never tells a client where the folder lies."""
        base = "docs://" + quote(self.name or self.path.name)
        if self.section == self.path.stem:  # text before any heading: no anchor to point at
            return base
        anchor = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return base + (f"#{anchor}" if anchor else "")


def chunk_document(path: Path, text: str, max_chars: int = 1200, *, name: str = "") -> list[Chunk]:
    """Split a document by headings, then by paragraphs so no chunk is longer than ``max_chars``.

    ``name`` is the document's path in its folder, for the chunks' ``docs://`` URLs.
    """
    if path.suffix.lower() in (".html", ".htm"):
        text = _SCRIPT.sub(" ", text)
        text = _HTML_HEADING.sub(
            lambda m: "\n\n" + "#" * int(m.group(1)) + " " + _TAG.sub("", m.group(2)).strip() + "\n\n", text
        )
        text = re.sub(r"</?(p|div|br|li|tr|section|article)[^>]*>", "\n\n", text, flags=re.I)
        text = html.unescape(_TAG.sub(" ", text))
    sections: list[tuple[str, tuple[str, ...], list[str]]] = [(path.stem, (), [])]
    above: list[tuple[int, str]] = []  # the open headings: (level, text)
    for line in text.splitlines():
        heading = _HEADING.match(line) if path.suffix.lower() != ".txt" else None
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            above = [(lvl, t) for lvl, t in above if lvl < level]
            sections.append((title, tuple(t for _, t in above), []))
            above.append((level, title))
        else:
            sections[-1][2].append(line)
    chunks: list[Chunk] = []
    for title, within, lines in sections:
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(lines))]
        current = ""
        for para in filter(None, paragraphs):
            if current and len(current) + len(para) + 1 > max_chars:
                chunks.append(Chunk(path, title, current, name, within))
                current = ""
            current = f"{current}\n{para}" if current else para
        if current:
            chunks.append(Chunk(path, title, current, name, within))
    return chunks


class LocalDocsBackend:
    """BM25 (``bm25s``) over the .md/.txt/.html files of a folder, chunked by heading and paragraph."""

    name = "local"

    def __init__(self, folder: str | Path) -> None:
        try:
            import bm25s
            import snowballstemmer
        except ImportError as exc:
            raise MissingDependency(exc.name or "bm25s", "the local documents search backend") from None
        self._stemmer = snowballstemmer.stemmer("english")
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise ToolkitError(f"{folder}: no such folder; give a folder of .md/.txt/.html files")
        files = sorted(
            p
            for p in self.folder.rglob("*")
            if p.is_file()
            and p.suffix.lower() in DOC_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(self.folder).parts)
        )
        self.chunks = [
            c
            for p in files
            for c in chunk_document(p, p.read_text(errors="replace"), name=p.relative_to(self.folder).as_posix())
        ]
        self.files = len(files)
        self._bm25s = bm25s
        self._index: Any = None
        if self.chunks:
            self._index = bm25s.BM25()
            corpus = [f"{c.section}\n{c.text}" for c in self.chunks]
            self._index.index(self._tokenize(corpus), show_progress=False)

    def _tokenize(self, texts: list[str]) -> Any:
        return self._bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        if self._index is None:
            raise SearchFailure("no_results", f"no documents to search in {self.folder}")
        tokens = self._tokenize([query])
        if not tokens.vocab:
            raise SearchFailure("no_results", "the query has no searchable words")
        k = min(max_results, len(self.chunks))
        ids, scores = self._index.retrieve(tokens, k=k, show_progress=False)
        results = []
        for i, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
            if score <= 0:
                continue
            chunk = self.chunks[i]
            results.append(SearchResult(title=chunk.title, url=chunk.url, snippet=chunk.text))
        if not results:
            raise SearchFailure("no_results", "no local document matches the query")
        return results


# ----- the searcher: timeout, cache, rate limit ----------------------------------------


@dataclass(frozen=True)
class SearchOutcome:
    """What one search gave: results, or the failure. Also the snapshot a run record keeps."""

    provider: str
    query: str
    at: str  # ISO time of the search
    seconds: float
    results: tuple[SearchResult, ...] = ()
    failure: SearchFailure | None = field(default=None, compare=False)
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None

    def content_hash(self) -> str:
        """What the search gave (its status and results, not when it ran): equal results, equal hash."""
        content = {"status": self.status, "results": [[r.title, r.url, r.snippet] for r in self.results]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def status(self) -> str:
        return "ok" if self.failure is None else self.failure.kind

    @classmethod
    def from_dict(cls, data: Any, where: str = "run_record.search") -> SearchOutcome:
        """A snapshot back (a run record's ``search``), for a replay that must not search again. It is
        untrusted input: checked against ``Snapshot``, ``InvalidRequest`` naming the first wrong field."""
        from toolkit.errors import InvalidRequest
        from toolkit.wire import checked

        snap = Snapshot(**checked(Snapshot, data, where))
        if snap.status not in ("ok", *FAILURE_KINDS):
            raise InvalidRequest(f"{where}.status", f"must be ok or one of {', '.join(FAILURE_KINDS)}")
        failure = None if snap.status == "ok" else SearchFailure(snap.status, snap.message or snap.status)
        results = tuple(SearchResult(r["title"], r["url"], r["snippet"]) for r in snap.results)  # type: ignore[index]
        return cls(snap.provider, snap.query, snap.at, float(snap.seconds), results, failure, snap.from_cache)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "query": self.query,
            "at": self.at,
            "seconds": round(self.seconds, 4),
            "status": self.status,
            "message": self.failure.message if self.failure else None,
            "from_cache": self.from_cache,
            "results": [asdict(r) for r in self.results],
        }


@dataclass(frozen=True)
class Snapshot:
    """A search as a run record keeps it (``SearchOutcome.to_dict``): the shape ``from_dict`` checks."""

    provider: str
    query: str
    at: str
    seconds: float
    status: str = "ok"
    message: str | None = None
    from_cache: bool = False
    results: tuple[SearchResult, ...] = ()


def normalize_query(query: str) -> str:
    return " ".join(query.casefold().split())


class Searcher:
    """Runs a backend off the caller's thread with a hard timeout; caches results; limits the rate."""

    def __init__(
        self,
        backend: SearchBackend,
        *,
        timeout_s: float = 5.0,
        max_results: int = 4,
        cache_ttl_s: float = 600.0,
        cache_size: int = 256,
        per_minute: int = 30,
        region: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self.max_results = max_results
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self.per_minute = per_minute
        self.region = region
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str, int], tuple[float, tuple[SearchResult, ...]]] = OrderedDict()
        self._sent: deque[float] = deque()
        self.calls = 0  # searches that reached the backend

    @property
    def provider(self) -> str:
        return self.backend.name

    def search(self, query: str) -> SearchOutcome:
        """Never raises for a search problem: the outcome carries the failure."""
        started = time.perf_counter()
        at = datetime.now(UTC).isoformat(timespec="seconds")
        key = (normalize_query(query), self.region, self.max_results)

        def outcome(
            results: tuple[SearchResult, ...] = (), failure: SearchFailure | None = None, cached: bool = False
        ) -> SearchOutcome:
            return SearchOutcome(self.provider, query, at, time.perf_counter() - started, results, failure, cached)

        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.cache_ttl_s:
                self._cache.move_to_end(key)
                return outcome(hit[1], cached=True)
            while self._sent and now - self._sent[0] >= 60:
                self._sent.popleft()
            if len(self._sent) >= self.per_minute:
                wait = 60 - (now - self._sent[0])
                limited = SearchFailure(
                    "rate_limited",
                    f"over this service's limit of {self.per_minute} searches a minute; retry in {wait:.0f} s",
                )
                limited.retry_after_s = max(1, math.ceil(wait))  # when the oldest of the minute's searches ages out
                return outcome(failure=limited)
            self._sent.append(now)
            self.calls += 1
        try:
            results = tuple(self._call_with_timeout(query))
        except SearchFailure as failure:
            return outcome(failure=failure)
        with self._lock:
            self._cache[key] = (self._clock(), results)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return outcome(results)

    def _call_with_timeout(self, query: str) -> list[SearchResult]:
        """Run the backend in a daemon thread: a hung backend cannot hold the answer past the timeout."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["results"] = self.backend.search(query, self.max_results)
            except SearchFailure as failure:
                box["failure"] = failure
            except Exception as exc:  # a backend bug must not fail the request
                box["failure"] = SearchFailure("error", f"the search backend failed: {type(exc).__name__}: {exc}")
            finally:
                done.set()

        threading.Thread(target=run, name=f"search-{self.provider}", daemon=True).start()
        if not done.wait(self.timeout_s):
            raise SearchFailure("timeout", f"the search took longer than {self.timeout_s:g} s (SEARCH_TIMEOUT)")
        if "failure" in box:
            raise box["failure"]
        return list(box["results"])


def search_query(prompt: str, limit: int = 300) -> str:
    """The web query for a prompt: one line, at most ``limit`` characters."""
    query = " ".join(clean_text(prompt).split())
    return query if len(query) <= limit else query[:limit].rsplit(" ", 1)[0]


def make_searcher(settings: Settings) -> Searcher | None:
    """The searcher ``SEARCH_PROVIDER`` names (None for ``none``)."""
    provider = settings.search_provider
    backend: SearchBackend
    if provider == "none":
        return None
    if provider == "ddgs":
        backend = DDGSBackend(
            timeout_s=settings.search_timeout_s, region=settings.search_region, safesearch=settings.search_safesearch
        )
    else:
        folder = provider.removeprefix("local:").strip()
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(
                "SEARCH_PROVIDER", f"local:{folder}: no such folder; give a folder of .md/.txt/.html files"
            )
        backend = LocalDocsBackend(folder)
    return Searcher(
        backend,
        timeout_s=settings.search_timeout_s,
        cache_ttl_s=settings.search_cache_ttl_s,
        per_minute=settings.search_per_minute,
        region=settings.search_region,
    )


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:120]


def clean_text(text: str) -> str:
    """Remove control, zero-width and bidi characters (keep newlines and tabs)."""
    return "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")
    )
