"""Wire forms of the result dataclasses, derived from the dataclasses themselves.

GraphQL speaks camelCase and upper-case enum values; the dataclasses in ``toolkit.results`` are
declared once, in Python's names, and these three functions derive the rest:

- ``to_wire(obj)``: a dataclass as the GraphQL server answers it;
- ``from_wire(cls, data)``: the same dataclass back, in ``RemoteService``;
- ``selection(cls)``: the GraphQL selection set that asks for all of it.

A field whose metadata says ``wire="enum"`` is an enum on the wire (``"stop"`` <-> ``"STOP"``);
``wire="json"`` travels as a JSON scalar, in Python's names (the run record). The names: snake_case
to camelCase, ``_s`` (seconds) to ``Seconds``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
ENUM: dict[str, Any] = {"wire": "enum"}
JSON: dict[str, Any] = {"wire": "json"}


def camel(name: str) -> str:
    if name.endswith("_s"):
        name = name[:-2] + "_seconds"
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_wire(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            kind = f.metadata.get("wire")
            if kind == "json":
                is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
                out[camel(f.name)] = dataclasses.asdict(value) if is_instance else value
            elif kind == "enum":
                out[camel(f.name)] = value.upper() if isinstance(value, str) else value
            else:
                out[camel(f.name)] = to_wire(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_wire(v) for v in obj]
    return obj


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def _value(tp: Any, value: Any) -> Any:
    tp, _ = _unwrap(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_wire(tp, value)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_value(inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    return value


def from_wire(cls: type[T], data: dict[str, Any]) -> T:
    """The dataclass ``cls`` from its wire form; fields the server did not send take their defaults."""
    hints = _hints(cls)  # type: ignore[arg-type]
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = camel(f.name)
        if key not in data:
            continue
        value, kind = data[key], f.metadata.get("wire")
        if kind == "enum":
            kwargs[f.name] = value.lower() if isinstance(value, str) else value
        elif kind == "json":
            inner = _unwrap(hints[f.name])[0]
            if isinstance(inner, type) and dataclasses.is_dataclass(inner) and isinstance(value, dict):
                names = {g.name for g in dataclasses.fields(inner)}
                make: Any = inner
                kwargs[f.name] = make(**{k: v for k, v in value.items() if k in names})
            else:
                kwargs[f.name] = value
        else:
            kwargs[f.name] = _value(hints[f.name], value)
    return cls(**kwargs)


@functools.cache
def selection(cls: type) -> str:
    """``name other { nested fields } ...``: every field of ``cls``, for a GraphQL query."""
    hints = _hints(cls)
    parts = []
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap(hints[f.name])
        origin = typing.get_origin(tp)
        if origin in (tuple, list):
            tp, _ = _unwrap((typing.get_args(tp) or (Any,))[0])
        if f.metadata.get("wire") != "json" and dataclasses.is_dataclass(tp) and isinstance(tp, type):
            parts.append(f"{camel(f.name)} {{ {selection(tp)} }}")
        else:
            parts.append(camel(f.name))
    return " ".join(parts)


def problem(tp: Any, value: Any) -> tuple[str, str] | None:
    """Why ``value`` is not of the type ``tp`` (JSON shapes: str, int, float, bool, None, lists, tuples,
    dicts, Literal, Any), as (where inside it, why), or None when it is. For untrusted JSON checked against
    a dataclass's hints."""
    inner, optional = _unwrap(tp)
    if value is None:
        return None if optional or inner is Any else ("", "must not be null")
    if inner is Any:
        return None
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if not isinstance(value, dict):
            return "", f"must be an object, got {type(value).__name__}"
        hints = _hints(inner)
        for f in dataclasses.fields(inner):
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    return f".{f.name}", "is missing"
                continue
            why = problem(hints[f.name], value[f.name])
            if why is not None:
                return f".{f.name}{why[0]}", why[1]
        return None
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        allowed = typing.get_args(inner)
        return None if value in allowed else ("", f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return "", f"must be a list, got {type(value).__name__}"
        item = (typing.get_args(inner) or (Any,))[0]
        for i, v in enumerate(value):
            why = problem(item, v)
            if why is not None:
                return f"[{i}]{why[0]}", why[1]
        return None
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            return "", f"must be an object, got {type(value).__name__}"
        _, value_type = typing.get_args(inner) or (str, Any)
        for k, v in value.items():
            if not isinstance(k, str):
                return "", "must have string keys"
            why = problem(value_type, v)
            if why is not None:
                return f".{k}{why[0]}", why[1]
        return None
    if inner is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else ("", f"must be a number, got {type(value).__name__}")
    if inner is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else ("", f"must be an integer, got {type(value).__name__}")
    if isinstance(inner, type) and not isinstance(value, inner):
        return "", f"must be a {_NAMES.get(inner, inner.__name__)}, got {type(value).__name__}"
    return None


_NAMES = {str: "string", bool: "boolean"}


def checked(cls: type[T], data: Any, where: str) -> dict[str, Any]:
    """The fields of ``data`` (a JSON object) that ``cls`` has, each checked against its type hint;
    ``InvalidRequest`` naming ``where.field`` for the first that does not fit, or a required one missing."""
    from toolkit.errors import InvalidRequest

    if not isinstance(data, dict):
        raise InvalidRequest(where, f"must be a JSON object, got {type(data).__name__}")
    why = problem(cls, data)
    if why is not None:
        raise InvalidRequest(f"{where}{why[0]}", why[1])
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in data.items() if k in names}
