"""``python -m toolkit.evals``: evaluations from a shell, for CI.

    python -m toolkit.evals run evals/examples/quality.yaml --variant closed:web_search=false \\
        --variant grounded:web_search=true --fail-under 0.5 --json out.json
    python -m toolkit.evals list
    python -m toolkit.evals show RUN
    python -m toolkit.evals diff RUN_A RUN_B
    python -m toolkit.evals report RUN -o run.html

``run`` answers on the model configured as for ``make serve`` (MODEL_ID, MODELS_FILE, SEARCH_PROVIDER),
or on a running server with ``--url``; the dataset and the variants are checked first, before the model
loads. A variant is ``NAME:key=value,key=value`` (any request field: model, adapter, web_search,
system_prompt, temperature, ...; each value read by its field's declaration: web_search takes true/false
in any case or 1/0, numbers are numbers within their bounds), or a table of a TOML file (``--variants``):
``[variants.NAME]`` with its fields. With two variants, ``run`` prints their paired diff.

A cell that timed out, was refused or whose engine failed is an error cell, as is one whose check could not
judge its answer (a regex check out of time: CHECK_TIMEOUT): it counts in no pass rate and is shown apart
(``errors``); ``--resume RUN`` asks the error cells again.

Exit codes: 0 passed; 1 a variant's pass rate is under ``--fail-under``, or (``--baseline``) questions
that passed in the baseline fail now and McNemar's p < 0.05; 2 bad input (the dataset, a variant, a
run id) or nothing could run (every cell an error); 3 some cells are errors (more than ``--max-errors``,
default 0); 130 interrupted, by Ctrl-C or SIGTERM, also while a check runs (the finished cells are kept, the
run is marked interrupted: ``--resume RUN``).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from toolkit.errors import InvalidRequest, ToolkitError
from toolkit.evals.report import write
from toolkit.evals.results import Diff, EvalRun
from toolkit.evals.runs import RunStore
from toolkit.variants import typed

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ERRORS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class BadInput(Exception):
    """A command line that cannot run: exit 2 with this message."""


def parse_variant(text: str) -> dict[str, Any]:
    """``NAME:key=value,key=value`` -> ``{"label": NAME, key: value, ...}``, each value read by what its field is
    declared to be (``toolkit.variants``: ``web_search=False`` is false, ``web_search=no`` is refused)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise BadInput(f"--variant {text!r}: give NAME:key=value,... (NAME: alone for the model's defaults)")
    label = name.strip()
    given: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in _parts(rest))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"--variant {label}: {part!r} is not key=value")
        given[key.strip()] = _list(value.strip())
    return {"label": label, **_typed(given, label, "--variant")}


def _parts(text: str) -> list[str]:
    """``key=value`` pieces split at commas outside brackets (``stop=["a","b"]`` is one piece)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _list(value: str) -> Any:
    """A JSON list (``stop=["a","b"]``) as a list; any other value stays text, for its declaration to read."""
    if value.startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _typed(fields: dict[str, Any], label: str, option: str) -> dict[str, Any]:
    try:
        return typed(fields, f"variants[{label}]")
    except InvalidRequest as exc:
        raise BadInput(f"{option} {_in_cli_words(exc).removeprefix('variant ')}") from None


def read_variants(path: str) -> list[dict[str, Any]]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--variants {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"--variants {path}: not valid TOML ({exc})") from None
    tables = data.get("variants")
    if not isinstance(tables, dict) or not tables or not all(isinstance(v, dict) for v in tables.values()):
        raise BadInput(f"--variants {path}: needs [variants.NAME] tables, one per variant")
    return [{"label": name, **_typed(fields, name, f"--variants {path}:")} for name, fields in tables.items()]


def _store(path: str | None) -> RunStore | None:
    from toolkit.settings import Settings
    from toolkit.store import Store

    where = Path(path) if path else Settings.from_env().store
    return RunStore(Store(where)) if where is not None else None


def _needs_store(store: RunStore | None) -> RunStore:
    if store is None:
        raise BadInput("the store is off (TOOLKIT_STORE=off): give --store FILE")
    return store


def _service(url: str | None) -> Any:
    if url:
        from toolkit.client import ClientSettings, RemoteService

        service = RemoteService(url, api_key=ClientSettings.from_env().api_key)
        service.wait_ready(timeout_s=60)
        return service
    from toolkit.service import InferenceService
    from toolkit.settings import Settings

    return InferenceService(Settings.from_env()).start(progress=sys.stderr.isatty())


def print_summary(run: EvalRun) -> None:
    print(f"{run.name} ({run.id}, {run.status}): {len(run.inputs)} samples, {run.repeats} repeat(s)")
    summaries = [run.variant_summary(label) for label in run.labels]
    cached = sum(s["cached"] for s in summaries)
    latency = "p50 s*" if cached else "p50 s"
    header = f"{'variant':<32}{'n':>5}{'passed':>8}{'rate':>8}{'95% CI':>13}{'errors':>8}{'tokens':>8}{latency:>8}"
    print(header)
    for s in summaries:
        rate = f"{s['pass_rate']:.1%}" if s["pass_rate"] is not None else "-"
        ci = f"{s['ci_low']:.2f}-{s['ci_high']:.2f}" if s["n"] else "-"
        p50 = f"{s['p50_latency_s']:.2f}" if s["p50_latency_s"] is not None else "-"
        tokens = f"{s['mean_tokens']:.0f}" if s["mean_tokens"] is not None else "-"
        print(f"{s['name'][:31]:<32}{s['n']:>5}{s['passed']:>8}{rate:>8}{ci:>13}{s['errors']:>8}{tokens:>8}{p50:>8}")
    if any(s["weighted_pass_rate"] != s["pass_rate"] for s in summaries):
        print("weighted pass rate: " + ", ".join(f"{s['name']} {_rate(s['weighted_pass_rate'])}" for s in summaries))
    for s in summaries:
        if s["metrics"]:
            print(f"metrics of {s['name']}: " + ", ".join(f"{m} {r:.1%}" for m, r in s["metrics"].items()))
    for note in run.notes():
        print(note)
    for r in run.errors()[:3]:
        print(f"  {r.sample_id} / {r.variant}: {r.error}")


def _rate(rate: float | None) -> str:
    return f"{rate:.1%}" if rate is not None else "-"


def baseline_diffs(run: EvalRun, baseline: EvalRun) -> list[Diff]:
    """Each variant against the baseline's variant of the same name (or the only one against the only one)."""
    pairs = [(label, label) for label in run.labels if label in baseline.labels]
    if not pairs and len(run.labels) == 1 and len(baseline.labels) == 1:
        pairs = [(baseline.labels[0], run.labels[0])]
    if not pairs:
        raise BadInput(f"--baseline {baseline.id}: no variant of the same name ({', '.join(baseline.labels)})")
    return [baseline.diff(a, b, run) for a, b in pairs]


def regressed(diff: Diff) -> bool:
    """Questions that passed in A fail in B, more of them than the other way, and not by chance."""
    return len(diff.broken) > len(diff.fixed) and diff.significant


def cmd_run(args: argparse.Namespace) -> int:
    from toolkit.evals.dataset import load_dataset
    from toolkit.evals.runner import evaluate

    # everything that can be checked without the model is, first: a bad file fails in about a second
    if args.fail_under is not None and not 0 <= args.fail_under <= 1:
        raise BadInput(f"--fail-under must be a rate between 0 and 1, got {args.fail_under}")
    if args.max_errors is not None and args.max_errors < 0:
        raise BadInput(f"--max-errors must be >= 0, got {args.max_errors}")
    if args.concurrency is not None and args.concurrency < 1:
        raise BadInput(f"-j/--concurrency must be >= 1, got {args.concurrency}")
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be >= 1, got {args.limit}")
    variants = [parse_variant(v) for v in args.variant or ()]
    if args.variants:
        variants += read_variants(args.variants)
    if not variants:
        variants = [{"label": "default"}]
    data = load_dataset(args.dataset)
    try:
        data = data.chosen(limit=args.limit, pattern=args.filter)
    except InvalidRequest as exc:
        raise BadInput(f"--{exc.field} {args.filter if exc.field == 'filter' else args.limit}: {_said(exc)}") from None
    store = _store(args.store)
    baseline = _needs_store(store).load(args.baseline) if args.baseline else None
    if args.resume:
        _needs_store(store).load(args.resume)
    service = _service(args.url)
    previous = signal.signal(signal.SIGTERM, _terminated)  # a run killed by SIGTERM is interrupted, as Ctrl-C
    try:
        run = evaluate(
            service,
            data,
            variants,
            repeats=args.repeats,
            name=args.name,
            store=store.store if store is not None else None,
            resume=args.resume,
            progress=not args.quiet,
            concurrency=args.concurrency,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        close = getattr(service, "close", None)
        if close is not None:
            close(grace_s=0)
    print_summary(run)
    code = EXIT_OK
    for s in (run.variant_summary(label) for label in run.labels):
        if args.fail_under is not None and s["pass_rate"] is not None and s["pass_rate"] < args.fail_under:
            print(f"FAIL: {s['name']} passed {s['pass_rate']:.1%}, under --fail-under {args.fail_under:.1%}")
            code = EXIT_FAILED
    diffs = baseline_diffs(run, baseline) if baseline is not None else []
    if not diffs and len(run.labels) == 2:
        diffs = [run.diff(run.labels[0], run.labels[1])]
    for diff in diffs:
        print(diff)
        if baseline is not None and diff.min_flips is None:
            print(f"WARNING: --baseline cannot detect a regression here: {diff.detectable}")
        if baseline is not None and regressed(diff):
            print(f"FAIL: {diff.b} broke {len(diff.broken)} question(s) that passed in {diff.a}")
            code = EXIT_FAILED
    if args.json:
        report = run.to_json()
        report["diff"] = [d.to_dict() for d in diffs] if diffs else None
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if run.status == "interrupted":
        print(f"interrupted: {len(run.rows)} cells kept; resume with --resume {run.id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    errors = run.errors()
    if errors and len(errors) == len(run.rows):
        print(
            f"error: nothing could run: all {len(errors)} cells are errors, first: {errors[0].error}", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    allowed = args.max_errors or 0
    if len(errors) > allowed:
        reasons = "; ".join(dict.fromkeys(f"{r.error_code}: {r.error}" for r in errors[:20]))
        print(
            f"error: {len(errors)} cell(s) have no verdict (allowed: {allowed}; --max-errors N allows more): "
            f"{reasons[:400]}. Ask them again with --resume {run.id}",
            file=sys.stderr,
        )
        return EXIT_ERRORS
    return code


# a Python argument of evaluate() -> the option that sets it here
OPTIONS = {"resume": "--resume", "repeats": "--repeats", "concurrency": "-j/--concurrency", "judge": "a check's judge"}


def _in_cli_words(exc: InvalidRequest) -> str:
    """An error in this interface's words: ``--resume``, not ``resume=``; ``python -m toolkit.evals list``,
    not ``runs()``; a variant by its label."""
    said = _said(exc)
    if exc.field == "run":
        return f"{said}; list them with: python -m toolkit.evals list"
    if exc.field in OPTIONS:
        return f"{OPTIONS[exc.field]}: {said}"
    match = re.fullmatch(r"variants\[(.*)\]\.(?:params\.)?(.+)", exc.field)
    if match:
        return f"variant {match.group(1)}: {match.group(2)}: {said}"
    return exc.message


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _said(exc: InvalidRequest) -> str:
    return exc.detail


def cmd_list(args: argparse.Namespace) -> int:
    runs = _needs_store(_store(args.store)).list()
    print(f"{'id':<24}{'created':<27}{'status':<13}{'cells':>6}  name / variants")
    for r in runs:
        what = f"{r['name']}: {', '.join(r['variants'])}"
        print(f"{r['id']:<24}{r['created_at']:<27}{r['status']:<13}{r['cells']:>6}  {what}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    run = _needs_store(_store(args.store)).load(args.run)
    print_summary(run)
    width = max(len(i) for i in run.inputs)
    print("\n" + " " * (width + 2) + "  ".join(f"[{i + 1}]" for i in range(len(run.labels))))
    for sample_id in run.inputs:
        marks = []
        for label in run.labels:
            rows = [r for r in run.rows if r.sample_id == sample_id and r.variant == label]
            scored = [r for r in rows if r.scored]
            mark = f"{sum(r.passed for r in scored)}/{len(scored)}" if scored else " ⚠ "  # ⚠: error cells only
            marks.append(" - " if not rows else mark + ("⚠" if scored and len(scored) < len(rows) else ""))
        print(f"{sample_id:<{width + 2}}" + "  ".join(f"{m:^3}" for m in marks))
    for i, label in enumerate(run.labels):
        print(f"[{i + 1}] {label}")
    if run.errors():
        print("⚠: an error cell (timed out, refused, failed, a check that could not judge): no verdict, in no rate")
    if args.json:
        Path(args.json).write_text(json.dumps(run.to_json(), indent=2, default=str))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    store = _needs_store(_store(args.store))
    a, b = store.load(args.run_a), store.load(args.run_b)
    if args.a or args.b:
        diffs = [a.diff(args.a or a.labels[0], args.b or b.labels[0], None if a.id == b.id else b)]
    else:
        diffs = baseline_diffs(b, a)
    for diff in diffs:
        print(diff)
    if args.json:
        Path(args.json).write_text(json.dumps([d.to_dict() for d in diffs], indent=2, default=str))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    store = _needs_store(_store(args.store))
    run = store.load(args.run)
    diffs = None
    if args.baseline:
        diffs = baseline_diffs(run, store.load(args.baseline))
    elif args.diff:
        a, b = args.diff
        unknown = [v for v in (a, b) if v not in run.labels]
        if unknown:
            raise BadInput(f"--diff: run {run.id} has no variant {unknown[0]!r} ({', '.join(run.labels)})")
        diffs = [run.diff(a, b)]
    write(run, args.output, diffs=diffs)
    print(f"wrote {args.output}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    if not _needs_store(_store(args.store)).delete(args.run):
        raise BadInput(f"no evaluation run {args.run!r} in the store")
    print(f"deleted {args.run}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m toolkit.evals", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--store", help="the SQLite file of runs (default: TOOLKIT_STORE)")
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="evaluate a dataset across variants")
    run.add_argument("dataset", help="a .jsonl, .csv or .yaml file of samples")
    run.add_argument("--variant", action="append", metavar="NAME:key=value,...")
    run.add_argument("--variants", metavar="FILE.toml", help="[variants.NAME] tables")
    run.add_argument("--repeats", type=int, default=1)
    run.add_argument("--name", help="the run's name (default: the dataset's)")
    run.add_argument("--fail-under", type=float, metavar="RATE", help="exit 1 when a variant passes less")
    run.add_argument("--baseline", metavar="RUN_ID", help="exit 1 when this run breaks questions the baseline passed")
    run.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run")
    run.add_argument("--json", metavar="OUT", help="write the summary, the rows and the diff as JSON")
    run.add_argument("--url", metavar="GRAPHQL_URL", help="a running server (default: the model in process)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "-j", "--concurrency", type=int, metavar="N", help="answers in flight (default: what the model batches)"
    )
    run.add_argument("--limit", type=int, metavar="N", help="only the first N samples (after --filter)")
    run.add_argument("--filter", metavar="REGEX", help="only the samples whose id matches")
    run.add_argument(
        "--max-errors", type=int, metavar="N", help="exit 0/1 with up to N error cells (default 0: any exits 3)"
    )
    run.set_defaults(func=cmd_run)
    commands.add_parser("list", help="the stored runs, newest first").set_defaults(func=cmd_list)
    show = commands.add_parser("show", help="a stored run's summary and matrix")
    show.add_argument("run")
    show.add_argument("--json", metavar="OUT")
    show.set_defaults(func=cmd_show)
    diff = commands.add_parser("diff", help="two stored runs, paired: what flipped, McNemar's p")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--a", metavar="VARIANT", help="RUN_A's variant (default: each of the same name)")
    diff.add_argument("--b", metavar="VARIANT", help="RUN_B's variant")
    diff.add_argument("--json", metavar="OUT")
    diff.set_defaults(func=cmd_diff)
    report = commands.add_parser("report", help="a stored run as one self-contained HTML file")
    report.add_argument("run")
    report.add_argument("-o", "--output", required=True, metavar="OUT.html")
    report.add_argument("--diff", nargs=2, metavar=("A", "B"), help="the diff of two of its variants")
    report.add_argument("--baseline", metavar="RUN_ID", help="the diff against an earlier run")
    report.set_defaults(func=cmd_report)
    delete = commands.add_parser("delete", help="delete a stored run")
    delete.add_argument("run")
    delete.set_defaults(func=cmd_delete)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InvalidRequest as exc:  # said in this interface's words: its options, not the Python arguments
        print(f"error: {_in_cli_words(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ToolkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
