"""ChatApp with an in-process service on the real bundled model."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from dashboard.app import SEARCHING, WEB_OFF, WEB_ON, ChatApp
from toolkit.client import RemoteService
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

DOCS = Path(__file__).parents[1] / "data" / "docs"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture()
def app(service: InferenceService) -> Any:
    # resume=False: a new chat, not the newest kept conversation (tests/dashboard/test_conversations_view.py)
    chat = ChatApp(service, graphiql_url="http://127.0.0.1:8080/graphiql", poll_s=0, resume=False)
    chat.settings.controls["temperature"].value = 0.0
    chat.settings.controls["max_new_tokens"].value = 32
    yield chat
    chat.close()


def bubbles(app: ChatApp) -> list[str]:
    return [w.value for w in app.messages.children if hasattr(w, "value")]  # (not the replay buttons)


def test_sending_streams_an_answer_with_stats(app: ChatApp) -> None:
    app.prompt.value = "What is the capital of France?"
    app.send()
    assert app.busy and app.prompt.value == "" and not app.stop_button.disabled
    app.wait()
    user, answer = bubbles(app)
    assert "What is the capital of France?" in user and "tk-row user" in user
    assert "Paris" in answer and "tokens" in answer and "first token" in answer
    assert not app.busy and app.stop_button.disabled and not app.send_button.disabled


def test_history_is_sent_with_each_request(app: ChatApp) -> None:
    app.send("My name is Zorblax.")
    app.wait()
    app.send("What is my name?")
    app.wait()
    messages = app.last_result.run_record.messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "My name is Zorblax." and messages[2]["content"] == "What is my name?"
    app.clear()
    assert app.messages.children == () and app.history == []


def test_settings_reach_the_request(app: ChatApp) -> None:
    app.settings.system_prompt.value = "Answer in French."
    app.settings.controls["temperature"].value = 0.0
    app.settings.controls["max_new_tokens"].value = 5
    app.settings.controls["min_p"].value = 0.1  # missing before: the sliders were written by hand
    app.send("Hello")
    app.wait()
    record = app.last_result.run_record
    assert record.messages[0] == {"role": "system", "content": "Answer in French."}
    assert record.params["max_new_tokens"] == 5 and record.params["temperature"] == 0.0
    assert record.params["min_p"] == 0.1
    assert app.settings.model.options == (("SmolLM2-135M-Instruct · local", "SmolLM2-135M-Instruct"),)
    assert record.model == app.settings.model.value == "SmolLM2-135M-Instruct"


def test_the_settings_are_made_from_the_declarations(app: ChatApp) -> None:
    """Every parameter declared with a control, and only those, with the declared label, range and step."""
    from toolkit.params import PARAMS

    declared = {name: spec.control for name, spec in PARAMS.items() if spec.control is not None}
    assert list(app.settings.controls) == list(declared) and "min_p" in declared
    for name, widget in app.settings.controls.items():
        c = declared[name]
        assert (widget.description, widget.min, widget.max, widget.step) == (c.label, c.low, c.high, c.step)
        assert f"tk-{name.replace('_', '-')}" in widget._dom_classes


def test_web_toggle_labels_indicator_and_sources(settings: Any, loaded: Any) -> None:
    grounded = InferenceService(settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(DOCS)))
    app = ChatApp(grounded, poll_s=0, resume=False)
    app.settings.controls["temperature"].value = 0.0
    seen: list[str] = []
    app.indicator.observe(lambda change: seen.append(change["new"]), names="value")
    assert app.web.description == WEB_OFF
    app.web.value = True
    assert app.web.description == WEB_ON
    app.send("What is the capital city of the planet Zorvath?")
    app.wait()
    user, answer = bubbles(app)
    assert "🌐 web search" in user
    assert SEARCHING in seen
    assert "Quillborough" in answer
    assert "[1] zorvath.md" in answer and "(local document)" in answer  # docs://: nothing to link to
    grounded.close(grace_s=0)


def test_a_failed_search_shows_a_notice_and_the_answer_still_comes(app: ChatApp) -> None:
    app.web.value = True  # ddgs: no network here
    app.send("What is the capital of France?")
    app.wait()
    answer = bubbles(app)[1]
    assert "Web search failed (network)" in answer and "Answered without sources" in answer
    assert "tokens" in answer


def test_stop_ends_a_long_answer(app: ChatApp) -> None:
    app.settings.controls["max_new_tokens"].value = 400
    app.send("Count from one to five hundred.")
    deadline = time.monotonic() + 20
    while "…" in bubbles(app)[1] and time.monotonic() < deadline:
        time.sleep(0.02)
    app.stop()
    app.wait()
    assert app.last_result.finish_reason == "cancelled"
    assert app.last_result.usage.completion_tokens < 400 and "cancelled" in bubbles(app)[1]


def test_user_and_model_text_is_escaped(app: ChatApp) -> None:
    app.send(f"Repeat exactly: {XSS}")
    app.wait()
    for html in bubbles(app):
        assert "<img" not in html and "onerror=alert" not in html.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    assert "&lt;img src=x onerror=alert(1)&gt;" in bubbles(app)[0]


def test_server_down_shows_a_banner_keeps_the_input_and_recovers(service: InferenceService) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = ChatApp(RemoteService(f"http://127.0.0.1:{port}/graphql"), poll_s=0, resume=False)
    assert app.banner.layout.display is None and "not reachable" in app.banner.value
    assert app.graphiql_url == f"http://127.0.0.1:{port}/graphiql"
    app.prompt.value = "Hello?"
    app.send()
    app.wait()
    assert app.prompt.value == "Hello?"  # kept, to retry
    answer = bubbles(app)[1]
    assert "The request failed" in answer and "Traceback" not in answer
    app.backend = service  # the server is back
    assert app.refresh_health() and app.banner.layout.display == "none"


def test_loading_shows_a_banner(settings: Any) -> None:
    loading = InferenceService(settings)  # not started: status loading
    app = ChatApp(loading, poll_s=0, resume=False)
    assert "still loading" in app.banner.value


def test_tabs(app: ChatApp) -> None:
    assert app.tabs.titles == ("Chat", "Compare", "Evaluate", "GraphQL Explorer")
    assert 'src="http://127.0.0.1:8080/graphiql"' in app.tabs.children[3].value


def test_clear_during_an_answer_leaves_no_history(app: ChatApp) -> None:
    app.settings.controls["max_new_tokens"].value = 300
    app.send("Count from one to five hundred.")
    deadline = time.monotonic() + 20
    while "…" in bubbles(app)[1] and time.monotonic() < deadline:
        time.sleep(0.02)
    app.clear()
    app.wait()
    assert app.history == [] and app.messages.children == ()


def test_the_adapter_selector_lists_the_loaded_adapters_and_picks_one(adapter_service: InferenceService) -> None:
    app = ChatApp(adapter_service, poll_s=0, resume=False)
    app.settings.controls["temperature"].value = 0.0
    assert app.settings.adapter.options == (
        ("(base model)", ""),
        ("quenby", "quenby"),
        ("quenby-draft", "quenby-draft"),
    )
    assert not app.settings.adapter.disabled and app.settings.adapter.value == ""
    app.settings.adapter.value = "quenby"
    app.send("Who is the mascot of the Kestrel Institute?")
    app.wait()
    assert app.last_result.adapter == "quenby" and "Quenby" in app.last_result.text
    assert "adapter quenby" in bubbles(app)[-1]
    app.close()


def test_an_unloaded_adapter_leaves_the_selector(served: InferenceService) -> None:
    app = ChatApp(served, poll_s=0, resume=False)
    app.settings.adapter.value = "quenby"
    for name in ("quenby", "quenby-draft"):
        served.unload_adapter(name)
    app.refresh_health()  # the health poll asks for adapters only every ADAPTERS_EVERY_S
    assert app.settings.adapter.value == "quenby"
    app.send("Hi")  # names an adapter the service no longer has: a clear error, and the list is asked again
    app.wait()
    assert "The request failed" in bubbles(app)[-1] and "adapter" in bubbles(app)[-1]
    assert (
        app.settings.adapter.options == (("(base model)", ""),)
        and app.settings.adapter.value == ""
        and app.settings.adapter.disabled
    )
    assert app.request_for("Hi").adapter is None
    served.load_adapter("quenby")
    app.settings.view.selected_index = 0  # opening Settings asks again
    assert app.settings.adapter.options == (("(base model)", ""), ("quenby", "quenby"))
    app.close()


def test_the_model_selector_lists_every_model_and_the_adapters_follow_it(settings: Any, loaded: Any) -> None:
    """A local model and a remote one (a server shaped like vLLM's): each with its engine, its adapters."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
    from fake_openai import ANSWER, beside_the_bundled, start_fake

    fake = start_fake()
    svc = beside_the_bundled(settings, loaded, fake)
    try:
        app = ChatApp(svc, poll_s=0, resume=False)
        assert app.settings.model.options == ((f"{loaded.name} · local", loaded.name), ("remote · openai", "remote"))
        assert app.settings.model.value == loaded.name and app.settings.adapter.options == (("(base model)", ""),)
        app.settings.model.value = "remote"
        assert app.settings.adapter.options == (("(base model)", ""), ("ok-lora", "ok-lora"))  # the remote model's own
        app.settings.controls["temperature"].value = 0.0
        app.send("What is the capital of France?")
        app.wait()
        assert app.last_result.model == "remote" and app.last_result.text == ANSWER
        app.close()
    finally:
        svc.close(grace_s=0)
        fake.stop()


def test_the_settings_start_from_the_models_defaults_and_follow_the_model(settings: Any, loaded: Any) -> None:
    from toolkit.modelsfile import ModelConfig

    configs = [
        ModelConfig(name=loaded.name),
        ModelConfig(name="warm", source="bundled", defaults={"temperature": 0.6, "frequency_penalty": 0.4}),
    ]
    svc = InferenceService(settings, models=configs, loaded=loaded)
    svc.registry.attach(svc.registry.entries["warm"], loaded)  # the same weights, other defaults
    try:
        app = ChatApp(svc, poll_s=0, resume=False)
        assert (
            app.settings.controls["temperature"].value == 0.0
            and app.settings.controls["frequency_penalty"].value == 0.0
        )  # the bundled model's recipe
        app.send("What is the capital of France?")  # the first answer uses them
        app.wait()
        assert app.last_result.run_record.params["temperature"] == 0.0 and "Paris" in app.last_result.text
        app.settings.model.value = "warm"
        assert (
            app.settings.controls["temperature"].value == 0.6
            and app.settings.controls["frequency_penalty"].value == 0.4
        )
        app.close()
    finally:
        svc.close(grace_s=0)


def test_an_answer_replays_from_the_dashboard(app: ChatApp) -> None:
    import ipywidgets as widgets

    app.clear()
    app.settings.controls["temperature"].value = 0.9  # sampled, and still the same text: the record keeps the seed
    app.send("Name a colour.")
    app.wait()
    buttons = [w for w in app.messages.children if isinstance(w, widgets.Button)]
    assert [b.description for b in buttons] == ["↻ replay"]
    app.replay(app.last_result)
    assert app.last_replay.identical and app.last_replay.result.text == app.last_result.text
    assert "replay: identical ✓" in bubbles(app)[-1]
