"""LoRA adapters per batch row inside the compiled decode step: each row gathers its own A and B.

With ``COMPILE_DECODE`` and ``MAX_LORAS`` > 0 the engine does not inject peft's layers (``lorastack.py``), whose
mixed batches split the rows by adapter in Python, which a compiled graph cannot follow. At start it wraps every
linear layer of the decoder blocks once (``RowLora``) around a bank of ``max_loras`` adapter slots of rank
``max_lora_rank`` (slot 0 is the base model: zeros). A step writes each row's slot into one index buffer; each
layer then adds ``x A[slot]ᵀ (s·B[slot])ᵀ`` for all rows in two batched matmuls. Loading an adapter writes its
weights into a free slot in place and unloading zeroes it, so the module structure and every tensor's shape stay
as compiled: no recompile, no stall (vLLM's ``--max-loras`` and ``--max-lora-rank`` are the same bargain). Eager
steps where no row has an adapter skip the LoRA work; the compiled step always has it (measured on a 2-core
Intel host: that made the compiled step slower than eager, hence ``MAX_LORAS`` is 0 by default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.errors import InvalidRequest, MissingDependency

KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight")


class RowLora(nn.Module):
    """A linear layer plus, for each batch row, the LoRA of the adapter in that row's slot."""

    a: torch.Tensor  # (slots, rank, in)
    b: torch.Tensor  # (slots, out, rank), each slot's scale folded in
    rows: torch.Tensor  # each batch row's slot

    def __init__(self, base: nn.Linear, slots: int, rank: int, rows: torch.Tensor, state: dict[str, bool]) -> None:
        super().__init__()
        self.base = base
        weight = base.weight
        self.in_features, self.out_features = int(base.in_features), int(base.out_features)
        self.register_buffer("a", torch.zeros(slots, rank, self.in_features, dtype=weight.dtype), persistent=False)
        self.register_buffer("b", torch.zeros(slots, self.out_features, rank, dtype=weight.dtype), persistent=False)
        self.register_buffer("rows", rows, persistent=False)  # one tensor, shared by every layer
        self.state = state  # {"any": a row of this step has an adapter}: eager skips the LoRA work without

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not torch.compiler.is_compiling() and not self.state["any"]:
            return out
        slots = self.rows[: x.shape[0]]
        a = self.a.index_select(0, slots).transpose(1, 2)  # (rows, in, rank)
        b = self.b.index_select(0, slots).transpose(1, 2)  # (rows, rank, out), the scale folded in
        flat = x.reshape(x.shape[0], -1, self.in_features)
        return out + torch.bmm(torch.bmm(flat.to(a.dtype), a), b).reshape(out.shape).to(out.dtype)


