"""GraphQL server benchmark: what the server adds over the in-process service, in the same run.

    python bench/server.py [--requests 50] [--out bench/results/server.json]

Default model, greedy, 16 new tokens. Measures
- the latency the GraphQL mutation adds (p50/p99 over N paired requests; target p50 < 5 ms), and
  the OpenAI-compatible endpoint's against the mutation's, both posted by the same plain HTTP client
  (target: at most the mutation's); the official ``openai`` client's, for information,
- 16 concurrent mutations vs 16 sequential ones, aggregate tokens/s (target >= 4x),
- time to first token over the subscription vs in-process streaming (target < 10 ms more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import save_report  # noqa: E402  (bench/, the script's own folder)
from tornado.netutil import bind_sockets  # noqa: E402

from server.app import make_app, make_http_server  # noqa: E402
from server.config import ServerSettings  # noqa: E402
from toolkit.client import PROTOCOL, STREAM, RemoteService, Subscription, variables  # noqa: E402
from toolkit.params import InferRequest  # noqa: E402
from toolkit.results import Done, Token  # noqa: E402
from toolkit.service import InferenceService  # noqa: E402
from toolkit.settings import Settings  # noqa: E402

PROMPTS = [f"Write one sentence about the number {i}." for i in range(64)]


def start(service: InferenceService) -> str:
    loop = asyncio.new_event_loop()
    box: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        sockets = bind_sockets(0, "127.0.0.1")
        settings = ServerSettings(port=0, rate_burst=100_000, rate_per_minute=1e9)
        make_http_server(make_app(service, settings)).add_sockets(sockets)
        box["port"] = sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return f"http://127.0.0.1:{box['port']}/graphql"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


GREEDY16 = {"temperature": 0, "maxNewTokens": 16}


def chat_body(prompt: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 16}


RAW_MUTATION = """mutation ($p: String!, $g: GenerationInput) {
  infer(prompt: $p, params: $g) { text timings { totalSeconds } } }"""


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same plain client for both endpoints: what each adds, not what a client library adds."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as answer:
        return dict(json.loads(answer.read()))


def request(i: int, n: int = 16) -> InferRequest:
    return InferRequest.build(PROMPTS[i % len(PROMPTS)], temperature=0, max_new_tokens=n)


async def ws_first_token(url: str, req: InferRequest) -> tuple[float, float]:
    """(seconds from subscribe to the first TOKEN, the engine's own first-token time from DONE)."""
    from websockets.asyncio.client import connect

    sub = Subscription(STREAM, variables(req))
    async with connect("ws" + url[4:], subprotocols=[PROTOCOL], proxy=None) as ws:  # type: ignore[list-item]
        await ws.send(sub.init())
        sub.acknowledged(await ws.recv())
        started = time.perf_counter()
        await ws.send(sub.subscribe())
        first, engine = None, None
        async for raw in ws:
            event = sub.receive(raw, lambda _: None)
            if isinstance(event, Token) and first is None:
                first = time.perf_counter() - started
            if isinstance(event, Done):
                engine = event.result.timings.first_token_s
            if sub.done:
                break
        assert first is not None and engine is not None
        return first, engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "server.json"))
    args = parser.parse_args()

    service = InferenceService(Settings.from_env(max_batch_size=16)).start(progress=False)
    url = start(service)
    remote = RemoteService(url)
    for i in range(3):  # warm-up
        service.infer(request(i))
        remote.infer(request(i))

    import openai

    chat = openai.OpenAI(base_url=url.removesuffix("/graphql") + "/v1", api_key="none", max_retries=0)
    model = service.registry.default.name
    added, added_openai = [], []
    raw_graphql, raw_openai = [], []
    base = url.removesuffix("/graphql")
    for i in range(args.requests):
        prompt = request(i).prompt
        pair = [
            ("graphql", url, {"query": RAW_MUTATION, "variables": {"p": prompt, "g": GREEDY16}}),
            ("openai", base + "/v1/chat/completions", {"model": model, **chat_body(prompt)}),
        ]
        for kind, target, payload in pair if i % 2 == 0 else pair[::-1]:  # each first every other time
            t0 = time.perf_counter()
            body = post(target, payload)
            spent = time.perf_counter() - t0
            if kind == "graphql":
                raw_graphql.append((spent - body["data"]["infer"]["timings"]["totalSeconds"]) * 1000)
            else:
                raw_openai.append((spent - body["timings"]["totalSeconds"]) * 1000)
    for i in range(args.requests):
        t0 = time.perf_counter()
        local = service.infer(request(i))
        t1 = time.perf_counter()
        there = remote.infer(request(i))
        t2 = time.perf_counter()
        answer = chat.chat.completions.create(
            model=model, messages=[{"role": "user", "content": request(i).prompt}], temperature=0, max_tokens=16
        )
        t3 = time.perf_counter()
        assert there.text == local.text == answer.choices[0].message.content
        # what each path adds around the engine's own time (which the result reports), so that the
        # jitter of generating 16 tokens cancels out of the difference
        around_local = (t1 - t0) - local.timings.total_s
        around_remote = (t2 - t1) - there.timings.total_s
        around_openai = (t3 - t2) - answer.model_extra["timings"]["totalSeconds"]
        added.append((around_remote - around_local) * 1000)
        added_openai.append((around_openai - around_local) * 1000)

    health = []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        remote.health()
        health.append((time.perf_counter() - t0) * 1000)

    def run_all(concurrent: bool) -> tuple[float, int]:
        results: list[Any] = [None] * 16

        def one(i: int) -> None:
            results[i] = remote.infer(request(i))

        started = time.perf_counter()
        if concurrent:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i in range(16):
                one(i)
        return time.perf_counter() - started, sum(r.usage.completion_tokens for r in results)

    seq_s, seq_n = run_all(False)
    con_s, con_n = run_all(True)

    local_ttft, ws_ttft, added_ttft = [], [], []
    for i in range(20):
        started = time.perf_counter()
        first = None
        for event in service.stream(request(i)):
            if isinstance(event, Token) and first is None:
                first = time.perf_counter() - started
        assert first is not None
        local_engine = event.result.timings.first_token_s  # type: ignore[union-attr]
        remote_first, remote_engine = asyncio.run(ws_first_token(url, request(i)))
        local_ttft.append(first)
        ws_ttft.append(remote_first)
        # what each path adds around the engine's own time to first token (cancels the model's jitter)
        added_ttft.append(((remote_first - remote_engine) - (first - local_engine)) * 1000)
    service.close(grace_s=1)

    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "new_tokens": 16,
        "mutation_added_latency_ms": {
            "p50": round(pct(added, 0.5), 2),
            "p99": round(pct(added, 0.99), 2),
            "n": len(added),
            "target_p50": 5,
        },
        "same_client_round_trip_beyond_the_engine_ms": {
            "graphql_mutation_p50": round(pct(raw_graphql, 0.5), 2),
            "openai_endpoint_p50": round(pct(raw_openai, 0.5), 2),
            "n": len(raw_openai),
            "target": "the OpenAI endpoint at most the mutation",
        },
        "official_openai_client_added_latency_ms": {
            "p50": round(pct(added_openai, 0.5), 2),
            "p99": round(pct(added_openai, 0.99), 2),
            "n": len(added_openai),
        },
        "health_round_trip_ms": {"p50": round(pct(health, 0.5), 2), "p99": round(pct(health, 0.99), 2)},
        "throughput": {
            "sequential_tokens_per_s": round(seq_n / seq_s, 1),
            "concurrent16_tokens_per_s": round(con_n / con_s, 1),
            "ratio": round((con_n / con_s) / (seq_n / seq_s), 2),
            "target_ratio": 4,
        },
        "first_token_ms": {
            "in_process_median": round(statistics.median(local_ttft) * 1000, 1),
            "subscription_median": round(statistics.median(ws_ttft) * 1000, 1),
            "added_median": round(statistics.median(added_ttft), 1),
            "target_added": 10,
        },
    }
    lat, thr, ttft = report["mutation_added_latency_ms"], report["throughput"], report["first_token_ms"]
    print(f"\n{'measure':<52}{'value':>12}{'target':>10}")
    print(f"{'mutation: added latency p50 (ms)':<52}{lat['p50']:>12.2f}{'< 5':>10}")
    print(f"{'mutation: added latency p99 (ms)':<52}{lat['p99']:>12.2f}{'':>10}")
    same = report["same_client_round_trip_beyond_the_engine_ms"]
    print(f"{'same plain client, beyond the engine: mutation p50 (ms)':<52}{same['graphql_mutation_p50']:>12.2f}")
    oa_p50 = same["openai_endpoint_p50"]
    print(f"{'same plain client: /v1/chat/completions p50 (ms)':<52}{oa_p50:>12.2f}{'<= mutation':>10}")
    official = report["official_openai_client_added_latency_ms"]["p50"]
    print(f"{'the official openai client adds p50 (ms)':<52}{official:>12.2f}{'':>10}")
    floor = report["health_round_trip_ms"]["p50"]
    print(f"{'health query round trip p50 (ms): the transport floor':<52}{floor:>12.2f}{'':>10}")
    print(f"{'16 sequential mutations (tokens/s)':<52}{thr['sequential_tokens_per_s']:>12.1f}{'':>10}")
    print(f"{'16 concurrent mutations (tokens/s)':<52}{thr['concurrent16_tokens_per_s']:>12.1f}{'':>10}")
    print(f"{'concurrent / sequential':<52}{thr['ratio']:>12.2f}{'>= 4':>10}")
    print(f"{'first token in-process, median (ms)':<52}{ttft['in_process_median']:>12.1f}{'':>10}")
    print(f"{'first token over the subscription, median (ms)':<52}{ttft['subscription_median']:>12.1f}{'':>10}")
    print(f"{'subscription adds (ms)':<52}{ttft['added_median']:>12.1f}{'< 10':>10}")
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
