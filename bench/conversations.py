"""What keeping conversations costs: saving a turn, and listing and searching 10,000 conversations.

    python bench/conversations.py [--conversations 10000] [--turns 500] [--repeats 50] [--model]
                                  [--out bench/results/conversations.json]

One store (``toolkit.store``, WAL, synchronous=NORMAL) in a temporary folder, filled fast with
``--conversations`` conversations of 3 turns each (made-up words; a quarter of the turns carry a
web-search run record of ~25 KB, the rest a plain one of ~4 KB), then:

1. **List and search** (``ConversationStore.list``/``get``), each ``--repeats`` times: the newest page, the
   page after a conversation in the middle, a word in ~1 % of the conversations, a word in ~50 %, a word
   in none, and one 3-turn conversation with its turns. Baseline: the newest page as one bare ``SELECT``.
   Target: p50 at most 50 ms.
2. **Saving a turn** (``Thread.save``, what the service does before ``Done`` reaches the caller) with a
   realistic ``InferResult`` made without a model (4 messages, one a ~1.5k-token system message with
   sources, a search snapshot of 4 results, grounding), ``--turns`` times: a fifth start a new
   conversation, the rest continue one. Baseline, interleaved: the same run record's JSON as one bare
   ``INSERT`` into a plain table of the same file. Target: p50 at most 5 ms.
3. ``--model`` (off by default; noisy): the bundled model answers ``service.infer(..., max_new_tokens=8)``
   with ``conversation=None`` and ``conversation=True`` alternately; the difference of the p50s.

Prints a table (PASS/FAIL per target), the CPU it ran on, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_model, save_report  # noqa: E402  (bench/, the script's own folder)

from toolkit.conversation.records import title_of  # noqa: E402
from toolkit.conversation.store import ConversationStore  # noqa: E402
from toolkit.conversation.thread import Thread  # noqa: E402
from toolkit.grounding import GroundedSentence, Grounding  # noqa: E402
from toolkit.params import InferRequest  # noqa: E402
from toolkit.results import InferResult, RunRecord, Source, Timings, Usage  # noqa: E402
from toolkit.search import SearchOutcome, SearchResult  # noqa: E402
from toolkit.store import Store  # noqa: E402

SAVE_TARGET_MS = 5.0
LIST_TARGET_MS = 50.0
RARE, COMMON, ABSENT = "harlow", "river", "quokka"  # in ~1 %, ~50 % and none of the conversations
SYLLABLES = ["ka", "lo", "mi", "ren", "to", "vex", "sa", "dor", "qui", "ban", "el", "fy", "gor", "hu", "ist", "ju"]
VERSIONS = {"toolkit": "0.1.0", "python": "3.12.3", "torch": "2.6.0", "transformers": "4.50.0"}
MODEL = "bundled:SmolLM2-135M-Instruct"
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


# ----- made-up text ---------------------------------------------------------------------------


class Words:
    """A vocabulary of made-up words, drawn with Zipf-like frequencies (none starts with a marker word)."""

    def __init__(self, rng: random.Random, size: int = 5000) -> None:
        vocab: set[str] = set()
        while len(vocab) < size:
            w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if not any(w.startswith(m) for m in (RARE, COMMON, ABSENT)):
                vocab.add(w)
        self.vocab = sorted(vocab)
        rng.shuffle(self.vocab)
        self.weights = [1 / (rank + 1) for rank in range(size)]
        self.rng = rng

    def text(self, n: int, marker: str | None = None) -> str:
        words = self.rng.choices(self.vocab, self.weights, k=n)
        if marker is not None:
            words[self.rng.randrange(n)] = marker
        return " ".join(words)


def ruler(chars: int, words: Words) -> str:
    """About ``chars`` characters of words."""
    out = words.text(max(1, chars // 6))
    return out[:chars]


# ----- a realistic result, without a model ------------------------------------------------------


def chatml(messages: list[dict[str, str]]) -> str:
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def make_result(words: Words, *, web: bool) -> tuple[InferRequest, InferResult]:
    """A request and its result as the service makes them: with ``web``, 4 sources in a ~1.5k-token system
    message, the search snapshot and grounding; without, a short system prompt."""
    prompt = words.text(14) + "?"
    system = "Answer briefly and cite your sources."
    history = (words.text(12) + "?", words.text(60) + ".")
    results = tuple(
        SearchResult(
            f"{words.text(6)} - {words.text(2)}",
            f"https://example.org/{i}/{words.text(3).replace(' ', '-')}",
            ruler(1300, words),
        )
        for i in range(4)
    )
    if web:
        fenced = "\n\n".join(f"[{i + 1}] {r.title}\n{r.url}\n{r.snippet}" for i, r in enumerate(results))
        sent_system = f"{system}\n\nSources (cite them as [n]):\n<<<sources-7f3a>>>\n{fenced}\n<<<sources-7f3a>>>"
    else:
        sent_system = system
    messages = [
        {"role": "system", "content": sent_system},
        {"role": "user", "content": history[0]},
        {"role": "assistant", "content": history[1]},
        {"role": "user", "content": prompt},
    ]
    answer = " ".join(f"{words.text(18)} [{1 + i % 4}]." if web else f"{words.text(18)}." for i in range(8))
    request = InferRequest.build(prompt, system_prompt=system, web_search=web, temperature=0, max_new_tokens=256)
    params = asdict(replace(request.params, seed=1234))
    outcome = SearchOutcome("ddgs", prompt, "2025-01-01T00:00:00+00:00", 0.8123, results) if web else None
    grounding = (
        Grounding.of(
            [
                GroundedSentence(s.strip() + ".", (1 + i % 4,), 1 + i % 4, 0.71, "supported")
                for i, s in enumerate(answer.split(".")[:8])
            ]
        )
        if web
        else None
    )
    record = RunRecord(
        request_id=request.request_id,
        created_at="2025-01-01T00:00:01+00:00",
        model=MODEL,
        model_source="gguf",
        model_hash="b179c9523d0e6a0f" * 4,
        adapter=None,
        device="cpu",
        dtype="float32",
        quantization=None,
        params=params,
        messages=messages,
        prompt_text=chatml(messages),
        versions=VERSIONS,
        search=outcome.to_dict() if outcome is not None else None,
        answer=answer,
        finish_reason="stop",
        grounding=grounding.to_dict() if grounding is not None else None,
    )
    result = InferResult(
        id=request.request_id,
        text=answer,
        finish_reason="stop",
        usage=Usage(1650 if web else 160, 230),
        timings=Timings(0.001, 0.4, 3.2),
        model=MODEL,
        adapter=None,
        run_record=record,
        sources=tuple(Source(i + 1, r.title, r.url, r.snippet) for i, r in enumerate(results)) if web else (),
        search_status="ok" if web else "off",
        grounding=grounding,
    )
    return request, result


# ----- the fill ---------------------------------------------------------------------------------


def fill(
    store: Store, n: int, words: Words, rng: random.Random, records: tuple[str, str], sources: str, share: float
) -> None:
    """``n`` conversations of 3 turns, straight into the schema of ``toolkit.store`` (MIGRATIONS[1]): batches of
    1,000 conversations a transaction; one turn of ~1 % of them says RARE, of ~50 % COMMON."""
    store.query("SELECT 1")  # open and migrate
    rowid = 0
    for start in range(0, n, 1000):
        convs, turns, texts = [], [], []
        for i in range(start, min(n, start + 1000)):
            cid = f"{i:032x}"
            markers: list[str | None] = [None, None, None]
            if rng.random() < 0.5:
                markers[rng.randrange(3)] = COMMON
            if rng.random() < 0.01:
                markers[rng.randrange(3)] = RARE
            stamp = (EPOCH + timedelta(minutes=i)).isoformat(timespec="seconds")  # increasing, as ``now()`` is
            first = None
            for position in range(3):
                rowid += 1
                prompt = words.text(rng.randint(8, 20)) + "?"
                answer = words.text(rng.randint(40, 120), markers[position]) + "."
                first = first or prompt
                web = rng.random() < share
                turns.append(
                    (rowid, cid, position, f"r{rowid}", prompt, answer, "done", "stop", MODEL, None,
                     sources if web else "[]", records[web], stamp)
                )  # fmt: skip
                texts.append((rowid, f"{prompt}\n{answer}"))
            convs.append((cid, "", title_of(first or ""), MODEL, None, "Answer briefly.", 0, stamp, stamp, i + 1))
        with store.transaction() as db:
            db.executemany(
                "INSERT INTO conversations (id, owner, title, model, adapter, system_prompt, web_search, created_at, "
                "updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                convs,
            )
            db.executemany(
                "INSERT INTO conversation_turns (rowid, conversation_id, position, request_id, prompt, answer, "
                "status, finish_reason, model, adapter, sources, run_record, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                turns,
            )
            db.executemany("INSERT INTO conversation_text (rowid, text) VALUES (?, ?)", texts)


# ----- timing -----------------------------------------------------------------------------------


def ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3),
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    fn()  # warm: the pages in the cache, the statement compiled
    out, last = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        last = fn()
        out.append(time.perf_counter() - start)
    return out, last


def plan(store: Store, sql: str, args: tuple[Any, ...]) -> list[str]:
    return [row[3] for row in store.query("EXPLAIN QUERY PLAN " + sql, args)]


def list_and_search(kept: ConversationStore, store: Store, repeats: int) -> list[dict[str, Any]]:
    ids = [row[0] for row in store.query("SELECT id FROM conversations ORDER BY seq DESC")]
    middle = ids[len(ids) // 2]
    three = next(
        row[0]
        for row in store.query("SELECT conversation_id FROM conversation_turns GROUP BY 1 HAVING COUNT(*) = 3 LIMIT 1")
    )
    counts = {
        word: store.query(
            "SELECT COUNT(DISTINCT t.conversation_id) FROM conversation_turns t WHERE t.rowid IN "
            "(SELECT rowid FROM conversation_text WHERE conversation_text MATCH ?)",
            (f'"{word}"*',),
        )[0][0]
        for word in (RARE, COMMON, ABSENT)
    }
    bare_sql = "SELECT id, title, updated_at FROM conversations WHERE owner = ? ORDER BY seq DESC LIMIT 50"
    cases: list[tuple[str, Callable[[], Any], float | None]] = [
        ("bare SELECT, newest 50 (baseline)", lambda: store.query(bare_sql, ("",)), None),
        ("list(first=50)", lambda: kept.list(first=50), LIST_TARGET_MS),
        ("list(first=50, before=middle)", lambda: kept.list(first=50, before=middle), LIST_TARGET_MS),
        (f"list(query=1% word) [{counts[RARE]} convs]", lambda: kept.list(query=RARE, first=50), LIST_TARGET_MS),
        (f"list(query=50% word) [{counts[COMMON]} convs]", lambda: kept.list(query=COMMON, first=50), LIST_TARGET_MS),
        (f"list(query=absent word) [{counts[ABSENT]}]", lambda: kept.list(query=ABSENT, first=50), LIST_TARGET_MS),
        ("get(id), 3 turns", lambda: kept.get(three), LIST_TARGET_MS),
    ]
    rows = []
    for name, fn, target in cases:
        samples, last = timed(fn, repeats)
        found = len(last) if isinstance(last, list) else len(last.turns) if last is not None else 0
        rows.append({"measure": name, "n": repeats, **ms(samples), "returned": found, "target_ms": target})
        print(f"  {name}: p50 {rows[-1]['p50_ms']:.2f} ms", flush=True)
    base = rows[0]["p50_ms"]
    for row in rows[1:]:
        row["ratio"] = round(row["p50_ms"] / base, 1) if base else None
    return rows


def search_plans(store: Store) -> dict[str, list[str]]:
    columns = ConversationStore._COLUMNS
    search_sql = (
        f"SELECT {columns} FROM conversations c WHERE (c.owner = ?) AND (c.id IN (SELECT t.conversation_id FROM "
        "conversation_turns t WHERE t.rowid IN (SELECT rowid FROM conversation_text WHERE conversation_text MATCH ?)) "
        "OR c.title LIKE ? ESCAPE '\\') ORDER BY c.seq DESC LIMIT ?"
    )
    return {
        "list": plan(
            store, f"SELECT {columns} FROM conversations c WHERE (c.owner = ?) ORDER BY c.seq DESC LIMIT ?", ("", 50)
        ),
        "search": plan(store, search_sql, ("", f'"{RARE}"*', f"%{RARE}%", 50)),
    }


def saving(kept: ConversationStore, store: Store, words: Words, turns: int, rng: random.Random) -> list[dict[str, Any]]:
    """``Thread.save`` of a realistic web-search result, interleaved with a bare INSERT of its run record."""
    request, result = make_result(words, web=True)
    store.execute("CREATE TABLE IF NOT EXISTS bench_baseline (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    ids = [row[0] for row in store.query("SELECT id FROM conversations")]
    payload = json.dumps(result.run_record.to_dict())
    new, cont, bare, serialize = [], [], [], []
    for i in range(turns + 10):
        fresh = i % 5 == 0
        thread = Thread(kept, "", None if fresh else rng.choice(ids))
        req = replace(request, request_id=f"{i:08d}" + request.request_id[8:])
        start = time.perf_counter()
        thread.save(req, result)
        took = time.perf_counter() - start
        start = time.perf_counter()
        with store.transaction() as db:
            db.execute("INSERT INTO bench_baseline (payload) VALUES (?)", (payload,))
        bare_took = time.perf_counter() - start
        start = time.perf_counter()
        json.dumps(result.run_record.to_dict())
        serialize_took = time.perf_counter() - start
        if i < 10:
            continue  # warm-up
        (new if fresh else cont).append(took)
        bare.append(bare_took)
        serialize.append(serialize_took)
    rows = [
        {"measure": "bare INSERT of the record (baseline)", "n": len(bare), **ms(bare), "target_ms": None},
        {"measure": "run_record.to_dict + json.dumps", "n": len(serialize), **ms(serialize), "target_ms": None},
        {"measure": "Thread.save, all", "n": len(new) + len(cont), **ms(new + cont), "target_ms": SAVE_TARGET_MS},
        {"measure": "Thread.save, new conversation", "n": len(new), **ms(new), "target_ms": SAVE_TARGET_MS},
        {"measure": "Thread.save, continued", "n": len(cont), **ms(cont), "target_ms": SAVE_TARGET_MS},
    ]
    base = rows[0]["p50_ms"]
    for row in rows[1:]:
        row["ratio"] = round(row["p50_ms"] / base, 1) if base else None
    return rows


def history_reads(
    kept: ConversationStore, request: InferRequest, result: InferResult, repeats: int
) -> list[dict[str, Any]]:
    """``Thread.apply`` (the store's turns as history, read before the model runs) for 3, 30 and 100 web turns."""
    rows = []
    for n in (3, 30, 100):
        cid = kept.create("", request)
        for _ in range(n):
            kept.add_turn(cid, request, result.text, "stop", result)
        follow = InferRequest.build("And then?", temperature=0)
        samples, _ = timed(lambda cid=cid, follow=follow: Thread(kept, "", cid).apply(follow), repeats)
        rows.append(
            {"measure": f"Thread.apply (history read), {n} turns", "n": repeats, **ms(samples), "target_ms": None}
        )
    return rows


def with_model(store_path: Path, rounds: int) -> list[dict[str, Any]]:
    """The bundled model, 8 new tokens, greedy: not kept and kept (a new conversation each), alternately; and,
    inside the kept ones, the time ``Thread.save`` took (what the caller waits for, without the model's noise)."""
    if "TOOLKIT_CACHE_DIR" not in os.environ and Path("/tmp/tkcache").is_dir():
        os.environ["TOOLKIT_CACHE_DIR"] = "/tmp/tkcache"
    from toolkit.service import InferenceService
    from toolkit.settings import Settings

    inside: list[float] = []
    save = Thread.save

    def timed_save(self: Thread, request: InferRequest, result: InferResult) -> InferResult:
        start = time.perf_counter()
        try:
            return save(self, request, result)
        finally:
            inside.append(time.perf_counter() - start)

    service = InferenceService(Settings.from_env(store=store_path, search_provider="none")).start(progress=False)
    Thread.save = timed_save  # type: ignore[method-assign]
    try:
        prompt = "Name one river in Europe."
        for _ in range(2):
            service.infer(prompt, temperature=0, max_new_tokens=8)
            service.infer(prompt, temperature=0, max_new_tokens=8, conversation=True)
        inside.clear()
        plain, kept = [], []
        for _ in range(rounds):
            for conversation, into in ((None, plain), (True, kept)):
                start = time.perf_counter()
                service.infer(prompt, temperature=0, max_new_tokens=8, conversation=conversation)
                into.append(time.perf_counter() - start)
    finally:
        Thread.save = save  # type: ignore[method-assign]
        service.close(grace_s=0)
    a, b = ms(plain), ms(kept)
    return [
        {"measure": "service.infer, conversation=None", "n": rounds, **a, "target_ms": None},
        {"measure": "service.infer, conversation=True", "n": rounds, **b, "target_ms": None},
        {"measure": "  difference of the p50s (noisy)", "n": rounds, "p50_ms": round(b["p50_ms"] - a["p50_ms"], 3)},
        {"measure": "  Thread.save inside service.infer", "n": len(inside), **ms(inside), "target_ms": SAVE_TARGET_MS},
    ]


def deleting(kept: ConversationStore, count: int) -> list[dict[str, Any]]:
    """Deleting a conversation for real: its rows, the search index merged (FTS5 ``optimize``), the WAL
    truncated. Not a target; it grows with the index."""
    samples = []
    for i in range(count):
        start = time.perf_counter()
        assert kept.delete(f"{i:032x}")
        samples.append(time.perf_counter() - start)
    return [{"measure": "delete (rows, index merge, WAL truncate)", "n": count, **ms(samples)}]


def table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'measure':<44}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'x base':>8}{'target':>9}  verdict")
    for r in rows:
        target = r.get("target_ms")
        verdict = "" if target is None else ("PASS" if r["p50_ms"] <= target else "FAIL")
        r["verdict"] = verdict or None
        p95 = f"{r['p95_ms']:>10.2f}" if r.get("p95_ms") is not None else f"{'':>10}"
        ratio = f"{r['ratio']:>8.1f}" if r.get("ratio") is not None else f"{'':>8}"
        limit = f"<= {target:g}" if target is not None else ""
        print(f"{r['measure']:<44}{r['n']:>5}{r['p50_ms']:>10.2f}{p95}{ratio}{limit:>9}  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=500, help="turns saved (Thread.save)")
    parser.add_argument("--repeats", type=int, default=50, help="of each list, search and get")
    parser.add_argument("--search-share", type=float, default=0.25, help="of the filled turns with a web run record")
    parser.add_argument("--model", action="store_true", help="also the bundled model, kept and not (noisy)")
    parser.add_argument("--rounds", type=int, default=10, help="of each, with --model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "conversations.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    words = Words(rng)
    cpu = cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} cores")
    report: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "toolkit.db"
        store = Store(path)
        kept = ConversationStore(store)
        heavy_request, heavy = make_result(words, web=True)
        _, light = make_result(words, web=False)
        records = (json.dumps(light.run_record.to_dict()), json.dumps(heavy.run_record.to_dict()))
        sources = json.dumps([s.__dict__ for s in heavy.sources])
        report["run_record_bytes"] = {"plain": len(records[0]), "web": len(records[1])}
        start = time.perf_counter()
        fill(store, args.conversations, words, rng, records, sources, args.search_share)
        fill_s = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in Path(folder).iterdir()) / 1e6
        print(
            f"filled {args.conversations} conversations x 3 turns in {fill_s:.1f} s ({size_mb:.0f} MB); "
            f"run records: {len(records[0])} B plain, {len(records[1])} B web",
            flush=True,
        )
        report |= {"fill_s": round(fill_s, 2), "store_mb": round(size_mb, 1)}
        print("list and search:", flush=True)
        listing = list_and_search(kept, store, args.repeats)
        report["plans"] = search_plans(store)
        print(f"saving {args.turns} turns:", flush=True)
        saves = saving(kept, store, words, args.turns, rng)
        reads = history_reads(kept, heavy_request, heavy, args.repeats)
        deletes = deleting(kept, 10)
        model_rows = with_model(path, args.rounds) if args.model else []
        store.close()
    table(f"list and search, {args.conversations} conversations x 3 turns, {args.repeats} times each", listing)
    table(f"saving a turn (web-search run record, {len(records[1])} B), {args.turns} turns", saves)
    table("reading a conversation's history before a turn (not a target)", reads)
    table(f"deleting a conversation of {args.conversations} (not a target)", deletes)
    if model_rows:
        table(f"bundled model, 8 new tokens, greedy, {args.rounds} each, alternating", model_rows)
    print("\nsearch query plan:\n  " + "\n  ".join(report["plans"]["search"]))
    print(f"\nCPU: {cpu}, {os.cpu_count()} cores")
    report |= {"list": listing, "save": saves, "history": reads, "delete": deletes, "model": model_rows}
    failed = [r["measure"] for r in listing + saves + model_rows if r.get("verdict") == "FAIL"]
    report["failed"] = failed
    print("all targets PASS" if not failed else f"FAIL: {', '.join(failed)}")
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
