"""Running an evaluation: every sample × variant × repeat through a ``Service``, concurrently and bounded, with
frozen retrieval, a progress bar, the store (resume, and answers cached by what decides them), and the
checks applied to each answer.

    run = evaluate(service, "evals/examples/quality.yaml", grid(web_search=[False, True]))
    run.summary(); run.diff("web_search=False", "web_search=True")
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from toolkit.errors import InvalidRequest, ToolkitError
from toolkit.evals.answers import SEARCHED, Answers, Keys, Searches, ask
from toolkit.evals.assertions import CheckError, Score, score, verdict
from toolkit.evals.dataset import Dataset, Sample, dataset, load_dataset
from toolkit.evals.results import EvalRow, EvalRun
from toolkit.evals.runs import RunStore
from toolkit.judge import ModelJudge, yes_or_no
from toolkit.params import InferRequest, split_model
from toolkit.store import Store, now
from toolkit.variants import Variant, label_of
from toolkit.variants import variants as typed_variants

MAX_VARIANTS = 64
# cells in flight where the model's engine cannot say how many it batches (a remote server): its batch full
CONCURRENCY = 16
# answers that did not finish: error cells (no verdict), with the code and the reason they show
UNFINISHED = {
    "timeout": (
        "TIMEOUT",
        "the answer ran out of time (REQUEST_TIMEOUT, or the variant's timeout_s) after {tokens} tokens",
    ),
    "cancelled": ("CANCELLED", "the answer was cancelled after {tokens} tokens"),
}


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes, each a variant labelled by what it sets:
    ``grid(model=["a", "b"], adapter=[None, "quenby"], web_search=[False, True])`` gives 8."""
    names = list(axes)
    out = []
    for values in itertools.product(*(axes[n] for n in names)):
        fields = dict(zip(names, values, strict=True))
        out.append({"label": label_of(fields, 0), **{k: v for k, v in fields.items() if v is not None}})
    return out


