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

A dataset is bounded, so that no file can hang or exhaust what loads it: ``MAX_DATASET_BYTES`` (refused before
it is parsed), ``MAX_SAMPLES``, values nested ``MAX_DEPTH`` deep at most, and a YAML file's aliases may repeat
``MAX_ALIASED_VALUES`` values in all (a "billion laughs" file of a few hundred bytes is refused as it is read,
naming the line of the alias that crosses the bound; anchors that share a few assert lists load as before).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import DatasetError, InvalidRequest
from toolkit.evals.assertions import Check, parse_check
from toolkit.params import Turn
from toolkit.variants import boolean

# the keys a sample may have; promptfoo's test keys among them
KEYS = (
    "id",
    "input",
    "prompt",
    "question",
    "target",
    "history",
    "system_prompt",
    "web_search",
    "metadata",
    "assert",
    "description",
    "vars",
    "options",
    "weight",
    "metric",
    "threshold",
)
VARS = ("input", "prompt", "question", "target", "history", "system_prompt", "web_search")  # what vars may hold
# promptfoo's test options that change nothing here (the others would change the answer or its checks)
HARMLESS_OPTIONS = ("runSerially", "disableVarExpansion", "disableConversationVar")
CSV_ALIASES = {"__description": "description", "__metric": "metric", "__threshold": "threshold"}
# what people write for an expected answer: the error points them at target
TARGET_WORDS = ("answer", "expected", "expected_output", "expected_answer", "ideal", "output", "label", "gold")
MAX_DATASET_BYTES = 32 * 2**20  # a dataset file's size at most; a bigger one is refused before it is parsed
MAX_SAMPLES = 100_000  # samples in one dataset at most
MAX_DEPTH = 64  # how deep a sample's values may nest (metadata, vars, assert lists ...)
# values a YAML file's aliases may repeat in all (an alias counts every value of what it names): sharing a few
# assert lists repeats hundreds; a "billion laughs" file of 543 bytes repeats hundreds of millions
MAX_ALIASED_VALUES = 1_000_000


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


# A row of a file: its number (line or row; YAML: the item's first line) and its keys, and where each key's
# value starts ("assert[0].type" -> its line), for errors that point at the line to fix.
Row = tuple[int, dict[str, Any], dict[str, int]]


def check_size(size: int, name: str) -> None:
    """``DatasetError`` when a file of ``size`` bytes is over ``MAX_DATASET_BYTES`` (before it is read or parsed:
    ``load_dataset`` and the dashboard's upload)."""
    if size > MAX_DATASET_BYTES:
        raise DatasetError(
            name,
            None,
            "file",
            f"is larger than {_size(MAX_DATASET_BYTES)} (MAX_DATASET_BYTES), the most a dataset file may have: "
            "split it into smaller files",
        )


def load_dataset(path: str | Path, *, models: Collection[str] | None = None) -> Dataset:
    """The samples of a JSONL, CSV or YAML file. ``models``: the names a judge may have (unchecked when None)."""
    path = Path(path)
    name = path.name
    try:
        if path.is_file():
            check_size(path.stat().st_size, name)  # refused unread
        with path.open("rb") as file:
            raw = file.read(MAX_DATASET_BYTES + 1)  # no further than the bound (a file that grows, a pipe)
    except OSError as exc:
        raise DatasetError(str(path), None, "file", f"cannot read it ({exc.strerror or exc})") from None
    check_size(len(raw), name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(str(path), None, "file", "not UTF-8 text") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as a text-mode read gives
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        parse = _jsonl
    elif suffix == ".csv":
        parse = _csv
    elif suffix in (".yaml", ".yml", ".json"):
        parse = _yaml
    else:
        raise DatasetError(name, None, "file", "give a .jsonl, .csv or .yaml file")
    try:
        rows = _bounded(parse(text, name), name)
    except RecursionError:  # the parser's own recursion (JSON); YAML's is bounded as it is read
        raise DatasetError(name, None, "file", f"nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)") from None
    return Dataset(path.stem, _samples(rows, name, models), str(path))


def dataset(
    items: Iterable[Mapping[str, Any]], *, name: str = "inline", models: Collection[str] | None = None
) -> Dataset:
    """A dataset from Python dicts (in a notebook), checked as a file's would be (lines are item numbers)."""
    rows: list[Row] = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise DatasetError(name, i, "sample", "must be a mapping with an 'input'")
        rows.append((i, dict(item), {}))
        if len(rows) > MAX_SAMPLES:  # an endless generator stops here too
            raise DatasetError(name, i, "sample", _too_many())
    return Dataset(name, _samples(rows, name, models))


def _bounded(rows: Iterable[Row], name: str) -> list[Row]:
    """The rows of a file, ``MAX_SAMPLES`` at most (refused at the first one over, naming its line)."""
    out: list[Row] = []
    for row in rows:
        if len(out) == MAX_SAMPLES:
            raise DatasetError(name, row[0], "sample", _too_many())
        out.append(row)
    return out


def _too_many() -> str:
    return f"more than {MAX_SAMPLES:,} samples (MAX_SAMPLES), the most a dataset may have: split it"


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n:,} bytes"