class RowLoras:
    """The bank: ``max_loras`` adapters at most, of rank ``max_lora_rank`` at most; the interface of
    ``LoraStack`` (names, load, unload, a forward with an adapter per row). Not thread-safe: the engine calls
    it from its scheduler thread, between steps for load and unload."""

    def __init__(self, model: Any, *, max_loras: int, max_lora_rank: int, max_rows: int) -> None:
        self.model = model
        self.max_loras, self.max_rank = max_loras, max_lora_rank
        device = next(model.parameters()).device
        self.rows = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.state = {"any": False}
        self.layers: dict[str, RowLora] = {}
        for path, module in list(model.named_modules()):
            if ".layers." in f".{path}" and isinstance(module, nn.Linear):
                parent, _, attr = path.rpartition(".")
                wrapped = RowLora(module, max_loras + 1, max_lora_rank, self.rows, self.state).to(device)
                setattr(model.get_submodule(parent), attr, wrapped)
                self.layers[path] = wrapped
        self.slots: dict[str, int] = {}  # adapter name -> its slot (1..max_loras)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def load(self, name: str, folder: Path) -> None:
        """Write the adapter's weights into a free slot; anything the bank cannot hold is refused, untouched."""
        try:
            from peft import PeftConfig
            from peft.utils import load_peft_weights
        except ImportError:
            raise MissingDependency("peft", "serving LoRA adapters") from None
        if len(self.slots) >= self.max_loras:
            raise InvalidRequest(
                "name", f"{self.max_loras} adapters are loaded, MAX_LORAS' limit: unload one, or raise MAX_LORAS"
            )
        try:
            config = PeftConfig.from_pretrained(str(folder))
            weights = load_peft_weights(str(folder), device="cpu")
        except Exception as exc:  # a broken or missing file
            why = f"{type(exc).__name__}: {exc}".replace(str(folder.resolve().parent), "ADAPTERS_DIR")
            raise InvalidRequest("path", f"cannot load the adapter in {folder.name!r} ({why})") from None
        pairs = self._pairs(config, weights, folder.name)
        slot = min(set(range(1, self.max_loras + 1)) - set(self.slots.values()))
        with torch.no_grad():
            for path, (a, b, scale) in pairs.items():
                layer, r = self.layers[path], a.shape[0]
                layer.a[slot].zero_()
                layer.b[slot].zero_()
                layer.a[slot, :r].copy_(a)
                layer.b[slot, :, :r].copy_(b * scale)
        self.slots[name] = slot

    def _pairs(self, config: Any, weights: dict[str, torch.Tensor], folder: str) -> dict[str, tuple[Any, Any, float]]:
        """Each wrapped layer's (A, B, scale) from a peft LoRA file; an InvalidRequest for what the bank cannot
        serve (another kind of adapter, a module outside the decoder blocks' linear layers, a rank or shape
        that does not fit)."""

        def refuse(why: str) -> InvalidRequest:
            return InvalidRequest("path", f"cannot load the adapter in {folder!r}: {why}")

        if config.peft_type != "LORA" or getattr(config, "use_dora", False):
            kind = "DoRA" if getattr(config, "use_dora", False) else config.peft_type
            raise refuse(f"only LoRA adapters are served per request, not {kind}")
        if getattr(config, "bias", "none") != "none" or getattr(config, "modules_to_save", None):
            raise refuse("it trains biases or whole modules (bias, modules_to_save), which per-row LoRA cannot serve")
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            match = KEY.fullmatch(key)
            if match is None or match["module"] not in self.layers:
                raise refuse(f"{key!r} is not a linear layer of the decoder blocks (the layers COMPILE_DECODE serves)")
            parts.setdefault(match["module"], {})[match["part"]] = tensor
        pairs = {}
        for path, ab in parts.items():
            layer, a, b = self.layers[path], ab.get("A"), ab.get("B")
            if a is None or b is None:
                raise refuse(f"{path} has lora_A or lora_B, not both")
            r = a.shape[0]
            if a.shape != (r, layer.in_features) or b.shape != (layer.out_features, r):
                raise refuse(f"{path}'s LoRA has the shape of another base model")
            if r > self.max_rank:
                raise refuse(f"its rank {r} is over MAX_LORA_RANK ({self.max_rank}); raise it to serve this adapter")
            alpha = next(
                (v for p, v in (config.alpha_pattern or {}).items() if re.search(rf"(^|\.){p}$", path)),
                config.lora_alpha,
            )
            pairs[path] = (a, b, alpha / (math.sqrt(r) if config.use_rslora else r))
        return pairs

    def unload(self, name: str) -> None:
        slot = self.slots.pop(name)
        with torch.no_grad():
            for layer in self.layers.values():
                layer.a[slot].zero_()
                layer.b[slot].zero_()

    def select(self, adapters: Sequence[str | None]) -> None:
        """The rows of the next forward: row ``i`` with ``adapters[i]`` (None: the base model)."""
        slots = [self.slots[a] if a else 0 for a in adapters]
        self.rows[: len(slots)].copy_(torch.tensor(slots, dtype=torch.long))
        self.state["any"] = any(slots)

    def __call__(self, adapters: Sequence[str | None], **kwargs: Any) -> Any:
        """A forward pass; row ``i`` runs with ``adapters[i]`` (None: the base model)."""
        self.select(adapters)
        return self.model(**kwargs)
