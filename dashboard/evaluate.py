"""The Evaluate tab: a dataset (uploaded, or a file of the evaluations folder) asked as 1 to 4 variants (the
Compare tab's controls), with a progress bar and Stop; then the pass rates with their intervals, the chart,
the pass/fail matrix (a cell opens its answer, its sources, its checks and a replay button) and the paired
diff against another variant of this run or of an earlier run from the store.

``backend.evaluate`` does the work (``toolkit.evals``); widgets are updated by setting their values, also
from the evaluation's thread (see ``dashboard.app``).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from dashboard import bubbles, controls
from dashboard.compare import Column, Columns
from dashboard.config import DashboardSettings
from toolkit.errors import ToolkitError
from toolkit.evals import EvalRow, EvalRun, load_dataset
from toolkit.evals.dataset import check_size
from toolkit.evals.report import render
from toolkit.evals.runs import RunStore
from toolkit.protocol import Service
from toolkit.results import Source

SUFFIXES = (".jsonl", ".csv", ".yaml", ".yml")
THIS_RUN = "this run"
SUMMARY_COLUMNS = ["name", "n", "passed", "pass_rate", "ci_low", "ci_high", "weighted_pass_rate", "errors", "cached"]


def dataset_files(folder: Path) -> list[Path]:
    """The dataset files under ``folder`` (not hidden ones), sorted."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and not any(x.startswith(".") for x in p.parts)
    )


