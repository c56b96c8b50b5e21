"""An evaluation's questions: a file of samples (JSONL, CSV or YAML), checked whole before anything runs.

Each sample says exactly what it means or the file is refused. Its keys: ``id`` (default: its line or row),
``input`` (``prompt`` or ``question`` accepted too; a promptfoo test's ``vars.input``), ``target``,
``history``, ``system_prompt``, ``web_search``, ``metadata``, ``assert`` (a list of checks in promptfoo's
shape, ``{type, value, threshold, weight, metric}``; ``toolkit.evals.assertions`` lists the types), and
promptfoo's ``description`` (the id when there is none), ``vars``, ``options``, ``weight`` (the sample's
weight in the weighted pass rate), ``metric`` (the named metric its checks count toward) and ``threshold``
(the sample passes when the weighted mean of its checks' scores reaches it, instead of every check passing).
A sample with only a ``target`` gets ``icontains`` of it; a sample with nothing to check is refused, and so
is any key not listed here (naming it and the accepted ones). CSV rows hold ``assert`` as JSON, or
promptfoo's ``__expected`` columns (``icontains: Paris``; plain text: ``equals``).

Every problem is a ``DatasetError`` naming the file, the line (a YAML file's own line, not the item's number)
and the field: malformed lines, unknown keys and assertion types, invalid regexes, a judge model that is not
configured.

A dataset is bounded (``MAX_DATASET_BYTES``, ``MAX_SAMPLES``, ``MAX_DEPTH``, a YAML file's aliases): reading a file
into rows, and those bounds, are ``toolkit.evals.loading``'s.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import DatasetError, InvalidRequest
from toolkit.evals.assertions import Check, parse_check
from toolkit.evals.loading import KEYS, Row, bounded, check_depth, read_rows, unknown
from toolkit.evals.loading import check_size as check_size  # the dashboard's upload checks a file's size with it
from toolkit.params import Turn
from toolkit.variants import boolean

VARS = ("input", "prompt", "question", "target", "history", "system_prompt", "web_search")  # what vars may hold
# promptfoo's test options that change nothing here (the others would change the answer or its checks)
HARMLESS_OPTIONS = ("runSerially", "disableVarExpansion", "disableConversationVar")


@dataclass(frozen=True)
class Sample:
    id: str
    input: str
    target: str | None = None
    history: tuple[Turn, ...] = ()
    system_prompt: str | None = None
    web_search: bool | None = None  # None: the variant decides
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    weight: float = 1.0  # in the weighted pass rate
    metric: str | None = None  # the named metric its checks count toward (a check's own metric wins)
    threshold: float | None = None  # passes when its checks' weighted mean score reaches it; None: all pass
    description: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The sample in a dataset file's shape (``dataset([s.to_dict() for s in ...])`` gives it back)."""
        d = asdict(self)
        d["history"] = [{"role": t.role, "content": t.content} for t in self.history]
        del d["checks"]
        d["assert"] = [c.to_dict() for c in self.checks]
        defaults: dict[str, Any] = {
            "weight": 1.0,
            "metric": None,
            "threshold": None,
            "description": None,
            "options": {},
        }
        return {k: v for k, v in d.items() if k not in defaults or v != defaults[k]}


@dataclass(frozen=True)
class Dataset:
    name: str
    samples: tuple[Sample, ...]
    path: str | None = None

    @property
    def hash(self) -> str:
        """What the questions are: the same samples, the same hash, wherever they came from."""
        text = json.dumps([s.to_dict() for s in self.samples], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, part: slice) -> Dataset:
        """Some of the samples, as a dataset: ``data[:10]``, ``data[::4]``."""
        if not isinstance(part, slice):
            raise TypeError("index a dataset with a slice (data[:10]); its samples are data.samples")
        return Dataset(self.name, self.samples[part], self.path)

    def judges(self) -> set[str]:
        return {c.judge for s in self.samples for c in s.checks if c.judge}

    def chosen(self, *, limit: int | None = None, pattern: str | None = None) -> Dataset:
        """The samples whose id matches ``pattern`` (a regular expression, searched), the first ``limit`` of them."""
        import re

        samples = self.samples
        if pattern is not None:
            try:
                found = re.compile(pattern)
            except re.error as exc:
                raise InvalidRequest("filter", f"not a valid regular expression: {exc}") from None
            samples = tuple(s for s in samples if found.search(s.id))
            if not samples:
                raise InvalidRequest("filter", f"no sample id matches {pattern!r}")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidRequest("limit", f"must be an integer >= 1, got {limit!r}")
            samples = samples[:limit]
        return Dataset(self.name, samples, self.path)


def load_dataset(path: str | Path, *, models: Collection[str] | None = None) -> Dataset:
    """The samples of a JSONL, CSV or YAML file. ``models``: the names a judge may have (unchecked when None)."""
    path = Path(path)
    return Dataset(path.stem, _samples(read_rows(path), path.name, models), str(path))


def dataset(
    items: Iterable[Mapping[str, Any]], *, name: str = "inline", models: Collection[str] | None = None
) -> Dataset:
    """A dataset from Python dicts (in a notebook), checked as a file's would be (lines are item numbers)."""
    return Dataset(name, _samples(bounded(_rows(items, name), name), name, models))


def _rows(items: Iterable[Mapping[str, Any]], name: str) -> Iterator[Row]:
    for i, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise DatasetError(name, i, "sample", "must be a mapping with an 'input'")
        yield i, dict(item), {}


def _samples(rows: list[Row], name: str, models: Collection[str] | None) -> tuple[Sample, ...]:
    samples: list[Sample] = []
    seen: set[str] = set()
    for number, item, lines in rows:
        check_depth(item, name, number)
        sample = _sample(number, item, lines, name, models)
        if sample.id in seen:
            raise DatasetError(name, lines.get("id", number), "id", f"{sample.id!r} is used twice; ids must differ")
        seen.add(sample.id)
        samples.append(sample)
    if not samples:
        raise DatasetError(name, None, "file", "has no samples")
    return tuple(samples)


def _sample(
    number: int, item: dict[str, Any], lines: dict[str, int], name: str, models: Collection[str] | None
) -> Sample:
    def fail(where: str, message: str) -> DatasetError:
        line = next((lines[p] for p in _prefixes(where) if p in lines), number)
        return DatasetError(name, line, where, message)

    for key in item:
        if key not in KEYS:
            raise fail(str(key), unknown("key", str(key), KEYS))
    variables = item.get("vars")
    if variables is not None:  # a promptfoo test: its vars are the sample's fields
        if not isinstance(variables, dict):
            raise fail("vars", "must be a mapping (a promptfoo test's variables: input, target, ...)")
        for key in variables:
            if key not in VARS:
                raise fail(
                    f"vars.{key}",
                    f"unknown variable; this toolkit has no prompt templates, so vars may hold {', '.join(VARS)}",
                )
            if key in item:
                raise fail(f"vars.{key}", f"is given twice (here and as the sample's {key!r})")
        item = {**{k: v for k, v in item.items() if k != "vars"}, **variables}
    given = [k for k in ("input", "prompt", "question") if k in item]
    if len(given) > 1:
        raise fail(given[1], f"give the question once ({' and '.join(repr(g) for g in given)} are both here)")
    text = item.get(given[0]) if given else None
    if not isinstance(text, str) or not text.strip():
        raise fail(given[0] if given else "input", "must be a non-empty string (the prompt; 'prompt' is accepted too)")
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("description", "must be a string")
    sample_id = item.get("id")
    if sample_id is None or sample_id == "":
        sample_id = description if description else str(number)
        description = None  # it is the id
    target = item.get("target")
    if target is not None and not isinstance(target, (str, int, float)):
        raise fail("target", "must be a string")
    history: tuple[Turn, ...] = ()
    if item.get("history"):
        from toolkit.params import InferRequest

        try:
            history = InferRequest("x", history=item["history"]).history
        except InvalidRequest as exc:
            raise fail(exc.field, exc.detail) from None
    system = item.get("system_prompt")
    if system is not None and not isinstance(system, str):
        raise fail("system_prompt", "must be a string")
    web = item.get("web_search")
    if web is not None:
        try:
            web = boolean(web, "web_search")
        except InvalidRequest as exc:
            raise fail("web_search", exc.detail) from None
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise fail("metadata", "must be a mapping")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise fail("options", "must be a mapping")
    for key in options:
        if key not in HARMLESS_OPTIONS:
            raise fail(
                f"options.{key}",
                "not supported here (it would change the answer or its checks); "
                f"accepted: {', '.join(HARMLESS_OPTIONS)}",
            )
    weight = _number(item.get("weight", 1.0), "weight", fail, low=0.0)
    threshold = item.get("threshold")
    if threshold is not None:
        threshold = _number(threshold, "threshold", fail, low=0.0, high=1.0)
    metric = item.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        raise fail("metric", "must be a metric's name (a non-empty string)")
    raw = item.get("assert") or []
    if not isinstance(raw, list):
        raise fail("assert", "must be a list of checks ({type, value})")
    checks = []
    for i, spec in enumerate(raw):
        try:
            checks.append(parse_check(spec, models))
        except InvalidRequest as exc:
            raise fail(f"assert[{i}]" + ("" if exc.field == "check" else f".{exc.field}"), exc.detail) from None
    if not checks and target is not None:
        checks.append(parse_check({"type": "icontains", "value": str(target)}, models))
    if not checks:
        raise fail("assert", "nothing to check: give 'assert' (a list of checks) or a 'target'")
    if not any(c.weight > 0 for c in checks):
        raise fail("assert", "every check has weight 0: nothing decides whether the sample passes")
    return Sample(
        id=str(sample_id),
        input=text,
        target=str(target) if target is not None else None,
        history=history,
        system_prompt=system,
        web_search=web,
        metadata=dict(metadata),
        checks=tuple(checks),
        weight=weight,
        metric=metric.strip() if metric else None,
        threshold=threshold,
        description=description,
        options=dict(options),
    )


def _prefixes(where: str) -> list[str]:
    """``assert[0].type`` -> ``["assert[0].type", "assert[0]", "assert"]``: the most precise line first."""
    out = [where]
    while True:
        cut = max(where.rfind("."), where.rfind("["))
        if cut <= 0:
            return out
        where = where[:cut]
        out.append(where)


def _number(value: Any, where: str, fail: Any, *, low: float, high: float | None = None) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise fail(where, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(where, f"must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise fail(where, f"must be {bound}, got {value!r}")
    return float(value)
