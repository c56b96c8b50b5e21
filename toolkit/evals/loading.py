"""Reading a dataset file into rows: its format (JSONL, CSV or YAML) and the bounds that no file may cross.

``read_rows`` gives each sample of a file as a ``Row``: its number (the line or row; a YAML item's first
line), its keys, and where each key's value starts, for errors that point at the line to fix;
``toolkit.evals.dataset`` makes them samples. Every problem is a ``DatasetError`` naming the file and the line.

A dataset is bounded, so that no file can hang or exhaust what loads it: ``MAX_DATASET_BYTES`` (refused before
it is parsed: ``check_size``, which the dashboard's upload calls too), ``MAX_SAMPLES``, values nested
``MAX_DEPTH`` deep at most, and a YAML file's aliases may repeat ``MAX_ALIASED_VALUES`` values in all (a "billion
laughs" file of a few hundred bytes is refused as it is read, naming the line of the alias that crosses the
bound; anchors that share a few assert lists load as before).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from toolkit.errors import DatasetError

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
CSV_ALIASES = {"__description": "description", "__metric": "metric", "__threshold": "threshold"}
# what people write for an expected answer: the error points them at target
TARGET_WORDS = ("answer", "expected", "expected_output", "expected_answer", "ideal", "output", "label", "gold")
MAX_DATASET_BYTES = 32 * 2**20  # a dataset file's size at most; a bigger one is refused before it is parsed
MAX_SAMPLES = 100_000  # samples in one dataset at most
MAX_DEPTH = 64  # how deep a sample's values may nest (metadata, vars, assert lists ...)
# values a YAML file's aliases may repeat in all (an alias counts every value of what it names): sharing a few
# assert lists repeats hundreds; a "billion laughs" file of 543 bytes repeats hundreds of millions
MAX_ALIASED_VALUES = 1_000_000

# A row of a file: its number (line or row; YAML: the item's first line) and its keys, and where each key's
# value starts ("assert[0].type" -> its line), for errors that point at the line to fix.
Row = tuple[int, dict[str, Any], dict[str, int]]


def check_size(size: int, name: str) -> None:
    """``DatasetError`` when a file of ``size`` bytes is over ``MAX_DATASET_BYTES`` (before it is read or parsed:
    ``read_rows`` and the dashboard's upload)."""
    if size > MAX_DATASET_BYTES:
        raise DatasetError(
            name,
            None,
            "file",
            f"is larger than {_size(MAX_DATASET_BYTES)} (MAX_DATASET_BYTES), the most a dataset file may have: "
            "split it into smaller files",
        )


def read_rows(path: Path) -> list[Row]:
    """The rows of a JSONL, CSV or YAML file, ``MAX_SAMPLES`` at most, read no further than ``MAX_DATASET_BYTES``."""
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
        return bounded(parse(text, name), name)
    except RecursionError:  # the parser's own recursion (JSON); YAML's is bounded as it is read
        raise DatasetError(name, None, "file", f"nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)") from None


def bounded(rows: Iterable[Row], name: str) -> list[Row]:
    """The rows, ``MAX_SAMPLES`` at most (refused at the first one over, naming its line; an endless generator
    stops there too)."""
    out: list[Row] = []
    for row in rows:
        if len(out) == MAX_SAMPLES:
            raise DatasetError(
                name,
                row[0],
                "sample",
                f"more than {MAX_SAMPLES:,} samples (MAX_SAMPLES), the most a dataset may have: split it",
            )
        out.append(row)
    return out


def check_depth(item: Any, name: str, line: int) -> None:
    """``DatasetError`` when a sample's values nest more than ``MAX_DEPTH`` deep (a cycle is too deep)."""
    deepest, stack = 0, [(item, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list, tuple)) and level <= MAX_DEPTH:
            deepest = max(deepest, level + 1)
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    if deepest > MAX_DEPTH:
        raise DatasetError(name, line, "sample", f"nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)")


def unknown(what: str, key: str, accepted: Collection[str]) -> str:
    """The message for an unknown key or column: the one meant, if it is close, and the accepted ones."""
    if key.lower() in TARGET_WORDS:
        hint = " (the expected answer is 'target', or a check in 'assert')"
    else:
        close = difflib.get_close_matches(key, list(accepted), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}; accepted: {', '.join(accepted)}"


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n:,} bytes"


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
            raise DatasetError(name, 1, column, unknown("column", column, accepted))
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
