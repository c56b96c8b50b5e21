"""The base model plus the LoRA adapters loaded into it, for mixed-adapter batches.

The engine holds the base model once. The first adapter wraps it in a peft
``PeftModel`` (peft injects LoRA layers into the model's modules in place); more
adapters load next to it. Every forward pass then names an adapter per batch row
(peft's mixed-adapter batches, ``adapter_names=``; ``__base__`` is the base model),
so requests for different adapters and for the base share one batch. When the last
adapter is unloaded the LoRA layers come out again and the model is the plain base.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.errors import InvalidRequest, MissingDependency

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class LoraStack:
    """The base model plus the LoRA adapters loaded into it; not thread-safe (the engine locks)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.peft: Any = None

    @property
    def names(self) -> list[str]:
        return list(self.peft.peft_config) if self.peft is not None else []

    def load(self, name: str, folder: Path) -> None:
        """Load and try the adapter (one token through a mixed batch); on any failure, the model is as before."""
        try:
            from peft import PeftConfig, PeftModel
            from peft.utils import load_peft_weights
        except ImportError:
            raise MissingDependency("peft", "serving LoRA adapters") from None
        modules = dict(self.model.named_modules())  # to put back if a first load fails half way
        try:
            config = PeftConfig.from_pretrained(str(folder))
            if config.peft_type != "LORA" or getattr(config, "use_dora", False):
                kind = "DoRA" if getattr(config, "use_dora", False) else config.peft_type
                raise ValueError(f"only LoRA adapters are served per request, not {kind}")
            load_peft_weights(str(folder), device="cpu")  # a broken file fails here, before the model is touched
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name, is_trainable=False)
            else:
                self.peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            self.peft.eval()
            self._try(name)
        except Exception as exc:  # whatever a broken adapter raises (SafetensorError, OSError, size mismatch, ...)
            if name in self.names:
                self.unload(name)
            elif self.peft is None:
                self._restore(modules)
            why = f"{type(exc).__name__}: {exc}".replace(str(folder.resolve().parent), "ADAPTERS_DIR")
            raise InvalidRequest("path", f"cannot load the adapter in {folder.name!r} ({why})") from None

    def _try(self, name: str) -> None:
        """One token for the base and the new adapter together: an adapter peft cannot batch fails here."""
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            self([None, name], input_ids=torch.zeros((2, 1), dtype=torch.long, device=device))

    def _restore(self, modules: dict[str, Any]) -> None:
        """Undo a first load that failed half way: put back the modules peft replaced with LoRA layers,
        and drop the ``peft_config`` it left on the model (the next ``PeftModel`` would adopt it)."""
        for path, module in modules.items():
            parent, _, attr = path.rpartition(".")
            if path and self.model.get_submodule(path) is not module:
                setattr(self.model.get_submodule(parent) if parent else self.model, attr, module)
        if "peft_config" in vars(self.model):
            delattr(self.model, "peft_config")

    def unload(self, name: str) -> None:
        with warnings.catch_warnings():  # "adapter X was active, now Y": we name adapters per row anyway
            warnings.simplefilter("ignore", UserWarning)
            self.peft.delete_adapter(name)
        if not self.names:  # the last one: take the LoRA layers out, the plain base model remains
            self.peft.unload()
            self.peft = None

    def __call__(self, adapters: Sequence[str | None], **kwargs: Any) -> Any:
        """A forward pass; row ``i`` runs with ``adapters[i]`` (None: the base model)."""
        if self.peft is None:
            return self.model(**kwargs)
        return self.peft(**kwargs, adapter_names=[a or BASE for a in adapters])
