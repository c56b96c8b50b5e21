"""The store: migrated once, in order; WAL, so that several processes write at once without "database is
locked"; where TOOLKIT_STORE says (or nowhere)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from storefaults import limited

from toolkit.errors import RequestTimeout, StoreUnavailable
from toolkit.settings import Settings, default_store
from toolkit.store import MIGRATIONS, Store


def test_a_new_store_is_migrated_to_the_last_version_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "sub" / "toolkit.db")
    assert store.version == len(MIGRATIONS)
    store.cache("k", {"text": "Paris"})
    store.close()
    again = Store(tmp_path / "sub" / "toolkit.db")  # reopening runs nothing again, keeps the data
    assert again.version == len(MIGRATIONS) and again.cached("k") == {"text": "Paris"}
    assert again.query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "toolkit.db")
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("INSERT INTO answers (key, result, created_at) VALUES ('a', '{}', 'now')")
        raise RuntimeError("half way")
    assert store.cached("a") is None


def _writer(path: str, worker: int, count: int) -> None:
    store = Store(path)
    for i in range(count):
        store.cache(f"{worker}-{i}", {"worker": worker, "i": i})


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "toolkit.db")
    Store(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w, 200)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert Store(path).query("SELECT COUNT(*) FROM answers")[0][0] == 800


def test_a_store_that_cannot_be_opened_says_why_without_its_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="TOOLKIT_STORE") as caught:
        Store(tmp_path / "file" / "toolkit.db").cached("k")
    assert caught.value.reason == "unopenable" and str(tmp_path) not in caught.value.message
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="damaged") as caught:
        Store(tmp_path / "junk.db").cached("k")
    assert caught.value.reason == "corrupt" and caught.value.status == 503 and caught.value.retry_after_s is None
    newer = sqlite3.connect(tmp_path / "newer.db")
    newer.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    newer.close()
    with pytest.raises(StoreUnavailable, match="newer toolkit"):
        Store(tmp_path / "newer.db").cached("k")


def test_a_full_disk_is_reported_as_full_and_rolled_back_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "toolkit.db")
    store.cache("small", {"text": "fits"})
    pages = store.query("PRAGMA page_count")[0][0]
    store.close()
    monkeypatch.setattr("toolkit.store.sqlite3.connect", limited(pages=pages))
    full = Store(tmp_path / "toolkit.db")
    with pytest.raises(StoreUnavailable) as caught:
        full.cache("big", {"text": "x" * 200_000})
    error = caught.value
    assert error.reason == "full" and error.retry_after_s == 30 and error.status == 503
    assert str(tmp_path) not in error.message and "disk is full" in error.message
    assert full.state == "full" and full.cached("small") == {"text": "fits"}  # reads still work
    assert "cannot rollback" not in caplog.text and str(tmp_path) in caplog.text  # the cause, in the log
    assert full.cached("big") is None
    monkeypatch.undo()  # space again
    again = Store(tmp_path / "toolkit.db")
    again.cache("big", {"text": "x" * 200_000})
    assert again.state == "ok" and again.cached("big") is not None


def test_a_read_only_store_says_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path / "toolkit.db").cache("k", {"text": "kept"})
    monkeypatch.setattr("toolkit.store.sqlite3.connect", limited(read_only=True))
    with pytest.raises(StoreUnavailable) as caught:
        Store(tmp_path / "toolkit.db").cache("k2", {})
    assert caught.value.reason == "read-only" and "not a toolkit store" not in caught.value.message


def test_a_new_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "new" / "toolkit.db")
    store.cache("k", {"prompt": "private"})
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    for name in ("toolkit.db", "toolkit.db-wal"):
        assert (tmp_path / "new" / name).stat().st_mode & 0o777 == 0o600, name


def test_readers_in_threads_do_not_wait_on_each_other(tmp_path: Path) -> None:
    """A connection per thread: a reader inside a long read does not hold up another thread's reads or a write."""
    store = Store(tmp_path / "toolkit.db")
    store.cache("k", {"text": "v"})
    inside, done = threading.Event(), threading.Event()

    def long_read() -> None:
        db = store._connect()
        db.execute("BEGIN")  # a read transaction held open, as a slow reader's is
        db.execute("SELECT COUNT(*) FROM answers").fetchall()
        inside.set()
        done.wait(30)
        db.execute("COMMIT")

    reader = threading.Thread(target=long_read)
    reader.start()
    try:
        assert inside.wait(30)
        assert store.cached("k") == {"text": "v"}  # with one shared connection this read joined the open one
        store.cache("k2", {"text": "w"})  # and this write would have failed inside it
        assert store.cached("k2") == {"text": "w"}
    finally:
        done.set()
        reader.join(30)


def test_toolkit_store_names_the_file_or_turns_it_off(tmp_path: Path) -> None:
    assert Settings.from_env({}).store == default_store()
    assert default_store().name == "toolkit.db"
    assert Settings.from_env({"TOOLKIT_STORE": str(tmp_path / "x.db")}).store == tmp_path / "x.db"
    assert Settings.from_env({"TOOLKIT_STORE": "off"}).store is None
    assert Settings.from_env({"RUN_LOG": "off"}).run_log is None  # as for the store: not a file named "off"


def test_a_store_from_before_conversations_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # a file as the evaluations-only toolkit left it: schema version 1
    for statement in filter(str.strip, MIGRATIONS[0].split(";")):
        old.execute(statement)
    old.execute("INSERT INTO answers (key, result, created_at) VALUES ('k', '{\"text\": \"Paris\"}', 'then')")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    store = Store(path)
    assert store.version == len(MIGRATIONS) >= 2 and store.cached("k") == {"text": "Paris"}
    from toolkit.conversation.store import ConversationStore
    from toolkit.params import InferRequest

    kept = ConversationStore(store)
    cid = kept.create("", InferRequest("Hello"))
    assert kept.add_turn(cid, InferRequest("Hello"), "Hi!", "stop")
    assert [c.id for c in kept.list(query="hello")] == [cid]


def test_a_read_with_a_budget_stops_past_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "toolkit.db")
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"
    with pytest.raises(RequestTimeout, match=r"took longer than 0\.05 s"):
        store.query(endless, budget_s=0.05)
    assert store.query("SELECT 1") == [(1,)]  # the connection serves on, without the budget
