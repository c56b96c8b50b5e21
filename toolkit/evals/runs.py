"""Evaluation runs in the store (``toolkit.store``): created, each cell saved as it finishes, reopened,
listed, deleted; and the search snapshot each sample used."""

from __future__ import annotations

import json
from typing import Any

from toolkit.errors import InvalidRequest
from toolkit.evals.dataset import Dataset
from toolkit.evals.results import EvalRow, EvalRun
from toolkit.search import SearchOutcome
from toolkit.store import Store, now


class RunStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, run: EvalRun, data: Dataset) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO eval_runs (id, created_at, name, dataset, dataset_hash, variants, repeats, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.created_at,
                    run.name,
                    run.dataset,
                    run.dataset_hash,
                    json.dumps(run.variants),
                    run.repeats,
                    run.status,
                ),
            )
            db.executemany(
                "INSERT INTO eval_samples (run_id, position, sample_id, sample) VALUES (?, ?, ?, ?)",
                [(run.id, i, s.id, json.dumps(s.to_dict())) for i, s in enumerate(data.samples)],
            )

    def save_search(self, run_id: str, sample_id: str, snapshot: dict[str, Any]) -> None:
        self.store.execute(
            "UPDATE eval_samples SET search = ? WHERE run_id = ? AND sample_id = ?",
            (json.dumps(snapshot), run_id, sample_id),
        )

    def searches(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.store.query(
            "SELECT sample_id, search FROM eval_samples WHERE run_id = ? AND search IS NOT NULL", (run_id,)
        )
        return {sample_id: json.loads(search) for sample_id, search in rows}

    def save_row(self, run_id: str, row: EvalRow, key: str | None = None) -> None:
        self.store.execute(
            "INSERT OR REPLACE INTO eval_cells (run_id, sample_id, variant, repeat, key, row) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, row.sample_id, row.variant, row.repeat, key, json.dumps(row.to_dict())),
        )

    def finish(self, run: EvalRun) -> None:
        self.store.execute(
            "UPDATE eval_runs SET status = ?, finished_at = ?, seconds = ? WHERE id = ?",
            (run.status, now(), run.seconds, run.id),
        )

    def load(self, run_id: str) -> EvalRun:
        rows = self.store.query(
            "SELECT id, created_at, name, dataset, dataset_hash, variants, repeats, status, seconds "
            "FROM eval_runs WHERE id = ?",
            (run_id,),
        )
        if not rows:
            raise InvalidRequest("run", f"no evaluation run {run_id!r} in the store")
        rid, created, name, dataset, dataset_hash, variants, repeats, status, seconds = rows[0]
        samples = self.store.query(
            "SELECT sample_id, sample, search FROM eval_samples WHERE run_id = ? ORDER BY position", (rid,)
        )
        cells = self.store.query("SELECT row FROM eval_cells WHERE run_id = ?", (rid,))
        run = EvalRun(
            id=rid,
            name=name,
            dataset=dataset,
            dataset_hash=dataset_hash,
            variants=json.loads(variants),
            repeats=repeats,
            rows=[EvalRow.from_dict(json.loads(c[0])) for c in cells],
            inputs={sid: json.loads(sample)["input"] for sid, sample, _ in samples},
            status=status,
            created_at=created,
            seconds=seconds,
        )
        order = {(s, v["label"]): i for i, (s, _, _) in enumerate(samples) for v in run.variants}
        run.rows.sort(
            key=lambda r: (
                order.get((r.sample_id, r.variant), 0),
                run.labels.index(r.variant) if r.variant in run.labels else 0,
                r.repeat,
            )
        )
        run.searches = {
            sid: SearchOutcome.from_dict(json.loads(s), where="search").content_hash() for sid, _, s in samples if s
        }
        return run

    def list(self) -> list[dict[str, Any]]:
        """Runs, newest first: id, when, name, dataset, status, variants, cells."""
        rows = self.store.query(
            "SELECT r.id, r.created_at, r.name, r.dataset, r.status, r.variants, r.repeats, r.seconds, "
            "(SELECT COUNT(*) FROM eval_cells c WHERE c.run_id = r.id) "
            "FROM eval_runs r ORDER BY r.created_at DESC, r.rowid DESC"
        )
        return [
            {
                "id": rid,
                "created_at": created,
                "name": name,
                "dataset": dataset,
                "status": status,
                "variants": [v["label"] for v in json.loads(variants)],
                "repeats": repeats,
                "seconds": seconds,
                "cells": cells,
            }
            for rid, created, name, dataset, status, variants, repeats, seconds, cells in rows
        ]

    def delete(self, run_id: str) -> bool:
        with self.store.transaction() as db:
            cursor = db.execute("DELETE FROM eval_runs WHERE id = ?", (run_id,))
            return cursor.rowcount > 0
