"""Overload and soak: the real server as a child process, the bundled model, many clients on loopback.

1. **Overload**: twice the server's capacity (MAX_BATCH_SIZE running + MAX_QUEUE waiting) of clients
   send short requests back to back for 30 s, a quarter each over GraphQL HTTP, a GraphQL WebSocket
   subscription, ``/v1/chat/completions`` and ``/v1/chat/completions`` streamed. Every request is
   accepted (and answered) or rejected with 503 OVERLOADED at once (the clients then wait its
   Retry-After, as real ones do); none is lost (no answer, a reset, a timeout) and none gets an
   unexpected status. Targets: 0 lost, 0 unexpected, p99 rejection time under 100 ms.
2. **Soak**: 1,000 mixed requests (infer, stream over WebSocket, ``/v1`` plain and streamed, health,
   models, bad input, cancel of an unknown id); the server's RSS after warm-up (the first 200) and at
   the end. Target: under 5 % growth.

    python bench/load.py [--seconds 30] [--soak 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402  (ipykernel's dependency)
from common import save_report  # noqa: E402  (bench/, the script's own folder)

from server.spawn import spawn_server  # noqa: E402
from toolkit.client import RemoteService, ServiceUnavailable  # noqa: E402
from toolkit.errors import Overloaded, ToolkitError  # noqa: E402
from toolkit.results import Done  # noqa: E402

MAX_BATCH, MAX_QUEUE = 4, 8
INFER = "mutation($p: String!) { infer(prompt: $p, params: {temperature: 0, maxNewTokens: 6}) { finishReason } }"


def post(
    url: str, body: dict[str, Any], timeout: float = 120
) -> tuple[int, dict[str, Any] | None, float, dict[str, str]]:
    """(status, JSON body or None when there was none, seconds, headers). Status 0: no HTTP answer at all."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.perf_counter() - start, dict(response.headers)
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read())
        except ValueError:
            payload = None
        return exc.code, payload, time.perf_counter() - start, dict(exc.headers)
    except (OSError, ValueError):
        return 0, None, time.perf_counter() - start, {}


def chat(base: str, prompt: str, *, stream: bool, timeout: float = 120) -> tuple[str, float, float]:
    """One ``/v1/chat/completions`` call: (accepted | rejected | lost | unexpected, seconds, Retry-After)."""
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 6, "stream": stream}
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        base + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if not stream:
                answer = json.loads(response.read())
                return ("accepted" if answer["choices"][0]["finish_reason"] else "unexpected"), 0.0, 0.0
            lines = [line.strip() for line in response]  # SSE, to its end
            return ("accepted" if lines and b"data: [DONE]" in lines else "lost"), 0.0, 0.0
    except urllib.error.HTTPError as exc:
        took = time.perf_counter() - start
        try:
            error = json.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            return "unexpected", took, 0.0
        if exc.code == 503 and error.get("code") == "overloaded":
            return "rejected", took, float(exc.headers.get("Retry-After", "1"))
        return "unexpected", took, 0.0
    except (OSError, ValueError):
        return "lost", time.perf_counter() - start, 0.0


def graphql(url: str, prompt: str) -> tuple[str, float, float]:
    status, body, took, headers = post(url, {"query": INFER, "variables": {"p": prompt}})
    if status == 200 and body and body.get("data") and body["data"]["infer"]["finishReason"]:
        return "accepted", took, 0.0
    if status == 503 and body and body["errors"][0]["extensions"]["code"] == "OVERLOADED":
        return "rejected", took, float(headers.get("Retry-After", "1"))
    return ("lost" if status == 0 or body is None else "unexpected"), took, 0.0


def subscription(url: str, prompt: str) -> tuple[str, float, float]:
    start = time.perf_counter()
    try:
        events = list(RemoteService(url).stream(prompt, temperature=0, max_new_tokens=6))
    except Overloaded as exc:
        return "rejected", time.perf_counter() - start, float(exc.retry_after_s or 1)
    except ServiceUnavailable:
        return "lost", time.perf_counter() - start, 0.0
    except ToolkitError:
        return "unexpected", time.perf_counter() - start, 0.0
    return ("accepted" if events and isinstance(events[-1], Done) else "lost"), 0.0, 0.0


def overload(url: str, seconds: float) -> dict[str, Any]:
    clients = 2 * (MAX_BATCH + MAX_QUEUE)
    base = url.rsplit("/graphql", 1)[0]
    transports = {
        "graphql": lambda p: graphql(url, p),
        "websocket": lambda p: subscription(url, p),
        "v1": lambda p: chat(base, p, stream=False),
        "v1 streamed": lambda p: chat(base, p, stream=True),
    }
    lock = threading.Lock()
    counts = {name: dict.fromkeys(("accepted", "rejected", "lost", "unexpected"), 0) for name in transports}
    rejected: list[float] = []
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        name = list(transports)[i % len(transports)]
        n = 0
        while time.monotonic() < end:
            outcome, took, retry = transports[name](f"Say hello to client {i}, turn {n}.")
            n += 1
            with lock:
                counts[name][outcome] += 1
                if outcome == "rejected":
                    rejected.append(took)
            if outcome == "rejected":
                time.sleep(retry)  # as clients do (the openai client, gql's retries): Retry-After

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    quantiles = statistics.quantiles(rejected, n=100) if len(rejected) >= 2 else [0.0] * 99
    total = {k: sum(c[k] for c in counts.values()) for k in ("accepted", "rejected", "lost", "unexpected")}
    return {
        "clients": clients,
        "seconds": seconds,
        **total,
        "accepted_per_s": round(total["accepted"] / seconds, 2),
        "by_transport": counts,
        "rejection_p50_ms": round(quantiles[49] * 1000, 2),
        "rejection_p99_ms": round(quantiles[98] * 1000, 2),
    }


