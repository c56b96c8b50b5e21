"""Overload and soak: the real server as a child process, the bundled model, many clients on loopback.

1. **Overload**: twice the server's capacity (MAX_BATCH_SIZE running + MAX_QUEUE waiting) of clients
   send short requests back to back for 30 s (``--rounds`` times), a quarter each over GraphQL HTTP, a
   GraphQL WebSocket subscription, ``/v1/chat/completions`` and ``/v1/chat/completions`` streamed (every
   third stream dropped after its first chunk, as a client that leaves). Beside them, ``--long`` clients
   (another key each: another address is not needed, the queue is shared) send 10,000-turn histories with
   web search on, back to back. Every request is accepted (and answered) or rejected with 503 OVERLOADED
   at once (the clients then wait its Retry-After, as real ones do); none is lost (no answer, a reset, a
   timeout) and none gets an unexpected status. Targets: 0 lost, 0 unexpected, p99 rejection time under
   100 ms; the short requests' answer times (p50, p99) are reported.
2. **Soak**: 1,000 mixed requests (infer, stream over WebSocket, ``/v1`` plain and streamed, health,
   models, bad input, cancel of an unknown id); the server's RSS after warm-up (the first 200) and at
   the end. Target: under 5 % growth.

    python bench/load.py [--seconds 30] [--rounds 1] [--long 6] [--soak 1000]
"""

from __future__ import annotations

import argparse
import copy
import itertools
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
from toolkit.client import RemoteService  # noqa: E402
from toolkit.errors import (  # noqa: E402
    Overloaded,
    ServiceUnavailable,
    ToolkitError,
)
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


def chat(base: str, prompt: str, *, stream: bool, timeout: float = 120, drop: bool = False) -> tuple[str, float, float]:
    """One ``/v1/chat/completions`` call: (accepted | rejected | lost | unexpected | dropped, seconds,
    Retry-After). ``drop``: a streamed one is closed after its first chunk (the client leaves)."""
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
                took = time.perf_counter() - start
                return ("accepted" if answer["choices"][0]["finish_reason"] else "unexpected"), took, 0.0
            if drop:
                response.readline()
                return "dropped", time.perf_counter() - start, 0.0  # closed here: the server must cancel it
            lines = [line.strip() for line in response]  # SSE, to its end
            took = time.perf_counter() - start
            return ("accepted" if lines and b"data: [DONE]" in lines else "lost"), took, 0.0
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
        # no retries: a refusal is timed as the server gave it, as on the other transports
        events = list(RemoteService(url, max_retries=0).stream(prompt, temperature=0, max_new_tokens=6))
    except Overloaded as exc:
        return "rejected", time.perf_counter() - start, float(exc.retry_after_s or 1)
    except ServiceUnavailable:
        return "lost", time.perf_counter() - start, 0.0
    except ToolkitError:
        return "unexpected", time.perf_counter() - start, 0.0
    took = time.perf_counter() - start
    return ("accepted" if events and isinstance(events[-1], Done) else "lost"), took, 0.0


LONG_INFER = (
    "mutation($p: String!, $h: [TurnInput!]) { infer(prompt: $p, history: $h, webSearch: true, "
    "params: {temperature: 0, maxNewTokens: 2}) { finishReason runRecord } }"
)
HISTORY = [{"role": "USER" if i % 2 == 0 else "ASSISTANT", "content": f"turn {i} harbour"} for i in range(10_000)]


def long_history(url: str, prompt: str) -> tuple[str, float, float]:
    """A 10,000-turn history with web search on: fitted to the input limit, never stalling the others."""
    status, body, took, headers = post(url, {"query": LONG_INFER, "variables": {"p": prompt, "h": HISTORY}})
    if status == 200 and body and body.get("data") and body["data"]["infer"]["runRecord"]["dropped_history_turns"]:
        return "accepted", took, 0.0
    if status == 503 and body and body["errors"][0]["extensions"]["code"] == "OVERLOADED":
        return "rejected", took, float(headers.get("Retry-After", "1"))
    return ("lost" if status == 0 or body is None else "unexpected"), took, 0.0


OUTCOMES = ("accepted", "rejected", "lost", "unexpected", "dropped")


