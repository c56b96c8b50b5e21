"""The HTML report: one self-contained file (no script, no outside request: checked in Chromium with every
request recorded), with the summary and intervals, the chart, the matrix with error cells apart, the diff,
and each cell's answer, sources, checks and run record id."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from toolkit.evals.assertions import Score
from toolkit.evals.report import write
from toolkit.evals.results import EvalRow, EvalRun

CHROMIUM = shutil.which("chromium")
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
SOURCE = {"index": 1, "title": "zorvath.md › The planet Zorvath", "url": "docs://zorvath.md", "snippet": "..."}


def a_run() -> EvalRun:
    rows = []
    for i in range(8):
        sid = f"q{i}"
        rows.append(
            EvalRow(
                sid, "closed", 0, i < 2, (Score("icontains", i < 2, float(i < 2), "lacks 'x'"),), text=f"closed {i}"
            )
        )
        if i == 7:  # an error cell: no verdict
            rows.append(
                EvalRow(
                    sid, "grounded", 0, False, error="the answer ran out of time after 3 tokens", error_code="TIMEOUT"
                )
            )
            continue
        rows.append(
            EvalRow(
                sid,
                "grounded",
                0,
                True,
                (Score("icontains", True, 1.0, "has 'Quillborough'"),),
                text=f"The capital is Quillborough <b>{i}</b> [1].",
                finish_reason="stop",
                completion_tokens=12,
                total_s=0.8,
                grounding="1 of 1 sentence supported",
                sources=(SOURCE,),
                record_id=f"rec{i}",
                search="s1",
                cached=i == 0,
            )
        )
    return EvalRun(
        "20261207-0000-abc",
        "capitals",
        "capitals.jsonl",
        "h",
        [{"label": "closed", "fields": {}}, {"label": "grounded", "fields": {"web_search": True}}],
        1,
        rows,
        {f"q{i}": f"What is the capital of place {i}?" for i in range(8)},
        status="done",
        created_at="2026-12-07T00:00:00Z",
        seconds=12.5,
    )


def test_the_report_holds_everything_and_fetches_nothing(tmp_path: Path) -> None:
    page = write(a_run(), tmp_path / "run.html")
    assert (tmp_path / "run.html").read_text() == page
    # nothing to fetch: no script, no stylesheet or image from anywhere, no font
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\((?!#)|src=", page, re.I), "an outside reference"
    assert "default-src 'none'" in page  # and the page says so to the browser
    assert "<svg" in page and "<text" not in page  # the chart, its text drawn as paths (no font to load)
    # the summary with its interval, errors apart, what the set can tell, the cached cells
    assert "<td>grounded</td><td class='num'>7</td><td class='num'>7</td><td class='num'>100.0%</td>" in page
    assert "1 (TIMEOUT 1)" in page and "1 error cell(s)" in page
    assert "A paired difference needs at least 6 one-way flips" in page and "1 of 16 cells came from the store" in page
    # the matrix: ⚠ apart from ✗; the diff of the two variants; every cell's answer, sources, checks, record
    assert page.count(">⚠</a>") == 1 and page.count(">✗</a>") == 6
    assert "<h2>Diff: closed → grounded</h2>" in page and "5 fixed, 0 broken" in page
    assert "1 pair(s) with an error cell left out" in page
    assert "The capital is Quillborough &lt;b&gt;3&lt;/b&gt; [1]." in page  # escaped, never markup
    assert (
        "run record <code>rec3</code>" in page
        and "docs://zorvath.md" in page
        and "has &#x27;Quillborough&#x27;" in page
    )
    assert "⚠ error TIMEOUT: the answer ran out of time after 3 tokens" in page
    assert "0.80 s (the original answer's, from the store)" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_in_chromium_makes_no_request(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    path = tmp_path / "run.html"
    write(a_run(), path)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        errors: list[Any] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(path.as_uri())
        page.click("a[href='#s-q7']")  # the matrix links each cell to its details
        page.click("#s-q7 summary")
        assert page.is_visible("text=⚠ error TIMEOUT: the answer ran out of time after 3 tokens")
        assert page.locator("svg").count() == 1 and page.locator(".matrix td").count() == 8 * 3
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "evaluation-report.png"), full_page=True)
        browser.close()
    assert requests == [path.as_uri()], requests  # the file itself, nothing else
    assert not errors, errors