def _depth(value: Any, most: int) -> int:
    """How deep ``value`` nests (a scalar: 0), counted no further than ``most + 1`` (a cycle is too deep)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list, tuple)) and level <= most:
            deepest = max(deepest, level + 1)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _jsonl(text: str, name: str) -> Iterable[Row]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(name, number, "line", f"not a JSON object ({exc.msg})") from None
        except RecursionError:
            raise DatasetError(name, number, "line", f"nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)") from None
        if not isinstance(item, dict):
            raise DatasetError(name, number, "line", "must be a JSON object with an 'input'")
        yield number, item, {}


def _csv(text: str, name: str) -> Iterable[Row]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or () if c is not None]
    for column in columns:
        if not (column in KEYS or column in CSV_ALIASES or column.startswith("__expected")) or column in (
            "vars",
            "options",
        ):
            accepted = [k for k in KEYS if k not in ("vars", "options")] + [*CSV_ALIASES, "__expected"]
            raise DatasetError(name, 1, column, _unknown("column", column, accepted))
    for row in reader:
        number = reader.line_num
        item: dict[str, Any] = {}
        checks: list[Any] = []
        if None in row:  # more cells than columns
            raise DatasetError(
                name, number, "row", f"has {len(columns) + len(row[None])} cells for {len(columns)} columns"
            )
        for key, value in row.items():
            if key is None or value is None or value == "":
                continue
            key = CSV_ALIASES.get(key.strip(), key.strip())
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
            else:
                item[key] = value  # text: web_search, weight and threshold are read by what they are below
        if checks:
            item["assert"] = [*item.get("assert", []), *checks]
        yield number, item, {}


def _loader(text: str, name: str) -> Any:
    """PyYAML's safe loader, bounded as it composes: nesting (``MAX_DEPTH``), and what the aliases repeat in all
    (``MAX_ALIASED_VALUES``; an alias counts every value of the node it names, so a "billion laughs" file is
    refused at its first alias over the bound, before anything is expanded); an alias inside the node it names
    (a cycle) is refused too. Each refusal is a ``DatasetError`` naming the line."""
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self) -> None:
            super().__init__(text)
            self.aliased = 0  # values the aliases so far repeat
            self.depth = 0
            self.open: set[str] = set()  # the anchors of the nodes being composed
            self.sizes: dict[int, int] = {}  # id(node) -> its values, counted once

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self.open:
                    raise DatasetError(name, line, "file", f"the alias *{event.anchor} is inside what it names")
                target = self.anchors.get(event.anchor)
                if target is not None:
                    self.aliased += self.values(target)
                    if self.aliased > MAX_ALIASED_VALUES:
                        raise DatasetError(
                            name,
                            line,
                            "file",
                            f"its aliases expand to more than {MAX_ALIASED_VALUES:,} values (MAX_ALIASED_VALUES): "
                            "write the repeated parts out, or share fewer",
                        )
                return super().compose_node(parent, index)
            self.depth += 1
            if self.depth > MAX_DEPTH + 2:  # the file's list of samples, and its 'tests:' mapping
                raise DatasetError(name, line, "file", f"nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)")
            anchor = event.anchor
            if anchor is not None:
                self.open.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1
                if anchor is not None:
                    self.open.discard(anchor)

        def values(self, node: Any) -> int:
            known = self.sizes.get(id(node))
            if known is None:
                if isinstance(node, yaml.SequenceNode):
                    known = 1 + sum(self.values(v) for v in node.value)
                elif isinstance(node, yaml.MappingNode):
                    known = 1 + sum(self.values(k) + self.values(v) for k, v in node.value)
                else:
                    known = 1
                self.sizes[id(node)] = known
            return known

    return Loader()


def _yaml(text: str, name: str) -> Iterable[Row]:
    import yaml

    loader = _loader(text, name)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        raise DatasetError(
            name,
            mark.line + 1 if mark is not None else None,
            "file",
            "not valid YAML" + (f" ({problem})" if problem else ""),
        ) from None
    finally:
        loader.dispose()
    items_node = node
    if isinstance(data, dict):
        key = "tests" if "tests" in data else "samples"
        data = data.get(key)
        items_node = next((v for k, v in node.value if k.value == key), None) if node is not None else None
    if not isinstance(data, list) or not isinstance(items_node, yaml.SequenceNode):
        raise DatasetError(name, None, "file", "must be a list of samples (or a 'tests:' list)")
    for item, item_node in zip(data, items_node.value, strict=True):
        line = item_node.start_mark.line + 1
        if not isinstance(item, dict):
            raise DatasetError(name, line, "sample", "must be a mapping with an 'input'")
        yield line, item, _lines(item_node)


def _lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Where each value of a YAML node starts: ``{"input": 3, "assert[0]": 4, "assert[0].type": 4, ...}``."""
    import yaml

    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            out[path] = key.start_mark.line + 1
            out.update(_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = value.start_mark.line + 1
            out.update(_lines(value, path))
    return out


def _samples(rows: list[Row], name: str, models: Collection[str] | None) -> tuple[Sample, ...]:
    samples: list[Sample] = []
    seen: set[str] = set()
    for number, item, lines in rows:
        if _depth(item, MAX_DEPTH) > MAX_DEPTH:
            raise DatasetError(name, number, "sample", f"nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)")
        sample = _sample(number, item, lines, name, models)
        if sample.id in seen:
            raise DatasetError(name, lines.get("id", number), "id", f"{sample.id!r} is used twice; ids must differ")
        seen.add(sample.id)
        samples.append(sample)
    if not samples:
        raise DatasetError(name, None, "file", "has no samples")
    return tuple(samples)


def _unknown(what: str, key: str, accepted: Collection[str]) -> str:
    hint = ""
    if key.lower() in TARGET_WORDS:
        hint = " (the expected answer is 'target', or a check in 'assert')"
    else:
        close = difflib.get_close_matches(key, list(accepted), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}; accepted: {', '.join(accepted)}"


def _sample(
    number: int, item: dict[str, Any], lines: dict[str, int], name: str, models: Collection[str] | None
) -> Sample:
    def fail(where: str, message: str) -> DatasetError:
        line = next((lines[p] for p in _prefixes(where) if p in lines), number)
        return DatasetError(name, line, where, message)

    for key in item:
        if key not in KEYS:
            raise fail(str(key), _unknown("key", str(key), KEYS))
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
            raise fail(exc.field, exc.message.split(": ", 1)[-1]) from None
    system = item.get("system_prompt")
    if system is not None and not isinstance(system, str):
        raise fail("system_prompt", "must be a string")
    web = item.get("web_search")
    if web is not None:
        try:
            web = boolean(web, "web_search")
        except InvalidRequest as exc:
            raise fail("web_search", exc.message.split(": ", 1)[-1]) from None
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
            raise fail(
                f"assert[{i}]" + ("" if exc.field == "check" else f".{exc.field}"), exc.message.split(": ", 1)[-1]
            ) from None
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
