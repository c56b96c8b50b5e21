"""Variants: a label and the request fields it sets, typed by the declarations wherever they come from.

A variant's fields arrive as Python values (a notebook's ``grid``, ``compare``), as JSON or TOML values
(``--variants``, a dataset), or as text (``--variant NAME:web_search=false``, a CSV cell). Each is read
here, once, by what its field is declared to be (``toolkit.params.PARAMS`` for the generation parameters,
``REQUEST_FIELDS`` for the rest of a request): a boolean is ``true``/``false`` in any case or ``1``/``0``,
a number is a number within its declared bounds, and anything else is an ``InvalidRequest`` that names the
variant, the field and the value. Nothing is guessed: ``"False"`` is false, ``"no"`` is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import InvalidRequest
from toolkit.params import PARAMS, GenerationParams

# What a variant may set besides the generation parameters, and of which kind: text fields take a
# non-empty string (None: unset), ``web_search`` a boolean, ``history`` a list of turns (checked by
# ``InferRequest``), ``timeout_s`` seconds.
REQUEST_FIELDS: dict[str, str] = {
    "model": "text",
    "adapter": "text",
    "system_prompt": "text",
    "web_search": "bool",
    "history": "turns",
    "timeout_s": "seconds",
    "params": "params",
    "request_id": "text",  # compare's: the id a caller cancels one variant by
}
TRUE, FALSE = ("true", "1"), ("false", "0")


def known_fields() -> list[str]:
    return [*REQUEST_FIELDS, *PARAMS]


def boolean(value: Any, where: str) -> bool:
    """``value`` as a boolean: True/False, 1/0, or their text in any case; else ``InvalidRequest`` on ``where``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (*TRUE, *FALSE):
        return value.strip().lower() in TRUE
    raise InvalidRequest(where, f"must be true or false (or 1/0), got {value!r}")


def number(value: Any, kind: str, where: str) -> int | float:
    """``value`` as an int or a float (``kind``), from a number or its text; ``InvalidRequest`` otherwise."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            want = "an integer" if kind == "int" else "a number"
            raise InvalidRequest(where, f"must be {want}, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(where, f"must be {'an integer' if kind == 'int' else 'a finite number'}, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequest(where, f"must be an integer, got {value!r}")
        return int(value)
    return value


def param(name: str, value: Any, where: str) -> Any:
    """A generation parameter's value read by its declaration and checked against its bounds."""
    spec = PARAMS[name]
    if value is None:
        return None
    if spec.kind == "strings":
        return list(GenerationParams.check(name, value, where=where))  # a list: the same in JSON and back
    return GenerationParams.check(name, number(value, spec.kind, f"{where}.{name}"), where=where)


def typed(fields: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A variant's (or a sample's) request fields, each read by its declaration; ``where`` prefixes the field
    in errors (``variants[closed]``)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = str(key)
        kind = REQUEST_FIELDS.get(name)
        if name in PARAMS:
            out[name] = param(name, value, f"{where}.params")
        elif kind is None:
            raise InvalidRequest(f"{where}.{name}", f"unknown field; known: {', '.join(known_fields())}")
        elif value is None:
            out[name] = None
        elif kind == "bool":
            out[name] = boolean(value, f"{where}.{name}")
        elif kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise InvalidRequest(f"{where}.{name}", f"must be a non-empty string, got {value!r}")
            out[name] = value
        elif kind == "seconds":
            seconds = number(value, "float", f"{where}.{name}")
            if seconds <= 0:
                raise InvalidRequest(f"{where}.{name}", f"must be > 0 seconds, got {value!r}")
            out[name] = seconds
        elif kind == "params":
            if not isinstance(value, Mapping):
                raise InvalidRequest(f"{where}.params", f"must be a mapping of generation parameters, got {value!r}")
            unknown = sorted(set(value) - set(PARAMS))
            if unknown:
                raise InvalidRequest(f"{where}.params.{unknown[0]}", f"unknown parameter; known: {', '.join(PARAMS)}")
            out[name] = {k: param(k, v, f"{where}.params") for k, v in value.items()}
        else:  # turns: InferRequest checks them, naming the turn
            out[name] = value
    return out


@dataclass(frozen=True)
class Variant:
    label: str
    fields: dict[str, Any] = field(default_factory=dict)  # request fields over the common ones, typed


def label_of(fields: Mapping[str, Any], i: int) -> str:
    parts = [f"{k}={v}" for k, v in fields.items() if k != "params"]
    return ", ".join(parts) or f"variant {i + 1}"


def variants(
    specs: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]], *, most: int, what: str
) -> list[Variant]:
    """Variants from a list of dicts (``label`` optional) or ``{label: fields}``, each field typed (``typed``);
    ``what`` names the caller in the count's error (``compare``, ``an evaluation``)."""
    if isinstance(specs, Mapping):
        items = []
        for k, v in specs.items():
            if not isinstance(v, Mapping):
                raise InvalidRequest(f"variants[{k}]", f"must be a mapping of request fields, got {v!r}")
            items.append({**dict(v), "label": k})
    else:
        items = []
        for i, v in enumerate(specs):
            if not isinstance(v, Mapping):
                raise InvalidRequest(f"variants[{i}]", f"must be a mapping of request fields, got {v!r}")
            items.append(dict(v))
    if not 1 <= len(items) <= most:
        raise InvalidRequest("variants", f"{what} takes 1 to {most} variants, got {len(items)}")
    out = []
    for i, item in enumerate(items):
        given = item.pop("label", None)
        label = str(given) if given not in (None, "") else label_of(item, i)
        out.append(Variant(label, typed(item, f"variants[{label}]")))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise InvalidRequest("variants", f"labels must differ, got {labels}")
    return out
