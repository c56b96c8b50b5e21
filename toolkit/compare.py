"""Side by side: one prompt, several variants (model A vs B, base vs adapter, search on vs off, two
temperatures), run at once.

    comparison = service.compare("Who designed the Harrowgate Bridge?", [
        {"label": "base"},
        {"label": "adapter", "adapter": "quenby"},
        {"label": "web", "web_search": True},
    ], temperature=0)
    comparison                      # a side-by-side table in a notebook
    comparison.to_dataframe()       # one row per variant

Each variant overrides any request field (model, adapter, web_search, system_prompt, history, the
generation parameters, flat or as ``params``) over ``common``. Variants run concurrently: on a local
engine they share batches; on ``InferenceService`` one web search is made once and its snapshot
reused by every variant that searches, so they all see the same sources. ``compare_stream`` yields
``(label, event)`` pairs as the answers stream; closing it cancels them all.
"""

from __future__ import annotations

import html
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.errors import InvalidRequest, ToolkitError
from toolkit.params import InferRequest
from toolkit.results import Done, InferResult, StreamEvent
from toolkit.variants import Variant
from toolkit.variants import variants as typed_variants

VariantSpec = Mapping[str, Any]


@dataclass(frozen=True)
class VariantResult:
    label: str
    fields: dict[str, Any]
    result: InferResult | None  # None when the variant failed
    error: str | None = None


MAX_VARIANTS = 8


def variants(specs: Sequence[VariantSpec] | Mapping[str, VariantSpec]) -> list[Variant]:
    """Variants from a list of dicts (``label`` optional) or a dict ``{label: fields}``, typed by the
    declarations (``toolkit.variants``)."""
    return typed_variants(specs, most=MAX_VARIANTS, what="compare")


def request_for(prompt: str, variant: Variant, common: Mapping[str, Any]) -> InferRequest:
    merged = {**common, **variant.fields}
    if isinstance(common.get("params"), Mapping) and isinstance(variant.fields.get("params"), Mapping):
        merged["params"] = {**common["params"], **variant.fields["params"]}
    try:
        return InferRequest.build(prompt, **merged)
    except InvalidRequest as exc:
        raise InvalidRequest(f"variants[{variant.label}].{exc.field}", exc.detail) from None


@dataclass(frozen=True)
class Plan:
    """The variants of one prompt, each parsed once into its request: what ``compare_stream`` runs."""

    prompt: str
    variants: tuple[Variant, ...]
    requests: dict[str, InferRequest]  # by label

    @property
    def searching(self) -> bool:
        return any(r.web_search for r in self.requests.values())


def plan(
    prompt: str, specs: Any, common: Mapping[str, Any], check: Callable[[InferRequest], object] | None = None
) -> Plan:
    """Parse the variants once; ``check`` (the service's validation) refuses a bad one before anything runs."""
    chosen = variants(specs)
    requests = {v.label: request_for(prompt, v, common) for v in chosen}
    if check is not None:
        for variant in chosen:
            try:
                check(requests[variant.label])
            except InvalidRequest as exc:
                raise InvalidRequest(f"variants[{variant.label}].{exc.field}", exc.detail) from None
    return Plan(prompt, tuple(chosen), requests)


@dataclass(frozen=True)
class Comparison:
    prompt: str
    rows: tuple[VariantResult, ...]

    def __getitem__(self, label: str) -> VariantResult:
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"no variant {label!r}; the variants are {[r.label for r in self.rows]}")

    def texts(self) -> dict[str, str | None]:
        return {r.label: r.result.text if r.result else None for r in self.rows}

    def to_dataframe(self) -> Any:
        """One row per variant: its settings, the answer, and how it was made."""
        import pandas as pd

        rows = []
        for row in self.rows:
            r = row.result
            params = r.run_record.params if r else {}
            rows.append(
                {
                    "label": row.label,
                    "model": r.model if r else row.fields.get("model"),
                    "adapter": r.adapter if r else row.fields.get("adapter"),
                    "web_search": r.search_status != "off" if r else bool(row.fields.get("web_search")),
                    "temperature": params.get("temperature"),
                    "text": r.text if r else None,
                    "finish_reason": r.finish_reason if r else "error",
                    "completion_tokens": r.usage.completion_tokens if r else None,
                    "first_token_s": r.timings.first_token_s if r else None,
                    "tokens_per_s": r.tokens_per_s if r else None,
                    "sources": len(r.sources) if r else 0,
                    "grounding": r.grounding.summary if r and r.grounding else None,
                    "error": row.error,
                }
            )
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(r.label)}</th>" for r in self.rows)
        cells = "".join(f'<td style="vertical-align: top; text-align: left">{_cell(r)}</td>' for r in self.rows)
        return (
            f"<p><b>{html.escape(self.prompt)}</b></p>"
            f'<table style="table-layout: fixed; width: 100%"><tr>{head}</tr><tr>{cells}</tr></table>'
        )


def _cell(row: VariantResult) -> str:
    if row.result is None:
        return f'<span style="color: #b00">failed: {html.escape(row.error or "")}</span>'
    r = row.result
    text = html.escape(r.text).replace("\n", "<br>")
    parts = [f"<div>{text}</div>"]
    if r.sources:
        items = "".join(f"<li>[{s.index}] {html.escape(s.title or s.url)}</li>" for s in r.sources)
        parts.append(f'<ol style="font-size: 90%">{items}</ol>')
    stats = f"{r.model}{' + ' + r.adapter if r.adapter else ''} · {r.usage.completion_tokens} tokens"
    if r.grounding:
        stats += f" · {r.grounding.summary}"
    parts.append(f'<small style="color: #666">{html.escape(stats)}</small>')
    return "".join(parts)


Stream = Callable[[InferRequest], Iterator[StreamEvent]]


def compare_stream(
    stream: Stream, cancel: Callable[[str], object], planned: Plan
) -> Iterator[tuple[str, StreamEvent | ToolkitError]]:
    """``(label, event)`` as every variant streams (a failed variant yields its error); closing cancels them all."""
    requests = planned.requests
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    stop = threading.Event()

    def run(label: str, request: InferRequest) -> None:
        try:
            it = stream(request)
            try:
                for event in it:
                    events.put((label, event))
                    if stop.is_set():
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # cancels the request if it still runs
        except ToolkitError as exc:
            events.put((label, exc))
        except Exception as exc:  # a variant's failure must not take the others down
            events.put((label, ToolkitError(f"{type(exc).__name__}: {exc}")))
        finally:
            events.put((label, _END))

    threads = [threading.Thread(target=run, args=(label, r), daemon=True) for label, r in requests.items()]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            label, event = events.get()
            if event is _END:
                running -= 1
            else:
                yield label, event
    finally:
        if running:
            stop.set()
            for r in requests.values():
                cancel(r.request_id)


_END = object()


def collect(planned: Plan, events: Iterator[tuple[str, Any]]) -> Comparison:
    """The ``Comparison`` of a ``compare_stream``: each variant's result, or its error."""
    results: dict[str, InferResult] = {}
    errors: dict[str, str] = {}
    for label, event in events:
        if isinstance(event, Done):
            results[label] = event.result
        elif isinstance(event, ToolkitError):
            errors[label] = event.message
    rows = (VariantResult(v.label, v.fields, results.get(v.label), errors.get(v.label)) for v in planned.variants)
    return Comparison(planned.prompt, tuple(rows))
