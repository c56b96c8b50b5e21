"""A prompt prefilled on its own: from a kept prefix (``prefixes.py``), and in chunks while others decode.

A long prompt prefilled in one piece between two decode steps makes every running stream wait for all of
it (a 1,500-token grounded prompt: about 2 s on 2 cores). While rows are decoding, the scheduler gives such
a prompt one chunk of ``PREFILL_CHUNK`` tokens per step, into a cache of its own, and adds it to the batch
when its last chunk is done (as vLLM's chunked prefill does, with a separate forward). With nothing
decoding it is prefilled in one piece: nobody waits, and the first token comes soonest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from toolkit.engines.local.prefixes import Prefix


@dataclass(eq=False)
class Fill:
    """One job's prompt going into its own cache; ``done`` tokens of it are in."""

    job: Any  # engine.Job
    cache: Any
    done: int = 0

    @classmethod
    def start(cls, job: Any, config: Any, device: Any, reuse: tuple[int, Prefix] | None = None) -> Fill:
        """A fresh cache, seeded with the first ``common`` tokens' KV of a kept prefix when ``reuse``."""
        from transformers import DynamicCache

        cache = DynamicCache(config=config)
        if reuse is None:
            return cls(job, cache)
        common, prefix = reuse
        for layer, (keys, values) in enumerate(prefix.layers):
            cache.update(keys[:, :, :common].to(device), values[:, :, :common].to(device), layer)
        return cls(job, cache, common)

    @property
    def remaining(self) -> int:
        return len(self.job.input_ids) - self.done

    def inputs(self, n: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, position ids) of the next ``n`` prompt tokens; ``done`` moves on."""
        end = min(self.done + n, len(self.job.input_ids))
        ids = torch.tensor([self.job.input_ids[self.done : end]], dtype=torch.long, device=device)
        mask = torch.ones((1, end), dtype=torch.long, device=device)
        positions = torch.arange(self.done, end, device=device).unsqueeze(0)
        self.done = end
        return ids, mask, positions
