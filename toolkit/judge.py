"""A model as a judge: asked, greedy and briefly, a yes-or-no question, on any ``Service``.

The grounding check asks one about the claims its rules are unsure of (``GROUNDING_JUDGE``); evaluations
use one for ``llm-rubric`` checks. The question is the only thing the judge sees.
"""

from __future__ import annotations

import logging
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.grounding import JUDGE_PROMPT

log = logging.getLogger("toolkit.judge")


def yes_or_no(answer: str) -> bool | None:
    """A judge's answer read as yes (True) or no (False); None when it says neither."""
    word = answer.strip().lower().lstrip("*\"'`").split(maxsplit=1)
    if not word:
        return None
    first = word[0].strip(".,:;!")
    return True if first == "yes" else False if first == "no" else None


class ModelJudge:
    """``name``, a model the service serves, as a judge: ``judge(claim, source)`` for the grounding check."""

    def __init__(self, service: Any, name: str, *, max_new_tokens: int = 4) -> None:
        self.service, self.name, self.max_new_tokens = service, name, max_new_tokens

    def ask(self, question: str) -> Any:
        """The judge's answer to ``question`` (an ``InferResult``, with its run record)."""
        return self.service.infer(question, model=self.name, temperature=0, max_new_tokens=self.max_new_tokens)

    def __call__(self, claim: str, source: str) -> bool | None:
        try:
            answer = self.ask(JUDGE_PROMPT.format(source=source, claim=claim)).text
        except ToolkitError as exc:
            log.warning("judge %s could not answer: %s", self.name, exc.message)
            return None
        return yes_or_no(answer)
