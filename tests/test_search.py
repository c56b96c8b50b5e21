"""Search backends, the timeout, the cache and the rate limit."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import ddgs
import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException
from network import online

from toolkit.errors import FAILURE_KINDS, ConfigError, SearchFailure, ToolkitError
from toolkit.search import (
    DDGSBackend,
    LocalDocsBackend,
    Searcher,
    SearchResult,
    chunk_document,
    classify_ddgs_error,
    clean_text,
    make_searcher,
)
from toolkit.settings import Settings

DOCS = Path(__file__).parent / "data" / "docs"


class CountingBackend:
    name = "counting"

    def __init__(self, results: list[SearchResult] | None = None, failure: SearchFailure | None = None) -> None:
        self.results = results if results is not None else [SearchResult("t", "https://example.org", "s")]
        self.failure = failure
        self.queries: list[str] = []

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        self.queries.append(query)
        if self.failure:
            raise self.failure
        return self.results[:max_results]


class HangingBackend:
    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        self.release.wait(30)
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----- ddgs ---------------------------------------------------------------------


def test_ddgs_for_real_fails_here_as_a_network_failure() -> None:
    """The real library: without internet (this machine) the real failure, typed as such; with it, results in
    our shape or a typed failure (a provider may refuse)."""
    try:
        results = DDGSBackend(timeout_s=5).search("python programming language", 4)
    except SearchFailure as exc:
        if not online():
            assert exc.kind == "network" and "no network" in exc.message
        assert exc.kind in FAILURE_KINDS
    else:
        assert online() and results and all(r.url.startswith("http") and r.title for r in results)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RatelimitException("https://duckduckgo.com 202 Ratelimit"), "rate_limited"),
        (DDGSException("https://html.duckduckgo.com/html 202 Ratelimit"), "rate_limited"),
        (DDGSException("429 Too Many Requests"), "rate_limited"),
        (TimeoutException("https://lite.duckduckgo.com/lite/ timed out"), "timeout"),
        (DDGSException("No results found."), "no_results"),
        (DDGSException("DNSError('error sending request for url') > error resolving DNS"), "network"),
        (DDGSException("ConnectError: connection refused"), "network"),
        (DDGSException("something unexpected"), "error"),
    ],
)
def test_ddgs_errors_are_classified(exc: Exception, kind: str) -> None:
    failure = classify_ddgs_error(exc)
    assert failure.kind == kind
    assert failure.code == "SEARCH_FAILED"


def test_ddgs_results_are_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A double at the network boundary, returning what DDGS.text returns: dicts with title, href, body."""
    calls: list[dict[str, Any]] = []

    class FakeDDGS:
        def __init__(self, timeout: int | None = 5, **kwargs: Any) -> None:
            calls.append({"timeout": timeout})

        def text(self, query: str, **kwargs: Any) -> list[dict[str, str]]:
            calls.append({"query": query, **kwargs})
            return [
                {
                    "title": "Python (programming language)",
                    "href": "https://en.wikipedia.org/wiki/Python",
                    "body": "Python is a high-level language.",
                },
                {"title": "Welcome to Python.org", "href": "https://www.python.org/", "body": "The official home."},
                {"title": "no link", "href": "", "body": "dropped"},
            ]

    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    backend = DDGSBackend(timeout_s=3, region="uk-en", safesearch="off", backend="duckduckgo")
    results = backend.search("python", 4)
    assert results == [
        SearchResult(
            "Python (programming language)", "https://en.wikipedia.org/wiki/Python", "Python is a high-level language."
        ),
        SearchResult("Welcome to Python.org", "https://www.python.org/", "The official home."),
    ]
    assert calls == [
        {"timeout": 3},
        {"query": "python", "max_results": 4, "region": "uk-en", "safesearch": "off", "backend": "duckduckgo"},
    ]


def test_ddgs_empty_list_is_no_results(monkeypatch: pytest.MonkeyPatch) -> None:
    class EmptyDDGS:
        def __init__(self, **kwargs: Any) -> None: ...

        def text(self, query: str, **kwargs: Any) -> list[dict[str, str]]:
            return []

    monkeypatch.setattr(ddgs, "DDGS", EmptyDDGS)
    with pytest.raises(SearchFailure) as info:
        DDGSBackend().search("x", 4)
    assert info.value.kind == "no_results"


# ----- the searcher -------------------------------------------------------------


def test_a_hanging_backend_cannot_hold_the_answer_past_the_timeout() -> None:
    backend = HangingBackend()
    searcher = Searcher(backend, timeout_s=0.3)
    outcome = searcher.search("anything")  # the backend hangs until released: only the timeout returns here
    backend.release.set()
    assert outcome.status == "timeout" and not outcome.ok
    assert "SEARCH_TIMEOUT" in (outcome.failure.message if outcome.failure else "")


def test_a_cache_hit_does_not_call_the_backend() -> None:
    clock = Clock()
    backend = CountingBackend()
    searcher = Searcher(backend, cache_ttl_s=60, clock=clock)
    first = searcher.search("Capital of  France")
    second = searcher.search("  capital of france ")  # normalized: case and whitespace
    assert backend.queries == ["Capital of  France"]
    assert not first.from_cache and second.from_cache
    assert second.results == first.results and second.status == "ok"
    clock.now += 61  # expired
    assert not searcher.search("capital of france").from_cache
    assert len(backend.queries) == 2


