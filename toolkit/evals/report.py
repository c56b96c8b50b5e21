"""An evaluation as one self-contained HTML file, to look at and to attach: no script, no outside request.

    python -m toolkit.evals report RUN -o run.html [--diff A B] [--baseline RUN]
    from toolkit.evals.report import render, write
    write(run, "run.html")                       # in a notebook (render: the page); the Evaluate tab has a button

It holds the summary with the intervals (and what the set is too small to tell), the chart (an inline SVG),
the matrix (error cells marked apart), the diff of two variants or of a baseline run, and each cell: its
answer, sources, checks, grounding and run record id.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.evals.results import Diff, EvalRow, EvalRun

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #0f172a; margin: 24px auto; max-width: 1100px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #475569; } table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #cbd5e1; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #15803d; } .fail { color: #b91c1c; } .error { color: #64748b; } .some { color: #b45309; }
.matrix td { text-align: center; } .matrix td a { text-decoration: none; color: inherit; }
.note { background: #fffbeb; border: 1px solid #fcd34d; padding: 6px 10px; border-radius: 4px; }
details { border: 1px solid #e2e8f0; border-radius: 4px; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 600; } .answer { white-space: pre-wrap; background: #f8fafc; padding: 6px; }
.cell { border-top: 1px dashed #cbd5e1; padding-top: 6px; margin-top: 6px; } code { font-size: 12px; }
"""


def render(run: EvalRun, *, diffs: list[Diff] | None = None, title: str | None = None) -> str:
    """The run as one HTML page; ``diffs``: the comparisons to show (default: the first two variants')."""
    if diffs is None:
        diffs = [run.diff(run.labels[0], run.labels[1])] if len(run.labels) >= 2 else []
    heading = title or f"{run.name}: evaluation {run.id}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        f"<title>{_e(heading)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(heading)}</h1>",
        f"<p class='meta'>dataset {_e(run.dataset)} · {len(run.inputs)} samples × {len(run.labels)} variants × "
        f"{run.repeats} repeat(s) · {_e(run.status)} · created {_e(run.created_at)}"
        + (f" · {run.seconds:.1f} s" if run.seconds else "")
        + "</p>",
        _summary(run),
        "<h2>Pass rates</h2>",
        _chart(run),
        "<h2>Matrix</h2>",
        _matrix(run),
    ]
    for diff in diffs:
        parts += [f"<h2>Diff: {_e(diff.a)} → {_e(diff.b)}</h2>", _diff(diff)]
    parts += ["<h2>Every cell</h2>", _cells(run), "</body></html>"]
    return "\n".join(parts)


