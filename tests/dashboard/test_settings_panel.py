"""SettingsPanel over a stub service: what a request takes from it (no model needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from dashboard.settings_panel import SettingsPanel
from toolkit.params import GenerationParams
from toolkit.results import ModelInfo


def model(name: str, **defaults: Any) -> ModelInfo:
    return ModelInfo(name, "local", True, None, None, default=name == "a", defaults=defaults)


class Stub:
    def __init__(self) -> None:
        self.served = [model("a", temperature=0.3), model("b", temperature=0.8)]
        self.loaded = {"a": ["x"], "b": []}

    def models(self) -> list[ModelInfo]:
        return self.served

    def adapters(self, name: str | None = None) -> list[Any]:
        return [SimpleNamespace(name=n) for n in self.loaded[name or "a"]]


def test_a_request_takes_the_choices_and_only_the_moved_sliders() -> None:
    panel = SettingsPanel(cast(Any, Stub()))  # models() and adapters() are all it asks
    empty = {"model": None, "adapter": None, "system_prompt": None, "params": GenerationParams()}
    assert panel.request_fields() == empty and panel.view.selected_index is None  # closed, nothing known yet
    panel.refresh()
    assert panel.model.value == "a" and panel.controls["temperature"].value == 0.3  # the model's default, shown
    assert panel.request_fields()["params"] == GenerationParams()  # and not sent
    panel.adapter.value = "x"
    panel.system_prompt.value = "Be brief."
    panel.controls["max_new_tokens"].value = 12
    assert panel.request_fields() == {
        "model": "a",
        "adapter": "x",
        "system_prompt": "Be brief.",
        "params": GenerationParams(max_new_tokens=12),
    }
    panel.model.value = "b"  # another model: its adapters and its defaults
    assert panel.adapter.value == "" and panel.adapter.disabled and panel.controls["temperature"].value == 0.8
    panel.new_chat()
    assert panel.system_prompt.value == "" and panel.model.value == "b"
