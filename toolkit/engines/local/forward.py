"""One forward of the model for the scheduler: the base model or a LoRA adapter per row (peft's, ``lorastack.py``;
with ``COMPILE_DECODE``, the bank inside the compiled step, ``rowlora.py``), and for a decode step, the compiled
step where ``COMPILE_DECODE`` kept it (``compiled.py``). The scheduler decides
what runs when; this decides how the model is called."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from toolkit.engines.local.compiled import CompiledStep
from toolkit.engines.local.lorastack import LoraStack
from toolkit.engines.local.rowlora import RowLoras


class ModelForward:
    """Calls ``model`` for the last position's logits of each row, over a cache the caller holds."""

    def __init__(
        self,
        model: Any,
        *,
        compile_decode: bool = False,
        max_loras: int = 0,
        max_lora_rank: int = 16,
        max_rows: int = 64,
    ) -> None:
        """``compile_decode``: compile the decode step (over the slots' cache) in the background. ``max_loras`` > 0
        with it: adapters are served inside the compiled step, per row (``rowlora.py``: ``max_loras`` of rank
        ``max_lora_rank`` at most, in batches of ``max_rows``); else by peft's mixed batches (``lorastack.py``),
        eager while one is loaded."""
        self.model = model
        names = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in names else "past_key_values"
        self.lora: LoraStack | RowLoras
        if compile_decode and max_loras > 0:
            self.lora = RowLoras(model, max_loras=max_loras, max_lora_rank=max_lora_rank, max_rows=max_rows)
        else:
            self.lora = LoraStack(model)
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
        """A decode step, and the path it took: ``compiled`` where the warm-up kept it for this many rows (with
        the rows' adapters inside it, from the bank; with peft's, only while none is loaded), else ``eager``.
        ``path`` forces one (a replay takes the path its record names); ``compiled`` needs ``can_compile``."""
        compiled = self.compiled
        held = path == "compiled" or (path is None and compiled is not None and compiled.serves(ids.shape[0]))
        if compiled is not None and held and self._fast_path:
            if isinstance(self.lora, RowLoras):
                self.lora.select(adapters)
            try:
                return compiled.run(ids, mask, positions, cache), "compiled"
            except Exception:  # a shape or state the graph cannot take: eager from now on, this step included
                compiled.give_up("a compiled decode step failed")  # (the step writes each layer's KV in place:
        return self(ids, mask, positions, cache, adapters), "eager"  # eager writes the same values again)

    @property
    def can_compile(self) -> bool:
        """The compiled step is ready: a step may be held to it."""
        return self.compiled is not None and self.compiled.state == "ready" and self._fast_path

    @property
    def _fast_path(self) -> bool:
        """Adapters are inside the compiled step (the bank), or none is loaded."""
        return isinstance(self.lora, RowLoras) or not self.lora.names

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
