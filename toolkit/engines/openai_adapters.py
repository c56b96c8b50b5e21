"""The LoRA adapters an OpenAI-compatible server serves beside a model, and vLLM's runtime loading.

An adapter is a ``/models`` entry whose ``parent`` is the served model. Loading and unloading go
through vLLM's ``/load_lora_adapter`` and ``/unload_lora_adapter`` (the server needs
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). The server does not say an adapter's hash or training
details, so those fields stay empty.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from toolkit.engines.openai_errors import HTTPStatus
from toolkit.errors import InvalidRequest, ToolkitError
from toolkit.results import AdapterInfo

Call = Callable[..., Any]  # (method, url, body, timeout, text=) -> the answer; the engine's HTTP call


class RemoteAdapters:
    """The adapters of ``served_model`` on the server at ``base_url``, as last listed."""

    def __init__(self, model: str, served_model: str, base_url: str, call: Call) -> None:
        self.model = model  # the toolkit's name for the model, for messages
        self.served_model = served_model
        self.base_url = base_url.rstrip("/")
        self._call = call
        self._known: dict[str, AdapterInfo] = {}

    def refresh(self, entries: list[Any] | None = None) -> None:
        """List them again (from ``entries``, a ``/models`` answer's data, when the caller has one)."""
        if entries is None:
            listing = self._call("GET", self.base_url + "/models")
            entries = listing.get("data", []) if isinstance(listing, dict) else []
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        found = {}
        for entry in entries:
            if isinstance(entry, dict) and entry.get("parent") == self.served_model and entry.get("id"):
                name = str(entry["id"])
                found[name] = self._known.get(name) or AdapterInfo(
                    name=name,
                    path=str(entry.get("root") or name),
                    base_model=self.served_model,
                    adapter_hash="",
                    r=None,
                    alpha=None,
                    target_modules=(),
                    steps=None,
                    examples=None,
                    final_loss=None,
                    created_at=None,
                    loaded_at=now,
                )
        self._known = found

    def listed(self) -> list[AdapterInfo]:
        with contextlib.suppress(ToolkitError, HTTPStatus):  # else the last known list
            self.refresh()
        return [self._known[name] for name in sorted(self._known)]

    def check(self, name: str) -> None:
        if name in self._known:
            return
        with contextlib.suppress(ToolkitError, HTTPStatus):
            self.refresh()
        if name not in self._known:
            names = ", ".join(sorted(self._known)) or "none"
            raise InvalidRequest("adapter", f"unknown adapter {name!r} for model {self.model!r}; served: {names}")

    def load(self, name: str, path: str | None = None) -> AdapterInfo:
        try:
            body = {"lora_name": name, "lora_path": path or name}
            self._call("POST", self.base_url + "/load_lora_adapter", body, timeout=120, text=True)
        except HTTPStatus as exc:
            raise self._runtime_error(exc) from None
        self.refresh()
        return self._known[name]

    def unload(self, name: str) -> AdapterInfo:
        self.check(name)
        info = self._known[name]
        try:
            self._call("POST", self.base_url + "/unload_lora_adapter", {"lora_name": name}, timeout=60, text=True)
        except HTTPStatus as exc:
            raise self._runtime_error(exc) from None
        self.refresh()
        return info

    def _runtime_error(self, exc: HTTPStatus) -> ToolkitError:
        if exc.status in (404, 405):
            return InvalidRequest(
                "model",
                f"model {self.model!r}: its server does not load adapters at run time; start vLLM with "
                "--enable-lora and the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                "or list the adapters at start with --lora-modules name=path",
            )
        return InvalidRequest("name", f"model {self.model!r}: its server refused: {exc.message}")
