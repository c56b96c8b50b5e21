"""Engine benchmark: the engine against bare ``model.generate`` in the same run.

    python bench/engine.py [--quick] [--out bench/results/engine.json]

On CPU it uses the bundled default model (SmolLM2-135M-Instruct) and greedy
prompts that ask for long answers; on CUDA it builds a Llama-3.2-1B-shaped
model from a config (random bf16 weights, nothing downloaded) with 64-token
prompts. It prints a table and writes JSON. Compare ratios, not absolute
times: these machines are noisy.
"""

from __future__ import annotations

import argparse
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


def build_cpu_model() -> tuple[Any, Any, list[list[int]], tuple[int, ...]]:
    from toolkit.models import load_model
    from toolkit.settings import Settings

    loaded = load_model(Settings.from_env(), progress=False)
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
    from toolkit.params import GenerationParams

    params = GenerationParams(max_new_tokens=new_tokens, temperature=0)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens, for a smoke run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
    args = parser.parse_args()

    import torch
    from tqdm.auto import tqdm

    from toolkit.engines.local.engine import Engine

    cuda = torch.cuda.is_available()
    model, tokenizer, prompts, eos = build_cuda_model() if cuda else build_cpu_model()
    new_tokens = (32 if args.quick else 128) if cuda else (16 if args.quick else 64)
    ctx = int(model.config.max_position_embeddings)
    engine = Engine(model, tokenizer, eos_token_ids=eos, context_length=ctx, max_batch_size=64, max_queue=256)
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
    engine_run(engine, prompts[:2], 4, concurrent=True)

    steps = tqdm(total=6, desc="engine benchmark", unit="case")
    s, n = bare_generate(model, tokenizer, prompts[:1], new_tokens, eos)
    bare1 = record("bare generate, batch 1", s, n)
    steps.update()
    s, n, _ = engine_run(engine, prompts[:1], new_tokens, concurrent=False)
    eng1 = record("engine, 1 request", s, n)
    steps.update()
    s, n, seq_texts = engine_run(engine, prompts[:16], new_tokens, concurrent=False)
    seq = record("engine, 16 sequential", s, n)
    steps.update()
    for k in (4, 16):
        s, n, texts = engine_run(engine, prompts[:k], new_tokens, concurrent=True)
        record(f"engine, {k} concurrent", s, n, same_text_as_sequential=texts == seq_texts[:k])
        steps.update()
    s, n = bare_generate(model, tokenizer, prompts[:16], new_tokens, eos)
    record("bare generate, 16 rows", s, n)
    steps.update()
    steps.close()
    engine.close()

    base = seq["tokens_per_s"]
    for row in rows:
        row["x_sequential"] = round(row["tokens_per_s"] / base, 2)
    summary: dict[str, Any] = {
        "engine_vs_bare_batch1": round(eng1["tokens_per_s"] / bare1["tokens_per_s"], 3),
        "concurrent16_vs_sequential": next(r["x_sequential"] for r in rows if r["case"] == "engine, 16 concurrent"),
    }
    if not cuda:
        summary["process_start_to_first_token_s"] = round(first_token_latency(), 2)
    summary.update(detok_per_token_us(tokenizer))

    print(f"\n{'case':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'x seq':>8}")
    for row in rows:
        print(
            f"{row['case']:<28}{row['tokens']:>8}{row['seconds']:>10.2f}{row['tokens_per_s']:>10.1f}{row['x_sequential']:>8.2f}"
        )
    for key, value in summary.items():
        print(f"{key}: {value}")

    report = {
        "machine": machine(),
        "model": "Llama-3.2-1B shape, random bf16" if cuda else f"SmolLM2-135M-Instruct (bundled), {model.dtype}",
        "new_tokens": new_tokens,
        "rows": rows,
        "summary": summary,
    }
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