def variants(specs: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> list[Variant]:
    """Variants from a list of dicts (``label`` optional) or ``{label: fields}``, as ``service.compare`` takes,
    each field typed by its declaration (``toolkit.variants``)."""
    chosen = typed_variants(specs, most=MAX_VARIANTS, what="an evaluation")
    for variant in chosen:
        if "request_id" in variant.fields:
            raise InvalidRequest(f"variants[{variant.label}].request_id", "each cell gets its own; leave it out")
    return chosen


@dataclass(frozen=True)
class _Cell:
    sample: Sample
    variant: Variant
    repeat: int
    request: InferRequest


def evaluate(
    service: Any,
    data: Dataset | str | Path | Iterable[Mapping[str, Any]],
    specs: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    *,
    repeats: int = 1,
    name: str | None = None,
    store: Store | str | Path | Literal[False] | None = None,
    resume: str | None = None,
    research: bool = False,
    concurrency: int | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_row: Callable[[EvalRow], object] | None = None,
) -> EvalRun:
    """Ask every sample as every variant, ``repeats`` times, through ``service`` (an ``InferenceService`` or a
    ``RemoteService``); check each answer; keep each cell in the store as it finishes.

    Bad input (the dataset, a variant naming an unknown model or adapter, a judge that is not served) is
    refused before any search or generation. Each sample searches once and every cell that searches uses
    that snapshot (``research``: each cell searches on its own). A variant that leaves ``seed`` out gets the
    repeat's number, so that sampled repeats differ and reruns repeat. An answer is taken from the store when
    the same model, adapter, parameters, messages and search results gave it before.

    ``store``: where the run is kept (a path or a ``Store``; default: the settings' ``TOOLKIT_STORE``; False:
    nowhere, and nothing is cached). Ctrl-C (a kernel interrupt, also while a cell's checks run, and a second
    one while the cells in flight end), or setting ``stop``, keeps the finished cells and marks the run
    interrupted: ``evaluate(..., resume=run.id)`` does the rest. ``on_row`` is called with each cell as it
    finishes (the dashboard's progress).

    ``concurrency``: cells in flight (default: what the variants' models generate together, their engine's
    batch size), so that no cell waits behind this run's own in the engine's queue and its timeout counts
    from when its answer starts. A cell that times out, is refused or whose engine fails is an error cell:
    it has no verdict and counts in no pass rate (``EvalRun.errors()``); resuming a run asks them again. So
    is a cell whose check could not judge its answer (a regex check out of time: ``CHECK_TIMEOUT``).
    """
    if repeats < 1:
        raise InvalidRequest("repeats", f"must be >= 1, got {repeats}")
    models = {m.id: m for m in service.models()}
    data = _dataset(data, models)
    chosen = variants(specs)
    for judge_name in data.judges():
        if judge_name not in models:
            raise InvalidRequest("judge", f"{judge_name!r} is not a model this service serves ({', '.join(models)})")
    cells = [_Cell(s, v, r, _request(s, v, r)) for s in data.samples for v in chosen for r in range(repeats)]
    first: dict[
        str, _Cell
    ] = {}  # each variant's first cell: its model, adapter and parameters checked before anything runs
    for cell in cells:
        first.setdefault(cell.variant.label, cell)
    for cell in first.values():
        try:
            service.validate(cell.request)
        except InvalidRequest as exc:
            raise InvalidRequest(f"variants[{cell.variant.label}].{exc.field}", exc.detail) from None
    if concurrency is None:
        concurrency = _batch(models, {c.request.model for c in first.values()})
    elif isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequest("concurrency", f"must be an integer >= 1, got {concurrency!r}")
    if any(c.request.web_search for c in cells) and hasattr(service, "searcher") and service.searcher is None:
        raise InvalidRequest("web_search", "a variant searches, but web search is off on this service")
    runs = _run_store(service, store)
    keys = Keys(service, models)
    answers = Answers(runs)
    judge = _judge(service)
    run, done = _open(runs, resume, name or data.name, data, chosen, repeats)
    # from here on the run is in the store: however this ends, it is marked done or interrupted (below)
    started = time.perf_counter()
    searches: Searches

    def one(cell: _Cell) -> EvalRow:
        searching = cell.request.web_search
        search_hash = None
        try:
            snapshot = searches.get(cell.sample) if searching else None
            search_hash = run.searches.get(cell.sample.id) if snapshot is not None else None
            if snapshot is not None and snapshot.status not in SEARCHED:  # retrieval failed: nothing to judge
                why = snapshot.failure.message if snapshot.failure is not None else snapshot.status
                return EvalRow(
                    cell.sample.id,
                    cell.variant.label,
                    cell.repeat,
                    False,
                    error=f"the web search failed ({why}); nothing was asked without its sources",
                    error_code=f"SEARCH_{snapshot.status.upper()}",
                    search=search_hash,
                    weight=cell.sample.weight,
                )
            # cached only when what it saw is known: no search, or the frozen snapshot
            key = keys.of(cell.request, snapshot) if not searching or snapshot is not None else None
            answer, cached = answers.get(key, lambda: ask(service, cell.request, snapshot, stop))
        except Exception as exc:  # an error cell says why, and counts in no rate; the others go on
            message = exc.message if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {exc}"
            code = exc.code if isinstance(exc, ToolkitError) else "INTERNAL"
            return EvalRow(
                cell.sample.id,
                cell.variant.label,
                cell.repeat,
                False,
                error=message,
                error_code=code,
                search=search_hash,
                weight=cell.sample.weight,
            )
        unfinished = UNFINISHED.get(answer.finish_reason)
        searched = (answer.record.get("search") or {}).get("status") if searching else None
        if searched is not None and searched not in SEARCHED:  # research=True: the cell's own search failed
            unfinished = (
                f"SEARCH_{searched.upper()}",
                f"the web search failed ({searched}); it answered without sources",
            )
        error: str | None = None
        error_code: str | None = None
        scores: tuple[Score, ...] = ()
        passed, weighted = False, None
        if unfinished is not None:  # no whole answer to check: an error cell, not a failure of the model
            error_code, why = unfinished
            error = why.format(tokens=answer.completion_tokens)
        else:
            try:
                scores = _scores(cell.sample, answer, judge)
                passed, weighted = verdict(scores, cell.sample.threshold)
            except CheckError as exc:  # a check could not judge the answer: no verdict either
                error_code, error, scores = exc.code, exc.message, ()
        return EvalRow(
            sample_id=cell.sample.id,
            variant=cell.variant.label,
            repeat=cell.repeat,
            passed=passed,
            scores=scores,
            text=answer.text,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            first_token_s=answer.first_token_s,
            total_s=answer.total_s,
            tokens_per_s=answer.tokens_per_s,
            grounding=answer.grounding.summary if answer.grounding is not None else None,
            sources=answer.sources,
            record_id=answer.record.get("request_id"),
            record=answer.record,
            search=search_hash,
            cached=cached,
            error=error,
            error_code=error_code,
            score=weighted,
            weight=cell.sample.weight,
        )

    bar: Any = _NoBar()
    pool: ThreadPoolExecutor | None = None
    running: dict[Future[EvalRow], _Cell] = {}

    def keep(row: EvalRow) -> None:
        run.rows.append(row)
        if runs is not None:
            runs.save_row(run.id, row)
        bar.update(1)
        if on_row is not None:
            on_row(row)

    status = "interrupted"  # unless every cell is kept
    try:
        searches = Searches(service, run, runs, research, stop)
        todo = [c for c in cells if (c.sample.id, c.variant.label, c.repeat) not in done]
        bar = _bar(len(todo), run.name, progress)
        pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="eval")
        queue = iter(todo)
        for cell in itertools.islice(queue, concurrency):
            running[pool.submit(one, cell)] = cell
        while running and not (stop is not None and stop.is_set()):
            finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                keep(future.result())  # an interrupt raised in the cell (its checks) is raised here
                following = next(queue, None)
                if following is not None and not (stop is not None and stop.is_set()):
                    running[pool.submit(one, following)] = following
        if len(run.rows) == len(cells):
            status = "done"
    except KeyboardInterrupt:  # Ctrl-C (SIGTERM in the CLI): the finished cells are kept, the run interrupted
        pass
    finally:  # also when something else went wrong: the run is never left 'running' in the store
        run.status = status
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C again while the cells in flight end: no more waiting
            _drain(service, running, keep)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        run.seconds = round((run.seconds or 0) + time.perf_counter() - started, 3)
        order = {(c.sample.id, c.variant.label, c.repeat): i for i, c in enumerate(cells)}
        run.rows.sort(key=lambda r: order.get((r.sample_id, r.variant, r.repeat), len(order)))
        if runs is not None:
            runs.finish(run)
    return run