class EvaluateView:
    """The Evaluate tab over any ``Service``."""

    def __init__(self, backend: Service, *, folder: Path | None = None, columns: int = 2) -> None:
        self.backend = backend
        self.folder = folder if folder is not None else DashboardSettings.from_env().evals_path
        self.run: EvalRun | None = None
        self.busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._uploads = tempfile.TemporaryDirectory(prefix="tk-evals-")

        files = dataset_files(self.folder)
        self.file = widgets.Dropdown(
            description="Dataset",
            options=[("(choose a file, or upload one)", "")]
            + [(str(p.relative_to(self.folder)), str(p)) for p in files],
            value="",
            layout=widgets.Layout(width="420px"),
        )
        self.upload = widgets.FileUpload(accept=",".join(SUFFIXES), multiple=False, description="Upload")
        # the Compare tab's controls; the answers are in the matrix
        self.set = Columns(
            backend, shown=columns, options=[1, 2, 3, 4], label="Variants", css="tk-eval-variant", answers=False
        )
        self.all, self.count = self.set.all, self.set.count
        self.max_new_tokens = controls.box("max_new_tokens", 64, layout=widgets.Layout(width="180px"))
        self.repeats = widgets.BoundedIntText(
            value=1, min=1, max=20, description="Repeats", layout=widgets.Layout(width="160px")
        )
        self.run_button = widgets.Button(description="Run", button_style="primary", layout=widgets.Layout(width="80px"))
        self.stop_button = widgets.Button(description="Stop", disabled=True, layout=widgets.Layout(width="70px"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="320px"))
        self.status = widgets.HTML("")
        self.summary = widgets.HTML("")
        self.chart = widgets.Image(format="png", layout=widgets.Layout(display="none", max_width="640px"))
        self.matrix = widgets.GridBox(layout=widgets.Layout(grid_gap="2px"))
        self.detail = widgets.HTML("")
        self.replay_button = widgets.Button(description="Replay", layout=widgets.Layout(display="none", width="90px"))
        self.replayed = widgets.HTML("")
        self.against = widgets.Dropdown(description="Diff A", options=[], layout=widgets.Layout(width="460px"))
        self.b = widgets.Dropdown(description="B", options=[], layout=widgets.Layout(width="300px"))
        self.diff = widgets.HTML("")
        self.report = widgets.HTML("")  # a link that downloads the run as one HTML file
        self.selected: EvalRow | None = None
        for w, name in (
            (self.file, "tk-eval-file"),
            (self.upload, "tk-eval-upload"),
            (self.run_button, "tk-eval-run"),
            (self.stop_button, "tk-eval-stop"),
            (self.progress, "tk-eval-progress"),
            (self.status, "tk-eval-status"),
            (self.summary, "tk-eval-summary"),
            (self.chart, "tk-eval-chart"),
            (self.matrix, "tk-eval-matrix"),
            (self.detail, "tk-eval-detail"),
            (self.replay_button, "tk-eval-replay"),
            (self.replayed, "tk-eval-replayed"),
            (self.against, "tk-eval-against"),
            (self.b, "tk-eval-b"),
            (self.diff, "tk-eval-diff"),
            (self.report, "tk-eval-report"),
        ):
            w.add_class(name)
        self.view = widgets.VBox(
            [
                widgets.HBox([self.file, self.upload]),
                widgets.HBox([self.count, self.max_new_tokens, self.repeats]),
                self.set.box,
                widgets.HBox([self.run_button, self.stop_button, self.progress, self.status]),
                self.report,
                self.summary,
                self.chart,
                self.matrix,
                self.detail,
                widgets.HBox([self.replay_button, self.replayed]),
                widgets.HBox([self.against, self.b]),
                self.diff,
            ]
        )
        # one dataset at a time: choosing a file of the folder drops an upload, and an upload the choice
        self.file.observe(lambda c: setattr(self.upload, "value", ()) if c["new"] else None, names="value")
        self.upload.observe(lambda c: setattr(self.file, "value", "") if c["new"] else None, names="value")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.replay_button.on_click(lambda _: self.replay())
        self._choosing = False  # show() sets the diff choices: one report, not one per change
        for w in (self.against, self.b):
            w.observe(lambda _: self._chosen(), names="value")

    @property
    def columns(self) -> list[Column]:
        return self.set.shown

    def start_from(self, model_options: Any, model: str, adapter: str, web: bool, temperature: Any) -> None:
        """The variants start from the Chat tab's settings; the second one with web search turned over."""
        for i, column in enumerate(self.all):
            column.start_from(model_options, model, adapter, web if i != 1 else not web, temperature)

    # ----- running ----------------------------------------------------------------------

    def dataset_path(self) -> Path | None:
        """The uploaded file (kept under its own name, so errors name it), else the chosen one. An upload over
        ``MAX_DATASET_BYTES`` is refused (``DatasetError``) before it is written; ``load_dataset`` reads either."""
        uploaded = self.upload.value
        if uploaded:
            item = uploaded[0]
            name = Path(item["name"]).name
            content = memoryview(item["content"])
            check_size(content.nbytes, name)
            path = Path(self._uploads.name) / name
            path.write_bytes(content)
            return path
        return Path(self.file.value) if self.file.value else None

    def variants(self) -> list[dict[str, Any]]:
        out = []
        for column in self.columns:
            fields = column.variant(int(self.max_new_tokens.value))
            fields.pop("request_id")  # the harness gives each cell its own
            parts = [column.model.value or "default", column.adapter.value or "", "web" if column.web.value else ""]
            t = column.tracked.value()
            fields["label"] = f"{column.number}: " + " ".join(
                p for p in (*parts, f"T={t:g}" if t is not None else "") if p
            )
            out.append(fields)
        return out

    def start(self) -> None:
        if self.busy:
            return
        try:
            path = self.dataset_path()
            if path is None:
                self.status.value = bubbles.banner("Choose a dataset file or upload one.")
                return
            # the toolkit's loader, as a notebook's and the CLI's: the same bounds (size, samples, YAML aliases)
            data = load_dataset(path, models=[m.id for m in self.backend.models()])
        except ToolkitError as exc:
            self.status.value = bubbles.banner(exc.message)
            return
        variants = self.variants()
        total = len(data) * len(variants) * int(self.repeats.value)
        self.progress.max, self.progress.value = max(1, total), 0
        self.status.value = f"<span>0 / {total}</span>"
        self.busy = True
        self._stop.clear()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._evaluate, args=(data, variants, total), daemon=True)
        self._thread.start()

    def _evaluate(self, data: Any, variants: list[dict[str, Any]], total: int) -> None:
        done = 0

        def advance(row: EvalRow) -> None:
            nonlocal done
            done += 1
            self.progress.value = done
            self.status.value = f"<span>{done} / {total}</span>"

        try:
            run = self.backend.evaluate(
                data,
                variants,
                repeats=int(self.repeats.value),
                progress=False,
                stop=self._stop,
                on_row=advance,
            )
            self.show(run)
            word = "stopped" if run.status == "interrupted" else "done"
            self.status.value = f"<span>{word}: {len(run.rows)} / {total} · run {html.escape(run.id)}</span>"
        except ToolkitError as exc:  # bad variants: refused before anything ran
            self.status.value = bubbles.banner(exc.message)
        except Exception as exc:  # never a traceback on the page
            self.status.value = bubbles.banner(f"The evaluation failed ({type(exc).__name__}).")
        finally:
            self.busy = False
            self.run_button.disabled, self.stop_button.disabled = False, True

    def wait(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)

    # ----- results ----------------------------------------------------------------------

    def show(self, run: EvalRun) -> None:
        """The summary, the chart, the matrix, the report's download link and the diff choices of ``run``."""
        self.run = run
        table = run.summary()[SUMMARY_COLUMNS]
        self.summary.value = table.to_html(index=False, border=0, classes="tk-eval-table", na_rep="–")
        self.summary.value += "".join(f'<p class="tk-eval-note">{html.escape(n)}.</p>' for n in run.notes())
        figure = run.chart()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        import matplotlib.pyplot as plt

        plt.close(figure)
        self.chart.value = buffer.getvalue()
        self.chart.layout.display = ""
        self._matrix(run)
        self.detail.value, self.replayed.value = "", ""
        self.replay_button.layout.display = "none"
        options: list[tuple[str, tuple[str, str]]] = [(f"{THIS_RUN}: {label}", ("", label)) for label in run.labels]
        store = self._store()
        if store is not None:
            for earlier in store.list():
                if earlier["id"] != run.id:
                    options += [
                        (f"{earlier['id']} {earlier['name']}: {label}", (earlier["id"], label))
                        for label in earlier["variants"]
                    ]
        # two different variants to start with: this run's first and second (one variant: an earlier run's)
        self._choosing = True
        try:
            self.against.options = options
            self.b.options = run.labels
            self.b.value = run.labels[1] if len(run.labels) > 1 else run.labels[0]
            if len(run.labels) > 1:
                self.against.value = ("", run.labels[0])
            else:
                self.against.value = next((v for _, v in options if v[0] and v[1] == run.labels[0]), options[0][1])
        finally:
            self._choosing = False
        self._chosen()

    def _chosen(self) -> None:
        if not self._choosing:
            self.show_diff()
            self.show_report()

    def show_report(self) -> None:
        """The link that downloads the run as one self-contained HTML file (its diff: the one chosen)."""
        run = self.run
        if run is None:
            return
        page = render(run, diffs=self._diffs())
        data = base64.b64encode(page.encode()).decode()
        name = f"evaluation-{run.id}.html"
        self.report.value = (
            f'<a class="tk-eval-report-link" download="{html.escape(name)}" '
            f'href="data:text/html;charset=utf-8;base64,{data}">⬇ Report (HTML)</a>'
        )

    def _diffs(self) -> list[Any] | None:
        run = self.run
        if run is None or not self.against.value or not self.b.value:
            return None
        other_id, a = self.against.value
        if other_id:
            store = self._store()
            return [store.load(other_id).diff(a, self.b.value, run)] if store is not None else None
        return [run.diff(a, self.b.value)]

    def _store(self) -> RunStore | None:
        from toolkit.settings import Settings
        from toolkit.store import Store

        path = Settings.from_env().store
        return RunStore(Store(path)) if path is not None else None

    def _matrix(self, run: EvalRun) -> None:
        labels = run.labels
        cells: list[widgets.Widget] = [widgets.HTML("<b>sample</b>")]
        cells += [widgets.HTML(f"<b>{html.escape(label)}</b>") for label in labels]
        for sample_id, text in run.inputs.items():
            name = widgets.HTML(f'<span title="{html.escape(text, quote=True)}">{html.escape(sample_id)}</span>')
            cells.append(name)
            for label in labels:
                mark, _, tip = run.cell_mark(sample_id, label)  # ⚠: an error cell, no verdict
                style = {"✓": "success", "✗": "danger", "⚠": "", "": ""}.get(mark, "warning")
                button = widgets.Button(
                    description=mark,
                    button_style=style,
                    tooltip=tip[:300] or "not run",
                    layout=widgets.Layout(width="auto"),
                )
                if mark == "⚠":
                    button.add_class("tk-eval-error")
                button.add_class("tk-eval-cell")
                button.on_click(lambda _, s=sample_id, v=label: self.show_cell(s, v))
                cells.append(button)
        self.matrix.layout.grid_template_columns = f"minmax(90px, 160px) repeat({len(labels)}, minmax(60px, 1fr))"
        self.matrix.children = tuple(cells)

    def show_cell(self, sample_id: str, label: str) -> None:
        """A cell's answer (each repeat) with its sources, grounding and checks."""
        run = self.run
        if run is None:
            return
        rows = [r for r in run.rows if r.sample_id == sample_id and r.variant == label]
        parts = [f"<p><b>{html.escape(sample_id)}</b> · {html.escape(label)}</p>"]
        parts.append(bubbles.user_bubble(run.inputs.get(sample_id, ""), web_search=any(r.sources for r in rows)))
        for r in rows:
            sources = [Source(**s) for s in r.sources]
            checks = "".join(
                f"<li>{'✓' if s.passed else '✗'} {html.escape(s.check)}: {html.escape(s.reason)}</li>" for s in r.scores
            )
            stats = (
                None
                if r.error
                else f"{r.finish_reason} · {r.completion_tokens} tokens" + (" · from the store" if r.cached else "")
            )
            parts.append(
                bubbles.assistant_bubble(r.text or "", sources=sources, error=r.error, stats=stats)
                + (f'<p class="tk-grounding">{html.escape(r.grounding)}</p>' if r.grounding else "")
                + f'<ul class="tk-eval-checks">{checks}</ul>'
            )
        self.detail.value = "".join(parts)
        self.selected = next((r for r in rows if r.record), None)
        self.replay_button.layout.display = "" if self.selected is not None else "none"
        self.replayed.value = ""

    def replay(self) -> None:
        """Run the selected cell's record again: the same messages, snapshot, parameters and seed."""
        if self.selected is None or self.selected.record is None:
            return
        self.replayed.value = "<span>replaying…</span>"
        try:
            self.replayed.value = bubbles.replay_bubble(self.backend.replay(self.selected.record))
        except ToolkitError as exc:
            self.replayed.value = bubbles.banner(exc.message)

    def show_diff(self) -> None:
        try:
            diffs = self._diffs()
        except ToolkitError as exc:
            self.diff.value = bubbles.banner(exc.message)
            return
        self.diff.value = diffs[0]._repr_html_() if diffs else ""