def test_failures_are_not_cached() -> None:
    backend = CountingBackend(failure=SearchFailure("network", "down"))
    searcher = Searcher(backend)
    assert searcher.search("q").status == "network"
    assert searcher.search("q").status == "network"
    assert len(backend.queries) == 2


def test_outgoing_searches_are_rate_limited_and_the_cache_comes_first() -> None:
    clock = Clock()
    backend = CountingBackend()
    searcher = Searcher(backend, per_minute=2, clock=clock)
    searcher.search("one")
    searcher.search("two")
    limited = searcher.search("three")
    assert limited.status == "rate_limited" and "2 searches a minute" in (
        limited.failure.message if limited.failure else ""
    )
    assert searcher.search("one").from_cache  # a cached query is still answered
    assert backend.queries == ["one", "two"]
    clock.now += 61
    assert searcher.search("three").status == "ok"


def test_a_backend_bug_becomes_an_error_outcome() -> None:
    class Broken:
        name = "broken"

        def search(self, query: str, max_results: int) -> list[SearchResult]:
            raise KeyError("oops")

    outcome = Searcher(Broken()).search("q")
    assert outcome.status == "error" and "KeyError" in (outcome.failure.message if outcome.failure else "")


def test_outcome_snapshot_is_json_ready() -> None:
    outcome = Searcher(CountingBackend()).search("q")
    snap = outcome.to_dict()
    assert snap["provider"] == "counting" and snap["query"] == "q" and snap["status"] == "ok"
    assert snap["results"] == [{"title": "t", "url": "https://example.org", "snippet": "s"}]
    assert "T" in snap["at"]


# ----- local documents ------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalDocsBackend:
    return LocalDocsBackend(DOCS)


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ("What is the capital of Zorvath?", "zorvath.md › The planet Zorvath"),
        ("what does zorvath export", "zorvath.md › The planet Zorvath › Economy"),
        ("oven temperature for sourdough bread", "sourdough.md › Sourdough baking › Oven temperature"),
        ("how often should I feed a starter", "sourdough.md › Sourdough baking"),
        ("longest river in Africa", "rivers.txt"),
        (
            "why do refractors show colour fringes",
            "notes/telescope.html › Refracting telescopes › Chromatic aberration",
        ),
        ("when was the Varrow Point lighthouse automated", "notes/injection.md › Lighthouse keeping"),
    ],
)
def test_local_docs_find_the_right_document(local: LocalDocsBackend, query: str, title: str) -> None:
    top = local.search(query, 4)[0]
    assert top.title == title
    # docs://<path in the folder>: it names the document, never where the folder lies on the server
    assert top.url.startswith("docs://") and (local.folder / top.url[7:].split("#")[0]).is_file()
    assert str(local.folder.resolve()) not in top.url and top.url.split("#")[0].endswith(title.split(" › ")[0])


def test_local_docs_skip_hidden_folders_scripts_and_styles(local: LocalDocsBackend) -> None:
    assert local.files == 7
    assert all(".hidden" not in str(c.path) for c in local.chunks)
    telescope = [c for c in local.chunks if c.path.suffix == ".html"]
    assert telescope and not any("glowmoss" in c.text or "color: red" in c.text for c in telescope)


def test_local_docs_no_match_is_no_results(local: LocalDocsBackend) -> None:
    with pytest.raises(SearchFailure) as info:
        local.search("quantum chromodynamics gluon", 4)
    assert info.value.kind == "no_results"


def test_local_docs_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(SearchFailure):
        LocalDocsBackend(tmp_path).search("anything", 4)
    with pytest.raises(ToolkitError, match="no such folder"):
        LocalDocsBackend(tmp_path / "missing")


def test_chunking_by_heading_and_paragraph(tmp_path: Path) -> None:
    text = "intro line\n\n# One\n\npara a\n\npara b\n\n## Two\n\n" + ("word " * 300 + "\n\n") * 3
    chunks = chunk_document(tmp_path / "doc.md", text, max_chars=1600)
    assert [c.section for c in chunks] == ["doc", "One", "Two", "Two", "Two"]
    assert chunks[1].text == "para a\npara b"
    assert chunks[1].url.endswith("doc.md#one")


# ----- configuration ----------------------------------------------------------------


def test_search_provider_setting() -> None:
    assert make_searcher(Settings(search_provider="none")) is None
    ddgs_searcher = make_searcher(Settings(search_provider="ddgs", search_timeout_s=2))
    assert ddgs_searcher is not None and ddgs_searcher.provider == "ddgs" and ddgs_searcher.timeout_s == 2
    local_searcher = make_searcher(Settings.from_env({"SEARCH_PROVIDER": f"local:{DOCS}"}))
    assert local_searcher is not None and local_searcher.provider == "local"


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"SEARCH_PROVIDER": "google"}, "SEARCH_PROVIDER"),
        ({"SEARCH_PROVIDER": "local:"}, "SEARCH_PROVIDER"),
        ({"SEARCH_TIMEOUT": "0"}, "SEARCH_TIMEOUT"),
        ({"SEARCH_SAFESEARCH": "strict"}, "SEARCH_SAFESEARCH"),
        ({"SEARCH_PER_MINUTE": "0"}, "SEARCH_PER_MINUTE"),
        ({"SEARCH_CACHE_TTL": "-1"}, "SEARCH_CACHE_TTL"),
    ],
)
def test_invalid_search_settings(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.field == var


def test_clean_text_removes_control_zero_width_and_bidi() -> None:
    assert clean_text("a\u200bb\u202ec\u2066d\x07e\ufeff\nf\tg") == "abcde\nf\tg"
