"""One forward of the model for the scheduler: the base model or a LoRA adapter per row (``lorastack.py``), and
for a decode step, the compiled step where ``COMPILE_DECODE`` kept it (``compiled.py``). The scheduler decides
what runs when; this decides how the model is called."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from toolkit.engines.local.compiled import CompiledStep
from toolkit.engines.local.lorastack import LoraStack


class ModelForward:
    """Calls ``model`` for the last position's logits of each row, over a cache the caller holds."""

    def __init__(self, model: Any, *, compile_decode: bool = False) -> None:
        """``compile_decode``: compile the decode step (over the slots' cache) in the background."""
        self.model = model
        self.lora = LoraStack(model)
        names = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in names else "past_key_values"
        self.compiled = CompiledStep(model, self.plain) if compile_decode else None

    def __call__(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, adapters: Sequence[str | None]
    ) -> torch.Tensor:
        """Row ``i`` with ``adapters[i]`` (None: the base model)."""
        return self.lora(adapters, **self._inputs(ids, mask, positions, cache)).logits[:, -1, :]

    def decode(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        adapters: Sequence[str | None],
        path: str | None = None,
    ) -> tuple[torch.Tensor, str]:
        """A decode step, and the path it took: ``compiled`` where the warm-up kept it for this many rows and no
        adapter is loaded (adapters are not in it), else ``eager``. ``path`` forces one (a replay takes the path
        its record names); ``compiled`` needs the compiled step ready (``can_compile``)."""
        compiled = self.compiled
        held = path == "compiled" or (path is None and compiled is not None and compiled.serves(ids.shape[0]))
        if compiled is not None and held and not self.lora.names:
            return compiled.run(ids, mask, positions, cache), "compiled"
        return self(ids, mask, positions, cache, adapters), "eager"

    @property
    def can_compile(self) -> bool:
        """The compiled step is ready, and a step may take it (no adapter loaded)."""
        return self.compiled is not None and self.compiled.state == "ready" and not self.lora.names

    def plain(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """The base model's step, no adapter: what ``compiled.py`` compiles."""
        return self.model(**self._inputs(ids, mask, positions, cache)).logits[:, -1, :]

    def _inputs(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> dict[str, Any]:
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
            "logits_to_keep": 1,
            self._cache_kw: cache,
        }
