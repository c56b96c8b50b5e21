"""Answer quality of candidate generation defaults on the bundled model.

    python bench/quality.py [--dtype float32] [--seeds 3] [--out bench/results/quality.json]

bench/data/quality.json holds closed-book questions with known short answers (capitals, simple
science, arithmetic) and grounded ones over tests/data/docs (web search with the local-documents
backend). For each candidate (greedy; greedy with a frequency or presence penalty; sampled ones at
several temperatures, with ``--seeds`` seeds each) it measures the share of correct answers, and the
share of answers that loop (finish reason ``repetition``: the loop guard ended them) or run to the
length limit (and those that ran to it repeating themselves: some 6 words three times or more).
The chosen defaults (``BUNDLED_DEFAULTS`` in toolkit/models.py) are the candidate whose visible answers
never hold some 6 words three times, that gets every grounded question and no fewer closed-book ones than
greedy, and, of those, has the fewest answers run to the limit, then the fewest the loop guard ended.
bench/data/quality.json also lists, apart, a question no candidate answers. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, save_report  # noqa: E402  (bench/, the script's own folder)

from toolkit.search import LocalDocsBackend, Searcher  # noqa: E402
from toolkit.service import InferenceService  # noqa: E402
from toolkit.settings import Settings  # noqa: E402

QUESTIONS = json.loads((ROOT / "bench" / "data" / "quality.json").read_text())
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


def repeats(text: str, n: int = 6, times: int = 3) -> bool:
    """A near-loop the guard's exact rule may miss: some run of ``n`` words occurs ``times`` times or more."""
    words = text.lower().split()
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        key = tuple(words[i : i + n])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= times:
            return True
    return False


def correct(text: str, accepted: list[str]) -> bool:
    lowered = text.lower()
    return any(a.lower() in lowered for a in accepted)


def ask_all(service: InferenceService, items: list[dict[str, Any]], params: dict[str, Any], web: bool) -> list[Any]:
    def one(item: dict[str, Any]) -> Any:
        return service.infer(item["q"], web_search=web, max_new_tokens=MAX_NEW_TOKENS, **params)

    with ThreadPoolExecutor(16) as pool:  # the engine batches them
        return list(pool.map(one, items))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", default="", help="comma-separated candidate names (default: all)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    args = parser.parse_args()
    settings = Settings.from_env(dtype=args.dtype, search_provider="none")
    service = InferenceService(settings, searcher=Searcher(LocalDocsBackend(DOCS))).start(progress=False)
    closed, grounded = QUESTIONS["closed_book"], QUESTIONS["grounded"]
    wanted = {c.strip() for c in args.candidates.split(",") if c.strip()}
    rows: list[dict[str, Any]] = []
    greedy_right: set[int] | None = None
    for name, params, sampled in CANDIDATES:
        if wanted and name not in wanted and name != "greedy":
            continue
        runs = []
        for seed in range(args.seeds if sampled else 1):
            p = {**params, "seed": seed} if sampled else params
            answers_closed = ask_all(service, closed, p, web=False)
            answers_grounded = ask_all(service, grounded, p, web=True)
            runs.append((answers_closed, answers_grounded))
        right_closed = [
            sum(correct(a.text, q["a"]) for a, q in zip(c, closed, strict=True)) / len(closed) for c, _ in runs
        ]
        if name == "greedy":
            greedy_right = {
                i for i, (a, q) in enumerate(zip(runs[0][0], closed, strict=True)) if correct(a.text, q["a"])
            }
        assert greedy_right is not None
        on_greedy = [
            sum(correct(c[i].text, closed[i]["a"]) for i in greedy_right) / max(1, len(greedy_right)) for c, _ in runs
        ]
        right_grounded = [
            sum(correct(a.text, q["a"]) for a, q in zip(g, grounded, strict=True)) / len(grounded) for _, g in runs
        ]
        every = [a for c, g in runs for a in (*c, *g)]
        loops = sum(a.finish_reason == "repetition" for a in every) / len(every)
        looping_to_limit = sum(a.finish_reason == "length" and repeats(a.text) for a in every) / len(every)
        thrice = sum(repeats(a.text) for a in every)  # some 6 words three times or more, in the visible answer
        limit = sum(a.finish_reason == "length" for a in every) / len(every)
        rows.append(
            {
                "candidate": name,
                "params": params,
                "runs": len(runs),
                "closed_book_correct": round(sum(right_closed) / len(runs), 3),
                "of_greedy_correct": round(sum(on_greedy) / len(runs), 3),
                "grounded_correct": round(sum(right_grounded) / len(runs), 3),
                "loop_guard_ended": round(loops, 3),
                "loops_to_the_limit": round(looping_to_limit, 3),
                "six_words_thrice": thrice,
                "length_limit": round(limit, 3),
                "wrong_examples": [
                    (q["q"], a.text[:80])
                    for a, q in zip(runs[0][1], grounded, strict=True)
                    if not correct(a.text, q["a"])
                ][:3],
            }
        )
        print(f"{name}: done", flush=True)
    service.close(grace_s=0)
    print(
        f"\nbundled model, {args.dtype}, {len(closed)} closed-book + {len(grounded)} grounded questions, "
        f"{MAX_NEW_TOKENS} new tokens at most; sampled candidates over {args.seeds} seeds"
    )
    header = f"{'candidate':<36}{'closed-book':>12}{'of greedy-right':>16}{'grounded':>10}"
    print(header + f"{'guard ended':>12}{'6 words x3':>11}{'loops to limit':>15}{'long (limit)':>13}")
    for r in rows:
        print(
            f"{r['candidate']:<36}{r['closed_book_correct']:>12.0%}{r['of_greedy_correct']:>16.0%}"
            f"{r['grounded_correct']:>10.0%}{r['loop_guard_ended']:>12.0%}{r['six_words_thrice']:>11}"
            f"{r['loops_to_the_limit']:>15.0%}"
            f"{r['length_limit']:>13.0%}"
        )
    # the rule: every visible answer free of a loop (no 6 words three times), every grounded answer right, and
    # the closed-book ones no fewer than greedy's; of those, the fewest answers run to the limit, then the
    # fewest the loop guard had to end
    greedy_closed = next(r["closed_book_correct"] for r in rows if r["candidate"] == "greedy")
    eligible = [
        r
        for r in rows
        if r["six_words_thrice"] == 0 and r["grounded_correct"] == 1.0 and r["closed_book_correct"] >= greedy_closed
    ]
    chosen = min(eligible, key=lambda r: (r["length_limit"], r["loop_guard_ended"]))["candidate"] if eligible else None
    print(f"chosen by the rule (see the source): {chosen}")
    save_report(
        {
            "machine": machine(),
            "dtype": args.dtype,
            "greedy_right": sorted(greedy_right or ()),
            "rows": rows,
            "chosen": chosen,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
