"""Prefix reuse: a conversation's second turn, with the KV of the first kept (``PREFIX_CACHE_MB``) and without.

    python bench/prefix.py [--rounds 5] [--sources 4] [--out bench/results/prefix.json]

Two services on the bundled model in this process, the same but for ``prefix_cache_mb`` (256, and 0: the
baseline, in the same run). Each round asks, on both, a grounded-size first turn (a system prompt with
``--sources`` made-up source passages, ~300 tokens each, and a question; greedy, 48 new tokens), then the
second turn (that history and a short new message). Rounds use different sources, so every first turn is
cold. Time to first token is the engine's (``timings.first_token_s``).

Targets (the issue's): the second turn's time to first token at most 0.3x the first turn's, with the
prefix kept; and at most 0.5x the second turn's without it. Greedy text of both services is compared.
Prints a table, the CPU it ran on, and writes JSON.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, made_up_words, save_report  # noqa: E402  (bench/, the script's own folder)


def sources(rng: random.Random, n: int) -> str:
    """``n`` made-up passages of ~220 words (about 300 tokens each)."""
    out = []
    for i in range(n):
        words = made_up_words(rng, 220)
        out.append(f"[{i + 1}] Town record {rng.randrange(10_000)}: {words}.")
    return "Answer from these sources.\n\n" + "\n\n".join(out)


def ask(service: Any, system: str, history: list[Any], prompt: str) -> Any:
    from toolkit.params import InferRequest

    request = InferRequest.build(prompt, temperature=0, max_new_tokens=48, system_prompt=system, history=history)
    return service.infer(request)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "prefix.json"))
    args = parser.parse_args()

    from toolkit.params import Turn
    from toolkit.service import InferenceService
    from toolkit.settings import Settings

    base = Settings.from_env()
    services = {}
    for name, mb in (("kept", 256), ("baseline", 0)):
        services[name] = InferenceService(
            Settings(cache_dir=base.cache_dir, store=None, search_provider="none", prefix_cache_mb=mb)
        )
        services[name].start()
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    same = 0
    for r in range(args.rounds):
        system = sources(rng, args.sources)
        first_prompt = f"What does record {r} say about the harbour?"
        for name, service in services.items():
            first = ask(service, system, [], first_prompt)
            history = [Turn("user", first_prompt), Turn("assistant", first.text)]
            second = ask(service, system, history, "And the bridge?")
            rows.append(
                {
                    "round": r,
                    "service": name,
                    "first_prompt_tokens": first.usage.prompt_tokens,
                    "second_prompt_tokens": second.usage.prompt_tokens,
                    "first_ttft_s": first.timings.first_token_s,
                    "second_ttft_s": second.timings.first_token_s,
                    "text": second.text,
                }
            )
        same += rows[-1]["text"] == rows[-2]["text"]
    engine = services["kept"].registry.default.engine.scheduler.prefixes
    for service in services.values():
        service.close()

    def p50(name: str, key: str) -> float:
        return statistics.median(row[key] for row in rows if row["service"] == name)

    kept_first, kept_second = p50("kept", "first_ttft_s"), p50("kept", "second_ttft_s")
    cold_first, cold_second = p50("baseline", "first_ttft_s"), p50("baseline", "second_ttft_s")
    prompt = statistics.median(row["second_prompt_tokens"] for row in rows)
    print(f"\nPrefix reuse on {machine()['cpu']}: {args.rounds} rounds, second turn ~{prompt:.0f} prompt tokens")
    print(f"{'':<28}{'first turn TTFT':>18}{'second turn TTFT':>18}{'ratio':>8}")
    print(
        f"{'kept (PREFIX_CACHE_MB=256)':<28}{kept_first:>17.3f}s{kept_second:>17.3f}s{kept_second / kept_first:>8.2f}"
    )
    print(f"{'baseline (0)':<28}{cold_first:>17.3f}s{cold_second:>17.3f}s{cold_second / cold_first:>8.2f}")
    targets = {
        "second / first turn, kept <= 0.3": (kept_second / kept_first, kept_second / kept_first <= 0.3),
        "second turn kept / baseline <= 0.5": (kept_second / cold_second, kept_second / cold_second <= 0.5),
    }
    for label, (value, ok) in targets.items():
        print(f"  {label}: {value:.2f} {'PASS' if ok else 'FAIL'}")
    print(f"  greedy second turns equal to the baseline's: {same} of {args.rounds}")
    print(f"  kept: {len(engine)} entries, {engine.bytes / 2**20:.1f} MiB, {engine.reused_tokens} tokens reused")
    save_report(
        {
            "machine": machine(),
            "rounds": rows,
            "targets": {k: {"value": round(v, 3), "pass": ok} for k, (v, ok) in targets.items()},
            "same_text": same,
            "kept_mib": round(engine.bytes / 2**20, 1),
        },
        args.out,
    )
    return 0 if all(ok for _, ok in targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
