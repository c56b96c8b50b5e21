"""Answer quality of candidate generation defaults on the bundled model, through the evaluation harness.

    python bench/quality.py [--dtype float32] [--seeds 3] [--candidates NAME,...] [--store FILE]
                            [--out bench/results/quality.json]

The questions are the example set, evals/examples/quality.yaml: closed-book ones with known short answers
(capitals, simple science, arithmetic) and grounded ones over tests/data/docs (web search with the
local-documents backend). Each candidate (greedy; greedy with DRY, a no-repeat n-gram, a frequency, presence
or repetition penalty; sampled ones at several temperatures) is a variant of one ``toolkit.evals.evaluate``
run (the sampled ones in a second run with ``--seeds`` repeats, each repeat its own seed). Per candidate: the
share of passed closed-book and grounded questions, of answers the loop guard ended (finish reason
``repetition``), of answers run to the length limit (and of those repeating themselves: some 6 words three
times or more, ``loopguard.repeats``). The chosen defaults (``BUNDLED_DEFAULTS`` in toolkit/models.py) are
greedy unless another candidate, one whose visible answers never hold some 6 words three times, that gets
every grounded question and no fewer closed-book ones than greedy, runs fewer answers to the limit than
greedy and not by chance: McNemar's exact p < 0.05 on the questions paired (a sampled candidate's answer to
a question counts as run to the limit when most of its seeds' are). Greedy in float32 is not batch-invariant
to the last token, so which few answers run long moves between runs; a rule on the raw count would switch
defaults on noise. Prints a table and writes JSON; the runs stay in a store (``--store``, default a
temporary file; given again, every answer comes from it), to look at with
``python -m toolkit.evals --store FILE show RUN``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, save_report  # noqa: E402  (bench/, the script's own folder)

from toolkit.evals import EvalRow, evaluate, load_dataset  # noqa: E402
from toolkit.evals.stats import mcnemar  # noqa: E402
from toolkit.loopguard import repeats  # noqa: E402
from toolkit.search import LocalDocsBackend, Searcher  # noqa: E402
from toolkit.service import InferenceService  # noqa: E402
from toolkit.settings import Settings  # noqa: E402

EXAMPLES = ROOT / "evals" / "examples" / "quality.yaml"
DOCS = ROOT / "tests" / "data" / "docs"
MAX_NEW_TOKENS = 96
CANDIDATES: list[tuple[str, dict[str, Any], bool]] = [  # name, parameters, sampled (seeds matter)
    ("greedy", {"temperature": 0.0}, False),
    ("greedy + DRY 0.8", {"temperature": 0.0, "dry_multiplier": 0.8}, False),
    ("greedy + DRY 0.5", {"temperature": 0.0, "dry_multiplier": 0.5}, False),
    ("greedy + no repeated 6-gram", {"temperature": 0.0, "no_repeat_ngram_size": 6}, False),
    ("greedy + frequency 0.3", {"temperature": 0.0, "frequency_penalty": 0.3}, False),
    ("greedy + presence 0.5", {"temperature": 0.0, "presence_penalty": 0.5}, False),
    ("greedy + repetition 1.15", {"temperature": 0.0, "repetition_penalty": 1.15}, False),
    ("temperature 0.2, top_p 0.9", {"temperature": 0.2, "top_p": 0.9}, True),
    ("temperature 0.2, top_p 0.9 + DRY 0.8", {"temperature": 0.2, "top_p": 0.9, "dry_multiplier": 0.8}, True),
    ("temperature 0.7 (the old default)", {"temperature": 0.7, "top_p": 1.0}, True),
]


def long_by_question(rows: list[EvalRow]) -> dict[str, dict[str, bool]]:
    """candidate -> question -> whether its answer ran to the length limit (most of its seeds', if sampled)."""
    out: dict[str, dict[str, list[bool]]] = {}
    for r in rows:
        out.setdefault(r.variant, {}).setdefault(r.sample_id, []).append(r.finish_reason == "length")
    return {v: {q: sum(flags) * 2 > len(flags) for q, flags in qs.items()} for v, qs in out.items()}


def share(rows: list[EvalRow], test: Any) -> float:
    return round(sum(bool(test(r)) for r in rows) / len(rows), 3) if rows else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", default="", help="comma-separated candidate names (default: all)")
    parser.add_argument("--store", default=None, help="the runs' SQLite file (default: a temporary one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    args = parser.parse_args()
    settings = Settings.from_env(dtype=args.dtype, search_provider="none")
    service = InferenceService(settings, searcher=Searcher(LocalDocsBackend(DOCS))).start(progress=False)
    data = load_dataset(EXAMPLES)
    wanted = {c.strip() for c in args.candidates.split(",") if c.strip()} | {"greedy"}
    chosen = [c for c in CANDIDATES if not args.candidates or c[0] in wanted]
    store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="quality-")) / "runs.db"
    rows: list[EvalRow] = []
    for sampled, repeat in ((False, 1), (True, args.seeds)):
        variants = [{"label": n, **p, "max_new_tokens": MAX_NEW_TOKENS} for n, p, s in chosen if s == sampled]
        if variants:
            run = evaluate(service, data, variants, repeats=repeat, store=store, name=f"quality ({repeat} seeds)")
            rows += run.rows
            print(f"run {run.id} in {store}", flush=True)
    service.close(grace_s=0)
    closed = [s.id for s in data.samples if not s.web_search]
    greedy_right = {r.sample_id for r in rows if r.variant == "greedy" and r.passed and r.sample_id in closed}
    report_rows: list[dict[str, Any]] = []
    for name, params, sampled in chosen:
        mine = [r for r in rows if r.variant == name]
        book = [r for r in mine if r.sample_id in closed]
        grounded = [r for r in mine if r.sample_id not in closed]
        report_rows.append(
            {
                "candidate": name,
                "params": params,
                "runs": args.seeds if sampled else 1,
                "closed_book_correct": share(book, lambda r: r.passed),
                "of_greedy_correct": share([r for r in book if r.sample_id in greedy_right], lambda r: r.passed),
                "grounded_correct": share(grounded, lambda r: r.passed),
                "loop_guard_ended": share(mine, lambda r: r.finish_reason == "repetition"),
                "loops_to_the_limit": share(mine, lambda r: r.finish_reason == "length" and repeats(r.text or "")),
                "six_words_thrice": sum(repeats(r.text or "") for r in mine),
                "length_limit": share(mine, lambda r: r.finish_reason == "length"),
                "wrong_examples": [(r.sample_id, (r.text or "")[:80]) for r in grounded if not r.passed][:3],
            }
        )
    print(
        f"\nbundled model, {args.dtype}, {len(closed)} closed-book + {len(data) - len(closed)} grounded questions, "
        f"{MAX_NEW_TOKENS} new tokens at most; sampled candidates over {args.seeds} seeds"
    )
    header = f"{'candidate':<36}{'closed-book':>12}{'of greedy-right':>16}{'grounded':>10}"
    print(header + f"{'guard ended':>12}{'6 words x3':>11}{'loops to limit':>15}{'long (limit)':>13}")
    for r in report_rows:
        print(
            f"{r['candidate']:<36}{r['closed_book_correct']:>12.0%}{r['of_greedy_correct']:>16.0%}"
            f"{r['grounded_correct']:>10.0%}{r['loop_guard_ended']:>12.0%}{r['six_words_thrice']:>11}"
            f"{r['loops_to_the_limit']:>15.0%}"
            f"{r['length_limit']:>13.0%}"
        )
    # the rule: greedy, unless a candidate with every visible answer free of a loop (no 6 words three times),
    # every grounded answer right and the closed-book ones no fewer than greedy's runs fewer answers to the
    # limit than greedy, paired by question, with McNemar's p < 0.05
    greedy_closed = next(r["closed_book_correct"] for r in report_rows if r["candidate"] == "greedy")
    long = long_by_question(rows)
    best, better = "greedy", []
    for r in report_rows:
        eligible = (
            r["six_words_thrice"] == 0 and r["grounded_correct"] == 1.0 and r["closed_book_correct"] >= greedy_closed
        )
        if not eligible or r["candidate"] == "greedy":
            continue
        fewer = sum(long["greedy"][q] and not long[r["candidate"]][q] for q in long["greedy"])
        more = sum(not long["greedy"][q] and long[r["candidate"]][q] for q in long["greedy"])
        p = mcnemar(fewer, more)
        r["long_vs_greedy"] = {"fewer": fewer, "more": more, "p": round(p, 4)}
        print(f"  {r['candidate']}: {fewer} fewer and {more} more run to the limit than greedy, p = {p:.3g}")
        if fewer > more and p < 0.05:
            better.append((fewer - more, r["candidate"]))
    if better:
        best = max(better)[1]
    print(f"chosen by the rule (see the source): {best}")
    save_report(
        {
            "machine": machine(),
            "dtype": args.dtype,
            "dataset": str(EXAMPLES.relative_to(ROOT)),
            "greedy_right": sorted(greedy_right),
            "rows": report_rows,
            "chosen": best,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
