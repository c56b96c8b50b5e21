"""A generation parameter's control: it shows the chosen model's default (``ModelInfo.defaults``) and is
sent only once the user moves it, so that the service's resolution (``toolkit.params.resolve``) decides
everything else. The dashboard has no defaults of its own."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets


class Tracked:
    """``widget`` for the parameter ``name``: ``value()`` is None until the user moves it."""

    def __init__(self, widget: widgets.ValueWidget, name: str) -> None:
        self.widget = widget
        self.name = name
        self.touched = False
        self._showing = False
        widget.observe(self._moved, names="value")

    def _moved(self, change: dict[str, Any]) -> None:
        if not self._showing:
            self.touched = True

    def show(self, defaults: dict[str, Any], *, keep_touched: bool = False) -> None:
        """The model's default on the control (when it has one; else the control keeps its place, and the
        model's server decides); an untouched control stays untouched."""
        if keep_touched and self.touched:
            return
        self._showing = True
        try:
            value = defaults.get(self.name)
            if value is not None:
                high = getattr(self.widget, "max", None)
                self.widget.value = min(value, high) if high is not None else value
            self.widget.disabled = False
        finally:
            self._showing = False
        self.touched = False

    def copy(self, other: Tracked) -> None:
        """Take ``other``'s place, and whether it was moved."""
        self._showing = True
        try:
            self.widget.value = other.widget.value
        finally:
            self._showing = False
        self.touched = other.touched

    def value(self) -> Any:
        return self.widget.value if self.touched else None
