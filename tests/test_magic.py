"""``%load_ext toolkit`` and ``%%ask`` in a real IPython shell, on the bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

DOCS = Path(__file__).parent / "data" / "docs"


@pytest.fixture(scope="module")
def shell(service: InferenceService) -> Iterator[Any]:
    ip = start_ipython()
    assert ip is not None
    ip.run_line_magic("load_ext", "toolkit")
    ip.user_ns["svc"] = service
    yield ip


def markdown_outputs(captured: Any) -> list[str]:
    return [o.data.get("text/markdown", "") for o in captured.outputs]


def test_cell_magic_streams_and_keeps_the_result(shell: Any) -> None:
    with capture_output() as captured:
        shell.run_cell_magic(
            "ask", "--service svc --temperature 0 --max-new-tokens 24 --out answer", "What is the capital of France?"
        )
    result = shell.user_ns["answer"]
    assert "Paris" in result.text and result.run_record.params["temperature"] == 0
    assert markdown_outputs(captured)  # the answer was displayed in the cell


def test_line_magic_and_the_default_service(shell: Any) -> None:
    shell.run_line_magic("ask_service", "svc")
    with capture_output():
        shell.run_line_magic("ask", "--temperature 0 --max-new-tokens 8 What is the capital of France?")
    assert "Paris" in shell.user_ns["_ask"].text


def test_web_search_sources_follow_as_links(shell: Any, settings: Any, loaded: Any) -> None:
    shell.user_ns["grounded"] = InferenceService(settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(DOCS)))
    with capture_output():
        shell.run_cell_magic(
            "ask",
            "--service grounded --web --temperature 0 --max-new-tokens 24",
            "What is the capital city of the planet Zorvath?",
        )
    result = shell.user_ns["_ask"]
    assert result.search_status == "ok" and result.sources
    from toolkit.magic import sources_markdown

    assert "**Sources**" in sources_markdown(result) and "1. [zorvath.md" in sources_markdown(result)
    shell.user_ns["grounded"].close(grace_s=0)


def test_bad_input_is_one_line_not_a_traceback(shell: Any) -> None:
    magics = shell.magics_manager.registry["AskMagics"]
    with capture_output():
        shell.run_cell_magic("ask", "--service svc --temperature -1", "Hi")
    assert shell.user_ns["_ask"] is None
    assert "params.temperature" in (magics.last_error or "")
    with capture_output():
        shell.run_cell_magic("ask", "--service nope", "Hi")
    assert "no such variable" in (magics.last_error or "")


def test_model_routes_the_question(shell: Any, settings: Any, loaded: Any) -> None:
    """``--model`` names one of the service's models: here a remote one (a server shaped like vLLM's)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "engines"))
    from fake_openai import ANSWER, beside_the_bundled, start_fake

    fake = start_fake()
    multi = beside_the_bundled(settings, loaded, fake)
    try:
        shell.user_ns["multi"] = multi
        with capture_output():
            shell.run_cell_magic("ask", "--service multi --model remote --temperature 0 --out routed", "Hi")
        assert shell.user_ns["routed"].model == "remote" and shell.user_ns["routed"].text == ANSWER
        with capture_output():
            shell.run_cell_magic("ask", "--service multi --model nope", "Hi")
        assert "unknown model 'nope'" in (shell.magics_manager.registry["AskMagics"].last_error or "")
    finally:
        multi.close(grace_s=0)
        fake.stop()


def test_each_ask_continues_the_notebooks_conversation_and_ask_new_starts_another(shell: Any) -> None:
    import toolkit

    options = "--service svc --temperature 0 --max-new-tokens 16"
    shell.run_line_magic("ask_new", "")
    with capture_output():
        shell.run_cell_magic("ask", options, "My name is Quillon.")
        shell.run_cell_magic("ask", options, "What is my name?")
    result = shell.user_ns["_ask"]
    assert [m["role"] for m in result.run_record.messages] == ["user", "assistant", "user"]
    conv = shell.user_ns["_conversation"]
    assert result.conversation_id == conv.id and [t.prompt for t in conv.turns] == [
        "My name is Quillon.",
        "What is my name?",
    ]
    shell.run_line_magic("ask_new", "")
    with capture_output():
        shell.run_cell_magic("ask", options, "Hello")
    fresh = shell.user_ns["_ask"]
    assert fresh.conversation_id != conv.id and [m["role"] for m in fresh.run_record.messages] == ["user"]
    frame = toolkit.conversations(shell.user_ns["svc"], query="Quillon")
    assert conv.id in list(frame["id"]) and fresh.conversation_id not in list(frame["id"])
    assert list(frame.columns)[:4] == ["id", "title", "model", "turns"]
