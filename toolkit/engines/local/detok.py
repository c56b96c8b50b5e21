"""Incremental detokenization with stop strings.

``TextStream.push(token)`` returns the text that may be shown now. It holds
back an incomplete UTF-8 sequence (the tokenizer decodes it to U+FFFD) and
any tail that could still become a stop string, so the concatenated deltas
always equal the final text, which ends before the first stop string.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.tokens: list[int] = []
        self.emitted = ""
        self.stopped = False

    def _decode(self) -> str:
        return str(self._tokenizer.decode(self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token: int) -> str:
        """Add one generated token; return the delta that is safe to show."""
        self.tokens.append(token)
        full = self._decode()
        if not full.startswith(self.emitted):
            # A tokenizer that rewrites earlier text: show nothing more until the end.
            return ""
        if self._stop:
            start = max(0, len(self.emitted) - self._longest_stop + 1)
            hits = [i for i in (full.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                return self._emit(full[: min(hits)])
        safe = len(full)
        while safe > len(self.emitted) and full[safe - 1] == REPLACEMENT:
            safe -= 1
        safe -= self._held_for_stop(full[:safe])  # measured on what could be shown, not past a partial character
        return self._emit(full[:safe]) if safe > len(self.emitted) else ""

    def finish(self) -> str:
        """The request ended for another reason: release what was held back."""
        if self.stopped:
            return ""
        full = self._decode()
        return self._emit(full) if full.startswith(self.emitted) else ""

    def _held_for_stop(self, full: str) -> int:
        """Length of the longest tail of ``full`` that is a proper prefix of a stop string."""
        for n in range(min(self._longest_stop - 1, len(full)), 0, -1):
            tail = full[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0

    def _emit(self, text: str) -> str:
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta
