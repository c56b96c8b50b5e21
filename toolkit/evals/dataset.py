"""An evaluation's questions: a file of samples (JSONL, CSV or YAML), checked whole before anything runs.

Each sample: ``id`` (default: its line or row number), ``input`` (``prompt`` accepted too; a promptfoo test's
``vars.input``/``vars.prompt`` as well), optional ``target``, ``history``, ``system_prompt``, ``web_search``
and ``metadata``, and ``assert``: a list of checks in promptfoo's shape (``{type, value, threshold}``, a
``not-`` prefix negates; ``toolkit.evals.assertions`` lists the types). A sample with only a ``target``
gets ``icontains`` of it. CSV rows hold ``assert`` as JSON, or promptfoo's ``__expected`` columns
(``icontains: Paris``; plain text: ``equals``).

Every problem is a ``DatasetError`` naming the file, the line (or row) and the field: malformed lines,
unknown assertion types (listing the known ones), invalid regexes, a judge model that is not configured.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import InvalidRequest
from toolkit.evals.assertions import Check, parse_check
from toolkit.params import Turn

FIELDS = ("id", "input", "prompt", "target", "history", "system_prompt", "web_search", "metadata", "assert")


class DatasetError(InvalidRequest):
    """A dataset that cannot run: ``where`` names the file, the line or row, and the field."""

    def __init__(self, source: str, line: int | None, where: str, message: str) -> None:
        place = f"{source}, line {line}" if line is not None else source
        super().__init__(where, message)
        self.message = f"{place}, {where}: {message}"  # "quality.yaml, line 12, assert[0].type: unknown ..."
        self.args = (self.message,)
        self.source, self.line, self.where = source, line, where


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

    def to_dict(self) -> dict[str, Any]:
        """The sample in a dataset file's shape (``dataset([s.to_dict() for s in ...])`` gives it back)."""
        d = asdict(self)
        d["history"] = [{"role": t.role, "content": t.content} for t in self.history]
        del d["checks"]
        d["assert"] = [c.to_dict() for c in self.checks]
        return d


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


def load_dataset(path: str | Path, *, models: Collection[str] | None = None) -> Dataset:
    """The samples of a JSONL, CSV or YAML file. ``models``: the names a judge may have (unchecked when None)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(str(path), None, "file", f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(str(path), None, "file", "not UTF-8 text") from None
    suffix = path.suffix.lower()
    name = path.name
    if suffix in (".jsonl", ".ndjson"):
        rows = list(_jsonl(text, name))
    elif suffix == ".csv":
        rows = list(_csv(text, name))
    elif suffix in (".yaml", ".yml", ".json"):
        rows = list(_yaml(text, name))
    else:
        raise DatasetError(name, None, "file", "give a .jsonl, .csv or .yaml file")
    return Dataset(path.stem, _samples(rows, name, models), str(path))


def dataset(
    items: Iterable[Mapping[str, Any]], *, name: str = "inline", models: Collection[str] | None = None
) -> Dataset:
    """A dataset from Python dicts (in a notebook), checked as a file's would be (lines are item numbers)."""
    return Dataset(name, _samples([(i, dict(item)) for i, item in enumerate(items, start=1)], name, models))


def _jsonl(text: str, name: str) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(name, number, "line", f"not a JSON object ({exc.msg})") from None
        if not isinstance(item, dict):
            raise DatasetError(name, number, "line", "must be a JSON object with an 'input'")
        yield number, item


def _csv(text: str, name: str) -> Iterable[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        number = reader.line_num
        item: dict[str, Any] = {}
        checks: list[Any] = []
        for key, value in row.items():
            if key is None or value is None or value == "":
                continue
            key = key.strip()
            if key.startswith("__expected"):
                kind, sep, rest = value.partition(":")
                checks.append(
                    {"type": kind.strip(), "value": rest.strip()} if sep else {"type": "equals", "value": value}
                )
            elif key in ("assert", "metadata", "history"):
                try:
                    item[key] = json.loads(value)
                except ValueError:
                    raise DatasetError(name, number, key, "must be JSON in a CSV cell") from None
            elif key == "web_search":
                item[key] = value.strip().lower() in ("1", "true", "yes")
            else:
                item[key] = value
        if checks:
            item["assert"] = [*item.get("assert", []), *checks]
        yield number, item


def _yaml(text: str, name: str) -> Iterable[tuple[int, dict[str, Any]]]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        problem = getattr(exc, "problem", None)
        raise DatasetError(
            name,
            line + 1 if line is not None else None,
            "file",
            "not valid YAML" + (f" ({problem})" if problem else ""),
        ) from None
    if isinstance(data, dict):
        data = data.get("tests", data.get("samples"))
    if not isinstance(data, list):
        raise DatasetError(name, None, "file", "must be a list of samples (or a 'tests:' list)")
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise DatasetError(name, number, "sample", "must be a mapping with an 'input'")
        variables = item.get("vars")
        if isinstance(variables, dict):  # a promptfoo test
            item = {**{k: v for k, v in item.items() if k != "vars"}, **variables}
            item.setdefault("id", item.pop("description", None))
        yield number, item


def _samples(rows: list[tuple[int, dict[str, Any]]], name: str, models: Collection[str] | None) -> tuple[Sample, ...]:
    samples: list[Sample] = []
    seen: set[str] = set()
    for number, item in rows:
        sample = _sample(number, item, name, models)
        if sample.id in seen:
            raise DatasetError(name, number, "id", f"{sample.id!r} is used twice; ids must differ")
        seen.add(sample.id)
        samples.append(sample)
    if not samples:
        raise DatasetError(name, None, "file", "has no samples")
    return tuple(samples)


def _sample(number: int, item: dict[str, Any], name: str, models: Collection[str] | None) -> Sample:
    def fail(where: str, message: str) -> DatasetError:
        return DatasetError(name, number, where, message)

    text = item.get("input", item.get("prompt", item.get("question")))
    if not isinstance(text, str) or not text.strip():
        raise fail("input", "must be a non-empty string (the prompt; 'prompt' is accepted too)")
    sample_id = item.get("id")
    sample_id = str(number) if sample_id is None or sample_id == "" else str(sample_id)
    target = item.get("target")
    if target is not None and not isinstance(target, (str, int, float)):
        raise fail("target", "must be a string")
    history: tuple[Turn, ...] = ()
    if item.get("history"):
        from toolkit.params import InferRequest

        try:
            history = InferRequest("x", history=item["history"]).history
        except InvalidRequest as exc:
            raise fail(exc.field, exc.message.split(": ", 1)[-1]) from None
    system = item.get("system_prompt")
    if system is not None and not isinstance(system, str):
        raise fail("system_prompt", "must be a string")
    web = item.get("web_search")
    if web is not None and not isinstance(web, bool):
        raise fail("web_search", "must be true or false")
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise fail("metadata", "must be a mapping")
    raw = item.get("assert") or []
    if not isinstance(raw, list):
        raise fail("assert", "must be a list of checks ({type, value})")
    checks = []
    for i, spec in enumerate(raw):
        try:
            checks.append(parse_check(spec, models))
        except InvalidRequest as exc:
            raise fail(
                f"assert[{i}]" + ("" if exc.field == "check" else f".{exc.field}"), exc.message.split(": ", 1)[-1]
            ) from None
    if not checks and target is not None:
        checks.append(parse_check({"type": "icontains", "value": str(target)}, models))
    return Sample(
        id=sample_id,
        input=text,
        target=str(target) if target is not None else None,
        history=history,
        system_prompt=system,
        web_search=web,
        metadata=dict(metadata),
        checks=tuple(checks),
    )
