"""LoRA adapters served per request: the folders in ``ADAPTERS_DIR``, their cards, and the registry
of the adapters one local model serves (the engine's side is ``toolkit.engines.local.lorastack``).

Adapters load only from folders inside ``ADAPTERS_DIR`` and only when their card
says they were trained on this base model (by content hash).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from toolkit.cards import CARD, check_card
from toolkit.errors import InvalidRequest, ToolkitError
from toolkit.results import AdapterInfo

log = logging.getLogger("toolkit.adapters")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_name(name: Any) -> str:
    """An adapter name: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            "name", f"must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; got {name!r}"
        )
    return name


def resolve_path(adapters_dir: Path, path: Any) -> Path:
    """The adapter folder ``path`` names, which must lie inside ``adapters_dir`` (symlinks resolved)."""
    if not isinstance(path, str) or not path.strip() or len(path) > 1024 or "\x00" in path:
        raise InvalidRequest("path", "must be a folder name inside ADAPTERS_DIR (1-1024 characters)")
    root = adapters_dir.resolve()
    target = (root / path.strip()).resolve()
    if target == root or not target.is_relative_to(root):
        raise InvalidRequest("path", f"{path!r} is outside ADAPTERS_DIR; adapters load only from folders inside it")
    if not target.is_dir():
        raise InvalidRequest("path", f"there is no adapter folder {path!r} in ADAPTERS_DIR")
    return target


def discover(adapters_dir: Path) -> list[tuple[str, Path]]:
    """(name, folder) for each folder in ``adapters_dir`` that holds an adapter card; the folder name is the name.

    Folders that cannot be read (permissions) are left out; an unreadable ADAPTERS_DIR gives none.
    """
    found = []
    try:
        folders = sorted(adapters_dir.iterdir()) if adapters_dir.is_dir() else []
    except OSError:
        return []
    for folder in folders:
        try:
            if folder.is_dir() and not folder.name.startswith(".") and (folder / CARD).is_file():
                found.append((folder.name, folder))
        except OSError:
            continue
    return found


def describe(name: str, folder: Path, adapters_dir: Path, *, base_hash: str) -> AdapterInfo:
    """Read and check an adapter folder (card, base model, weights) without loading it."""
    card = check_card(folder, base_hash=base_hash, field="path")
    weights = next((folder / w for w in _WEIGHTS if (folder / w).is_file()), None)
    if weights is None or not (folder / "adapter_config.json").is_file():
        raise InvalidRequest("path", f"{folder.name!r} has a card but no peft adapter files; save it again")
    lora = card.get("lora") or {}
    loss = card.get("final_loss")
    return AdapterInfo(
        name=name,
        path=str(folder.resolve().relative_to(adapters_dir.resolve())),
        base_model=card.get("base_model"),
        adapter_hash="sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest(),
        r=lora.get("r") if isinstance(lora.get("r"), int) else None,
        alpha=lora.get("alpha") if isinstance(lora.get("alpha"), int) else None,
        target_modules=tuple(str(m) for m in lora.get("target_modules") or () if isinstance(m, str)),
        steps=card.get("steps"),
        examples=card.get("examples"),
        final_loss=float(loss) if isinstance(loss, (int, float)) else None,
        created_at=card.get("created_at"),
        loaded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


class AdapterRegistry:
    """The adapters a service serves, by name: loaded ones take requests, draining ones are being unloaded.

    Loads and unloads go through the engine (``load_adapter``/``unload_adapter``), one at a time;
    the lock is not held while an unload drains, so other adapters load and unload meanwhile.
    """

    def __init__(self, adapters_dir: Path, engine: Any, base_hash: str) -> None:
        self.adapters_dir = adapters_dir
        self._engine = engine
        self._base_hash = base_hash
        self._loaded: dict[str, AdapterInfo] = {}
        self._draining: set[str] = set()
        self._lock = threading.Lock()

    def list(self) -> list[AdapterInfo]:
        loaded = dict(self._loaded)  # a snapshot: loads and unloads run on other threads
        return [loaded[name] for name in sorted(loaded)]

    def get(self, name: str) -> AdapterInfo:
        """The loaded adapter ``name``, or BAD_USER_INPUT on ``adapter`` that lists the loaded ones."""
        info = self._loaded.get(name)
        if info is None:
            raise InvalidRequest("adapter", f"unknown adapter {name!r}{self._names()}")
        return info

    def load_folder(self) -> None:
        """Load every adapter found in ADAPTERS_DIR; one that does not fit is skipped, with a warning."""
        for name, folder in discover(self.adapters_dir):
            try:
                self.load(name, folder.name)
            except ToolkitError as exc:
                log.warning("adapter %r in ADAPTERS_DIR not loaded: %s", name, exc.message)
            except Exception as exc:  # a bad adapter must not stop the service from starting
                log.warning("adapter %r in ADAPTERS_DIR not loaded: %s: %s", name, type(exc).__name__, exc)

    def load(self, name: str, path: str | None = None) -> AdapterInfo:
        check_name(name)
        folder = resolve_path(self.adapters_dir, name if path is None else path)
        with self._lock:
            if name in self._loaded or name in self._draining:
                raise InvalidRequest("name", f"an adapter named {name!r} is already loaded; unload it first")
            info = describe(name, folder, self.adapters_dir, base_hash=self._base_hash)
            self._engine.load_adapter(name, folder)
            self._loaded[name] = info
        log.info("adapter %r loaded from %s", name, info.path)
        return info

    def unload(self, name: str, grace_s: float) -> AdapterInfo:
        with self._lock:
            info = self._loaded.pop(name, None)
            if info is None:
                raise InvalidRequest("name", f"no adapter named {name!r} is loaded{self._names()}")
            self._draining.add(name)
        try:
            cancelled = self._engine.unload_adapter(name, grace_s)
        except BaseException:
            with self._lock:  # still loaded in the engine: keep serving it
                self._loaded[name] = info
            raise
        finally:
            with self._lock:
                self._draining.discard(name)
        log.info("adapter %r unloaded (%d running request(s) cancelled)", name, cancelled)
        return info

    def _names(self) -> str:
        names = sorted(self._loaded)
        return f"; loaded: {', '.join(names)}" if names else "; none are loaded (see ADAPTERS_DIR, load_adapter)"
