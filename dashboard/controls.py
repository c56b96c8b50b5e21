"""The generation parameters' controls, made from their declarations (``toolkit.params.PARAMS``): which
parameters the settings show, each slider's label, range and step. The dashboard keeps no numbers of its own."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from toolkit.params import PARAMS, Control


def shown() -> list[str]:
    """The parameters the settings show, in their declared order."""
    return [name for name, spec in PARAMS.items() if spec.control is not None]


def spec(name: str) -> Control:
    control = PARAMS[name].control
    if control is None:
        raise KeyError(f"{name} is not shown in the dashboard (its declaration has no control)")
    return control


def slider(name: str, **options: Any) -> widgets.ValueWidget:
    """The slider of the parameter ``name`` (disabled until the model's defaults are shown on it), with the
    class ``tk-<name>``; ``options`` (a shorter ``description``, a ``value``) override."""
    c = spec(name)
    kind = widgets.IntSlider if PARAMS[name].kind == "int" else widgets.FloatSlider
    made = kind(**{"description": c.label, "min": c.low, "max": c.high, "step": c.step, "disabled": True, **options})
    made.add_class("tk-" + name.replace("_", "-"))
    return made


def box(name: str, value: int, **options: Any) -> widgets.BoundedIntText:
    """A number box for the integer parameter ``name`` within its control's range."""
    c = spec(name)
    return widgets.BoundedIntText(value=value, min=int(c.low), max=int(c.high), description=c.label, **options)
