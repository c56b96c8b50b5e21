"""The remote engine's overhead, and the engines side by side on this machine.

    python bench/remote.py [--rounds 3] [--overhead-rounds 6]
    (needs make vllm-setup; llama.cpp's server is optional)

1. **Overhead**: the same 16 concurrent greedy requests of 64 new tokens ("Write a short story
   about a robot number i"), straight to vLLM with the official ``openai`` client, and through the
   toolkit (``InferenceService`` with the vLLM model of a models file), interleaved over rounds.
   Targets: aggregate tokens/s through the toolkit at least 0.95x straight; added time to first
   token at most 15 ms at p50.
2. **Side by side**, on the same prompts, at 1 and 16 concurrent: the local engine (the bundled
   model, ``DTYPE=auto``, float32 on CPU), vLLM-CPU (float32, its compiled default) and, when ``.venv-llamacpp`` has
   ``llama-cpp-python[server]``, llama.cpp's server on the bundled Q4_1 GGUF itself.

Prints tables and writes bench/results/remote.json. Ratios, not absolute times: the machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engines"))

from common import machine, save_report  # noqa: E402  (bench/, the script's own folder)
from vllm_server import start_vllm  # noqa: E402  (tests/engines: one way to start vLLM)

from toolkit.models import bundled_gguf_path, load_model  # noqa: E402
from toolkit.modelsfile import ModelConfig  # noqa: E402
from toolkit.results import Done, Token  # noqa: E402
from toolkit.service import InferenceService  # noqa: E402
from toolkit.settings import Settings  # noqa: E402

NEW_TOKENS = 64
PROMPTS = [f"Write a short story about a robot number {i}." for i in range(16)]
LLAMACPP_PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
# AVX-512 (with VNNI and BF16) but no AMX: GGML_NATIVE's AMX build dies of an illegal instruction here
LLAMACPP_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
    "-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
)


async def straight(base_url: str, model: str, prompts: list[str]) -> tuple[int, float, list[float]]:
    """(completion tokens, seconds, time to first token of each) with the openai client, concurrently."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)

    async def one(prompt: str) -> tuple[int, float]:
        start = time.perf_counter()
        first = None
        tokens = 0
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=NEW_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        # llama.cpp's server sends no usage when streaming; it sends one chunk per token
        return tokens or chunks, first if first is not None else float("nan")

    start = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - start
    await client.close()
    return sum(r[0] for r in results), seconds, [r[1] for r in results]


