"""The Compare tab: one prompt, 2 to 4 columns, each with its model, adapter, web search and temperature;
the answers stream into their columns at the same time, with the chat's rendering (sanitized markdown,
sources, stats, grounding marks). Stop stops them all; "diff" marks the words where two columns differ.

Widgets are updated by setting their values, also from the streaming thread (see ``dashboard.app``).
"""

from __future__ import annotations

import contextlib
import difflib
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from dashboard import bubbles, controls
from dashboard.tracked import Tracked
from toolkit.errors import ToolkitError
from toolkit.protocol import Service
from toolkit.results import Done, SearchFinished, Token

WEB_OFF, WEB_ON = "🌐 Off", "🌐 On"
MAX_COLUMNS = 4
ADAPTERS_FRESH_S = 5.0  # the columns' adapter lists: one request per model within this


def diff_html(text: str, other: str) -> str:
    """``text`` escaped, with the words that ``other`` does not have at that place marked."""
    words, theirs = text.split(" "), other.split(" ")
    out = []
    for op, i1, i2, _, _ in difflib.SequenceMatcher(a=words, b=theirs, autojunk=False).get_opcodes():
        chunk = bubbles.escape(" ".join(words[i1:i2]))
        if not chunk:
            continue
        out.append(chunk if op == "equal" else f'<mark class="tk-diff">{chunk}</mark>')
    return " ".join(out).replace("\n", "<br>")


class Column:
    """One variant: its settings and its answer."""

    def __init__(
        self, number: int, adapters: Callable[[str | None], list[str]], *, css: str = "tk-column", answers: bool = True
    ) -> None:
        """``css``: the box's class (and ``<css>-<number>``); ``answers``: whether it shows its answer."""
        self.number = number
        self._adapters = adapters
        self.model = widgets.Dropdown(description="Model", options=[("(server default)", "")], value="")
        self.adapter = widgets.Dropdown(description="Adapter", options=[("(base model)", "")], value="")
        self.web = widgets.ToggleButton(value=False, description=WEB_OFF, layout=widgets.Layout(width="90px"))
        self.temperature = controls.slider("temperature", description="Temp.", value=0.0, disabled=False)
        self.tracked = Tracked(self.temperature, "temperature")  # sent once moved: else the model's default
        self.output = widgets.HTML(bubbles.assistant_bubble("", notice="(no answer yet)"))
        if answers:
            self.output.add_class("tk-compare-answer")
        else:
            self.output.layout.display = "none"
        self.result: Any = None
        self.text = ""
        self.request_id: str | None = None
        self.box = widgets.VBox(
            [widgets.HTML(f"<b>{number}</b>"), self.model, self.adapter, self.web, self.temperature, self.output],
            layout=widgets.Layout(flex="1 1 0", min_width="0"),
        )
        self.box.add_class(css)
        self.box.add_class(f"{css}-{number}")
        self.web.observe(lambda c: setattr(self.web, "description", WEB_ON if c["new"] else WEB_OFF), names="value")
        self.model.observe(lambda _: self.fill_adapters(), names="value")

    def start_from(
        self, model_options: Any, model: str, adapter: str, web: bool, temperature: Tracked | float | None
    ) -> None:
        """The Chat tab's settings: its temperature control (and whether it was moved), or a temperature
        (None: the model's default)."""
        self.model.options = model_options
        self.model.value = model
        self.fill_adapters()
        self.adapter.value = adapter if adapter in [v for _, v in self.adapter.options] else ""
        self.web.value = web
        if isinstance(temperature, Tracked):
            self.tracked.copy(temperature)
        elif temperature is not None:
            self.temperature.value = temperature
            self.tracked.touched = True  # given: sent

    def fill_adapters(self) -> None:
        try:
            names = self._adapters(self.model.value or None)
        except Exception:
            names = []
        options = [("(base model)", ""), *((n, n) for n in names)]
        if list(self.adapter.options) != options:
            selected = self.adapter.value if self.adapter.value in names else ""
            self.adapter.options = options
            self.adapter.value = selected

    def variant(self, max_new_tokens: int | None) -> dict[str, Any]:
        self.request_id = uuid.uuid4().hex
        fields: dict[str, Any] = {
            "label": str(self.number),
            "request_id": self.request_id,
            "web_search": bool(self.web.value),
        }
        if self.tracked.value() is not None:
            fields["temperature"] = float(self.tracked.value())
        if max_new_tokens is not None:
            fields["max_new_tokens"] = max_new_tokens
        if self.model.value:
            fields["model"] = self.model.value
        if self.adapter.value:
            fields["adapter"] = self.adapter.value
        return fields

    def show(self, *, diff_against: str | None = None, error: str | None = None) -> None:
        r = self.result
        if error is not None:
            self.output.value = bubbles.assistant_bubble("", error=error)
        elif r is None:
            self.output.value = bubbles.assistant_bubble(self.text)
        else:
            # with diff on, the marked words stand for the text; sources, grounding summary and stats stay
            body = None if diff_against is None else bubbles.clean(diff_html(r.text, diff_against))
            self.output.value = bubbles.assistant_bubble(
                r.text, sources=r.sources, stats=bubbles.stats_line(r), grounding=r.grounding, body_html=body
            )


