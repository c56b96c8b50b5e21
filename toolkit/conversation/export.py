"""A conversation as Markdown (to read or paste) and as a notebook whose cells rebuild it with the toolkit.

The notebook asks each turn again with the parameters its run record says it ran with (the seed too), and
a turn that searched is given its record's search snapshot rather than a new search: run top to bottom on
the same model, greedy turns come back identical. Cancelled and failed turns are left out (they were not
part of the conversation the model saw); they are listed in a note.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

from toolkit.conversation.records import ConversationTurn
from toolkit.params import GenerationParams


class Exported(Protocol):
    """What an export reads of a conversation (``toolkit.conversation.handle.Conversation`` has it all)."""

    id: str | None
    title: str | None
    model: str | None
    adapter: str | None
    system_prompt: str | None
    turns: list[ConversationTurn]


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def _label(text: str) -> str:
    """A web page's title as link text: its brackets and markup cannot end the link or start another."""
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", " ".join(text.split()))


def _url(url: str) -> str:
    return url.replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")


def to_markdown(conv: Exported) -> str:
    lines = [f"# {conv.title or 'Conversation'}", ""]
    facts = [f"model: {conv.model or 'default'}"]
    if conv.adapter:
        facts.append(f"adapter: {conv.adapter}")
    if conv.id:
        facts.append(f"id: {conv.id}")
    lines += ["*" + ", ".join(facts) + "*", ""]
    if conv.system_prompt:
        lines += ["**System**", "", _quote(conv.system_prompt), ""]
    for turn in conv.turns:
        lines += ["**User**", "", turn.prompt, "", "**Assistant**", "", turn.answer or "*(no answer)*", ""]
        if turn.status != "done":
            lines += [f"*({turn.status})*", ""]
        if turn.sources:
            lines += ["Sources:", ""]
            lines += [f"{s.index}. [{_label(s.title or s.url)}](<{_url(s.url)}>)" for s in turn.sources]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _params(turn: ConversationTurn) -> dict[str, Any]:
    """The parameters the turn ran with, as ``ask`` keywords (the run record's, which have every one set)."""
    record = turn.run_record or {}
    known = GenerationParams.names()
    return {k: v for k, v in (record.get("params") or {}).items() if k in known and v is not None}


def _cell(kind: str, source: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "metadata": {}, "source": source}
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


def to_notebook(conv: Exported, path: str | Path | None = None) -> dict[str, Any]:
    cells = [
        _cell("markdown", f"# {conv.title or 'Conversation'}\n\nRebuilt with the toolkit, one cell a turn."),
        _cell(
            "code",
            "from toolkit import InferenceService\nfrom toolkit.search import SearchOutcome\n\n"
            "service = InferenceService().start()\n"
            f"conv = service.conversation(model={conv.model!r}, adapter={conv.adapter!r}, "
            f"system_prompt={conv.system_prompt!r})",
        ),
    ]
    left_out = []
    given = []  # turns a client sent as history when it started the conversation: no record, not asked again
    for turn in conv.turns:
        if not turn.whole:
            left_out.append(turn.position)
            continue
        if turn.run_record is None:
            given.append(turn)
            continue
        record = turn.run_record
        args = [repr(turn.prompt)]
        search = record.get("search")
        if search is not None:
            args += ["web_search=True", f"search=SearchOutcome.from_dict(json.loads({json.dumps(search)!r}))"]
        args += [f"{k}={v!r}" for k, v in _params(turn).items()]
        if turn.model and turn.model != conv.model:
            args.append(f"model={turn.model!r}")
        if turn.adapter and turn.adapter != conv.adapter:
            args.append(f"adapter={turn.adapter!r}")
        code = f"answer = conv.ask({', '.join(args)})\nprint(answer.text)"
        if search is not None:
            code = "import json\n\n" + code
        cells.append(_cell("markdown", f"**Turn {turn.position + 1}.** The answer then:\n\n{_quote(turn.answer)}"))
        cells.append(_cell("code", code))
    if given:  # the conversation's first turns, as it was given them: its history, sent with the first ask
        seed = ", ".join(
            f"ConversationTurn({i}, {t.prompt!r}, {t.answer!r}, 'done', 'stop', '', '')" for i, t in enumerate(given)
        )
        cells[1]["source"] += f"\nfrom toolkit.conversation.records import ConversationTurn\nconv.turns += [{seed}]"
    if left_out:
        cells.append(
            _cell("markdown", f"Left out (cancelled or failed): turns {', '.join(str(p + 1) for p in left_out)}.")
        )
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "toolkit": {"conversation_id": conv.id},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for i, cell in enumerate(cells):
        cell["id"] = f"turn-{i}"
    if path is not None:
        Path(path).write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return notebook
