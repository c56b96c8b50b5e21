"""Dashboard benchmark: from Send to the first token painted in the page, against the
subscription's own time to first token, in the same run (target: under 150 ms more).

    python bench/dashboard.py [--runs 5] [--out bench/results/dashboard.json]

Starts the GraphQL server and the Voila dashboard on free loopback ports and drives
Debian's Chromium through Playwright (non-loopback requests blocked).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import save_report  # noqa: E402  (bench/, the script's own folder)

from server.spawn import spawn_server  # noqa: E402
from toolkit.client import PROTOCOL, STREAM, RemoteService, Subscription, variables  # noqa: E402
from toolkit.params import InferRequest  # noqa: E402
from toolkit.results import Token  # noqa: E402

PROMPT = "What is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def subscription_first_token(url: str) -> float:
    from websockets.asyncio.client import connect

    sub = Subscription(STREAM, variables(InferRequest.build(PROMPT, temperature=0, max_new_tokens=16)))
    async with connect("ws" + url[4:], subprotocols=[PROTOCOL], proxy=None) as ws:  # type: ignore[list-item]
        await ws.send(sub.init())
        sub.acknowledged(await ws.recv())
        started = time.perf_counter()
        await ws.send(sub.subscribe())
        first = None
        async for raw in ws:
            if isinstance(sub.receive(raw, lambda _: None), Token) and first is None:
                first = time.perf_counter() - started
            if sub.done:
                break
        assert first is not None
        return first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dashboard.json"))
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    server, url = spawn_server()
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "GRAPHQL_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        RemoteService(url).wait_ready(timeout_s=120)
        from playwright.sync_api import sync_playwright

        painted, subscription = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            page = browser.new_page()
            page.route(
                "**/*",
                lambda r: r.continue_() if urllib.parse.urlparse(r.request.url).hostname == "127.0.0.1" else r.abort(),
            )
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".tk-prompt input", timeout=120_000)
            page.click(".jupyter-widget-Collapse-header, .p-Collapse-header, .lm-AccordionPanel-title")
            page.locator(".tk-temperature .noUi-handle").first.focus()
            page.locator(".tk-temperature .noUi-handle").first.press("Home")  # temperature 0: the same answer each time
            page.evaluate(
                """() => new MutationObserver(() => {
                    const all = document.querySelectorAll('.tk-answer');
                    const a = all.length > window.__count ? all[all.length - 1] : null;  // the new answer only
                    const text = a ? a.innerText.trim() : "";
                    if (window.__sent && !window.__painted && text && !text.startsWith('…'))
                        window.__painted = performance.now();
                }).observe(document.body, {subtree: true, childList: true, characterData: true})"""
            )
            for _ in range(args.runs + 1):
                # Playwright's sync API owns this thread's event loop: measure from another thread
                with ThreadPoolExecutor(1) as pool:
                    subscription.append(pool.submit(asyncio.run, subscription_first_token(url)).result())
                # the same request as the subscription's: no history from earlier runs
                page.click(".tk-clear")
                page.wait_for_function("() => document.querySelectorAll('.tk-answer').length === 0")
                page.evaluate("() => { window.__painted = null; }")
                page.fill(".tk-prompt input", PROMPT)
                page.evaluate(
                    "() => { window.__count = document.querySelectorAll('.tk-answer').length;"
                    " window.__sent = performance.now(); }"
                )
                page.press(".tk-prompt input", "Enter")
                page.wait_for_function("() => window.__painted !== null", timeout=60_000)
                painted.append(page.evaluate("() => window.__painted - window.__sent") / 1000)
                page.wait_for_function("() => document.querySelectorAll('.tk-stats').length > 0", timeout=60_000)
            browser.close()
        painted, subscription = painted[1:], subscription[1:]  # the first of each warms up
        report = {
            "runs": args.runs,
            "send_to_first_token_painted_ms": round(statistics.median(painted) * 1000, 1),
            "subscription_first_token_ms": round(statistics.median(subscription) * 1000, 1),
        }
        report["added_ms"] = round(report["send_to_first_token_painted_ms"] - report["subscription_first_token_ms"], 1)
        report["target_added_ms"] = 150
        print(f"\n{'measure (median)':<44}{'ms':>8}")
        for key in ("send_to_first_token_painted_ms", "subscription_first_token_ms", "added_ms"):
            print(f"{key:<44}{report[key]:>8.1f}")
        save_report(report, args.out)
        return 0
    finally:
        for proc in (dashboard, server):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