def _scores(sample: Sample, answer: Any, judge: Any) -> tuple[Score, ...]:
    """The sample's checks applied to ``answer``; ``CheckError`` (naming the check) where one cannot judge it,
    and where one fails unexpectedly (the cell's error, not the run's)."""
    out = []
    for i, check in enumerate(sample.checks):
        try:
            out.append(score(check, answer, sample.input, judge, sample.metric))
        except CheckError as exc:
            raise CheckError(exc.code, f"assert[{i}] {exc.message}") from None
        except Exception as exc:
            raise CheckError("CHECK_ERROR", f"assert[{i}] {check.label} failed: {type(exc).__name__}: {exc}") from None
    return tuple(out)


def _drain(service: Any, running: Mapping[Future[EvalRow], _Cell], keep: Callable[[EvalRow], None]) -> None:
    """An interrupted run's cells in flight: cancelled; those that finished whole anyway are kept (not one that
    was cancelled, failed or raised, an interrupt included)."""
    for cell in running.values():
        service.cancel(cell.request.request_id)
    for future in list(running):
        finished, _ = wait([future], timeout=60)
        if not finished or future.cancelled() or future.exception() is not None:
            continue
        row = future.result()
        if row.error is None and row.finish_reason != "cancelled":
            keep(row)


async def aevaluate(
    service: Any,
    data: Dataset | str | Path | Iterable[Mapping[str, Any]],
    specs: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    **options: Any,
) -> EvalRun:
    """``evaluate`` for an event loop: it runs on a worker thread; cancelling the task stops it (the finished
    cells stay in the store, to resume)."""
    import asyncio

    stop = threading.Event()
    try:
        return await asyncio.to_thread(evaluate, service, data, specs, stop=stop, **options)
    except asyncio.CancelledError:
        stop.set()
        raise


