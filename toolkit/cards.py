"""An adapter's card (``adapter_card.json``): what it was trained on, read and checked before serving it.

``toolkit.lora`` writes cards when it saves an adapter; serving (``toolkit.adapters``) only reads them,
so that serving never imports the training module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import InvalidRequest

CARD = "adapter_card.json"
CARD_FIELDS: dict[str, type | tuple[type, ...]] = {  # what a card's fields must be, where present
    "base_model": str,
    "base_model_hash": str,
    "lora": dict,
    "steps": int,
    "examples": int,
    "final_loss": (int, float),
    "created_at": str,
}


def read_card(path: str | Path, *, field: str = "adapter") -> dict[str, Any]:
    card_file = Path(path) / CARD
    name = Path(path).name
    try:
        card = json.loads(card_file.read_text())
    except OSError:
        raise InvalidRequest(field, f"{name!r} is not an adapter saved by the toolkit (no {CARD})") from None
    except (ValueError, RecursionError):
        raise InvalidRequest(field, f"the {CARD} of {name!r} is not valid JSON") from None
    if not isinstance(card, dict):
        raise InvalidRequest(field, f"the {CARD} of {name!r} is not a JSON object; save the adapter again")
    for key, kinds in CARD_FIELDS.items():
        if card.get(key) is not None and not isinstance(card[key], kinds):
            raise InvalidRequest(field, f"the {CARD} of {name!r} has a malformed {key!r}; save the adapter again")
    return card


def check_card(path: str | Path, *, base_hash: str, field: str = "adapter") -> dict[str, Any]:
    """The adapter's card, if it was trained on the base model with content hash ``base_hash``."""
    card = read_card(path, field=field)
    if card.get("base_model_hash") != base_hash:
        raise InvalidRequest(
            field,
            f"{Path(path).name!r} was trained on {card.get('base_model')!r} "
            f"({str(card.get('base_model_hash'))[:19]}…), not on this base model ({base_hash[:19]}…); "
            "train it again on this model",
        )
    return card
