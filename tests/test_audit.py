"""The hash-chained audit log: verify finds edited, deleted and reordered records and names them."""

from __future__ import annotations

import json

import pytest
from conftest import make_message, run_cli
from sqlalchemy import delete, select, update

from sendguard import audit, outbox, policy, store


@pytest.fixture
def filled(home):
    db = store.Store(home / "sendguard.db")
    pol = policy.build({"organization.internal_domains": ("example.co.jp",)})
    box = outbox.Outbox(db, lambda: pol)
    for i in range(3):
        item = box.submit(make_message(to=f"x{i}@partner.example").as_bytes(), "taro@example.co.jp",
                          [f"x{i}@partner.example"])
        box.cancel(item.id, reason="test")
    assert audit.verify(db) == []
    return db


def test_intact_log_verifies_and_exports(filled):
    out = run_cli("audit", "verify")
    assert out.returncode == 0 and b"intact: 9 records" in out.stdout
    rows = json.loads(run_cli("audit", "export", "--json").stdout)
    assert [r["seq"] for r in rows] == list(range(1, 10))
    assert all({"ts", "event", "actor", "data", "prev_hash", "hash"} <= set(r) for r in rows)
    assert rows[1]["prev_hash"] == rows[0]["hash"]


def test_edited_record_is_named(filled):
    with filled.transaction() as conn:
        conn.execute(update(store.audit).where(store.audit.c.seq == 5).values(actor="mallory"))
    problems = audit.verify(filled)
    assert [p.seq for p in problems] == [5] and "edited" in problems[0].message
    out = run_cli("audit", "verify")
    assert out.returncode == 1 and b"record 5" in out.stderr


def test_deleted_record_is_named(filled):
    with filled.transaction() as conn:
        conn.execute(delete(store.audit).where(store.audit.c.seq == 4))
    problems = audit.verify(filled)
    assert problems and problems[0].seq == 5 and "4" in problems[0].message and "deleted" in problems[0].message


def test_deleted_tail_is_detected(filled):
    with filled.transaction() as conn:
        conn.execute(delete(store.audit).where(store.audit.c.seq == 9))
    problems = audit.verify(filled)
    assert problems and "latest records were deleted" in problems[-1].message


def test_reordered_records_are_detected(filled):
    with filled.transaction() as conn:
        rows = {r.seq: r for r in conn.execute(select(store.audit).where(store.audit.c.seq.in_([3, 4])))}
        conn.execute(delete(store.audit).where(store.audit.c.seq.in_([3, 4])))
        for new_seq, old in ((3, rows[4]), (4, rows[3])):
            values = dict(old._mapping)
            values["seq"] = new_seq
            conn.execute(store.audit.insert().values(**values))
    problems = audit.verify(filled)
    assert {p.seq for p in problems} & {3, 4}


def test_every_transition_has_one_audit_record_in_the_same_transaction(filled):
    records = audit.records(filled)
    events = [(r["item_id"], r["event"]) for r in records]
    per_item: dict[str, list[str]] = {}
    for item_id, event in events:
        per_item.setdefault(item_id, []).append(event)
    assert all(v == ["received", "verdict", "cancelled"] for v in per_item.values())


def test_retention_purges_bodies_but_keeps_audit(home):
    clock = [1_000_000.0]
    db = store.Store(home / "sendguard.db")
    pol = policy.build({"organization.internal_domains": ("example.co.jp",)})
    box = outbox.Outbox(db, lambda: pol, clock=lambda: clock[0])
    done = box.submit(make_message(to="x@partner.example").as_bytes(), "t@example.co.jp", ["x@partner.example"])
    box.cancel(done.id)
    held = box.submit(make_message(to="y@partner.example").as_bytes(), "t@example.co.jp", ["y@partner.example"])
    clock[0] += 13 * 86400
    assert box.purge(14) == 0
    clock[0] += 2 * 86400
    assert box.purge(14) == 1
    assert box.get(done.id, with_bodies=True).raw is None and box.get(done.id).purged
    assert box.get(held.id, with_bodies=True).raw is not None  # held mail is never dropped
    assert [r["event"] for r in audit.records(db, done.id)] == ["received", "verdict", "cancelled"]
    assert audit.records(db)[-1]["event"] == "purged" and audit.verify(db) == []
    out = run_cli("queue", "export", done.id)
    assert out.returncode == 1 and b"purged" in out.stderr


def test_intakes_committed_together_keep_each_ones_time_and_every_row_whole(home):
    """A checking process commits the messages of many SMTP sessions in one transaction: each message's
    audit records carry the time it was taken in, the chain verifies, and rows of different shapes (held
    with a verdict, passed on without one) are each stored with all their columns."""
    db = store.Store(home / "sendguard.db")
    pol = policy.build({"organization.internal_domains": ("example.co.jp",)})
    box = outbox.Outbox(db, lambda: pol)
    held = outbox.Incoming(make_message(to="x@partner.example").as_bytes(), "taro@example.co.jp",
                           ["x@partner.example"])
    plain = outbox.Incoming(make_message(to="jiro@example.co.jp").as_bytes(), "taro@example.co.jp",
                            ["jiro@example.co.jp"])
    first = box.prepare_intake([held], check=True, now=1_800_000_000.0)
    second = box.prepare_intake([plain], check=False, now=1_800_000_005.5)
    del second.rows[0]["check_result"], second.rows[0]["last_error"]  # a row without some columns
    box.commit_intake([first, second])
    assert audit.verify(db) == []
    rows = json.loads(run_cli("audit", "export", "--json").stdout)
    stamps = {(r["event"], r["item_id"]): r["ts"] for r in rows}
    held_id, plain_id = first.rows[0]["id"], second.rows[0]["id"]
    assert stamps[("received", held_id)].startswith("2027-01-15T08:00:00.")
    assert stamps[("received", plain_id)].startswith("2027-01-15T08:00:05.5")
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    held_item, plain_item = box.get(held_id, with_bodies=True), box.get(plain_id, with_bodies=True)
    assert held_item.state == "awaiting_confirmation" and held_item.check_json is not None
    assert held_item.raw == held.raw and plain_item.raw == plain.raw
    assert plain_item.state == "received" and plain_item.envelope_to == ["jiro@example.co.jp"]
    assert plain_item.check_json is None and plain_item.last_error is None
