"""The dashboard end to end: the GraphQL server and Voila on loopback, Debian's Chromium through Playwright.

Every request that is not to this machine is blocked. Screenshots go to tests/screenshots/ (gitignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
from fake_openai import ANSWER, start_fake

from server.spawn import spawn_server
from toolkit.client import RemoteService

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "screenshots"
XSS = "<img src=x onerror=alert(1)>"
EVAL_SET = (
    '{"id": "zorvath", "input": "What is the capital city of the planet Zorvath?", "target": "Quillborough"}\n'
    '{"id": "france", "input": "What is the capital of France?", "target": "Paris"}\n'
)
KERNEL_IDLE_S = 4  # DASHBOARD_KERNEL_IDLE: short, so that the culling test does not wait minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, first_load: Any) -> Iterator[dict[str, Any]]:
    corpus = tmp_path_factory.mktemp("corpus")
    shutil.copy(ROOT / "tests" / "data" / "docs" / "zorvath.md", corpus)
    (corpus / "xss.md").write_text(f"# Markup {XSS}\n\nThe harbour of Varnholt has {XSS} a red lighthouse.\n")
    fake = start_fake()  # a remote model beside the bundled one: a server shaped like vLLM's
    models = tmp_path_factory.mktemp("models") / "models.toml"
    models.write_text(
        '[[models]]\nname = "SmolLM2-135M-Instruct"\nsource = "bundled"\n\n'
        f'[[models]]\nname = "remote"\nengine = "openai"\nbase_url = "{fake.base_url}"\nserved_model = "ok"\n'
    )
    evals = tmp_path_factory.mktemp("evals")  # the Evaluate tab's folder
    (evals / "capitals.jsonl").write_text(EVAL_SET)
    env = {
        **os.environ,
        "DASHBOARD_EVALS_DIR": str(evals),
        "TOOLKIT_CACHE_DIR": str(cache_dir),
        "SEARCH_PROVIDER": f"local:{corpus}",
        "MODELS_FILE": str(models),
        "TOOLKIT_STORE": str(tmp_path_factory.mktemp("store") / "toolkit.db"),  # conversations: this page's only
    }
    server, url = spawn_server(env=env)
    port = free_port()
    voila = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "--port", str(port)],
        cwd=ROOT,
        env={**env, "GRAPHQL_URL": url, "DASHBOARD_KERNEL_IDLE": str(KERNEL_IDLE_S)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        RemoteService(url).wait_ready(timeout_s=90)
        yield {"graphql": url, "dashboard": f"http://127.0.0.1:{port}/", "launcher": voila.pid}
    finally:
        for proc in (voila, server):
            proc.terminate()
        for proc in (voila, server):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        fake.stop()


@pytest.fixture(scope="module")
def page(stack: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.outside = []  # type: ignore[attr-defined]
        page.dialogs = []  # type: ignore[attr-defined]

        def guard(route: Any) -> None:
            if urllib.parse.urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                page.outside.append(route.request.url)  # type: ignore[attr-defined]
                route.abort()

        page.context.route("**/*", guard)
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
        page.console = []  # type: ignore[attr-defined]
        page.on(
            "console",
            lambda m: page.console.append(f"{m.type}: {m.text[:200]}") if m.type in ("error", "warning") else None,  # type: ignore[attr-defined]
        )
        page.on("pageerror", lambda e: page.console.append(f"page error: {e}"))  # type: ignore[attr-defined]
        page.goto(stack["dashboard"])
        page.wait_for_selector(".tk-prompt input", timeout=90_000)
        # greedy for repeatable answers: the temperature slider to its minimum, with the keyboard
        page.click(
            ".p-Accordion .lm-AccordionPanel-title, .jupyter-widget-Collapse-header, .widget-accordion .p-Collapse-header"
        )
        handle = page.locator(".tk-temperature .noUi-handle").first  # the Chat tab's (before Compare's columns)
        handle.focus()
        handle.press("Home")
        yield page
        browser.close()


def answers(page: Any) -> list[str]:
    return [str(t) for t in page.locator(".tk-answer").all_inner_texts()]


def ask(page: Any, text: str) -> None:
    before = len(answers(page))
    page.fill(".tk-prompt input", text)
    page.press(".tk-prompt input", "Enter")
    page.wait_for_function(f"() => document.querySelectorAll('.tk-answer').length > {before}", timeout=30_000)


def wait_done(page: Any, timeout: float = 90_000) -> str:
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('.tk-answer')].pop(); return a && a.querySelector('.tk-stats, .tk-error'); }",
        timeout=timeout,
    )
    return answers(page)[-1]


def test_a_streamed_answer(page: Any) -> None:
    page.evaluate(
        """() => {
        window.__firstPaint = null;
        new MutationObserver(() => {
            const a = [...document.querySelectorAll('.tk-answer')].pop();
            if (window.__sent && !window.__firstPaint && a && !a.innerText.trim().startsWith('…') && a.innerText.trim()) {
                window.__firstPaint = performance.now();
            }
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.fill(".tk-prompt input", "What is the capital of France?")
    page.evaluate("() => { window.__sent = performance.now(); }")
    page.press(".tk-prompt input", "Enter")
    text = wait_done(page)
    assert "Paris" in text and "tokens" in text
    painted_ms = page.evaluate("() => window.__firstPaint - window.__sent")
    server_first = float(text.split("first token ")[1].split(" s")[0]) * 1000
    report = {
        "send_to_first_token_painted_ms": round(painted_ms, 1),
        "subscription_first_token_ms": round(server_first, 1),
    }
    report["added_ms"] = round(painted_ms - server_first, 1)
    (SHOTS / "first-token.json").write_text(json.dumps(report, indent=2))
    print(report)
    page.screenshot(path=str(SHOTS / "1-answer.png"))
    assert page.outside == []  # type: ignore[attr-defined]


def test_web_search_label_indicator_and_sources(page: Any) -> None:
    page.evaluate(
        """() => {
        window.__indicator = [];
        new MutationObserver(() => {
            const i = document.querySelector('.tk-indicator');
            if (i) window.__indicator.push(i.innerText);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.click(".tk-web")
    page.wait_for_function("() => document.querySelector('.tk-web').innerText.includes('🌐 On')")
    ask(page, "What is the capital city of the planet Zorvath?")
    text = wait_done(page)
    bubbles = page.locator(".tk-row.user").all_inner_texts()
    assert "🌐 web search" in bubbles[-1]
    assert any("🌐 searching…" in s for s in page.evaluate("() => window.__indicator"))
    assert "Quillborough" in text and "Sources" in text and "[1]" in text and "zorvath.md" in text
    page.screenshot(path=str(SHOTS / "2-web-search.png"))


def test_markup_from_the_user_and_the_web_shows_as_text(page: Any) -> None:
    ask(page, f"What does the harbour of Varnholt have? {XSS}")
    text = wait_done(page)
    assert XSS in page.locator(".tk-row.user").all_inner_texts()[-1]
    assert "Varnholt" in text or "xss.md" in text
    assert page.locator(".tk-chat img").count() == 0
    page.wait_for_timeout(500)
    assert page.dialogs == []  # type: ignore[attr-defined]
    page.screenshot(path=str(SHOTS / "3-escaped.png"))


def test_stop_ends_a_long_answer(page: Any) -> None:
    page.click(".tk-web")  # web search off again
    page.click(".tk-clear")  # a fresh conversation: the earlier turns would change what greedy answers
    page.wait_for_function("() => document.querySelectorAll('.tk-answer').length === 0", timeout=10_000)
    ask(page, "Count from one to five hundred, one number per line.")
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('.tk-answer')].pop(); return a && a.innerText.length > 20; }",
        timeout=60_000,
    )
    page.click(".tk-stop")
    text = wait_done(page)
    assert "cancelled" in text
    tokens = int(text.split(" tokens")[0].split()[-1])
    assert tokens < 256
    page.screenshot(path=str(SHOTS / "4-stopped.png"))


def test_the_model_selector_routes_to_a_remote_model(page: Any) -> None:
    select = page.locator(".tk-model select")
    labels = [label.replace("\xa0", " ") for label in select.locator("option").all_inner_texts()]
    assert labels == ["SmolLM2-135M-Instruct · local", "remote · openai"]  # with each model's engine
    select.select_option(index=1)
    ask(page, "Hi there")
    text = wait_done(page)
    assert ANSWER in text and "remote" in text  # answered by the remote model, and the stats line says so
    page.screenshot(path=str(SHOTS / "5-remote-model.png"))
    select.select_option(index=0)


def test_the_compare_tab_streams_columns_at_once_with_diff_grounding_and_stop(page: Any) -> None:
    page.get_by_text("Compare", exact=True).click()
    page.wait_for_selector(".tk-column-3", timeout=30_000)
    page.locator(".tk-column-2 select").first.select_option(index=1)  # the remote model
    page.locator(".tk-column-3 button").first.click()  # web search on
    page.evaluate(
        """() => {
        window.__firstText = {}; window.__done = {};
        new MutationObserver(() => {
            for (const n of [1, 2, 3]) {
                const a = document.querySelector(`.tk-column-${n} .tk-compare-answer`);
                if (!a) continue;
                const text = a.innerText.trim();
                if (!window.__firstText[n] && text && text !== '…' && !text.includes('no answer yet')) window.__firstText[n] = performance.now();
                if (!window.__done[n] && a.querySelector('.tk-stats')) window.__done[n] = performance.now();
            }
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.fill(".tk-compare-prompt input", "What is the capital city of the planet Zorvath?")
    page.press(".tk-compare-prompt input", "Enter")
    page.wait_for_function("() => Object.keys(window.__done).length === 3", timeout=120_000)
    first, done = page.evaluate("() => [window.__firstText, window.__done]")
    # the two local columns were both streaming before either had finished (the remote one is instant)
    assert max(first["1"], first["3"]) < min(done["1"], done["3"])
    columns = [page.locator(f".tk-column-{n} .tk-compare-answer").inner_text() for n in (1, 2, 3)]
    assert "Quillborough" in columns[2] and ANSWER in columns[1]
    assert page.locator(".tk-column-3 .tk-mark").count() >= 1 and "supported" in columns[2]  # grounding marks
    page.screenshot(path=str(SHOTS / "6-compare.png"), full_page=True)
    page.click(".tk-compare-diff")
    page.wait_for_selector(".tk-column-1 mark.tk-diff", timeout=10_000)
    assert page.locator(".tk-column-2 mark.tk-diff").count() >= 1
    page.screenshot(path=str(SHOTS / "7-compare-diff.png"), full_page=True)
    page.click(".tk-compare-diff")
    # web search off again: with sources, column 3 answers in a few tokens and could finish before the Stop
    # click reaches the kernel (seen on a slow host); without, both local columns count for a long while
    page.locator(".tk-column-3 button").first.click()
    page.fill(".tk-compare-prompt input", "Count from one to five hundred, one number per line.")
    page.press(".tk-compare-prompt input", "Enter")
    page.wait_for_function(
        "() => [1, 3].every(n => (document.querySelector(`.tk-column-${n} .tk-compare-answer`) || {}).innerText?.length > 20)",
        timeout=60_000,
    )
    page.click(".tk-compare-stop")
    page.wait_for_function(
        "() => document.querySelectorAll('.tk-compare-answer .tk-stats').length === 3", timeout=60_000
    )
    stats = page.locator(".tk-compare-answer .tk-stats").all_inner_texts()
    assert "cancelled" in stats[0] and "cancelled" in stats[2]  # the remote one may have finished already
    page.screenshot(path=str(SHOTS / "8-compare-stopped.png"), full_page=True)
    page.get_by_text("Chat", exact=True).click()


def test_the_evaluate_tab_runs_a_dataset_and_opens_a_cell(page: Any, tmp_path: Path) -> None:
    page.get_by_text("Evaluate", exact=True).click()
    page.wait_for_selector(".tk-eval-file select", timeout=30_000)
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"input": "ok", "target": "k"}\n{"input": "x", "assert": [{"type": "sounds-like"}]}\n')
    with page.expect_file_chooser() as chooser:  # an upload, checked before it runs
        page.click(".tk-eval-upload")
    chooser.value.set_files(str(bad))
    page.click(".tk-eval-run")
    page.wait_for_function(
        "() => document.querySelector('.tk-eval-status').innerText.includes('mine.jsonl, line 2')", timeout=30_000
    )
    page.locator(".tk-eval-file select").select_option(label="capitals.jsonl")  # a file of the folder instead
    page.click(".tk-eval-run")  # two variants: as the Chat tab (greedy), and with web search
    page.wait_for_function(  # done, or a banner that says why not (the upload's was cleared by the click)
        "() => { const s = document.querySelector('.tk-eval-status');"
        " return s.innerText.includes('done:') || (s.querySelector('.tk-banner') && !s.innerText.includes('mine.jsonl')) }",
        timeout=180_000,
    )
    assert "done: 4 / 4" in page.inner_text(".tk-eval-status")
    cells = page.locator(".tk-eval-cell")
    assert cells.all_inner_texts() == ["✗", "✓", "✓", "✓"]
    assert page.locator(".tk-eval-chart").is_visible() and "pass_rate" in page.inner_text(".tk-eval-summary")
    cells.nth(1).click()  # Zorvath, with web search
    page.wait_for_selector(".tk-eval-detail .tk-sources", timeout=10_000)
    assert "Quillborough" in page.inner_text(".tk-eval-detail")
    page.click(".tk-eval-replay")
    page.wait_for_function(
        "() => document.querySelector('.tk-eval-replayed').innerText.toLowerCase().includes('identical')",
        timeout=60_000,
    )
    # the diff starts on variant 1 against variant 2 of this run, not one against itself
    page.wait_for_function(
        "() => document.querySelector('.tk-eval-diff').innerText.includes('1 fixed, 0 broken')", timeout=10_000
    )
    with page.expect_download() as info:  # the report: one self-contained HTML file
        page.click(".tk-eval-report-link")
    report = Path(info.value.path()).read_text()
    assert "Quillborough" in report and "1 fixed, 0 broken" in report and "<script" not in report
    page.screenshot(path=str(SHOTS / "9-evaluate.png"), full_page=True)
    page.get_by_text("Chat", exact=True).click()


def test_the_explorer_tab_loads_graphiql(page: Any) -> None:
    page.get_by_text("GraphQL Explorer").click()
    frame = page.frame_locator("iframe[title='GraphQL Explorer']")
    frame.locator(".graphiql-execute-button").wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "10-explorer.png"))
    assert page.outside == []  # type: ignore[attr-defined]


def kernels(stack: dict[str, Any]) -> int:
    """The ipykernel processes Voila runs now."""
    import psutil

    launcher = psutil.Process(stack["launcher"])
    count = 0
    for child in launcher.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            count += "ipykernel" in " ".join(child.cmdline())
    return count


def test_kernels_of_closed_tabs_and_bare_requests_are_culled(stack: dict[str, Any], page: Any) -> None:
    """Each page view starts a kernel; one whose tab closed, or a GET that never connected, must not stay."""
    import time
    import urllib.request

    open_page = kernels(stack)  # the module's page, still open
    for _ in range(2):
        tab = page.context.browser.new_page()  # a visit of its own, as a second browser tab
        tab.goto(stack["dashboard"])
        tab.wait_for_selector(".tk-prompt input", timeout=90_000)
        tab.close()
    for _ in range(2):
        urllib.request.urlopen(stack["dashboard"], timeout=60).read()
    assert kernels(stack) >= open_page + 2
    deadline = time.monotonic() + 12 * KERNEL_IDLE_S
    while kernels(stack) > open_page and time.monotonic() < deadline:
        time.sleep(0.5)
    assert kernels(stack) == open_page
    page.get_by_text("Chat", exact=True).click()  # back from the Explorer tab
    ask(page, "What is the capital of France?")  # the open page kept its kernel
    assert "Paris" in wait_done(page)


def test_the_health_probe_starts_no_kernel(stack: dict[str, Any]) -> None:
    """What the container's health check runs: it must not start a kernel per probe, as GET / does."""
    from dashboard.healthcheck import main as probe

    before = kernels(stack)
    assert all(probe([stack["dashboard"]]) == 0 for _ in range(5))
    assert kernels(stack) == before
    assert probe(["http://127.0.0.1:9"]) == 1  # nothing there


def test_a_reload_mid_conversation_shows_it_whole_and_the_sidebar_lists_it(stack: dict[str, Any], page: Any) -> None:
    tab = page.context.browser.new_page()  # a page of its own: the module's page keeps its console to itself
    console: list[str] = []
    tab.on("console", lambda m: console.append(f"{m.type}: {m.text[:200]}") if m.type in ("error", "warning") else None)
    tab.goto(stack["dashboard"])
    tab.wait_for_selector(".tk-prompt input", timeout=90_000)
    tab.click(".tk-new-chat")
    tab.wait_for_function("() => document.querySelectorAll('.tk-answer').length === 0", timeout=10_000)
    tab.click(".tk-web")  # the first turn searches: its grounding marks must come back as they were
    tab.wait_for_function("() => document.querySelector('.tk-web').innerText.includes('🌐 On')")
    ask(tab, "What is the capital city of the planet Zorvath?")
    wait_done(tab)
    tab.click(".tk-web")
    tab.wait_for_function("() => document.querySelector('.tk-web').innerText.includes('Off')")
    ask(tab, "My name is Quillon. Say hello.")
    wait_done(tab)
    asked = tab.locator(".tk-chat .tk-row.user").all_inner_texts()
    live = tab.locator(".tk-answer").evaluate_all(
        "els => els.map(e => [e.querySelector('.tk-stats')?.innerText, e.querySelectorAll('.tk-mark').length,"
        " e.querySelector('.tk-grounding')?.innerText])"
    )
    said = [a.split("\n")[0] for a in answers(tab)]  # each answer's first line (not the live stats line)
    assert len(asked) == len(said) == 2 and "🌐" in asked[0] and "🌐" not in asked[1]
    assert live[0][1] >= 1 and live[0][2] and live[1][1] == 0  # the searched answer's marks and summary
    title = tab.locator(".tk-conversation.tk-current").inner_text()
    assert title == "What is the capital city of the planet Zorvath?"
    tab.screenshot(path=str(SHOTS / "11-before-reload.png"))
    tab.reload()
    tab.wait_for_selector(".tk-prompt input", timeout=90_000)
    tab.wait_for_function("() => document.querySelectorAll('.tk-answer').length === 2", timeout=60_000)
    assert tab.locator(".tk-chat .tk-row.user").all_inner_texts() == asked  # 🌐 on the turn that searched
    assert [a.split("\n")[0] for a in answers(tab)] == said
    reopened = tab.locator(".tk-answer").evaluate_all(
        "els => els.map(e => [e.querySelector('.tk-stats')?.innerText, e.querySelectorAll('.tk-mark').length,"
        " e.querySelector('.tk-grounding')?.innerText])"
    )
    assert reopened == live  # the stats line, the grounding marks and summary as when it was live
    assert tab.locator(".tk-conversation.tk-current").inner_text() == title
    assert tab.locator(".tk-replay").count() == 2
    # renamed, the exports carry the title it has now; the Markdown export is a download of the conversation
    tab.fill(".tk-title input", "Zorvath and Quillon")
    tab.click(".tk-rename")
    tab.wait_for_function(
        "() => document.querySelector('.tk-exports a').getAttribute('download') === 'zorvath-and-quillon.md'"
    )
    with tab.expect_download() as info:
        tab.locator(".tk-exports a", has_text="Markdown").click()
    markdown = Path(info.value.path()).read_text()
    assert markdown.startswith("# Zorvath and Quillon") and "My name is Quillon" in markdown and said[1] in markdown
    tab.screenshot(path=str(SHOTS / "12-after-reload.png"))
    tab.close()
    # the reload shut the old page's kernel down (Voila's unload beacon) without a 403 in the console
    assert console == [], console


def test_the_console_stayed_clean(page: Any) -> None:
    """After every test above (chat, search, compare, stop, the Explorer tab): no error and no warning in
    the browser's console (no CDN stylesheet refused by the page's policy, no module-version mismatch)."""
    assert page.console == []  # type: ignore[attr-defined]
