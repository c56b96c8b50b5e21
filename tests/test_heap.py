"""A loaded model's objects leave the collector's full passes while it serves (``toolkit/heap.py``)."""

from __future__ import annotations

import gc
from typing import Any

from toolkit import heap
from toolkit.service import InferenceService
from toolkit.settings import Settings


def test_a_served_models_objects_are_frozen_until_the_last_service_closes(settings: Settings, loaded: Any) -> None:
    before = heap.frozen_models()  # the session's own service may be serving
    first = InferenceService(settings, loaded=loaded).start(progress=False)
    assert heap.frozen_models() == before + 1
    assert gc.get_freeze_count() > 10_000  # torch's, transformers' and the model's objects: full passes skip them
    second = InferenceService(settings, loaded=loaded).start(progress=False)
    first.close(grace_s=0)
    first.close(grace_s=0)  # closing twice thaws once
    assert heap.frozen_models() == before + 1 and gc.get_freeze_count() > 10_000  # another still serves
    second.close(grace_s=0)
    assert heap.frozen_models() == before
    if before == 0:
        assert gc.get_freeze_count() == 0  # a closed model's cycles can be collected again