def _batch(models: Mapping[str, Any], names: set[str | None]) -> int:
    """What the variants' models generate together: the smallest batch size among them (CONCURRENCY where
    none says)."""
    sizes = []
    for name in names:
        if name is None:
            info = next((m for m in models.values() if m.default), None)
        else:  # a model's id, or "<model>:<adapter>"
            found = split_model(name, models)
            info = models[found[0]] if found is not None else None
        size = getattr(info, "batch_size", None)
        if size:
            sizes.append(int(size))
    return min(sizes) if sizes else CONCURRENCY


def _run_store(service: Any, store: Store | str | Path | Literal[False] | None) -> RunStore | None:
    """``store``, or (None) the one the settings name: the service's own, or TOOLKIT_STORE; False: none."""
    if store is False:
        return None
    if store is None:
        from toolkit.settings import Settings

        settings = getattr(service, "settings", None)
        store = (settings if isinstance(settings, Settings) else Settings.from_env()).store
        if store is None:  # TOOLKIT_STORE=off
            return None
    return RunStore(store if isinstance(store, Store) else Store(store))


def _dataset(data: Any, models: Mapping[str, Any]) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_dataset(data, models=list(models))
    return dataset(data, models=list(models))


def _request(sample: Sample, variant: Variant, repeat: int) -> InferRequest:
    fields = dict(variant.fields)
    web = fields.pop("web_search", None)
    system = fields.pop("system_prompt", None)
    fields.setdefault("seed", repeat)
    try:
        return InferRequest.build(
            sample.input,
            history=sample.history,
            system_prompt=system if system is not None else sample.system_prompt,
            web_search=web if web is not None else bool(sample.web_search),
            **fields,
        )
    except InvalidRequest as exc:
        raise InvalidRequest(f"variants[{variant.label}].{exc.field}", exc.detail) from None


def _open(
    runs: RunStore | None, resume: str | None, name: str, data: Dataset, chosen: list[Variant], repeats: int
) -> tuple[EvalRun, set[tuple[str, str, int]]]:
    specs = [{"label": v.label, "fields": v.fields} for v in chosen]
    if resume is not None:
        if runs is None:
            raise InvalidRequest("resume", "resuming needs the store (TOOLKIT_STORE)")
        run = runs.load(resume)
        if run.dataset_hash != data.hash or run.variants != specs or run.repeats != repeats:
            raise InvalidRequest("resume", f"run {resume} asked other questions or variants; start a new run")
        run.rows = [r for r in run.rows if r.error is None]
        return run, {(r.sample_id, r.variant, r.repeat) for r in run.rows}
    run = EvalRun(
        id=time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3),
        name=name,
        dataset=data.path or data.name,
        dataset_hash=data.hash,
        variants=specs,
        repeats=repeats,
        inputs={s.id: s.input for s in data.samples},
        created_at=now(),
    )
    if runs is not None:
        runs.create(run, data)
    return run, set()


def _judge(service: Any) -> Callable[[str, str], tuple[bool | None, str | None]]:
    def ask(name: str, question: str) -> tuple[bool | None, str | None]:
        try:
            result = ModelJudge(service, name).ask(question)
        except ToolkitError:
            return None, None
        return yes_or_no(result.text), result.run_record.request_id

    return ask


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _bar(total: int, name: str, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="answer")
