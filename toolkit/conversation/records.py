"""What a kept conversation is: its turns (``ConversationTurn``), the conversation as listed or opened
(``ConversationInfo``), a title made from a prompt, and a request's ``ConversationArg``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from toolkit.params import Turn
from toolkit.results import Source
from toolkit.search import clean_text
from toolkit.wire import ENUM, JSON

TITLE_CHARS = 80  # a title made from the first prompt
DEFAULT_PAGE = 50  # conversations in one page of a list


@dataclass(frozen=True)
class ConversationTurn:
    """A prompt and its answer. ``status``: done, cancelled (the caller went away or cancelled: ``answer`` is
    what was said by then) or error."""

    position: int
    prompt: str
    answer: str
    status: str = field(metadata=ENUM)
    finish_reason: str | None
    request_id: str
    created_at: str
    model: str | None = None
    adapter: str | None = None
    sources: tuple[Source, ...] = ()
    run_record: dict[str, Any] | None = field(default=None, metadata=JSON)

    @property
    def whole(self) -> bool:
        """Sent to the model as history: a finished answer."""
        return self.status == "done" and bool(self.answer.strip())


@dataclass(frozen=True)
class ConversationInfo:
    """A kept conversation: what its list shows, and (when opened) its turns, oldest first."""

    id: str
    title: str
    model: str | None
    adapter: str | None
    system_prompt: str | None
    web_search: bool
    created_at: str
    updated_at: str
    turn_count: int
    turns: tuple[ConversationTurn, ...] = ()

    def history(self) -> tuple[Turn, ...]:
        """The whole turns, as the model is sent them."""
        out: list[Turn] = []
        for turn in self.turns:
            if turn.whole:
                out += [Turn("user", turn.prompt), Turn("assistant", turn.answer)]
        return tuple(out)


def title_of(prompt: str) -> str:
    line = " ".join(clean_text(prompt).split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rsplit(" ", 1)[0] + "…"


def turn_status(finish_reason: str) -> str:
    """A turn's status from its finish reason: a timed-out answer is cut off, so it counts as failed (kept,
    not sent as history)."""
    return {"cancelled": "cancelled", "error": "error", "timeout": "error"}.get(finish_reason, "done")


ConversationArg = str | Literal[True] | None  # a request's conversation: an id to continue, True for a new one