def overload(url: str, seconds: float, long_clients: int = 0) -> dict[str, Any]:
    clients = 2 * (MAX_BATCH + MAX_QUEUE)
    base = url.rsplit("/graphql", 1)[0]
    streamed = itertools.count()
    transports = {
        "graphql": lambda p: graphql(url, p),
        "websocket": lambda p: subscription(url, p),
        "v1": lambda p: chat(base, p, stream=False),
        "v1 streamed": lambda p: chat(base, p, stream=True, drop=next(streamed) % 3 == 2),
        "long history": lambda p: long_history(url, p),
    }
    lock = threading.Lock()
    counts = {name: dict.fromkeys(OUTCOMES, 0) for name in transports}
    rejected: list[float] = []
    refused_by: dict[str, list[float]] = {name: [] for name in transports}  # which transport's refusals are slow
    answered: list[float] = []  # the short requests' answer times
    end = time.monotonic() + seconds

    def client(name: str, i: int) -> None:
        n = 0
        while time.monotonic() < end:
            outcome, took, retry = transports[name](f"Say hello to client {i}, turn {n}.")
            n += 1
            with lock:
                counts[name][outcome] += 1
                if outcome == "rejected":
                    rejected.append(took)
                    refused_by[name].append(took)
                elif outcome == "accepted" and name != "long history":
                    answered.append(took)
            if outcome == "rejected":
                time.sleep(retry)  # as clients do (the openai client, gql's retries): Retry-After

    short = list(transports)[:4]
    threads = [threading.Thread(target=client, args=(short[i % 4], i)) for i in range(clients)]
    threads += [threading.Thread(target=client, args=("long history", clients + i)) for i in range(long_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    quantiles = statistics.quantiles(rejected, n=100) if len(rejected) >= 2 else [0.0] * 99
    answers = statistics.quantiles(answered, n=100) if len(answered) >= 2 else [0.0] * 99
    total = {k: sum(c[k] for c in counts.values()) for k in OUTCOMES}
    return {
        "clients": clients,
        "long_history_clients": long_clients,
        "seconds": seconds,
        **total,
        "accepted_per_s": round(total["accepted"] / seconds, 2),
        "by_transport": counts,
        "rejection_p50_ms": round(quantiles[49] * 1000, 2),
        "rejection_p99_ms": round(quantiles[98] * 1000, 2),
        "short_answer_p50_s": round(answers[49], 3),
        "short_answer_p99_s": round(answers[98], 3),
        "rejection_p99_ms_by_transport": {
            name: round(statistics.quantiles(times, n=100)[98] * 1000, 2) if len(times) >= 2 else 0.0
            for name, times in refused_by.items()
        },
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


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds together: counts added up, each time the worst round's."""
    out = copy.deepcopy(rounds[0])  # the rounds keep their own counts
    for other in rounds[1:]:
        for k in OUTCOMES:
            out[k] += other[k]
        for name, row in other["by_transport"].items():
            for k in OUTCOMES:
                out["by_transport"][name][k] += row[k]
        for k in ("rejection_p50_ms", "rejection_p99_ms", "short_answer_p50_s", "short_answer_p99_s"):
            out[k] = max(out[k], other[k])
    out["seconds"] = sum(r["seconds"] for r in rounds)
    out["accepted_per_s"] = round(out["accepted"] / out["seconds"], 2)
    out["rounds"] = rounds
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1, help="overload rounds (the probe ran 3)")
    parser.add_argument("--long", type=int, default=6, help="clients sending 10,000-turn histories beside them")
    parser.add_argument("--soak", type=int, default=1000)
    args = parser.parse_args()
    env = {
        **os.environ,
        "MAX_BATCH_SIZE": str(MAX_BATCH),
        "MAX_QUEUE": str(MAX_QUEUE),
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_BURST": "100000",
        "SEARCH_PROVIDER": f"local:{ROOT / 'tests' / 'data' / 'docs'}",
        "MAX_BODY_BYTES": str(1 << 20),
    }
    server, url = spawn_server(env=env)
    try:
        RemoteService(url).wait_ready(timeout_s=180)
        rounds = []
        for r in range(args.rounds):
            print(
                f"overload {r + 1}/{args.rounds}: {2 * (MAX_BATCH + MAX_QUEUE)} clients and {args.long} long "
                f"histories for {args.seconds:g} s ...",
                flush=True,
            )
            rounds.append(overload(url, args.seconds, args.long))
        load = merge(rounds)
        print(f"soak: {args.soak} mixed requests ...", flush=True)
        mixed = soak(url, args.soak, server.pid)
    finally:
        server.terminate()
        server.wait(60)
    print(f"\n{'transport':<14}" + "".join(f"{k:>12}" for k in OUTCOMES) + f"{'refusal p99 ms':>16}")
    for name, row in load["by_transport"].items():
        refusal = load["rejection_p99_ms_by_transport"][name]
        print(f"{name:<14}" + "".join(f"{row[k]:>12}" for k in OUTCOMES) + f"{refusal:>16}")
    rows = [
        ("accepted (answered)", load["accepted"], ""),
        ("rejected with 503 OVERLOADED", load["rejected"], ""),
        ("lost (no answer)", load["lost"], "target 0"),
        ("unexpected status", load["unexpected"], "target 0"),
        ("rejection time p50 / p99 (ms)", f"{load['rejection_p50_ms']} / {load['rejection_p99_ms']}", "p99 < 100"),
        ("short answers p50 / p99 (s)", f"{load['short_answer_p50_s']} / {load['short_answer_p99_s']}", ""),
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
