"""The local store's versioned schema migrations (issue #15.8): held mail stays held across upgrades."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import make_message
from sqlalchemy import create_engine

from sendguard import outbox, policy, store, store_migrations
from sendguard.store_migrations import StoreVersionError


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def indexes(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def old_store_with_a_held_message(db: Path) -> str:
    """A store as SendGuard 0.1.0 (before migrations) left it: its tables, no version, one held message."""
    engine = create_engine(f"sqlite:///{db}")
    store.metadata.create_all(engine)  # what 0.1.0's Store did, and all it did
    engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, ?)", (store.GENESIS,))
    # let today's Outbox write the message, then put the header back to 0.1.0's
    box = outbox.Outbox(store.Store(db), policy.Policy)
    item = box.submit(make_message(to="x@partner.example").as_bytes(), "taro@example.co.jp", ["x@partner.example"])
    assert item.state == "awaiting_confirmation"
    box.store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX ix_outbox_state_release_after")
        conn.execute("PRAGMA user_version = 0")
    for made_meanwhile in db.parent.glob("*.bak"):
        made_meanwhile.unlink()
    return item.id


def test_steps_are_numbered_and_documented() -> None:
    steps = store_migrations.steps()
    assert [s.version for s in steps] == list(range(1, len(steps) + 1))
    assert all(s.description and not s.description.endswith(".py") for s in steps)
    assert store_migrations.latest_version() >= 2


def test_new_store_starts_at_the_latest_version(tmp_path: Path) -> None:
    db = tmp_path / "sendguard.db"
    store.Store(db).close()
    assert user_version(db) == store_migrations.latest_version()
    assert "ix_outbox_state_release_after" in indexes(db)
    assert not list(tmp_path.glob("*.bak"))  # nothing to keep from an empty store


def test_old_store_is_migrated_and_its_held_message_stays_held(tmp_path: Path) -> None:
    db = tmp_path / "sendguard.db"
    item_id = old_store_with_a_held_message(db)
    assert user_version(db) == 0 and "ix_outbox_state_release_after" not in indexes(db)

    db_store = store.Store(db)
    box = outbox.Outbox(db_store, policy.Policy)
    assert user_version(db) == store_migrations.latest_version()
    assert "ix_outbox_state_release_after" in indexes(db)
    held = box.get(item_id)
    assert held.state == "awaiting_confirmation"
    assert box.confirm(item_id).state in ("confirmed", "sent")
    from sendguard import audit
    assert audit.verify(db_store) == []  # the audit chain written before the upgrade still verifies
    db_store.close()
    backup = tmp_path / "sendguard.db.schema-0.bak"
    assert backup.exists()  # the store as it was, kept before the first step ran
    with sqlite3.connect(backup) as conn:
        assert conn.execute("SELECT state FROM outbox WHERE id = ?", (item_id,)).fetchone() == (
            "awaiting_confirmation",)


def test_store_from_a_newer_sendguard_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "sendguard.db"
    store.Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {store_migrations.latest_version() + 1}")
    with pytest.raises(StoreVersionError, match="written by a newer SendGuard"):
        store.Store(db)


def test_two_processes_opening_an_old_store_migrate_it_once(tmp_path: Path) -> None:
    db = tmp_path / "sendguard.db"
    item_id = old_store_with_a_held_message(db)
    errors: list[BaseException] = []
    opened: list[store.Store] = []

    def open_it() -> None:
        try:
            opened.append(store.Store(db))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert user_version(db) == store_migrations.latest_version()
    assert outbox.Outbox(opened[0], policy.Policy).get(item_id).state == "awaiting_confirmation"
    for s in opened:
        s.close()
