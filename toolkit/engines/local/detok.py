"""Incremental detokenization with stop strings, in time linear in the answer's length.

``TextStream.push(token)`` returns the text that may be shown now. Each push decodes only a short
window of the latest tokens (the offsets technique of transformers' streamers and vLLM): the window
from ``prefix_offset`` is decoded with and without the newest tokens, and the difference is the new
text, so a tokenizer that drops a leading space at the start of a decode still gives the right
delta. An incomplete UTF-8 sequence (decoded as U+FFFD) waits for its next bytes, and a tail that
could still become a stop string is held back, so the concatenated deltas always equal the final
text, which ends before the first stop string.
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
        self.text = ""  # everything decoded so far (complete characters only)
        self.emitted = ""  # what was shown: ``text`` minus what is held for a possible stop string
        self.stopped = False
        self._prefix_offset = 0  # the decode window starts here
        self._read_offset = 0  # tokens before this are in ``text``
        self._rewritten = False  # the tokenizer changed earlier text: nothing more until the end

    def _decode(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token: int) -> str:
        """Add one generated token; return the delta that is safe to show."""
        self.tokens.append(token)
        if self._rewritten:
            return ""
        prefix = self._decode(self.tokens[self._prefix_offset : self._read_offset])
        window = self._decode(self.tokens[self._prefix_offset :])
        if len(window) <= len(prefix) or window.endswith(REPLACEMENT):
            return ""  # an incomplete character (or nothing yet): wait for the next token
        if not window.startswith(prefix):
            self._rewritten = True
            return ""
        searched_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += window[len(prefix) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
        if self._stop:
            hits = [i for i in (self.text.find(s, searched_from) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                return self._emit(min(hits))
        return self._emit(len(self.text) - self._held_for_stop())

    def finish(self) -> str:
        """The request ended for another reason: release what was held back."""
        if self.stopped:
            return ""
        if self._rewritten or self._read_offset < len(self.tokens):  # a rewrite, or bytes still pending
            full = self._decode(self.tokens)
            if not full.startswith(self.emitted):
                return ""
            self.text = full
        return self._emit(len(self.text))

    def _held_for_stop(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        text = self.text
        for n in range(min(self._longest_stop - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0

    def _emit(self, end: int) -> str:
        if end <= len(self.emitted):
            return ""
        delta = self.text[len(self.emitted) : end]
        self.emitted += delta
        return delta
