"""GraphiQL in headless Chromium (Debian's, through Playwright), with every non-loopback request blocked."""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


def open_graphiql(browser: Any, base: str, query: str) -> tuple[Any, list[str]]:
    page = browser.new_page()
    outside: list[str] = []

    def guard(route: Any) -> None:
        host = urllib.parse.urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.console = []  # the console's errors and warnings: none expected (GraphiQL's fonts are allowed by the policy)
    page.on("console", lambda m: page.console.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: page.console.append(str(e)))
    page.goto(f"{base}/graphiql?" + urllib.parse.urlencode({"query": query}))
    page.wait_for_selector(".graphiql-execute-button", timeout=20_000)
    return page, outside


def response_text(page: Any) -> str:
    return str(page.evaluate("() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue()"))


def test_graphiql_runs_a_query_offline(browser: Any, server: Any) -> None:
    page, outside = open_graphiql(browser, server.base, "{ health { status model } }")
    page.click(".graphiql-execute-button")
    page.wait_for_function(
        "() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue().includes('READY')",
        timeout=20_000,
    )
    assert '"status": "READY"' in response_text(page)
    assert outside == []  # no CDN, nothing from outside this machine
    # the schema loaded (GraphiQL's introspection passed the limits): the docs explorer lists the root types
    page.click(".graphiql-sidebar button[aria-label='Show Documentation Explorer']")
    page.wait_for_selector(".graphiql-doc-explorer", timeout=10_000)
    assert "Query" in page.inner_text(".graphiql-doc-explorer")
    assert page.console == []
    page.close()


def test_graphiql_runs_a_subscription(browser: Any, server: Any) -> None:
    query = 'subscription { inferStream(prompt: "What is the capital of France?", params: {temperature: 0, maxNewTokens: 16}) { type text } }'
    page, outside = open_graphiql(browser, server.base, query)
    page.click(".graphiql-execute-button")
    page.wait_for_function(
        "() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue().includes('DONE')",
        timeout=30_000,
    )
    text = response_text(page)
    assert '"type": "DONE"' in text and "Paris" in text
    assert outside == [] and page.console == []
    page.close()
