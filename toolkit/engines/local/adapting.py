"""The scheduler's part that changes the model between two steps: LoRA adapters loaded and unloaded on the
scheduler thread (no step sees half an adapter), and requests for an adapter being unloaded refused, let
finish, or cancelled after a grace period."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.engines.local.lorastack import LoraStack
from toolkit.engines.local.prefixes import PrefixCache
from toolkit.engines.local.rowlora import RowLoras
from toolkit.engines.local.rows import Job
from toolkit.errors import EngineClosed, InvalidRequest


@dataclass(eq=False)
class Op:
    """A change to the model that the scheduler thread makes between two steps."""

    change: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.change()
        except BaseException as exc:  # handed to the caller, who is waiting for it
            self.error = exc
        finally:
            self.done.set()


class Adapting:
    """Adapter changes, made by the scheduler thread between two steps (it runs ``_between_steps``)."""

    prefixes: PrefixCache
    _cond: threading.Condition
    _closing: bool
    _jobs: dict[str, Job]
    _pending: deque[Job]
    _lora: LoraStack | RowLoras
    _adapters: set[str]  # adapters requests may name (loaded, not being unloaded)
    _between_steps: list[Op]
    _finish: Callable[..., None]

    @property
    def adapters(self) -> list[str]:
        with self._cond:
            return sorted(self._adapters)

    def load_adapter(self, name: str, folder: Path) -> None:
        """Load a LoRA adapter between two decode steps; requests may name it from then on."""

        def load() -> None:
            if name in self._lora.names:
                raise InvalidRequest("name", f"an adapter named {name!r} is already loaded; unload it first")
            self._lora.load(name, folder)
            self.prefixes.clear(name)  # an earlier adapter of this name had other weights

        self._run_between_steps(load)
        with self._cond:
            self._adapters.add(name)

    def unload_adapter(self, name: str, grace_s: float = 60.0) -> int:
        """Refuse new requests for ``name``, let its queued and running ones finish, then unload it.

        Requests still running after ``grace_s`` are cancelled (finish reason ``cancelled``).
        Returns how many requests were cancelled.
        """
        with self._cond:
            if name not in self._adapters:
                raise InvalidRequest("name", f"adapter {name!r} is not loaded")
            self._adapters.discard(name)
            self._cond.wait_for(lambda: not self._jobs_on(name), timeout=grace_s)
            late = self._jobs_on(name)
            for job in late:
                job.cancelled.set()
                if job in self._pending:
                    self._pending.remove(job)
                    self._finish(job, "cancelled", "", 0)
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._jobs_on(name), timeout=30)

        def unload() -> None:
            self._lora.unload(name)
            self.prefixes.clear(name)

        try:
            self._run_between_steps(unload)
        except BaseException:
            with self._cond:  # still in the model: requests may name it again
                self._adapters.add(name)
            raise
        return len(late)

    def _jobs_on(self, adapter: str) -> list[Job]:
        return [job for job in self._jobs.values() if job.adapter == adapter]

    def _run_between_steps(self, change: Callable[[], None]) -> None:
        """Run ``change`` on the scheduler thread before its next step, wait for it, raise what it raised."""
        op = Op(change)
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is shutting down; retry against a running service")
            self._between_steps.append(op)
            self._cond.notify_all()
        op.done.wait()
        if op.error is not None:
            raise op.error
