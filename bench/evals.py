"""What the evaluation harness costs: the same generations through ``evaluate`` and straight to the service.

    python bench/evals.py [--samples 50] [--rounds 2] [--out bench/results/evals.json]

The bundled model answers 50 samples (the example set, evals/examples/quality.yaml, and made-up
arithmetic to fill) as 4 variants (web search off/on × two system prompts), greedy, 64 new tokens at
most: 200 answers. Direct: every request submitted to ``InferenceService.stream`` from a thread pool as
wide as the engine's queue (MAX_QUEUE), with the search snapshots made beforehand (not timed).
Harness: ``evaluate`` with its store in a temporary file (its searches, checks and writes timed). The
two alternate ``--rounds`` times; the ratio of the medians is the harness's cost (target: at most 1.15).
Then the unchanged run again, answered from the store (target: under 2 s). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, save_report  # noqa: E402  (bench/, the script's own folder)

from toolkit.evals import Dataset, dataset, evaluate, grid, load_dataset  # noqa: E402
from toolkit.params import InferRequest  # noqa: E402
from toolkit.results import Done  # noqa: E402
from toolkit.search import LocalDocsBackend, Searcher  # noqa: E402
from toolkit.service import InferenceService, search_query  # noqa: E402
from toolkit.settings import Settings  # noqa: E402

EXAMPLES = ROOT / "evals" / "examples" / "quality.yaml"
DOCS = ROOT / "tests" / "data" / "docs"
MAX_NEW_TOKENS = 64
VARIANTS = grid(web_search=[False, True], system_prompt=[None, "Answer in one short sentence."])


def samples(n: int) -> Dataset:
    items: list[dict[str, Any]] = [s.to_dict() for s in load_dataset(EXAMPLES)[:n].samples]
    for i in range(len(items), n):
        a, b = 17 + 3 * i, 5 + i
        items.append({"id": f"sum-{i}", "input": f"What is {a} plus {b}?", "target": str(a + b)})
    return dataset(items, name=f"bench {n}")


def direct(service: InferenceService, data: Dataset, width: int) -> tuple[float, int]:
    """The same requests the harness makes (each variant's fields, seed 0), at full concurrency."""
    snapshots = {s.id: service.search(search_query(s.input)) for s in data.samples}
    requests = []
    for s in data.samples:
        for v in VARIANTS:
            fields = {k: v[k] for k in v if k not in ("label", "web_search")}
            request = InferRequest.build(
                s.input,
                web_search=bool(v.get("web_search")),
                temperature=0,
                max_new_tokens=MAX_NEW_TOKENS,
                seed=0,
                **fields,
            )
            requests.append((request, snapshots[s.id] if request.web_search else None))

    def one(item: tuple[InferRequest, Any]) -> int:
        for event in service.stream(item[0], search=item[1]):
            if isinstance(event, Done):
                return event.result.usage.completion_tokens
        return 0

    started = time.perf_counter()
    with ThreadPoolExecutor(width) as pool:
        tokens = sum(pool.map(one, requests))
    return time.perf_counter() - started, tokens


def harness(service: InferenceService, data: Dataset, store: Path) -> tuple[float, int, Any]:
    variants = [{**v, "temperature": 0, "max_new_tokens": MAX_NEW_TOKENS} for v in VARIANTS]
    started = time.perf_counter()
    run = evaluate(service, data, variants, store=store, progress=False)
    seconds = time.perf_counter() - started
    return seconds, sum(r.completion_tokens or 0 for r in run.rows), run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "evals.json"))
    args = parser.parse_args()
    settings = Settings.from_env(search_provider="none")
    # the searcher's own rate limit is not what is measured: the 50 questions search within a minute
    searcher = Searcher(LocalDocsBackend(DOCS), per_minute=10_000)
    service = InferenceService(settings, searcher=searcher).start(progress=False)
    data = samples(args.samples)
    width = settings.max_queue  # as many as the queue holds: the engine's batch always full
    service.infer("Warm up.", max_new_tokens=8)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        run = None
        for i in range(args.rounds):
            seconds, tokens = direct(service, data, width)
            rows.append({"round": i, "way": "direct", "seconds": round(seconds, 2), "tokens": tokens})
            print(f"round {i}: direct {seconds:.1f} s, {tokens} tokens", flush=True)
            seconds, tokens, run = harness(service, data, Path(folder) / f"round{i}.db")
            rows.append({"round": i, "way": "harness", "seconds": round(seconds, 2), "tokens": tokens})
            print(f"round {i}: harness {seconds:.1f} s, {tokens} tokens", flush=True)
        again, _, rerun = harness(service, data, Path(folder) / f"round{args.rounds - 1}.db")
        cached = sum(r.cached for r in rerun.rows)
    service.close(grace_s=0)
    direct_s = statistics.median(r["seconds"] for r in rows if r["way"] == "direct")
    harness_s = statistics.median(r["seconds"] for r in rows if r["way"] == "harness")
    ratio = harness_s / direct_s
    cells = len(data) * len(VARIANTS)
    print(
        f"\nbundled model, {len(data)} samples x {len(VARIANTS)} variants = {cells} answers, greedy, "
        f"{MAX_NEW_TOKENS} new tokens at most; median of {args.rounds} rounds"
    )
    print(f"{'way':<28}{'seconds':>10}{'tokens':>9}")
    for r in rows:
        print(f"{r['way'] + ' (round ' + str(r['round']) + ')':<28}{r['seconds']:>10.2f}{r['tokens']:>9}")
    print(f"harness / direct (medians): {ratio:.3f} (target <= 1.15)")
    print(f"unchanged run again, from the store: {again:.2f} s, {cached} of {cells} cells cached (target < 2 s)")
    assert run is not None
    save_report(
        {
            "machine": machine(),
            "samples": len(data),
            "variants": len(VARIANTS),
            "max_new_tokens": MAX_NEW_TOKENS,
            "rows": rows,
            "direct_median_s": direct_s,
            "harness_median_s": harness_s,
            "ratio": round(ratio, 3),
            "rerun_from_store_s": round(again, 3),
            "rerun_cached_cells": cached,
            "pass_rates": {s["name"]: s["pass_rate"] for s in run.summary().to_dict("records")},
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