def write(run: EvalRun, path: str | Path, *, diffs: list[Diff] | None = None, title: str | None = None) -> str:
    """The run's page (``render``), written to ``path``; returns the page."""
    page = render(run, diffs=diffs, title=title)
    Path(path).write_text(page, encoding="utf-8")
    return page


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _rate(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "–"


def _summary(run: EvalRun) -> str:
    rows = []
    summaries = [run.variant_summary(label) for label in run.labels]
    for s in summaries:
        errors = ", ".join(f"{code} {n}" for code, n in s["error_codes"].items())
        rows.append(
            f"<tr><td>{_e(s['name'])}</td><td class='num'>{s['n']}</td><td class='num'>{s['passed']}</td>"
            f"<td class='num'>{_rate(s['pass_rate'])}</td>"
            f"<td class='num'>{s['ci_low']:.2f}–{s['ci_high']:.2f}</td>"
            f"<td class='num'>{_rate(s['weighted_pass_rate'])}</td>"
            f"<td class='num error'>{s['errors']}{f' ({_e(errors)})' if errors else ''}</td>"
            f"<td class='num'>{s['cached']}</td>"
            f"<td class='num'>{s['p50_latency_s'] if s['p50_latency_s'] is not None else '–'}</td>"
            f"<td>{_e(', '.join(f'{m} {r:.0%}' for m, r in s['metrics'].items()))}</td></tr>"
        )
    return (
        "<h2>Summary</h2><table><tr><th>variant</th><th>n</th><th>passed</th><th>rate</th><th>95 % CI</th>"
        "<th>weighted</th><th>errors</th><th>from store</th><th>p50 s</th><th>metrics</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(f"<p class='note'>{_e(note)}.</p>" for note in run.notes())
    )


def _chart(run: EvalRun) -> str:
    """The pass-rate chart as an inline SVG (matplotlib's, its fonts as paths: nothing to fetch)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure = run.chart()
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg")
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _matrix(run: EvalRun) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in run.labels)
    body = []
    for sample_id, text in run.inputs.items():
        cells = []
        for label in run.labels:
            mark, _, tip = run.cell_mark(sample_id, label)
            css = {"✓": "pass", "✗": "fail", "⚠": "error"}.get(mark, "some")
            anchor = f"#{_anchor(sample_id)}"
            cells.append(f"<td class='{css}' title='{_e(tip[:300])}'><a href='{anchor}'>{_e(mark)}</a></td>")
        body.append(f"<tr><td title='{_e(text)}'>{_e(sample_id)}</td>{''.join(cells)}</tr>")
    return (
        f"<table class='matrix'><tr><th>sample</th>{head}</tr>{''.join(body)}</table>"
        "<p class='meta'>✓ passed · ✗ failed · ⚠ error cell (no verdict) · k/n passed of n repeats</p>"
    )


def _diff(diff: Diff) -> str:
    def flips(items: Any, mark: str) -> str:
        return "".join(
            f"<tr><td>{mark}</td><td><a href='#{_anchor(f.sample_id)}'>{_e(f.sample_id)}</a></td>"
            f"<td>{_e(f.input[:120])}</td><td>{'retrieval changed' if f.retrieval_changed else ''}</td></tr>"
            for f in items
        )

    verdict = "significant" if diff.significant else "not significant"
    return (
        f"<p>{diff.pairs} paired answers: {len(diff.fixed)} fixed, {len(diff.broken)} broken; McNemar's exact "
        f"p = {diff.p_value:.3g} ({verdict}). {_e(diff.detectable[:1].upper() + diff.detectable[1:])}."
        + (f" {diff.errors} pair(s) with an error cell left out." if diff.errors else "")
        + "</p><table><tr><th></th><th>sample</th><th>input</th><th></th></tr>"
        + flips(diff.fixed, "✓ fixed")
        + flips(diff.broken, "✗ broken")
        + "</table>"
    )


def _anchor(sample_id: str) -> str:
    return "s-" + "".join(c if c.isalnum() else "-" for c in sample_id)


def _cells(run: EvalRun) -> str:
    out = []
    for sample_id, text in run.inputs.items():
        rows = [r for label in run.labels for r in run.rows if r.sample_id == sample_id and r.variant == label]
        cells = "".join(_cell(r) for r in rows)
        out.append(
            f"<details id='{_anchor(sample_id)}'><summary>{_e(sample_id)}: {_e(text[:140])}</summary>"
            f"<p><b>Question:</b> {_e(text)}</p>{cells}</details>"
        )
    return "".join(out)


def _cell(r: EvalRow) -> str:
    head = f"<b>{_e(r.variant)}</b>" + (f" (repeat {r.repeat})" if r.repeat else "")
    if not r.scored:
        verdict = f"<span class='error'>⚠ error {_e(r.error_code or '')}: {_e(r.error or '')}</span>"
    else:
        verdict = "<span class='pass'>✓ passed</span>" if r.passed else "<span class='fail'>✗ failed</span>"
    facts = [f"finish {_e(r.finish_reason)}"] if r.finish_reason else []
    if r.completion_tokens is not None:
        facts.append(f"{r.completion_tokens} tokens")
    if r.total_s is not None:
        facts.append(f"{r.total_s:.2f} s" + (" (the original answer's, from the store)" if r.cached else ""))
    if r.record_id:
        facts.append(f"run record <code>{_e(r.record_id)}</code>")
    checks = "".join(
        f"<li class='{'pass' if s.passed else 'fail'}'>{'✓' if s.passed else '✗'} {_e(s.check)} "
        f"({s.score:g}{', weight ' + format(s.weight, 'g') if s.weight != 1 else ''}): {_e(s.reason)}</li>"
        for s in r.scores
    )
    sources = "".join(
        f"<li>[{_e(s.get('index'))}] {_e(s.get('title') or '')} <code>{_e(s.get('url') or '')}</code></li>"
        for s in r.sources
    )
    return (
        f"<div class='cell'>{head}: {verdict} <span class='meta'>{' · '.join(facts)}</span>"
        + (f"<div class='answer'>{_e(r.text)}</div>" if r.text else "")
        + (f"<ul>{checks}</ul>" if checks else "")
        + (f"<p class='meta'>grounding: {_e(r.grounding)}</p>" if r.grounding else "")
        + (f"<p class='meta'>sources:</p><ol>{sources}</ol>" if sources else "")
        + "</div>"
    )