def soak(url: str, total: int, server_pid: int) -> dict[str, Any]:
    remote = RemoteService(url)
    process = psutil.Process(server_pid)
    kinds = ["infer", "stream", "v1", "v1 streamed", "health", "models", "bad", "cancel"]
    base = url.rsplit("/graphql", 1)[0]
    counts = dict.fromkeys(kinds, 0)
    failures: list[str] = []
    lock = threading.Lock()
    done = 0
    rss: dict[str, float] = {}
    warmup = min(200, total // 5)

    def one(i: int) -> None:
        kind = kinds[i % len(kinds)]
        try:
            if kind == "infer":
                assert remote.infer(f"Name a colour, {i}.", temperature=0, max_new_tokens=4).finish_reason
            elif kind == "stream":
                assert list(remote.stream(f"Name a fruit, {i}.", temperature=0, max_new_tokens=4))
            elif kind in ("v1", "v1 streamed"):
                outcome, _, _ = chat(base, f"Name a tree, {i}.", stream=kind == "v1 streamed")
                assert outcome == "accepted", outcome
            elif kind == "health":
                assert remote.health().status == "ready"
            elif kind == "models":
                assert remote.models()
            elif kind == "bad":
                status, body, _, _ = post(url, {"query": 'mutation { infer(prompt: "") { text } }'})
                assert status == 200 and body and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
            else:
                assert remote.cancel(f"no-such-request-{i}") is False
        except Exception as exc:
            with lock:
                failures.append(f"{kind}: {type(exc).__name__}: {exc}")
        with lock:
            counts[kind] += 1

    def worker(start: int, step: int) -> None:
        nonlocal done
        for i in range(start, total, step):
            one(i)
            with lock:
                done += 1
                if done == warmup:
                    rss["after_warmup_mb"] = process.memory_info().rss / 2**20

    workers = [threading.Thread(target=worker, args=(w, 8)) for w in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    rss["end_mb"] = process.memory_info().rss / 2**20
    growth = (rss["end_mb"] - rss["after_warmup_mb"]) / rss["after_warmup_mb"] * 100
    return {
        "requests": total,
        "by_kind": counts,
        "failures": failures[:10],
        "failed": len(failures),
        "rss_after_warmup_mb": round(rss["after_warmup_mb"], 1),
        "rss_end_mb": round(rss["end_mb"], 1),
        "rss_growth_percent": round(growth, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--soak", type=int, default=1000)
    args = parser.parse_args()
    env = {
        **os.environ,
        "MAX_BATCH_SIZE": str(MAX_BATCH),
        "MAX_QUEUE": str(MAX_QUEUE),
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_BURST": "100000",
        "SEARCH_PROVIDER": "none",
    }
    server, url = spawn_server(env=env)
    try:
        RemoteService(url).wait_ready(timeout_s=180)
        print(f"overload: {2 * (MAX_BATCH + MAX_QUEUE)} clients for {args.seconds:g} s ...", flush=True)
        load = overload(url, args.seconds)
        print(f"soak: {args.soak} mixed requests ...", flush=True)
        mixed = soak(url, args.soak, server.pid)
    finally:
        server.terminate()
        server.wait(60)
    print(f"\n{'transport':<14}" + "".join(f"{k:>12}" for k in ("accepted", "rejected", "lost", "unexpected")))
    for name, row in load["by_transport"].items():
        print(f"{name:<14}" + "".join(f"{row[k]:>12}" for k in ("accepted", "rejected", "lost", "unexpected")))
    rows = [
        ("accepted (answered)", load["accepted"], ""),
        ("rejected with 503 OVERLOADED", load["rejected"], ""),
        ("lost (no answer)", load["lost"], "target 0"),
        ("unexpected status", load["unexpected"], "target 0"),
        ("rejection time p50 / p99 (ms)", f"{load['rejection_p50_ms']} / {load['rejection_p99_ms']}", "p99 < 100"),
        ("soak: failed of requests", f"{mixed['failed']} of {mixed['requests']}", "target 0"),
        ("soak: RSS after warm-up -> end (MB)", f"{mixed['rss_after_warmup_mb']} -> {mixed['rss_end_mb']}", ""),
        ("soak: RSS growth", f"{mixed['rss_growth_percent']} %", "target < 5 %"),
    ]
    print(f"\n{'case':<40} {'value':>22}  target")
    for name, value, target in rows:
        print(f"{name:<40} {value!s:>22}  {target}")
    ok = (
        load["lost"] == 0
        and load["unexpected"] == 0
        and load["rejection_p99_ms"] < 100
        and mixed["failed"] == 0
        and mixed["rss_growth_percent"] < 5
    )
    save_report({"overload": load, "soak": mixed, "targets_met": ok}, ROOT / "bench" / "results" / "load.json")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
