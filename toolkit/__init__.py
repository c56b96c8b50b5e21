"""An LLM research toolkit, Jupyter first.

    from toolkit import InferenceService
    service = InferenceService().start()
    print(service.infer("What is the capital of France?", temperature=0).text)

Names are imported lazily: ``import toolkit`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from toolkit.version import __version__ as __version__

_EXPORTS = {
    "Settings": "toolkit.settings",
    "GenerationParams": "toolkit.params",
    "InferRequest": "toolkit.params",
    "Limits": "toolkit.params",
    "Turn": "toolkit.params",
    "InferenceService": "toolkit.service",
    "InferResult": "toolkit.results",
    "Token": "toolkit.results",
    "Done": "toolkit.results",
    "Health": "toolkit.results",
    "RunRecord": "toolkit.results",
    "AdapterInfo": "toolkit.results",
    "ToolkitError": "toolkit.errors",
    "InvalidRequest": "toolkit.errors",
    "PromptTooLong": "toolkit.errors",
    "Overloaded": "toolkit.errors",
    "ModelLoadError": "toolkit.errors",
    "ModelNotReady": "toolkit.errors",
    "ConfigError": "toolkit.errors",
    "Forbidden": "toolkit.errors",
    "Engine": "toolkit.engines.base",
    "load_model": "toolkit.models",
    "Conversation": "toolkit.conversation.handle",
    "conversations": "toolkit.conversation.handle",
}

__all__ = [
    "AdapterInfo",
    "ConfigError",
    "Conversation",
    "Done",
    "Engine",
    "Forbidden",
    "GenerationParams",
    "Health",
    "InferRequest",
    "InferResult",
    "InferenceService",
    "InvalidRequest",
    "Limits",
    "ModelLoadError",
    "ModelNotReady",
    "Overloaded",
    "PromptTooLong",
    "RunRecord",
    "Settings",
    "Token",
    "ToolkitError",
    "Turn",
    "conversations",
    "load_model",
]

if TYPE_CHECKING:
    from toolkit.conversation.handle import Conversation, conversations
    from toolkit.engines.base import Engine
    from toolkit.errors import (
        ConfigError,
        Forbidden,
        InvalidRequest,
        ModelLoadError,
        ModelNotReady,
        Overloaded,
        PromptTooLong,
        ToolkitError,
    )
    from toolkit.models import load_model
    from toolkit.params import GenerationParams, InferRequest, Limits, Turn
    from toolkit.results import AdapterInfo, Done, Health, InferResult, RunRecord, Token
    from toolkit.service import InferenceService
    from toolkit.settings import Settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext toolkit``: registers ``%%ask`` and ``%ask`` (see ``toolkit.magic``)."""
    from toolkit.magic import load_ipython_extension as load

    load(ipython)
