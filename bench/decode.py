"""Decode with the running batch's KV in per-row slots (``slots.py``) against the left-padded batch, same run.

    python bench/decode.py [--rounds 3] [--new-tokens 64] [--kinds slots,padded] [--out bench/results/decode.json]

Two engines (``Scheduler``) over one bundled model in this process, the same but for their running batch:
per-row slots (what the engine uses: a row joins into a slot of its own, each row attends over its own
length) and the baseline, one left-padded batch (``kvbatch.py``, its cache appended in place: every join
re-lays every row out to the new width). Cases: 1 request and 16 concurrent, each with a short
prompt (~40 tokens) and with a grounded-size one (~600 tokens of made-up sources before the question);
greedy, ``--new-tokens`` each. Rounds alternate the engines; a ratio is the median of the rounds' ratios.
Greedy texts of the two are compared. Then each kind alone in a process of its own, 16 concurrent
grounded prompts: peak resident memory. Prints a table and the CPU, and writes JSON.

``--same-text 50``: only that, 50 varied prompts each held to the eager and to the compiled path in the same
batch company (``decode=``, as a replay is held), counting the greedy texts that come out the same.

``--kinds compiled,slots``: the decode step compiled (``COMPILE_DECODE``, ``compiled.py``; the bench waits for
its warm-up, and says which shapes it kept) against the eager one, both over slots.
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


KINDS = ("slots", "padded")  # the engine's running batch; the baseline (--kinds: another pair)


def make(loaded: Any, name: str) -> Any:
    from toolkit.engines.local.engine import Scheduler

    return Scheduler(
        loaded.model,
        loaded.tokenizer,
        eos_token_ids=loaded.eos_token_ids,
        context_length=loaded.context_length,
        slots=name != "padded",
        compile_decode=name == "compiled",
    )


def child(name: str, new_tokens: int) -> int:
    """One engine alone in this process (``--rss``'s child): 16 concurrent grounded prompts; prints the
    peak resident memory after loading and after the run, in MiB."""
    import resource

    from toolkit.models import load_model
    from toolkit.settings import Settings

    loaded = load_model(Settings.from_env(dtype="float32"), progress=False)
    engine = make(loaded, name)
    if engine.compiled is not None:
        engine.compiled.wait()
    loaded_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine_run(engine, prompts(loaded.tokenizer, True, 16), new_tokens, concurrent=True)
    engine.close()
    print(f"RSS {loaded_mib:.0f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    return 0


def rss(new_tokens: int, kinds: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Peak RSS of each kind of cache, each in a process of its own."""
    import subprocess

    out = {}
    for name in kinds:
        command = [sys.executable, __file__, "--child", name, "--new-tokens", str(new_tokens)]
        line = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split("RSS ")[-1]
        loaded_mib, peak_mib = (float(x) for x in line.split())
        out[name] = {"after_load_mib": loaded_mib, "peak_mib": peak_mib}
    return out


FORMS = ("Write about {}.", "Explain {} to a child.", "List three facts about {}.")


def same_text(loaded: Any, n: int, new_tokens: int) -> dict[str, Any]:
    """``n`` greedy prompts (short and grounded, varied) through one engine with ``COMPILE_DECODE``, each both
    ways in the same batch company: 16 at a time held to the eager path, then the same 16 held to the compiled
    one (a replay's hold, ``decode=``; the engine runs no step with both). Counts the texts that are the same."""
    import threading

    from toolkit.params import filled

    tokenizer = loaded.tokenizer
    rng = random.Random(11)
    batch = []
    for i in range(n):
        topic, form = TOPICS[i % len(TOPICS)], FORMS[i // len(TOPICS) % len(FORMS)]
        system = f"Answer from these sources.\n\n{made_up_words(rng, 420)}." if i % 3 == 2 else "You are helpful."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": form.format(topic)}]
        batch.append(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    engine = make(loaded, "compiled")
    engine.compiled.wait()
    print(f"compiled decode step: {engine.compiled.state}; the warm-up kept {engine.compiled.compiled or 'no shape'}")
    params = filled(max_new_tokens=new_tokens, temperature=0)
    texts: dict[tuple[str, int], str] = {}

    def one(path: str, i: int) -> None:
        finished = engine.generate(batch[i], params, decode=path)
        assert finished.extra["decode"] == path, finished.extra
        texts[(path, i)] = finished.text

    for start in range(0, n, 16):
        threads = [
            threading.Thread(target=one, args=(path, i))
            for path in ("eager", "compiled")
            for i in range(start, min(start + 16, n))
        ]
        for t in threads:  # in order: the eager ones queue first, the compiled ones wait for them to finish
            t.start()
            t.join(0.05)
        for t in threads:
            t.join()
    engine.close()
    differ = [i for i in range(n) if texts[("eager", i)] != texts[("compiled", i)]]
    print(f"greedy text, compiled vs eager, {n} prompts ({new_tokens} new tokens): the same in {n - len(differ)}")
    for i in differ:
        a, b = texts[("eager", i)], texts[("compiled", i)]
        k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
        print(f"  prompt {i}: apart from character {k}: eager {a[k : k + 40]!r} / compiled {b[k : k + 40]!r}")
    return {"prompts": n, "new_tokens": new_tokens, "same": n - len(differ), "differ": differ}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode.json"))
    parser.add_argument("--kinds", default=",".join(KINDS), help="two of slots, padded, compiled: measured, baseline")
    parser.add_argument("--same-text", type=int, default=0, help="only: N prompts compiled vs eager, same text?")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one engine alone, for the memory figures
    args = parser.parse_args()

    if args.child:
        return child(args.child, args.new_tokens)
    from tqdm.auto import tqdm

    from toolkit.models import load_model
    from toolkit.settings import Settings

    loaded = load_model(Settings.from_env(dtype="float32"), progress=False)
    if args.same_text:
        save_report({"machine": machine(), "same_text": same_text(loaded, args.same_text, args.new_tokens)}, args.out)
        return 0
    tokenizer = loaded.tokenizer
    kinds = tuple(args.kinds.split(","))
    assert len(kinds) == 2 and set(kinds) <= {"slots", "padded", "compiled"}, "--kinds: two of slots, padded, compiled"
    engines = {name: make(loaded, name) for name in kinds}
    cases = {
        "1 request, short prompt": prompts(tokenizer, False, 1),
        "1 request, grounded prompt": prompts(tokenizer, True, 1),
        "16 concurrent, short prompts": prompts(tokenizer, False, 16),
        "16 concurrent, grounded prompts": prompts(tokenizer, True, 16),
    }

    for engine in engines.values():  # warm-up
        engine_run(engine, cases["16 concurrent, short prompts"][:2], 4, concurrent=True)
        if engine.compiled is not None:
            engine.compiled.wait()
            print(f"compiled decode step: {engine.compiled.state}, serves {engine.compiled.compiled or 'no shape'}")
            print(f"  warm-up (eager ms, compiled ms): {engine.compiled.timings}")
    runs: dict[tuple[str, str], list[tuple[float, int, list[str]]]] = {}
    bar = tqdm(total=args.rounds * len(cases) * 2, desc="decode benchmark", unit="run")
    for _ in range(args.rounds):
        for case, batch in cases.items():
            for name in kinds if _ % 2 == 0 else kinds[::-1]:
                result = engine_run(engines[name], batch, args.new_tokens, concurrent=True)
                runs.setdefault((case, name), []).append(result)
                bar.update()
    bar.close()
    for engine in engines.values():
        engine.close()

    rows = []
    for case, batch in cases.items():
        mine, base = runs[(case, kinds[0])], runs[(case, kinds[1])]
        ratio = statistics.median((t1 / s1) / (t0 / s0) for (s1, t1, _), (s0, t0, _) in zip(mine, base, strict=True))
        rows.append(
            {
                "case": case,
                "prompt_tokens": round(statistics.mean(len(p) for p in batch)),
                "kinds": list(kinds),
                "tok_s": round(statistics.median(t / s for s, t, _ in mine), 1),
                "baseline_tok_s": round(statistics.median(t / s for s, t, _ in base), 1),
                "ratio": round(ratio, 2),
                "same_greedy_text": all(a[2] == b[2] for a, b in zip(mine, base, strict=True)),
            }
        )
    print(f"\n{machine()['cpu']}, {args.rounds} rounds, {args.new_tokens} new tokens, float32")
    print(f"| case | prompt tokens | {kinds[0]} tok/s | {kinds[1]} tok/s | ratio | same greedy text |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['prompt_tokens']} | {r['tok_s']} | {r['baseline_tok_s']} | "
            f"{r['ratio']:.2f}x | {r['same_greedy_text']} |"
        )
    memory = rss(args.new_tokens, kinds)
    mine, base = memory[kinds[0]]["peak_mib"], memory[kinds[1]]["peak_mib"]
    print(f"peak RSS, 16 concurrent grounded prompts, a process each: {kinds[0]} {mine:.0f} MiB, ")
    print(f"{kinds[1]} {base:.0f} MiB ({mine / base:.2f}x; after loading: {memory[kinds[0]]['after_load_mib']:.0f})")
    report = {"machine": machine(), "rounds": args.rounds, "new_tokens": args.new_tokens, "cases": rows}
    save_report({**report, "memory": memory}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
