"""The run log: every answer's run record as one JSON line (``RUN_LOG=<path>``), and ``load`` for analysis.

    service = InferenceService(Settings.from_env(run_log="runs.jsonl")).start()
    ...
    from toolkit import runs
    frame = runs.load("runs.jsonl")        # a pandas DataFrame, one row an answer
    frame.groupby("model")["tokens_per_s"].median()

Lines are written whole (one ``write`` on a file opened for appending, under a lock), so concurrent
requests never interleave; a line torn by a crash is skipped with a warning when the log is read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from toolkit.errors import MissingDependency
from toolkit.results import InferResult, RunRecord

log = logging.getLogger("toolkit.runs")


class RunLog:
    """Appends results to a JSON-lines file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, result: InferResult) -> None:
        line = (json.dumps(entry(result), ensure_ascii=False) + "\n").encode()
        with self._lock:
            # every caller's prompts and answers: readable by the account the service runs as, no one else
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def keep(self, result: InferResult) -> None:
        """``append``, where a full disk must not lose the answer: a failure is logged as a warning."""
        try:
            self.append(result)
        except OSError as exc:
            log.warning("RUN_LOG %s: could not append %s: %s", self.path, result.id, exc)


def entry(result: InferResult) -> dict[str, Any]:
    """One log line: the result's measurements, and its run record (which holds the answer)."""
    return {
        "id": result.id,
        "model": result.model,
        "adapter": result.adapter,
        "finish_reason": result.finish_reason,
        "search_status": result.search_status,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "queued_s": result.timings.queued_s,
        "first_token_s": result.timings.first_token_s,
        "total_s": result.timings.total_s,
        "tokens_per_s": result.tokens_per_s,
        "text": result.text,
        "run_record": result.run_record.to_dict(),
    }


def read(path: str | Path) -> list[dict[str, Any]]:
    """The log's entries; a torn or broken line (a crash mid-write) is skipped with a warning."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                log.warning("run log %s: line %d is not whole JSON (a crash mid-write?); skipped", path, number)
                continue
            if isinstance(item, dict) and isinstance(item.get("run_record"), dict):
                entries.append(item)
            else:
                log.warning("run log %s: line %d is not a run log entry; skipped", path, number)
    return entries


def records(path: str | Path) -> list[RunRecord]:
    """The run records of the log, ready for ``service.replay``."""
    return [RunRecord.from_dict(e["run_record"]) for e in read(path)]


def load(path: str | Path) -> Any:
    """A pandas DataFrame, one row an answer: time, model, adapter, engine, parameters (and the usual ones as
    columns of their own), search status, tokens, timings, finish reason, text, request id."""
    try:
        import pandas as pd
    except ImportError:
        raise MissingDependency("pandas", "toolkit.runs.load") from None
    rows = []
    for item in read(path):
        record = item["run_record"]
        params = record.get("params") or {}
        rows.append(
            {
                "time": record.get("created_at"),
                "model": item.get("model"),
                "adapter": item.get("adapter"),
                "engine": record.get("engine"),
                "params": params,
                "temperature": params.get("temperature"),
                "seed": params.get("seed"),
                "max_new_tokens": params.get("max_new_tokens"),
                "search_status": item.get("search_status"),
                "prompt_tokens": item.get("prompt_tokens"),
                "completion_tokens": item.get("completion_tokens"),
                "queued_s": item.get("queued_s"),
                "first_token_s": item.get("first_token_s"),
                "total_s": item.get("total_s"),
                "tokens_per_s": item.get("tokens_per_s"),
                "finish_reason": item.get("finish_reason"),
                "text": item.get("text"),
                "request_id": item.get("id"),
                "replay_of": record.get("replay_of"),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame
