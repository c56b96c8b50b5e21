"""``python -m toolkit.evals``: evaluations from a shell, for CI.

    python -m toolkit.evals run evals/examples/quality.yaml --variant closed:web_search=false \\
        --variant grounded:web_search=true --fail-under 0.5 --json out.json
    python -m toolkit.evals list
    python -m toolkit.evals show RUN
    python -m toolkit.evals diff RUN_A RUN_B

``run`` answers on the model configured as for ``make serve`` (MODEL_ID, MODELS_FILE, SEARCH_PROVIDER),
or on a running server with ``--url``. A variant is ``NAME:key=value,key=value`` (any request field:
model, adapter, web_search, system_prompt, temperature, ...; values are JSON where they parse, text
otherwise), or a table of a TOML file (``--variants``): ``[variants.NAME]`` with its fields.

Exit codes: 0 passed; 1 a variant's pass rate is under ``--fail-under``, or (``--baseline``) questions
that passed in the baseline fail now and McNemar's p < 0.05; 2 bad input (the dataset, a variant, a
run id) or nothing could run; 130 interrupted (the finished cells are kept: ``--resume RUN``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.evals.results import Diff, EvalRun
from toolkit.evals.runs import RunStore

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """A command line that cannot run: exit 2 with this message."""


def parse_variant(text: str) -> dict[str, Any]:
    """``NAME:key=value,key=value`` -> ``{"label": NAME, key: value, ...}`` (values JSON where they parse)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise BadInput(f"--variant {text!r}: give NAME:key=value,... (NAME: alone for the model's defaults)")
    variant: dict[str, Any] = {"label": name.strip()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"--variant {name}: {part!r} is not key=value")
        try:
            variant[key.strip()] = json.loads(value)
        except ValueError:
            variant[key.strip()] = value
    return variant


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
    return [{"label": name, **fields} for name, fields in tables.items()]


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
    header = f"{'variant':<32}{'n':>5}{'passed':>8}{'rate':>8}{'95% CI':>16}{'tokens':>8}{'p50 s':>8}{'errors':>8}"
    print(header)
    for s in (run.variant_summary(label) for label in run.labels):
        ci = f"{s['ci_low']:.2f}-{s['ci_high']:.2f}"
        latency = f"{s['p50_latency_s']:.2f}" if s["p50_latency_s"] is not None else "-"
        tokens = f"{s['mean_tokens']:.0f}" if s["mean_tokens"] is not None else "-"
        print(
            f"{s['name'][:31]:<32}{s['n']:>5}{s['passed']:>8}{s['pass_rate']:>8.1%}{ci:>16}{tokens:>8}{latency:>8}"
            f"{s['errors']:>8}"
        )


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
    from toolkit.evals.runner import evaluate

    variants = [parse_variant(v) for v in args.variant or ()]
    if args.variants:
        variants += read_variants(args.variants)
    if not variants:
        variants = [{"label": "default"}]
    if args.fail_under is not None and not 0 <= args.fail_under <= 1:
        raise BadInput(f"--fail-under must be a rate between 0 and 1, got {args.fail_under}")
    store = _store(args.store)
    baseline = _needs_store(store).load(args.baseline) if args.baseline else None
    service = _service(args.url)
    try:
        run = evaluate(
            service,
            args.dataset,
            variants,
            repeats=args.repeats,
            name=args.name,
            store=store.store if store is not None else None,
            resume=args.resume,
            progress=not args.quiet,
        )
    finally:
        close = getattr(service, "close", None)
        if close is not None:
            close(grace_s=0)
    print_summary(run)
    code = EXIT_OK
    for s in (run.variant_summary(label) for label in run.labels):
        if args.fail_under is not None and s["pass_rate"] < args.fail_under:
            print(f"FAIL: {s['name']} passed {s['pass_rate']:.1%}, under --fail-under {args.fail_under:.1%}")
            code = EXIT_FAILED
    diffs = baseline_diffs(run, baseline) if baseline is not None else []
    for diff in diffs:
        print(diff)
        if regressed(diff):
            print(f"FAIL: {diff.b} broke {len(diff.broken)} question(s) that passed in {diff.a}")
            code = EXIT_FAILED
    if args.json:
        report = run.to_json()
        report["diff"] = [d.to_dict() for d in diffs] if diffs else None
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if run.status == "interrupted":
        print(f"interrupted: resume with --resume {run.id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


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
            marks.append(" - " if not rows else f"{sum(r.passed for r in rows)}/{len(rows)}")
        print(f"{sample_id:<{width + 2}}" + "  ".join(f"{m:^3}" for m in marks))
    for i, label in enumerate(run.labels):
        print(f"[{i + 1}] {label}")
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
    except ToolkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
