"""The collector and a loaded model: what was there when a model became ready is left out of its full passes.

A process serving a model holds several hundred thousand long-lived Python objects (torch's and transformers'
modules, the tokenizer, the model's parameters and their wrappers). CPython's full collection walks all of them,
about a quarter of a second on these hosts, with the GIL held: every thread stops, the engine's decode step
with them. A request with a long history makes tens of thousands of objects that live for its preparation, so
under such requests full collections come every few requests. ``freeze`` moves what exists once a model is
loaded into the permanent generation (``gc.freeze``), as long-running servers do after start; a full
collection then walks only what came later. ``release`` puts it back when the service closes, so a process
that starts and closes services (a notebook, the tests) can still collect a closed model's cycles.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = 0  # loaded models whose objects are in the permanent generation


def freeze() -> None:
    """A model is loaded: collect once, then leave everything alive now out of later collections."""
    global _frozen
    with _lock:
        gc.collect()
        gc.freeze()
        _frozen += 1


def unfreeze() -> None:
    """A model was closed: once no loaded model is left, everything goes back to the collector."""
    global _frozen
    with _lock:
        if _frozen == 0:
            return
        _frozen -= 1
        if _frozen == 0:
            gc.unfreeze()


def frozen_models() -> int:
    """How many loaded models keep the heap frozen now."""
    return _frozen
