"""The local engine's attention: PyTorch's SDPA with its own grouped-query support, registered with
transformers' attention interface as ``toolkit_sdpa`` (``use``), eager and compiled alike.

transformers' ``sdpa`` path passes ``enable_gqa`` to SDPA only when no attention mask is given (CUDA's rule);
with a mask it regroups the query for one-token steps when eager, and under ``torch.compile`` it expands the
key/value heads to the query's (``repeat_kv``), which inductor materialises: 3 KV heads copied as 9 at every
step, over the whole cache. PyTorch's CPU kernels take ``enable_gqa`` with a mask, reading each KV head once
for its group of query heads, straight from the cache's view. The masks are transformers' own for SDPA
(boolean, ``(batch, 1, query, key)``), so padding and causality are exactly ``sdpa``'s.
"""

from __future__ import annotations

from typing import Any

NAME = "toolkit_sdpa"


def attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """``(batch, heads, q, dim)`` queries over ``(batch, kv_heads, k, dim)`` keys and values -> ``(batch, q,
    heads, dim)``, as transformers' attention functions return it."""
    import torch

    q_length = query.shape[2]
    # a plain bool: from the module's own count where it has one (with dynamic shapes under the compiler the
    # heads' comparison is symbolic, and SDPA takes no symbolic flag: the graph would break at every layer)
    groups = getattr(module, "num_key_value_groups", None)
    gqa = groups != 1 if isinstance(groups, int) else bool(query.shape[1] != key.shape[1])
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_length > 1 and attention_mask is None and causal)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        is_causal=causal,
        enable_gqa=gqa,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``attention`` (and SDPA's masks) under ``NAME`` with transformers; the name, for
    ``set_attn_implementation``. Registering again is harmless."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def use(model: Any) -> bool:
    """Make ``model`` attend with ``attention``; False (and the model unchanged) when its architecture does not
    take a registered attention function (an old remote-code model)."""
    name = register()
    try:
        model.set_attn_implementation(name)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return bool(model.config._attn_implementation == name)  # a model that cannot switch keeps its own (and warns)
