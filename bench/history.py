"""Long histories: what fitting one to the input limit costs, and whether six of them slow another caller.

    python bench/history.py [--turns 500,2000,10000] [--out bench/results/history.json]

With the bundled model and web search on (a local-documents search), a request with a history of N turns
(16 words each) is prepared: its messages fitted to MAX_INPUT_TOKENS and encoded. The baseline, in the
same run, is the fitting loop this toolkit had before (drop the oldest pair, count everything again),
timed at the smallest N only: it is quadratic (the probe measured 11.6 s at 500 turns, 230 s at 2,000).
Target: 10,000 turns in under a second.

Then, on an event loop as the server runs it, another caller's short answer (8 tokens, greedy) alone,
and again while six 10,000-turn requests arrive at the same moment. Target: delayed by under a second.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, save_report  # noqa: E402  (bench/, the script's own folder)

from toolkit.params import InferRequest, Turn  # noqa: E402
from toolkit.rag import BuiltMessages, build_messages  # noqa: E402
from toolkit.search import LocalDocsBackend, Searcher, search_query  # noqa: E402
from toolkit.service import InferenceService  # noqa: E402
from toolkit.settings import Settings  # noqa: E402

DOCS = ROOT / "tests" / "data" / "docs"
PROMPT = "What is the capital of Zorvath?"


def history(turns: int) -> tuple[Turn, ...]:
    return tuple(
        Turn("user" if i % 2 == 0 else "assistant", f"turn {i}: " + " ".join(["harbour", "lantern"] * 7))
        for i in range(turns)
    )


def old_fit(**kwargs: Any) -> BuiltMessages:
    """The loop fitting was before: drop the oldest pair, build and count the whole list again."""
    turns = list(kwargs.pop("history"))
    budget = kwargs.pop("budget")
    dropped = 0
    while True:
        built = build_messages(history=turns, budget=None, **kwargs)
        if not turns or kwargs["count_messages"](built.messages) <= budget:
            return BuiltMessages(built.messages, built.sources, dropped)
        del turns[:2]
        dropped += 2


def time_prepare(service: InferenceService, turns: int, search: Any) -> tuple[float, int]:
    request = InferRequest.build(PROMPT, history=history(turns), web_search=True)
    start = time.perf_counter()
    prepared = service.prepare(request, search=search)
    return time.perf_counter() - start, prepared.built.dropped_history_turns


def time_old(service: InferenceService, turns: int, search: Any) -> float:
    engine = service.engine()
    limit = min(service.limits.max_input_tokens, engine.info.context_length - 1)
    start = time.perf_counter()
    old_fit(
        prompt=PROMPT,
        history=history(turns),
        sources=list(search.results),
        today=date.today(),
        boundary="b" * 24,
        count_tokens=engine.count_tokens,
        count_messages=lambda m: engine.count_messages(m, limit=limit),
        budget=limit,
        control=engine.info.control,
    )
    return time.perf_counter() - start


async def another_caller(service: InferenceService, long_ones: int) -> float:
    """Seconds for a short answer by another caller, while ``long_ones`` 10,000-turn requests arrive with it."""
    long = [
        service.ainfer(InferRequest.build(PROMPT, history=history(10_000), web_search=True, max_new_tokens=1))
        for _ in range(long_ones)
    ]
    tasks = [asyncio.ensure_future(c) for c in long]
    await asyncio.sleep(0)  # the long ones are accepted first
    start = time.perf_counter()
    await service.ainfer(InferRequest.build("Say hi.", max_new_tokens=8, temperature=0, owner="other"))
    seconds = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", default="500,2000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "history.json"))
    args = parser.parse_args()
    sizes = [int(n) for n in args.turns.split(",")]
    settings = Settings.from_env({"TOOLKIT_STORE": "off", "RUN_LOG": "off"})
    service = InferenceService(settings, searcher=Searcher(LocalDocsBackend(DOCS))).start(progress=False)
    try:
        search = service.search(search_query(PROMPT))
        rows = []
        for n in sizes:
            times = [time_prepare(service, n, search) for _ in range(args.rounds)]
            rows.append({"turns": n, "seconds": statistics.median(t for t, _ in times), "dropped": times[0][1]})
        old = time_old(service, sizes[0], search)
        asyncio.run(another_caller(service, 6))  # warm: the first long prefill and decode shapes
        alone = [asyncio.run(another_caller(service, 0)) for _ in range(args.rounds)]
        busy = [asyncio.run(another_caller(service, 6)) for _ in range(args.rounds)]
    finally:
        service.close()
    print(f"{'turns':>7} {'kept':>6} {'fit+encode s':>13}")
    for row in rows:
        print(f"{row['turns']:>7} {row['turns'] - row['dropped']:>6} {row['seconds']:>13.3f}")
    speedup = old / rows[0]["seconds"]
    print(f"old loop at {sizes[0]} turns: {old:.2f} s ({speedup:.0f}x the new)")
    delay = statistics.median(busy) - statistics.median(alone)
    print(
        f"another caller's answer: {statistics.median(alone):.2f} s alone, {statistics.median(busy):.2f} s beside "
        f"six 10,000-turn requests (delay {delay:+.2f} s; target < 1 s)"
    )
    save_report(
        {
            "machine": machine(),
            "fit": rows,
            "old_loop": {"turns": sizes[0], "seconds": old, "speedup": speedup},
            "another_caller": {"alone_s": alone, "beside_six_long_s": busy, "delay_s": delay},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
