"""Conversations: kept as they go, continued from the store, cancelled turns kept as cancelled, found by their
words, renamed, deleted for real, pruned, exported (and the exported notebook reproduces greedy turns)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from storefaults import limited

from toolkit.conversation.handle import Conversation
from toolkit.conversation.records import title_of
from toolkit.conversation.store import ConversationStore
from toolkit.errors import InvalidRequest, StoreUnavailable, UnknownConversation
from toolkit.params import InferRequest
from toolkit.results import Done, Token
from toolkit.service import InferenceService
from toolkit.settings import Settings
from toolkit.store import Store

GREEDY = {"temperature": 0.0, "max_new_tokens": 24}


def test_a_conversation_is_kept_as_it_goes_and_continued_from_the_store(service: Any) -> None:
    conv = service.conversation(system_prompt="Answer in one short sentence.", **GREEDY)
    first = conv.ask("What is the capital of France?")
    assert "Paris" in first.text and conv.id is not None and first.conversation_id == conv.id
    second = conv.ask("And what is the capital of Italy?")
    # the model was sent the first turn from the store: the record's messages hold it
    sent = second.run_record.messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "What is the capital of France?" and sent[2]["content"] == first.text
    again = Conversation.load(conv.id, service)
    assert [(t.prompt, t.answer, t.status) for t in again.turns] == [
        ("What is the capital of France?", first.text, "done"),
        ("And what is the capital of Italy?", second.text, "done"),
    ]
    assert again.title == "What is the capital of France?" and again.system_prompt == conv.system_prompt
    assert again.turns[1].run_record is not None and again.turns[1].run_record["request_id"] == second.id
    # listed first: the newest by its last turn
    assert service.conversations(first=1)[0].id == conv.id
    assert [r.identical for r in again.replay()] == [True, True]  # each turn again, from its run record
    # a third turn from the reloaded object continues the same conversation
    third = again.ask("Thanks!")
    assert third.conversation_id == conv.id and len(service.conversation_info(conv.id).turns) == 3


def test_a_turn_whose_caller_goes_away_is_kept_as_cancelled_and_left_out_of_the_history(service: Any) -> None:
    conv = service.conversation(temperature=0.0, max_new_tokens=200)
    stream = conv.stream("Tell me a long story about a lighthouse keeper.")
    partial = ""
    for event in stream:
        if isinstance(event, Token) and len(event.text) > 10:
            partial = event.text
            break
    stream.close()  # the caller goes away mid-answer
    # the object learns its id from a finished answer: this first turn's conversation is found in the store
    assert conv.id is None and conv.turns[-1].status == "cancelled"
    kept = service.conversations(query="lighthouse keeper")
    assert kept, "the cancelled turn started a kept conversation"
    info = service.conversation_info(kept[0].id)
    assert info.turns[0].status == "cancelled" and info.turns[0].answer.startswith(partial)
    # continuing it: the cancelled turn is not sent as history
    result = service.infer("What is 2 + 2?", conversation=info.id, **GREEDY)
    assert [m["role"] for m in result.run_record.messages] == ["user"]
    assert [t.status for t in service.conversation_info(info.id).turns] == ["cancelled", "done"]


def test_search_finds_a_word_from_an_answer_and_rename_and_delete(service: Any) -> None:
    conv = service.conversation(**GREEDY)
    answer = conv.ask("Name a colour of the rainbow.").text
    word = max((w.strip(".,!") for w in answer.split()), key=len)
    found = [c.id for c in service.conversations(query=word.lower())]
    assert conv.id in found
    assert conv.id not in [c.id for c in service.conversations(query="xylophonequartz")]
    conv.rename("Rainbow   colours")
    assert service.conversation_info(conv.id).title == "Rainbow colours"
    assert conv.id in [c.id for c in service.conversations(query="Rainbow colours")]
    with pytest.raises(InvalidRequest, match="title"):
        conv.rename(" ")
    gone = conv.id
    assert conv.delete() is True
    assert service.conversation_info(gone) is None
    assert gone not in [c.id for c in service.conversations(query=word.lower())]
    store = service.kept.store  # really deleted: no turn, no record, no indexed text left
    assert store.query("SELECT COUNT(*) FROM conversation_turns WHERE conversation_id = ?", (gone,))[0][0] == 0
    assert service.delete_conversation(gone) is False
    with pytest.raises(UnknownConversation):
        service.infer("Hi", conversation=gone)
    with pytest.raises(UnknownConversation):
        service.rename_conversation(gone, "x")


def test_bad_conversation_input_is_refused_by_name(service: Any) -> None:
    with pytest.raises(UnknownConversation) as caught:
        service.infer("Hi", conversation="f" * 32)
    assert caught.value.field == "conversation_id"
    conv = service.conversation(**GREEDY)
    conv.ask("Hello")
    with pytest.raises(InvalidRequest, match="history"):
        service.infer(InferRequest("Hi", history=[("user", "a"), ("assistant", "b")]), conversation=conv.id)
    with pytest.raises(InvalidRequest, match="first"):
        service.conversations(first=0)
    with pytest.raises(InvalidRequest, match="at most 16 words"):
        service.conversations(query=" ".join(["word"] * 17))
    with pytest.raises(UnknownConversation):
        service.conversations(before="nope")


def test_a_client_history_starts_a_conversation_with_those_turns(service: Any) -> None:
    history = [("user", "My name is Quill."), ("assistant", "Hello Quill!")]
    result = service.infer(InferRequest("What is my name?", history=history, params=GREEDY), conversation=True)
    info = service.conversation_info(result.conversation_id)
    assert [t.prompt for t in info.turns] == ["My name is Quill.", "What is my name?"]
    assert info.title == "My name is Quill."
    again = service.infer("Say it again.", conversation=info.id, **GREEDY)
    assert [m["content"] for m in again.run_record.messages[:3]] == [
        "My name is Quill.",
        "Hello Quill!",
        "What is my name?",
    ]


def test_without_a_store_a_conversation_keeps_its_turns_in_memory(settings: Settings, loaded: Any) -> None:
    service = InferenceService(Settings(**{**settings.__dict__, "store": None}), loaded=loaded).start()
    try:
        conv = service.conversation(**GREEDY)
        first = conv.ask("What is the capital of France?")
        second = conv.ask("Repeat that.")
        assert conv.id is None and first.conversation_id is None
        assert second.run_record.messages[1]["content"] == first.text  # the history, from memory
        assert service.conversations() == []
        with pytest.raises(InvalidRequest, match="TOOLKIT_STORE"):
            service.infer("Hi", conversation="f" * 32)
    finally:
        service.close()


def test_pagination_and_retention(tmp_path: Path) -> None:
    kept = ConversationStore(Store(tmp_path / "t.db"), retention_days=30)
    ids = []
    for i in range(5):
        request = InferRequest(f"question {i}")
        ids.append(kept.create("", request))
        kept.add_turn(ids[-1], request, f"answer {i}", "stop")
    page = kept.list(first=2)
    assert [c.id for c in page] == [ids[4], ids[3]]
    assert [c.id for c in kept.list(first=2, before=page[-1].id)] == [ids[2], ids[1]]
    assert kept.list(owner="key:other") == []  # another owner's list is its own
    kept.store.execute("UPDATE conversations SET updated_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (ids[0],))
    assert kept.prune(force=True) == 1
    assert [c.id for c in kept.list()] == ids[:0:-1]
    assert kept.store.query("SELECT COUNT(*) FROM conversation_text")[0][0] == 4


def _add_turns(path: str, conversation_id: str, worker: int, count: int) -> None:
    kept = ConversationStore(Store(path))
    for i in range(count):
        kept.add_turn(conversation_id, InferRequest(f"worker {worker} turn {i}"), "ok", "stop")


def test_two_processes_add_turns_to_one_conversation_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "toolkit.db")
    kept = ConversationStore(Store(path))
    conversation_id = kept.create("", InferRequest("start"))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_turns, args=(path, conversation_id, w, 100)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    info = kept.get(conversation_id)
    assert info is not None and [t.position for t in info.turns] == list(range(200))  # none lost, none twice


def test_title_of_a_long_prompt() -> None:
    assert title_of("  What   is\nthis? ") == "What is this?"
    long = title_of("word " * 40)
    assert len(long) <= 80 and long.endswith("…")


def test_exported_notebook_rebuilds_the_conversation_with_identical_greedy_answers(
    service: Any, cache_dir: Path, store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a search turn too: its prompt is rebuilt byte for byte from the snapshot (the fence around the
    sources is keyed by this installation's secret and the request, not random), so greedy answers come back
    identical turn by turn."""
    from toolkit.search import LocalDocsBackend, Searcher

    before = service.searcher
    service.searcher = Searcher(LocalDocsBackend(Path(__file__).parent / "data" / "docs"))
    try:
        conv = service.conversation(system_prompt="Answer in one short sentence.", **GREEDY)
        answers = [conv.ask("What is the capital of France?").text]
        searched = conv.ask("What is the capital city of the planet Zorvath?", web_search=True)
        answers += [searched.text, conv.ask("And of Spain?").text]
    finally:
        service.searcher = before
    assert searched.sources and "Quillborough" in searched.text
    markdown = conv.to_markdown()
    assert "**User**" in markdown and answers[1] in markdown and conv.system_prompt in markdown
    path = tmp_path / "conversation.ipynb"
    conv.to_notebook(str(path))
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("TOOLKIT_STORE", str(store_path))
    monkeypatch.delenv("MODEL_ID", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    printed = [
        o["text"].strip() for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stdout"
    ]
    assert printed == [a.strip() for a in answers]


def test_a_done_event_carries_the_conversation(service: Any) -> None:
    events = list(service.stream("Hi there", conversation=True, **GREEDY))
    done = events[-1]
    assert isinstance(done, Done) and done.result.conversation_id is not None
    assert json.loads(json.dumps(done.result.to_dict()))["conversation_id"] == done.result.conversation_id


def test_async_asks_continue_one_conversation(service: Any) -> None:
    import asyncio

    async def two() -> tuple[Any, Any, Conversation]:
        conv = service.conversation(**GREEDY)
        first = await conv.aask("My name is Quillon.")
        second = await conv.aask("What is my name?")  # the turn is recorded when its answer is done
        return first, second, conv

    first, second, conv = asyncio.run(two())
    assert second.conversation_id == first.conversation_id == conv.id
    assert [m["role"] for m in second.run_record.messages] == ["user", "assistant", "user"]


def test_a_deleted_conversation_leaves_neither_turns_to_resend_nor_words_in_the_files(
    service: Any, tmp_path: Path
) -> None:
    conv = service.conversation(**GREEDY)
    conv.ask("Hello there")
    conv.delete()
    again = conv.ask("Hi")  # a new conversation: the deleted turns are not sent again, nor kept again
    assert [m["role"] for m in again.run_record.messages] == ["user"]
    assert [t.prompt for t in service.conversation_info(again.conversation_id).turns] == ["Hi"]
    # the words of a deleted conversation are gone from the database file and its write-ahead log
    kept = ConversationStore(Store(tmp_path / "t.db"))
    secret = "zanzibarquokkafrond"
    cid = kept.create("", InferRequest(f"the password is {secret}"))
    kept.add_turn(cid, InferRequest(f"the password is {secret}"), f"noted: {secret}", "stop")
    assert kept.delete(cid)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("t.db")]
    assert files and not any(secret.encode() in p.read_bytes() for p in files)