class Columns:
    """1 to 4 variant columns (``MAX_COLUMNS`` made, ``count`` shown) over one backend: the Compare tab's,
    and the Evaluate tab's."""

    def __init__(
        self,
        backend: Service,
        *,
        shown: int,
        options: list[int],
        label: str,
        css: str = "tk-column",
        answers: bool = True,
    ) -> None:
        self.backend = backend
        self._known: dict[str | None, tuple[float, list[str]]] = {}
        self.all = [Column(i + 1, self._adapters, css=css, answers=answers) for i in range(MAX_COLUMNS)]
        self.count = widgets.Dropdown(
            description=label, options=options, value=shown, layout=widgets.Layout(width="170px")
        )
        self.box = widgets.HBox(layout=widgets.Layout(width="100%"))
        self.count.observe(lambda _: self._layout(), names="value")
        self._layout()

    @property
    def shown(self) -> list[Column]:
        return self.all[: int(self.count.value)]

    def _layout(self) -> None:
        self.box.children = tuple(c.box for c in self.shown)

    def _adapters(self, model: str | None) -> list[str]:
        """The adapters of ``model``, asked once for every column (a tab's columns fill at once, and each
        request counts against the page's rate limit), again after ``ADAPTERS_FRESH_S``."""
        now = time.monotonic()
        kept = self._known.get(model)
        if kept is None or now - kept[0] > ADAPTERS_FRESH_S:
            kept = self._known[model] = (now, [a.name for a in self.backend.adapters(model)])
        return kept[1]


