"""``SettingsPanel``: the Chat tab's Settings (model, adapter, a slider for each parameter whose declaration
says how to show it, system prompt), and what a request takes from them.

The sliders come from ``dashboard.controls`` (the declarations in ``toolkit.params.PARAMS``); each shows the
chosen model's defaults and is sent only once moved (``dashboard.tracked``). Widgets are updated by setting
their values, also from the chat's streaming thread (see ``dashboard.app``).
"""

from __future__ import annotations

import time
from typing import Any

import ipywidgets as widgets

from dashboard import controls
from dashboard.tracked import Tracked
from toolkit.conversation.records import ConversationInfo
from toolkit.params import GenerationParams
from toolkit.protocol import Service
from toolkit.results import ModelInfo

BASE_MODEL = ("(base model)", "")  # the adapter selector's entry for no adapter
DEFAULT_MODEL = ("(server default)", "")  # the model selector's entry before the list is known
ADAPTERS_EVERY_S = 20.0  # how often the health poll also asks for the models and adapters (they are rate limited)


def model_label(model: ModelInfo) -> str:
    """``name · engine``, and the status when it is not ready: ``smollm2-vllm · openai (loading)``."""
    label = f"{model.id} · {model.engine}"
    return label if model.status == "ready" else f"{label} ({model.status})"


class SettingsPanel:
    """The Settings accordion (``view``, closed at first) over ``backend``: ``request_fields()`` is what a
    request takes from it."""

    def __init__(self, backend: Service) -> None:
        self.backend = backend
        self._models: dict[str, ModelInfo] = {}
        self._defaults_for: str | None = None  # the model whose defaults the sliders were set from
        self._adapters_asked = -ADAPTERS_EVERY_S

        self.model = widgets.Dropdown(description="Model", options=[DEFAULT_MODEL], value="")
        self.model.add_class("tk-model")
        self.adapter = widgets.Dropdown(description="Adapter", options=[BASE_MODEL], value="", disabled=True)
        self.adapter.add_class("tk-adapter")
        # one slider per parameter whose declaration says how to show it (dashboard/controls.py); they show the
        # chosen model's defaults once its list is known (apply_defaults), and a request carries only the ones
        # the user moved: the service fills the rest from the model's own
        self.controls = {name: controls.slider(name) for name in controls.shown()}
        self.tracked = {name: Tracked(widget, name) for name, widget in self.controls.items()}
        self.system_prompt = widgets.Textarea(
            description="System", placeholder="optional system prompt", layout=widgets.Layout(width="95%")
        )
        self.view = widgets.Accordion(
            children=[widgets.VBox([self.model, self.adapter, *self.controls.values(), self.system_prompt])],
            titles=("Settings",),
        )
        self.view.selected_index = None
        self.view.observe(self._on_open, names="selected_index")
        self.model.observe(self._on_model, names="value")

    # ----- what a request takes --------------------------------------------------------------

    def params(self) -> GenerationParams:
        """The parameters the user moved; the others None (the model's defaults)."""
        return GenerationParams(**{name: control.value() for name, control in self.tracked.items()})

    def request_fields(self) -> dict[str, Any]:
        """``InferRequest``'s ``model``, ``adapter``, ``system_prompt`` and ``params`` as chosen here."""
        return {
            "model": self.model.value or None,
            "adapter": self.adapter.value or None,
            "system_prompt": self.system_prompt.value or None,
            "params": self.params(),
        }

    # ----- a conversation's own --------------------------------------------------------------

    def show(self, info: ConversationInfo) -> None:
        """What the opened conversation ran with: every request names the model (and adapter and system prompt),
        so settings left as they were would silently switch a continued conversation."""
        if info.model is not None and info.model in self._models:
            self.model.value = info.model
            self.fill_adapters()
        adapters = [value for _, value in self.adapter.options]
        self.adapter.value = info.adapter if info.adapter in adapters else ""
        self.system_prompt.value = info.system_prompt or ""

    def new_chat(self) -> None:
        """The model and adapter stay as chosen; the system prompt, which belongs to a conversation, starts empty."""
        self.system_prompt.value = ""

    # ----- the service's models and adapters -------------------------------------------------

    def poll(self) -> None:
        """With the health poll: the models and adapters again, every ``ADAPTERS_EVERY_S``."""
        if time.monotonic() - self._adapters_asked >= ADAPTERS_EVERY_S:
            self.refresh()

    def refresh(self) -> None:
        self.fill_models()
        self.fill_adapters()

    def fill_models(self) -> None:
        """Every model the service serves, with its engine and, unless ready, its status; the default first."""
        try:
            models = self.backend.models()
        except Exception:
            return
        self._models = {m.id: m for m in models}
        options = [(model_label(m), m.id) for m in models]
        if options and list(self.model.options) != options:
            ids = [m.id for m in models]
            default = next((m.id for m in models if m.default), ids[0])
            selected = self.model.value if self.model.value in ids else default
            self.model.options = options
            self.model.value = selected
        self.apply_defaults()

    def apply_defaults(self) -> None:
        """The sliders start from the chosen model's defaults, and again when the model changes."""
        model = self._models.get(self.model.value)
        if model is None or model.status != "ready" or self._defaults_for == model.id:
            return
        self._defaults_for = model.id
        for control in self.tracked.values():
            control.show(model.defaults)

    def fill_adapters(self) -> None:
        """The adapters loaded on the service now; a selected one that was unloaded falls back to the base.

        Asked at start, every ADAPTERS_EVERY_S with the health poll, when Settings opens, and when
        a request names an adapter the service no longer has.
        """
        self._adapters_asked = time.monotonic()
        try:
            names = [a.name for a in self.backend.adapters(self.model.value or None)]
        except Exception:
            return
        options = [BASE_MODEL, *((name, name) for name in names)]
        if list(self.adapter.options) != options:
            selected = self.adapter.value if self.adapter.value in names else ""
            self.adapter.options = options
            self.adapter.value = selected
        self.adapter.disabled = not names

    def _on_open(self, change: dict[str, Any]) -> None:
        if change["new"] == 0:  # Settings opened
            self.refresh()

    def _on_model(self, change: dict[str, Any]) -> None:
        """Another model: its adapters (each model has its own)."""
        if change["new"] != change["old"]:
            self.adapter.value = ""
            self.fill_adapters()
            self.apply_defaults()