def test_search_finds_words_from_different_turns_and_history_turns_keep_their_own_ids(tmp_path: Path) -> None:
    kept = ConversationStore(Store(tmp_path / "t.db"))
    history = [("user", "Tell me about the Harlow Dam."), ("assistant", "It is a gravity dam."),
               ("user", "Who built it?"), ("assistant", "Tamsin Reade.")]  # fmt: skip
    request = InferRequest("When was it finished?", history=history)
    cid = kept.create("", request, first_prompt=history[0][1])
    kept.add_turn(cid, request, "In 1968.", "stop", prior=request.history)
    info = kept.get(cid)
    assert info is not None and len({t.request_id for t in info.turns}) == 3
    assert [c.id for c in kept.list(query="harlow 1968")] == [cid]  # two turns, one conversation
    assert kept.list(query="harlow 1999") == []


def test_a_store_that_cannot_be_written_still_returns_the_answer(
    settings: Settings, loaded: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    broken = Settings(**{**settings.__dict__, "store": tmp_path / "file" / "toolkit.db"})
    service = InferenceService(broken, loaded=loaded).start()
    try:
        result = service.infer("What is the capital of France?", conversation=True, **GREEDY)
        assert "Paris" in result.text and result.conversation_id is None
        assert result.conversation_error is not None and "cannot be opened" in result.conversation_error
        assert str(tmp_path) not in result.conversation_error and "not kept" in caplog.text
        assert service.health().store == "unopenable"
    finally:
        service.close()


def test_a_full_disk_keeps_the_answer_and_leaves_no_empty_conversation(
    settings: Settings, loaded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversation and its first turn are written together: a store that fails between them left an empty
    conversation; and the caller is told why its answer was not kept."""
    path = tmp_path / "toolkit.db"
    store = Store(path)
    pages = store.query("PRAGMA page_count")[0][0]
    store.close()
    monkeypatch.setattr("toolkit.store.sqlite3.connect", limited(pages=pages + 2))  # a table's worth, no more
    service = InferenceService(Settings(**{**settings.__dict__, "store": path}), loaded=loaded)
    long_history = [("user", "Remember the word harbour. " * 200), ("assistant", "Noted.")]
    result = service.infer("What is the capital of France?", history=long_history, conversation=True, **GREEDY)
    assert result.finish_reason in ("stop", "length") and result.conversation_id is None  # answered, not kept
    assert result.conversation_error is not None and "disk is full" in result.conversation_error
    assert service.health().store == "full"
    monkeypatch.undo()
    assert Store(path).query("SELECT COUNT(*) FROM conversations")[0][0] == 0  # no orphan


def test_a_corrupt_store_answers_store_unavailable_and_health_says_so(
    settings: Settings, loaded: Any, tmp_path: Path
) -> None:
    path = tmp_path / "toolkit.db"
    service = InferenceService(Settings(**{**settings.__dict__, "store": path}), loaded=loaded)
    short = {"temperature": 0.0, "max_new_tokens": 2}
    kept = service.infer("Hello", conversation=True, **short)
    for i in range(3):  # turns on pages to damage (every page after the schema's)
        service.infer(f"Tell me about the number {i}.", conversation=kept.conversation_id, **short)
    service.kept.store.query("PRAGMA wal_checkpoint(TRUNCATE)")
    service.kept.store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for start in range(2 * page, len(data), page):  # every page after the schema's
        data[start : start + page] = b"\xff" * page
    path.write_bytes(bytes(data))
    cid = kept.conversation_id
    for call in (
        lambda: service.conversation_info(cid),
        lambda: service.rename_conversation(cid, "new"),
        lambda: service.delete_conversation(cid),
        lambda: service.infer("Again", conversation=cid, **short),
    ):
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert (
            caught.value.reason == "corrupt" and caught.value.status == 503 and str(tmp_path) not in str(caught.value)
        )
    assert service.health().store == "corrupt"


def test_titles_keep_no_control_or_bidi_characters(service: Any) -> None:
    conv = service.conversation(**GREEDY)
    conv.ask("Hello\u202e there\x00")
    info = service.rename_conversation(conv.id, "Report\u202e fdp.exe\x00 ok")
    assert info.title == "Report fdp.exe ok"
    assert service.conversation_info(conv.id).title == "Report fdp.exe ok"
    with pytest.raises(InvalidRequest, match="title"):
        service.rename_conversation(conv.id, "\u202e\x00")