class CompareView:
    """The Compare tab over any ``Service``."""

    def __init__(self, backend: Service, *, columns: int = 3, max_new_tokens: int | None = None) -> None:
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.busy = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.set = Columns(self.backend, shown=columns, options=[2, 3, 4], label="Columns")
        self.all, self.count, self.columns_box = self.set.all, self.set.count, self.set.box
        self.prompt = widgets.Text(
            placeholder="One prompt for every column… (Enter runs)", layout=widgets.Layout(flex="1 1 auto")
        )
        self.run_button = widgets.Button(description="Run", button_style="primary", layout=widgets.Layout(width="80px"))
        self.stop_button = widgets.Button(description="Stop", disabled=True, layout=widgets.Layout(width="70px"))
        self.diff = widgets.ToggleButton(
            value=False, description="diff", tooltip="mark the words where two columns differ"
        )
        self.diff_a = widgets.Dropdown(options=[1, 2, 3, 4], value=1, layout=widgets.Layout(width="60px"))
        self.diff_b = widgets.Dropdown(options=[1, 2, 3, 4], value=2, layout=widgets.Layout(width="60px"))
        for w, name in (
            (self.prompt, "tk-compare-prompt"),
            (self.run_button, "tk-compare-run"),
            (self.stop_button, "tk-compare-stop"),
            (self.diff, "tk-compare-diff"),
        ):
            w.add_class(name)
        self.columns_box.add_class("tk-columns")
        bar = widgets.HBox([self.prompt, self.count, self.run_button, self.stop_button])
        diff_bar = widgets.HBox(
            [self.diff, widgets.HTML("&nbsp;between&nbsp;"), self.diff_a, widgets.HTML("&nbsp;and&nbsp;"), self.diff_b]
        )
        self.view = widgets.VBox([bar, diff_bar, self.columns_box])
        for w in (self.diff, self.diff_a, self.diff_b):
            w.observe(lambda _: self.render(), names="value")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self.prompt.continuous_update = False
        self.prompt.observe(lambda c: self.run() if c["new"] else None, names="value")

    @property
    def columns(self) -> list[Column]:
        return self.set.shown

    def start_from(
        self, model_options: Any, model: str, adapter: str, web: bool, temperature: Tracked | float | None
    ) -> None:
        """Every column starts from the Chat tab's settings: its temperature control (and whether it was
        moved), or a temperature (None: the model's default)."""
        for column in self.all:
            column.start_from(model_options, model, adapter, web, temperature)

    def run(self, prompt: str | None = None) -> None:
        """Run the prompt in every column at once; the answers stream into their columns."""
        text = (self.prompt.value if prompt is None else prompt).strip()
        if self.busy or not text:
            return
        columns = self.columns
        variants = [c.variant(self.max_new_tokens) for c in columns]
        for c in columns:
            c.result, c.text = None, ""
            c.output.value = bubbles.assistant_bubble("")
        self.busy = True
        self._stop.clear()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._stream, args=(text, variants, columns), daemon=True)
        self._thread.start()

    def _stream(self, prompt: str, variants: list[dict[str, Any]], columns: list[Column]) -> None:
        by_label = {str(c.number): c for c in columns}
        try:
            for label, event in self.backend.compare_stream(prompt, variants):
                column = by_label[label]
                if isinstance(event, ToolkitError):
                    column.show(error=f"The request failed: {event.message}")
                elif isinstance(event, Token):
                    column.text = event.text
                    column.show()
                elif isinstance(event, SearchFinished) and event.status != "ok":
                    column.output.value = bubbles.assistant_bubble("", notice=f"web search {event.status}")
                elif isinstance(event, Done):
                    column.result = event.result
                    self.render()
        except ToolkitError as exc:  # bad settings in a column: refused before anything ran; that column says why
            bad = re.match(r"variants\[(.+?)\]", str(getattr(exc, "field", "")))
            for c in columns:
                if bad is None or bad.group(1) == str(c.number):
                    c.show(error=f"The request failed: {exc.message}")
                else:
                    c.show(error=f"Not run: column {bad.group(1)}'s settings were refused")
        except Exception as exc:  # never a traceback on the page
            for c in columns:
                c.show(error=f"The request failed ({type(exc).__name__}).")
        finally:
            self.busy = False
            self.run_button.disabled, self.stop_button.disabled = False, True

    def render(self) -> None:
        """Each column's answer; with "diff" on, the two chosen columns with their differing words marked."""
        columns = {c.number: c for c in self.columns}
        a, b = columns.get(self.diff_a.value), columns.get(self.diff_b.value)
        diffing = bool(self.diff.value) and a is not None and b is not None and a is not b and a.result and b.result
        for c in self.columns:
            if c.result is None:
                continue
            if diffing and c is a:
                c.show(diff_against=b.result.text)  # type: ignore[union-attr]
            elif diffing and c is b:
                c.show(diff_against=a.result.text)  # type: ignore[union-attr]
            else:
                c.show()

    def stop(self) -> None:
        """Stop every column's answer (each ends as cancelled)."""
        for c in self.columns:
            if c.request_id is not None:
                with contextlib.suppress(ToolkitError):  # already over, or the server is gone
                    self.backend.cancel(c.request_id)

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
