"""Search benchmark: what web search adds to a request's latency.

    python bench/search.py [--docs 1000] [--out bench/results/search.json]

- a cache hit (target: under 1 ms), against the uncached call in the same run;
- a failing ddgs call (no network here: it must stay bounded by SEARCH_TIMEOUT),
  and a backend that hangs, cut at the timeout;
- the local BM25 backend on a generated corpus of 1,000 documents: index once,
  then queries (target: under 20 ms each), with how often the right document comes first.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import save_report  # noqa: E402  (bench/, the script's own folder)

from toolkit.search import DDGSBackend, LocalDocsBackend, Searcher, SearchResult  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ren", "to", "vex", "sa", "dor", "qui", "ban", "el", "fy", "gor", "hu", "ist", "ju"]


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def write_corpus(folder: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` markdown files of filler words, each with one unique fact; returns (query, expected file) pairs."""
    rng = random.Random(seed)
    vocabulary = [word(rng) for _ in range(3000)]
    probes = []
    for i in range(n):
        city, product = f"{word(rng)}ville{i}", f"{word(rng)}berry{i}"
        paragraphs = [" ".join(rng.choices(vocabulary, k=80)) + "." for _ in range(4)]
        fact = f"The capital of region {i} is {city} and it exports {product}."
        paragraphs.insert(rng.randint(0, 4), fact)
        text = f"# Region {i}\n\n" + "\n\n".join(paragraphs[:2]) + f"\n\n## Notes {i}\n\n" + "\n\n".join(paragraphs[2:])
        (folder / f"doc{i:04d}.md").write_text(text)
        probes.append((f"which region exports {product}", f"doc{i:04d}.md"))
    return probes


def timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


class Hanging:
    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        self.release.wait(60)
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "search.json"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []

    def record(case: str, seconds: list[float], target_ms: float | None = None, **extra: Any) -> dict[str, Any]:
        median_ms = statistics.median(seconds) * 1000
        row = {
            "case": case,
            "median_ms": round(median_ms, 3),
            "max_ms": round(max(seconds) * 1000, 3),
            "n": len(seconds),
            "target_ms": target_ms,
            "meets_target": None if target_ms is None else median_ms < target_ms,
            **extra,
        }
        rows.append(row)
        return row

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        probes = write_corpus(folder, args.docs)
        started = time.perf_counter()
        local = LocalDocsBackend(folder)
        index_s = time.perf_counter() - started
        record("local: build the index", [index_s], docs=local.files, chunks=len(local.chunks))
        hits = 0
        query_times = []
        for query, expected in probes[:200]:
            t0 = time.perf_counter()
            results = local.search(query, 4)
            query_times.append(time.perf_counter() - t0)
            hits += results[0].url.split("/")[-1].split("#")[0] == expected
        uncached = record("local: one query", query_times, 20.0, top1_accuracy=round(hits / len(query_times), 3))

        searcher = Searcher(local, per_minute=10_000)
        searcher.search(probes[0][0])
        hit = record("cache hit (any backend)", timed(lambda: searcher.search(probes[0][0]), 2000), 1.0)
        hit["x_faster_than_uncached_local"] = round(uncached["median_ms"] / hit["median_ms"], 1)

    ddgs = Searcher(DDGSBackend(timeout_s=5), timeout_s=5, per_minute=10_000)
    outcomes: list[str] = []
    record(
        "ddgs failing call (no network), timeout 5 s",
        timed(lambda: outcomes.append(ddgs.search(f"query {len(outcomes)}").status), 5),
        5000.0,
        statuses=sorted(set(outcomes)),
    )
    hanging = Hanging()
    cut = Searcher(hanging, timeout_s=0.5)
    record("hanging backend, timeout 0.5 s", timed(lambda: cut.search("q"), 3), 600.0)
    hanging.release.set()

    print(f"\n{'case':<46}{'median ms':>11}{'max ms':>10}{'target':>9}  ok")
    for row in rows:
        target = f"<{row['target_ms']:g}" if row["target_ms"] is not None else ""
        ok = {True: "yes", False: "NO", None: ""}[row["meets_target"]]
        print(f"{row['case']:<46}{row['median_ms']:>11.3f}{row['max_ms']:>10.3f}{target:>9}  {ok}")
    extra = [r for r in rows if "top1_accuracy" in r or "x_faster_than_uncached_local" in r]
    for row in extra:
        for key in ("top1_accuracy", "x_faster_than_uncached_local"):
            if key in row:
                print(f"{key}: {row[key]}")
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform()}, "rows": rows}
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
