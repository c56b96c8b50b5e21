"""Decode steps with the KV cache appended in place (``kvroom.py``) against concatenation, same run.

    python bench/decode.py [--rounds 3] [--new-tokens 64] [--out bench/results/decode.json]

Two engines (``Scheduler``) over one bundled model in this process, the same but for their KV cache layers:
``RoomyLayer`` (what the engine uses) and a baseline that copies its whole cache at every step, as
transformers' ``DynamicLayer`` concatenation does. Cases: 1 request and 16 concurrent, each with a short
prompt (~40 tokens) and with a grounded-size one (~600 tokens of made-up sources before the question);
greedy, ``--new-tokens`` each. Rounds alternate the engines; a ratio is the median of the rounds' ratios.
Greedy texts of the two are compared. Then each kind alone in a process of its own, 16 concurrent
grounded prompts: peak resident memory. Prints a table and the CPU, and writes JSON.
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

from common import TOPICS, machine, made_up_words, save_report  # noqa: E402  (bench/, the script's own folder)
from engine import engine_run  # noqa: E402


def prompts(tokenizer: Any, grounded: bool, n: int) -> list[list[int]]:
    rng = random.Random(7)
    out = []
    for topic in (TOPICS * 2)[:n]:
        system = f"Answer from these sources.\n\n{made_up_words(rng, 420)}." if grounded else "You are helpful."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Write about {topic}."}]
        out.append(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    return out


def using(name: str) -> None:
    """Make the engine's prefill build ``name``'s cache layers: "in place" (the engine's own) or
    "concatenating" (the baseline: a new buffer at every step, the whole cache copied, as concatenation)."""
    import toolkit.engines.local.prefill as prefill
    from toolkit.engines.local.kvroom import RoomyLayer, roomy_cache

    class Concatenating(RoomyLayer):
        def _in_place(self, length: int, states: Any) -> bool:
            return False

    def concatenating_cache(config: Any) -> Any:
        cache = roomy_cache(config)
        cache.layers = [Concatenating() if type(layer) is RoomyLayer else layer for layer in cache.layers]
        return cache

    prefill.roomy_cache = roomy_cache if name == "in place" else concatenating_cache  # type: ignore[attr-defined]


def child(name: str, new_tokens: int) -> int:
    """One engine alone in this process (``--rss``'s child): 16 concurrent grounded prompts; prints the
    peak resident memory after loading and after the run, in MiB."""
    import resource

    from toolkit.engines.local.engine import Scheduler
    from toolkit.models import load_model
    from toolkit.settings import Settings

    using(name)
    loaded = load_model(Settings.from_env(dtype="float32"), progress=False)
    engine = Scheduler(
        loaded.model, loaded.tokenizer, eos_token_ids=loaded.eos_token_ids, context_length=loaded.context_length
    )
    loaded_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine_run(engine, prompts(loaded.tokenizer, True, 16), new_tokens, concurrent=True)
    engine.close()
    print(f"RSS {loaded_mib:.0f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    return 0


def rss(new_tokens: int) -> dict[str, dict[str, float]]:
    """Peak RSS of each kind of cache, each in a process of its own."""
    import subprocess

    out = {}
    for name in ("in place", "concatenating"):
        command = [sys.executable, __file__, "--child", name, "--new-tokens", str(new_tokens)]
        line = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split("RSS ")[-1]
        loaded_mib, peak_mib = (float(x) for x in line.split())
        out[name] = {"after_load_mib": loaded_mib, "peak_mib": peak_mib}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one engine alone, for the memory figures
    args = parser.parse_args()

    if args.child:
        return child(args.child, args.new_tokens)
    from tqdm.auto import tqdm

    from toolkit.engines.local.engine import Scheduler
    from toolkit.models import load_model
    from toolkit.settings import Settings

    loaded = load_model(Settings.from_env(dtype="float32"), progress=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    engines = {
        name: Scheduler(model, tokenizer, eos_token_ids=loaded.eos_token_ids, context_length=loaded.context_length)
        for name in ("in place", "concatenating")
    }
    cases = {
        "1 request, short prompt": prompts(tokenizer, False, 1),
        "1 request, grounded prompt": prompts(tokenizer, True, 1),
        "16 concurrent, short prompts": prompts(tokenizer, False, 16),
        "16 concurrent, grounded prompts": prompts(tokenizer, True, 16),
    }

    for name, engine in engines.items():  # warm-up
        using(name)
        engine_run(engine, cases["16 concurrent, short prompts"][:2], 4, concurrent=True)
    runs: dict[tuple[str, str], list[tuple[float, int, list[str]]]] = {}
    bar = tqdm(total=args.rounds * len(cases) * 2, desc="decode benchmark", unit="run")
    for _ in range(args.rounds):
        for case, batch in cases.items():
            for name in ("in place", "concatenating") if _ % 2 == 0 else ("concatenating", "in place"):
                using(name)
                result = engine_run(engines[name], batch, args.new_tokens, concurrent=True)
                runs.setdefault((case, name), []).append(result)
                bar.update()
    bar.close()
    using("in place")
    for engine in engines.values():
        engine.close()

    rows = []
    for case, batch in cases.items():
        mine, base = runs[(case, "in place")], runs[(case, "concatenating")]
        ratio = statistics.median((t1 / s1) / (t0 / s0) for (s1, t1, _), (s0, t0, _) in zip(mine, base, strict=True))
        rows.append(
            {
                "case": case,
                "prompt_tokens": round(statistics.mean(len(p) for p in batch)),
                "in_place_tok_s": round(statistics.median(t / s for s, t, _ in mine), 1),
                "concatenating_tok_s": round(statistics.median(t / s for s, t, _ in base), 1),
                "ratio": round(ratio, 2),
                "same_greedy_text": all(a[2] == b[2] for a, b in zip(mine, base, strict=True)),
            }
        )
    print(f"\n{machine()['cpu']}, {args.rounds} rounds, {args.new_tokens} new tokens, float32")
    print("| case | prompt tokens | in place tok/s | concatenating tok/s | ratio | same greedy text |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['prompt_tokens']} | {r['in_place_tok_s']} | {r['concatenating_tok_s']} | "
            f"{r['ratio']:.2f}x | {r['same_greedy_text']} |"
        )
    memory = rss(args.new_tokens)
    mine, base = memory["in place"]["peak_mib"], memory["concatenating"]["peak_mib"]
    print(f"peak RSS, 16 concurrent grounded prompts, a process each: in place {mine:.0f} MiB, ")
    print(
        f"concatenating {base:.0f} MiB ({mine / base:.2f}x; after loading: {memory['in place']['after_load_mib']:.0f})"
    )
    report = {"machine": machine(), "rounds": args.rounds, "new_tokens": args.new_tokens, "cases": rows}
    save_report({**report, "memory": memory}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
