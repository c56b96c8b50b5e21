"""The store: migrated once, in order; WAL, so that several processes write at once without "database is
locked"; where TOOLKIT_STORE says (or nowhere)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from toolkit.errors import ConfigError
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


def test_a_store_that_cannot_be_opened_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="TOOLKIT_STORE") as caught:
        Store(tmp_path / "file" / "toolkit.db").cached("k")
    assert "cannot open the store" in caught.value.message
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a toolkit store"):
        Store(tmp_path / "junk.db").cached("k")
    newer = sqlite3.connect(tmp_path / "newer.db")
    newer.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    newer.close()
    with pytest.raises(ConfigError, match="from a newer toolkit"):
        Store(tmp_path / "newer.db").cached("k")


def test_toolkit_store_names_the_file_or_turns_it_off(tmp_path: Path) -> None:
    assert Settings.from_env({}).store == default_store()
    assert default_store().name == "toolkit.db"
    assert Settings.from_env({"TOOLKIT_STORE": str(tmp_path / "x.db")}).store == tmp_path / "x.db"
    assert Settings.from_env({"TOOLKIT_STORE": "off"}).store is None


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
    from toolkit.conversation_store import ConversationStore
    from toolkit.params import InferRequest

    kept = ConversationStore(store)
    cid = kept.create("", InferRequest("Hello"))
    assert kept.add_turn(cid, InferRequest("Hello"), "Hi!", "stop")
    assert [c.id for c in kept.list(query="hello")] == [cid]
