"""The engine's registered attention (``toolkit/engines/local/attention.py``): SDPA's own grouped-query
support gives what transformers' ``sdpa`` gives, on a left-padded batch, prefill and decode, and the engine
uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toolkit.engines.local import attention


def logits(model: Any, implementation: str, ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, Any]:
    """A prefill of ``ids`` and one decode step after it, with ``implementation``."""
    model.set_attn_implementation(implementation)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        step_ids = out.logits[:, -1:].argmax(-1)
        step_mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        step = model(input_ids=step_ids, attention_mask=step_mask, past_key_values=out.past_key_values)
    return out.logits, step.logits


def test_it_attends_as_transformers_sdpa_does_on_a_padded_batch(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # grouped-query: what is tested
    ids = torch.randint(10, 1000, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as the engine's batches have it
    mask[2, :9] = 0
    attention.register()
    want = logits(model, "sdpa", ids, mask)
    got = logits(model, attention.NAME, ids, mask)
    for a, b in zip(want, got, strict=True):
        real = mask.bool()[:, : a.shape[1]] if a.shape[1] == ids.shape[1] else torch.ones(3, 1, dtype=torch.bool)
        assert torch.allclose(a[real], b[real], atol=1e-5), (a[real] - b[real]).abs().max()
        assert torch.equal(a[real].argmax(-1), b[real].argmax(-1))


def test_the_engine_attends_with_it(tiny_model_dir: Path, loaded: Any) -> None:
    from transformers import AutoModelForCausalLM

    from toolkit.engines.local.engine import Scheduler

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    engine = Scheduler(model, loaded.tokenizer, eos_token_ids=loaded.eos_token_ids, context_length=256)
    try:
        assert (engine.attention, model.config._attn_implementation) == (attention.NAME, attention.NAME)
    finally:
        engine.close()
