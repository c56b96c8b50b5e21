"""The local engine: a continuous-batching scheduler over a Hugging Face causal LM, its KV cache and sampling."""
