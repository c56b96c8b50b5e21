"""The chat's sidebar of kept conversations, on an in-process service with the real bundled model: a new
dashboard (a reload of the page) shows the newest conversation whole and continues it; search, rename,
delete and the export links."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import ipywidgets as widgets

from dashboard.app import ChatApp
from dashboard.conversations import when
from toolkit.service import InferenceService


def bubbles(app: ChatApp) -> list[str]:
    return [w.value for w in app.messages.children if isinstance(w, widgets.HTML)]


def fresh(service: InferenceService, *, resume: bool = True) -> ChatApp:
    app = ChatApp(service, poll_s=0, resume=resume)
    app.settings.controls["temperature"].value = 0.0
    app.settings.controls["max_new_tokens"].value = 24
    return app


def test_a_reloaded_dashboard_shows_the_newest_conversation_whole_and_continues_it(service: InferenceService) -> None:
    first = fresh(service, resume=False)
    first.send("My name is Quillon.")
    first.wait()
    first.send("What is my name?")
    first.wait()
    kept = first.conversation_id
    assert kept is not None and first.sidebar.current == kept
    assert first.sidebar.list.children[0].description == "My name is Quillon."
    shown = bubbles(first)
    first.close()

    again = fresh(service)  # what a reload of the page builds
    assert again.conversation_id == kept
    assert bubbles(again)[0::2] == [b for b in shown[0::2]]  # the two questions
    answers = bubbles(again)[1::2]
    assert [re.sub(r"<small.*?</small>", "", a) for a in answers] == [
        re.sub(r"<small.*?</small>", "", a) for a in shown[1::2]
    ]  # the answers, without the live stats line
    assert [w.description for w in again.messages.children if isinstance(w, widgets.Button)] == ["↻ replay"] * 2
    again.send("Say my name once more.")
    again.wait()
    messages = again.last_result.run_record.messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert len(service.conversation_info(kept).turns) == 3
    again.close()


def test_new_chat_search_rename_delete_and_export(service: InferenceService) -> None:
    app = fresh(service)
    app.sidebar.new()
    assert app.conversation_id is None and app.messages.children == ()
    app.send("Name a planet of the solar system.")
    app.wait()
    kept = app.conversation_id
    answer = app.last_result.text
    word = max((w.strip(".,!*") for w in answer.split()), key=len)
    app.sidebar.search.value = word.lower()
    assert kept in [item.id for item in app.sidebar.items]
    app.sidebar.search.value = "zzqxjv"
    assert app.sidebar.items == [] and "No conversation" in app.sidebar.status.value
    app.sidebar.search.value = ""
    # the export links carry the conversation: Markdown, and a notebook that rebuilds it
    links = dict(re.findall(r'download="([^"]+)" href="data:[^;]+;base64,([^"]+)"', app.sidebar.exports.value))
    markdown = base64.b64decode(links["name-a-planet-of-the-solar-system.md"]).decode()
    assert "Name a planet of the solar system." in markdown and answer.strip() in markdown
    notebook = json.loads(base64.b64decode(links["name-a-planet-of-the-solar-system.ipynb"]))
    assert any("conv.ask('Name a planet of the solar system.'" in "".join(c["source"]) for c in notebook["cells"])
    app.sidebar.title.value = "Planets"
    app.sidebar.rename()
    assert service.conversation_info(kept).title == "Planets"
    assert app.sidebar.list.children[0].description == "Planets"
    app.sidebar.delete()
    assert service.conversation_info(kept) is None
    assert app.conversation_id is None and app.messages.children == ()
    assert kept not in [item.id for item in app.sidebar.items]
    app.close()


def test_when_says_time_today_and_date_otherwise() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    assert when("2026-11-30T09:05:00+00:00", now) == "09:05"
    assert when("2026-03-02T09:05:00+00:00", now) == "2 Mar"
    assert when("2025-03-02T09:05:00+00:00", now) == "2 Mar 2025"


def test_opening_another_conversation_shows_its_turns(service: InferenceService, **_: Any) -> None:
    a = service.conversation(system_prompt="Be brief.", temperature=0.0, max_new_tokens=8)
    a.ask("Opening test one")
    b = service.conversation(temperature=0.0, max_new_tokens=8)
    b.ask("Opening test two")
    app = fresh(service)
    assert app.conversation_id == b.id  # the newest
    app.sidebar.open(a.id)
    assert app.conversation_id == a.id and "Opening test one" in bubbles(app)[0]
    assert app.settings.system_prompt.value == "Be brief."  # the controls say what the conversation runs with
    app.sidebar.new()
    assert app.settings.system_prompt.value == "" and app.conversation_id is None
    app.close()


def test_an_answer_costs_one_request_beside_its_stream(service: InferenceService, monkeypatch: Any) -> None:
    """The dashboard's requests share one rate limit on the server (one client address): after an answer the
    sidebar reads the conversation once and does not ask for the list again; New chat asks for nothing."""
    app = fresh(service)
    app.sidebar.new()
    asked: list[str] = []
    for name in ("conversations", "conversation_info"):
        real = getattr(service, name)
        monkeypatch.setattr(service, name, lambda *a, _n=name, _r=real, **k: (asked.append(_n), _r(*a, **k))[1])
    app.send("Name a fruit.")
    app.wait()
    assert asked == ["conversation_info"] and app.sidebar.list.children[0].description == "Name a fruit."
    app.sidebar.new()
    assert asked == ["conversation_info"]
    app.close()