async def through(service: InferenceService, model: str | None, prompts: list[str]) -> tuple[int, float, list[float]]:
    """The same through the toolkit's service (in process: the service and engine layers, no GraphQL)."""

    async def one(prompt: str) -> tuple[int, float]:
        start = time.perf_counter()
        first = None
        async for event in service.astream(prompt, model=model, temperature=0, max_new_tokens=NEW_TOKENS):
            if isinstance(event, Token) and first is None:
                first = time.perf_counter() - start
            if isinstance(event, Done):
                return event.result.usage.completion_tokens, first if first is not None else float("nan")
        raise AssertionError("no Done")

    start = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    return sum(r[0] for r in results), time.perf_counter() - start, [r[1] for r in results]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llamacpp(workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    if not LLAMACPP_PYTHON.exists():
        return None
    port = free_port()
    command = [str(LLAMACPP_PYTHON), "-m", "llama_cpp.server", "--model", str(bundled_gguf_path())]
    command += ["--model_alias", "smollm2", "--chat_format", "chatml", "--n_ctx", "2048", "--port", str(port)]
    log = (workdir / "llamacpp.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    process.kill()
    return None


def best_rates(run: Any, rounds: int, *, warm: bool = False) -> dict[str, float]:
    """tokens/s at 1 and 16 concurrent, the best of ``rounds``: ``run(prompts)`` -> (tokens, seconds, firsts)."""
    if warm:
        run(PROMPTS[:2])
    return {str(n): round(max(rate(t, s) for t, s, _ in (run(PROMPTS[:n]) for _ in range(rounds))), 1) for n in (1, 16)}


LLAMACPP_NAME = "llama.cpp server (the Q4_1 GGUF)"
VLLM_NAME = "vLLM-CPU 0.32 (float32, compiled)"


def llamacpp_rates(workdir: Path, rounds: int, *, warm: bool = False) -> tuple[dict[str, float] | None, str | None]:
    """llama.cpp's server beside the others, when it is installed: (its rates, or None; why it failed)."""
    llama = start_llamacpp(workdir)
    if llama is None:
        return None, None
    process, url = llama
    try:
        return best_rates(lambda ps: asyncio.run(straight(url, "smollm2", ps)), rounds, warm=warm), None
    except openai.APIConnectionError:  # a build for another CPU dies of an illegal instruction, saying nothing
        return None, f"the server died (exit {process.wait(10)}); see {workdir / 'llamacpp.log'}"
    finally:
        process.terminate()


def rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side-by-side measure (best of)")
    parser.add_argument("--overhead-only", action="store_true", help="skip the side-by-side measures")
    parser.add_argument("--overhead-rounds", type=int, default=6, help="interleaved rounds of the overhead measure")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    settings = Settings.from_env(search_provider="none")
    loaded = load_model(settings, progress=False)  # converts the GGUF once, if needed: vLLM loads that folder
    print("starting vLLM-CPU (float32, compiled: about 90 s) ...", flush=True)
    vllm = start_vllm(loaded.path, workdir, compiled=True)
    configs = [
        ModelConfig(name="local"),
        ModelConfig("vllm", engine="openai", base_url=vllm.base_url, served_model="smollm2"),
    ]
    service = InferenceService(settings, models=configs, loaded=loaded).start(progress=False)
    service.wait_ready(timeout=60, model="vllm")
    report: dict[str, Any] = {"machine": machine(), "new_tokens": NEW_TOKENS}
    try:
        # warm up both paths on every prompt (vLLM caches prompt prefixes: both then find them cached)
        asyncio.run(straight(vllm.base_url, "smollm2", PROMPTS))
        asyncio.run(through(service, "vllm", PROMPTS))
        direct: list[tuple[int, float, list[float]]] = []
        toolkit: list[tuple[int, float, list[float]]] = []
        for i in range(args.overhead_rounds):  # interleaved, each path first every other round
            pair = [
                lambda: direct.append(asyncio.run(straight(vllm.base_url, "smollm2", PROMPTS))),
                lambda: toolkit.append(asyncio.run(through(service, "vllm", PROMPTS))),
            ]
            for measure in pair if i % 2 == 0 else pair[::-1]:
                measure()
        best_direct = max(rate(t, s) for t, s, _ in direct)
        best_toolkit = max(rate(t, s) for t, s, _ in toolkit)
        # a request's first token at 16 concurrent depends on its place in vLLM's batch: the added time is
        # the median over rounds of (the toolkit's median first token - straight's) in the same round
        ttft_direct = statistics.median(statistics.median(f) for _, _, f in direct) * 1000
        ttft_toolkit = statistics.median(statistics.median(f) for _, _, f in toolkit) * 1000
        added_ttft = statistics.median(
            statistics.median(t[2]) - statistics.median(d[2]) for d, t in zip(direct, toolkit, strict=True)
        )
        overhead = {
            "straight_tokens_per_s": round(best_direct, 1),
            "through_toolkit_tokens_per_s": round(best_toolkit, 1),
            "ratio": round(best_toolkit / best_direct, 3),
            "ttft_p50_straight_ms": round(ttft_direct, 1),
            "ttft_p50_through_ms": round(ttft_toolkit, 1),
            "added_ttft_p50_ms": round(added_ttft * 1000, 1),
        }
        report["overhead"] = overhead
        print(f"\n16 concurrent x {NEW_TOKENS} tokens to vLLM-CPU, {args.overhead_rounds} interleaved rounds")
        print(f"{'path':<32}{'tokens/s':>10}{'TTFT p50 ms':>14}")
        print(f"{'straight (openai client)':<32}{best_direct:>10.1f}{ttft_direct:>14.1f}")
        print(f"{'through the toolkit':<32}{best_toolkit:>10.1f}{ttft_toolkit:>14.1f}")
        added = overhead["added_ttft_p50_ms"]
        print(f"ratio {overhead['ratio']:.3f} (target >= 0.95); added TTFT {added} ms (target <= 15)")

        if args.overhead_only:
            return finish(report)
        rows: dict[str, dict[str, float]] = {}
        local_name = f"the toolkit's local engine ({loaded.dtype})"
        rows[local_name] = best_rates(lambda ps: asyncio.run(through(service, "local", ps)), args.rounds)
        rows[VLLM_NAME] = best_rates(lambda ps: asyncio.run(straight(vllm.base_url, "smollm2", ps)), args.rounds)
        vllm.stop()
        llama, failed = llamacpp_rates(workdir, args.rounds)
        if llama is not None:
            rows[LLAMACPP_NAME] = llama
        if failed:
            report["llamacpp_failed"] = failed
            print(f"\nllama.cpp: {failed}")
        report["side_by_side_tokens_per_s"] = rows
        print(f"\nside by side, greedy, {NEW_TOKENS} new tokens, tokens/s (best of {args.rounds})")
        print(f"{'engine':<40}{'1 request':>12}{'16 concurrent':>16}")
        for name, row in rows.items():
            print(f"{name:<40}{row['1']:>12.1f}{row['16']:>16.1f}")
        local, vllm_row = rows[local_name], rows[VLLM_NAME]
        report["local_vs_vllm"] = {n: round(local[n] / vllm_row[n], 3) for n in ("1", "16")}
        print(f"local engine / vLLM-CPU: {report['local_vs_vllm']['1']}x at 1, {report['local_vs_vllm']['16']}x at 16")
        if llama is None and not failed:
            print(
                "(llama.cpp's server is not installed: python3 -m venv .venv-llamacpp && "
                f"CMAKE_ARGS='{LLAMACPP_CMAKE_ARGS}' .venv-llamacpp/bin/pip install "
                "'llama-cpp-python[server]==0.3.36', "
                "about 9 minutes to build)"
            )
    finally:
        vllm.stop()
        service.close(grace_s=0)
    return finish(report)


def finish(report: dict[str, Any]) -> int:
    save_report(report, ROOT / "bench" / "results" / "remote.json")
    ok = report["overhead"]["ratio"] >= 0.95 and report["overhead"]["added_ttft_p50_ms"] <= 15
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
