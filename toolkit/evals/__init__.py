"""Evaluations: is variant B better than A on my questions, by how much, how sure, and which flipped?

    from toolkit.evals import evaluate, grid, runs
    run = evaluate(service, "evals/examples/quality.yaml", grid(web_search=[False, True]), repeats=1)
    run.summary()                               # pass rates with Wilson 95 % intervals
    run                                         # the pass/fail matrix in a notebook
    run.diff("web_search=False", "web_search=True")   # flips each way, McNemar's exact p

A dataset (JSONL, CSV or YAML; promptfoo's test shape) is checked whole before anything runs; variants are
``service.compare``'s; every cell is a replayable run, saved in the store (``TOOLKIT_STORE``).
``python -m toolkit.evals`` runs the same from a shell, for CI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.errors import DatasetError
from toolkit.evals.dataset import Dataset, Sample, dataset, load_dataset
from toolkit.evals.results import Diff, EvalRow, EvalRun
from toolkit.evals.runner import evaluate, grid, variants

__all__ = [
    "Dataset",
    "DatasetError",
    "Diff",
    "EvalRow",
    "EvalRun",
    "Sample",
    "dataset",
    "evaluate",
    "grid",
    "load_dataset",
    "open_run",
    "runs",
    "variants",
]


if TYPE_CHECKING:
    from toolkit.evals.runs import RunStore


def _store(store: Any = None) -> RunStore:
    from toolkit.evals.runs import RunStore
    from toolkit.settings import Settings
    from toolkit.store import Store

    if store is None:
        path = Settings.from_env().store
        if path is None:
            from toolkit.errors import ConfigError

            raise ConfigError("TOOLKIT_STORE", "the store is off; set TOOLKIT_STORE to a file to keep runs")
        store = path
    return RunStore(store if isinstance(store, Store) else Store(store))


def runs(store: Any = None) -> Any:
    """The store's evaluation runs, newest first, as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(_store(store).list())


def open_run(run_id: str, store: Any = None) -> EvalRun:
    """A run back from the store, to look at again or to diff with another."""
    from toolkit.errors import InvalidRequest

    try:
        return _store(store).load(run_id)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.field, exc.detail + "; list them with runs()") from None
