"""What an evaluation gives back: an ``EvalRun`` (one row per sample × variant × repeat), its summary with
Wilson intervals, a pass/fail matrix, a chart, and the paired ``Diff`` of two variants (of one run, or of
two runs) with McNemar's exact p-value."""

from __future__ import annotations

import html
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.evals.assertions import Score
from toolkit.evals.stats import ALPHA, mcnemar, min_flips, wilson


@dataclass(frozen=True)
class EvalRow:
    """One cell: a sample asked as one variant, one repeat."""

    sample_id: str
    variant: str
    repeat: int
    passed: bool
    scores: tuple[Score, ...] = ()
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_s: float | None = None
    total_s: float | None = None
    tokens_per_s: float | None = None
    grounding: str | None = None  # the grounding check's summary
    sources: tuple[dict[str, Any], ...] = ()
    record_id: str | None = None
    record: dict[str, Any] | None = None  # the run record: any cell replays (service.replay)
    search: str | None = None  # the search snapshot the cell used (its hash); None: no search
    cached: bool = False  # answered from the store (its timings are the original answer's)
    error: str | None = None  # why the cell has no verdict: it timed out, was refused, its engine failed
    error_code: str | None = None  # that error's code (TIMEOUT, OVERLOADED, MODEL_ERROR, ...)
    score: float | None = None  # the weighted mean of its checks' scores
    weight: float = 1.0  # its sample's weight in the weighted pass rate

    @property
    def scored(self) -> bool:
        """The cell has a verdict: an answer was checked (an error cell has none, and counts in no rate)."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRow:
        scores = tuple(Score(**s) for s in data.get("scores") or ())
        sources = tuple(data.get("sources") or ())
        return cls(**{**data, "scores": scores, "sources": sources})


@dataclass(frozen=True)
class Flip:
    """A question whose outcome differs between the two sides of a diff."""

    sample_id: str
    repeat: int
    input: str
    a_text: str | None
    b_text: str | None
    retrieval_changed: bool  # the two answers saw different search results


@dataclass(frozen=True)
class Diff:
    """Two variants on the same questions, paired: which flipped each way, and how sure that it is not chance."""

    a: str
    b: str
    pairs: int
    both_passed: int
    both_failed: int
    fixed: tuple[Flip, ...]  # failed in A, passed in B
    broken: tuple[Flip, ...]  # passed in A, failed in B
    p_value: float  # McNemar's exact test on the flips
    retrieval_changed: tuple[str, ...] = ()  # sample ids whose search results differ between A and B
    errors: int = 0  # pairs left out: an error cell on either side (no verdict to pair)
    min_flips: int | None = None  # the fewest one-way flips these pairs could call significant; None: none

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    @property
    def detectable(self) -> str:
        """What these pairs can tell, said before looking at the flips."""
        if self.min_flips is None:
            return (
                f"{self.pairs} pairs cannot show a significant change: "
                f"even all of them flipping one way gives p >= {ALPHA}"
            )
        return f"with {self.pairs} pairs, {self.min_flips} one-way flips are the fewest that can reach p < {ALPHA}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.a} -> {self.b}: {self.pairs} paired answers, {len(self.fixed)} fixed, {len(self.broken)} broken, "
            f"McNemar p = {self.p_value:.3g}" + (" (significant)" if self.significant else ""),
            f"  {self.detectable}",
        ]
        if self.errors:
            lines.append(f"  {self.errors} pair(s) left out: an error cell on one side or both")
        lines += [f"  fixed:  {f.sample_id}#{f.repeat} {f.input[:60]}" for f in self.fixed]
        lines += [f"  broken: {f.sample_id}#{f.repeat} {f.input[:60]}" for f in self.broken]
        if self.retrieval_changed:
            lines.append(f"  retrieval changed for: {', '.join(self.retrieval_changed)} (not only generation)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        def rows(flips: Sequence[Flip], mark: str) -> str:
            return "".join(
                f"<tr><td>{mark}</td><td>{html.escape(f.sample_id)}</td><td>{html.escape(f.input[:80])}</td>"
                f"<td>{html.escape((f.a_text or '')[:120])}</td><td>{html.escape((f.b_text or '')[:120])}</td>"
                f"<td>{'retrieval changed' if f.retrieval_changed else ''}</td></tr>"
                for f in flips
            )

        verdict = "significant" if self.significant else "not significant"
        return (
            f"<p><b>{html.escape(self.a)} → {html.escape(self.b)}</b>: {self.pairs} paired answers, "
            f"{len(self.fixed)} fixed, {len(self.broken)} broken; "
            f"McNemar's exact p = {self.p_value:.3g} ({verdict}); {html.escape(self.detectable)}"
            + (f"; {self.errors} pair(s) with an error cell left out" if self.errors else "")
            + "</p>"
            "<table><tr><th></th><th>sample</th><th>input</th><th>A</th><th>B</th><th></th></tr>"
            f"{rows(self.fixed, '✓ fixed')}{rows(self.broken, '✗ broken')}</table>"
        )


@dataclass
class EvalRun:
    """An evaluation: its questions, variants and every cell; saved in the store as it goes."""

    id: str
    name: str
    dataset: str
    dataset_hash: str
    variants: list[dict[str, Any]]  # each {label, fields}
    repeats: int
    rows: list[EvalRow] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # sample id -> its input
    searches: dict[str, str | None] = field(default_factory=dict)  # sample id -> its snapshot's hash
    status: str = "running"  # running | done | interrupted
    created_at: str = ""
    seconds: float | None = None

    @property
    def labels(self) -> list[str]:
        return [v["label"] for v in self.variants]

    def row(self, sample_id: str, variant: str, repeat: int = 0) -> EvalRow | None:
        return next((r for r in self.rows if (r.sample_id, r.variant, r.repeat) == (sample_id, variant, repeat)), None)

    def to_dataframe(self) -> Any:
        """One row per sample × variant × repeat: pass, each check's score, text, tokens, timings, grounding,
        the run record's id."""
        import pandas as pd

        records = []
        for r in self.rows:
            item = {k: v for k, v in r.to_dict().items() if k not in ("scores", "record", "sources")}
            for i, s in enumerate(r.scores):
                label = s.check if sum(x.check == s.check for x in r.scores) == 1 else f"{s.check}#{i + 1}"
                item[label] = s.score
            records.append(item)
        return pd.DataFrame(records)

    def summary(self) -> Any:
        """Per variant: pass rate with a Wilson 95 % interval, n, mean tokens, p50 latency, tokens/s."""
        import pandas as pd

        return pd.DataFrame([self.variant_summary(label) for label in self.labels])

    def variant_summary(self, label: str) -> dict[str, Any]:
        """One variant: its pass rate over the scored cells (error cells apart), with a Wilson 95 % interval,
        the weighted pass rate, the fewest one-way flips its size can detect, and its answers' sizes and times
        (a cell from the store has its original answer's: ``cached`` counts them)."""
        rows = [r for r in self.rows if r.variant == label]
        scored = [r for r in rows if r.scored]
        n, passed = len(scored), sum(r.passed for r in scored)
        low, high = wilson(passed, n)
        weight = sum(r.weight for r in scored)
        answered = [r for r in scored if r.total_s is not None]  # from the store too: the original answer's times

        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 3) if values else None

        errors = [r for r in rows if not r.scored]
        return {
            "name": label,
            "n": n,
            "passed": passed,
            "pass_rate": round(passed / n, 4) if n else None,
            "ci_low": round(low, 4),
            "ci_high": round(high, 4),
            "weighted_pass_rate": round(sum(r.weight for r in scored if r.passed) / weight, 4) if weight else None,
            "errors": len(errors),
            "error_codes": dict(Counter(r.error_code or "ERROR" for r in errors)),
            "cached": sum(r.cached for r in rows),
            "min_flips": min_flips(n),
            "mean_tokens": round(statistics.fmean([r.completion_tokens or 0 for r in answered]), 1)
            if answered
            else None,
            "p50_latency_s": median([r.total_s for r in answered if r.total_s is not None]),
            "p50_first_token_s": median([r.first_token_s for r in answered if r.first_token_s is not None]),
            "tokens_per_s": median([r.tokens_per_s for r in answered if r.tokens_per_s]),
            "metrics": self.metric_rates(label),
        }

    def metric_rates(self, label: str) -> dict[str, float]:
        """Per named metric (a check's ``metric``, or its sample's): the share of scored cells of this variant
        with checks of that metric whose weighing checks of it all passed."""
        counts: dict[str, list[int]] = {}
        for r in self.rows:
            if r.variant != label or not r.scored:
                continue
            named: dict[str, bool] = {}
            for s in r.scores:
                if s.metric is not None and s.weight > 0:
                    named[s.metric] = named.get(s.metric, True) and s.passed
            for metric, ok in named.items():
                tally = counts.setdefault(metric, [0, 0])
                tally[0] += ok
                tally[1] += 1
        return {m: round(ok / total, 4) for m, (ok, total) in sorted(counts.items())}

    def notes(self) -> list[str]:
        """What the summary's table cannot show, said once for the CLI, the report and the dashboard: the error
        cells, the cells from the store, and what the set is large enough to tell."""
        summaries = [self.variant_summary(label) for label in self.labels]
        out = []
        errors = self.errors()
        if errors:
            codes = ", ".join(f"{c} {k}" for c, k in Counter(r.error_code or "ERROR" for r in errors).items())
            out.append(
                f"{len(errors)} error cell(s), not counted in any rate ({codes}): timed out, refused or failed, "
                "they have no verdict"
            )
        cached = sum(s["cached"] for s in summaries)
        if cached:
            out.append(
                f"{cached} of {len(self.rows)} cells came from the store (answered before, with the same model, "
                "parameters, messages and sources): their tokens and latencies are the original run's"
            )
        n = min((s["n"] for s in summaries), default=0)
        flips = summaries[0]["min_flips"] if summaries else None
        out.append(
            f"Too small to tell: {n} scored questions per variant cannot show a significant paired difference"
            if flips is None
            else f"A paired difference needs at least {flips} one-way flips to reach p < {ALPHA} ({n} scored questions)"
        )
        return out

    def errors(self) -> list[EvalRow]:
        """The cells without a verdict (timed out, refused, failed), in the run's order."""
        return [r for r in self.rows if not r.scored]

    def diff(self, a: str, b: str, other: EvalRun | None = None) -> Diff:
        """Variant ``a`` of this run against variant ``b`` (of ``other``, another run, when given), paired by
        sample and repeat."""
        theirs = other or self
        mine = {(r.sample_id, r.repeat): r for r in self.rows if r.variant == a}
        their = {(r.sample_id, r.repeat): r for r in theirs.rows if r.variant == b}
        common = mine.keys() & their.keys()
        keys = sorted(
            (k for k in common if mine[k].scored and their[k].scored), key=lambda k: (self._position(k[0]), k[1])
        )
        fixed: list[Flip] = []
        broken: list[Flip] = []
        changed = sorted(
            {k[0] for k in keys if mine[k].search != their[k].search},
            key=self._position,
        )
        for key in keys:
            x, y = mine[key], their[key]
            if x.passed == y.passed:
                continue
            flip = Flip(key[0], key[1], self.inputs.get(key[0], ""), x.text, y.text, x.search != y.search)
            (fixed if y.passed else broken).append(flip)
        both = sum(mine[k].passed and their[k].passed for k in keys)
        neither = sum(not mine[k].passed and not their[k].passed for k in keys)
        name_a = a if other is None else f"{self.id}:{a}"
        name_b = b if other is None else f"{theirs.id}:{b}"
        return Diff(
            name_a,
            name_b,
            len(keys),
            both,
            neither,
            tuple(fixed),
            tuple(broken),
            mcnemar(len(fixed), len(broken)),
            tuple(changed),
            len(common) - len(keys),
            min_flips(len(keys)),
        )

    def _position(self, sample_id: str) -> int:
        order = list(self.inputs)
        return order.index(sample_id) if sample_id in self.inputs else len(order)

    def cell_mark(self, sample_id: str, label: str) -> tuple[str, str, str]:
        """A matrix cell: its mark (✓, ✗, k/n, ⚠ for an error cell), its colour and its tooltip."""
        rows = [r for r in self.rows if r.sample_id == sample_id and r.variant == label]
        if not rows:
            return "", "#94a3b8", ""
        scored = [r for r in rows if r.scored]
        errors = len(rows) - len(scored)
        passed = sum(r.passed for r in scored)
        tip = "\n---\n".join(
            (f"error {r.error_code or ''}: {r.error}" if not r.scored else r.text or "") for r in rows
        )[:1500]
        if not scored:
            return "⚠", "#64748b", tip
        mark = "✓" if passed == len(scored) else "✗" if passed == 0 else f"{passed}/{len(scored)}"
        colour = "#16a34a" if passed == len(scored) else "#dc2626" if passed == 0 else "#d97706"
        return mark + (" ⚠" * bool(errors)), colour, tip

    def _repr_html_(self) -> str:
        """A matrix: samples down, variants across; each cell pass or fail (⚠: an error, no verdict), the
        answer or the error on hover (title)."""
        labels = self.labels
        head = "".join(f"<th>{html.escape(v)}</th>" for v in labels)
        body = []
        for sample_id, text in self.inputs.items():
            cells = []
            for label in labels:
                mark, colour, tip = self.cell_mark(sample_id, label)
                tip = html.escape(tip, quote=True)
                cells.append(f'<td title="{tip}" style="color:{colour};text-align:center;cursor:help">{mark}</td>')
            body.append(
                f"<tr><td title='{html.escape(text, quote=True)}'>{html.escape(sample_id)}</td>{''.join(cells)}</tr>"
            )
        summaries = [self.variant_summary(label) for label in labels]
        rates = "".join(f"<td style='text-align:center'>{s['passed']}/{s['n']}</td>" for s in summaries)
        errors = "".join(f"<td style='text-align:center;color:#64748b'>{s['errors'] or ''}</td>" for s in summaries)
        interrupted = ""
        if self.status == "interrupted":
            interrupted = (
                f"<p>Interrupted: <code>evaluate(..., resume={html.escape(repr(self.id))})</code> does the rest.</p>"
            )
        return (
            f"<p><b>{html.escape(self.name)}</b> ({html.escape(self.id)}, {self.status}): {len(self.inputs)} samples × "
            f"{len(labels)} variants × {self.repeats} repeats</p>{interrupted}"
            f"<table><tr><th>sample</th>{head}</tr>{''.join(body)}<tr><th>passed</th>{rates}</tr>"
            f"<tr><th title='cells without a verdict: timed out, refused, failed'>errors ⚠</th>{errors}</tr></table>"
        )

    def chart(self, ax: Any = None) -> Any:
        """Pass rates over the scored cells with their Wilson 95 % intervals, one bar per variant, each labelled
        with its n and its error cells (matplotlib; renders in Jupyter and in Voila)."""
        import matplotlib.pyplot as plt

        summaries = [self.variant_summary(label) for label in self.labels]
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4, 1.4 * len(summaries)), 3))
        rates = [s["pass_rate"] or 0.0 for s in summaries]
        errors = [
            [r - s["ci_low"] if s["n"] else 0 for r, s in zip(rates, summaries, strict=True)],
            [s["ci_high"] - r if s["n"] else 0 for r, s in zip(rates, summaries, strict=True)],
        ]
        ax.bar(range(len(rates)), rates, yerr=errors, capsize=4, color="#2563eb")
        for i, s in enumerate(summaries):
            note = f"n={s['n']}" + (f"\n{s['errors']} errors" if s["errors"] else "")
            ax.annotate(
                note, (i, 1.02), ha="center", va="bottom", fontsize=8, color="#b45309" if s["errors"] else "#334155"
            )
        ax.set_xticks(range(len(rates)), [s["name"] for s in summaries], rotation=20, ha="right")
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("pass rate (95 % CI)")
        ax.set_title(self.name)
        ax.figure.tight_layout()
        return ax.figure

    def to_json(self, diff: Diff | None = None) -> dict[str, Any]:
        """The CLI's ``--json``: the run id, each variant's summary, every row, and a diff if one was made."""
        return {
            "run_id": self.id,
            "name": self.name,
            "dataset": self.dataset,
            "status": self.status,
            "variants": [self.variant_summary(label) for label in self.labels],
            "errors": sum(not r.scored for r in self.rows),
            "rows": [
                {**{k: v for k, v in r.to_dict().items() if k != "record"}, "pass": r.passed if r.scored else None}
                for r in self.rows
            ],
            "diff": diff.to_dict() if diff is not None else None,
        }
