"""The audit log cannot be rewritten unnoticed (finding 6 of issue #10).

Whoever can write the database could delete the tail and fix ``audit_head``, delete everything and reset
the head, or edit a record and re-hash the chain after it. The chain is now keyed (HMAC, the key in the
keyring) and its head is signed into checkpoints kept outside the database (a file beside it and, with a
central server, on the server)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import test_central_server as central
from conftest import make_message, run_cli
from sqlalchemy import create_engine, delete, select, update

from sendguard import audit, store
from sendguard.service import Helper

# the central server's fixtures: a throwaway database and a server in a thread
pg_url, server = central.pg_url, central.server


def plain_hash(prev: str, seq: int, row: Any) -> str:
    body = store.canonical([prev, seq, row.ts, row.item_id or "", row.event, row.actor, row.data])
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@pytest.fixture
def used_home(home: Path, write_policy: Any) -> Path:
    """A helper that handled three messages and stopped (which signs a checkpoint)."""
    write_policy()
    helper = Helper(home)
    for i in range(3):
        item = helper.outbox.submit(make_message(to=f"x{i}@partner.example").as_bytes(), "taro@example.co.jp",
                                    [f"x{i}@partner.example"])
        helper.outbox.cancel(item.id, reason="test")
    helper.stop()
    assert run_cli("audit", "verify").returncode == 0
    return home


def tamper(home: Path, work: Any) -> None:
    """Edit the database directly: the attacker has the file, not the keyring."""
    engine = create_engine(f"sqlite:///{home / 'sendguard.db'}")
    try:
        with engine.begin() as conn:
            work(conn)
    finally:
        engine.dispose()


def rechain(conn: Any) -> None:
    """Re-hash every record after an edit and fix the head, as the old (unkeyed) chain allowed."""
    prev = store.GENESIS
    rows = conn.execute(select(store.audit).order_by(store.audit.c.seq)).all()
    for row in rows:
        digest = plain_hash(prev, row.seq, row)
        conn.execute(update(store.audit).where(store.audit.c.seq == row.seq).values(prev_hash=prev, hash=digest))
        prev = digest
    conn.execute(update(store.audit_head).values(seq=rows[-1].seq if rows else 0, hash=prev))


def test_edited_and_rehashed_audit_chain_is_detected(used_home: Path) -> None:
    def edit(conn: Any) -> None:
        conn.execute(update(store.audit).where(store.audit.c.event == "cancelled").values(actor="someone-else"))
        rechain(conn)

    tamper(used_home, edit)
    out = run_cli("audit", "verify")
    assert out.returncode == 1 and b"was edited" in out.stderr, out.stdout + out.stderr


def test_deleted_tail_with_fixed_head_is_reported_as_truncation(used_home: Path) -> None:
    def cut(conn: Any) -> None:
        conn.execute(delete(store.audit).where(store.audit.c.seq > 6))
        rechain(conn)

    tamper(used_home, cut)
    out = run_cli("audit", "verify")
    assert out.returncode == 1 and b"truncated" in out.stderr and b"records 7-9 were deleted" in out.stderr


def test_deleting_the_whole_log_and_resetting_the_head_is_reported(used_home: Path) -> None:
    def wipe(conn: Any) -> None:
        conn.execute(delete(store.audit))
        conn.execute(update(store.audit_head).values(seq=0, hash=store.GENESIS))

    tamper(used_home, wipe)
    out = run_cli("audit", "verify")
    assert out.returncode == 1 and b"truncated: the log ends at record 0" in out.stderr


def test_forged_checkpoint_is_reported(used_home: Path) -> None:
    path = used_home / audit.CHECKPOINT_FILE
    data = json.loads(path.read_text())
    data["seq"] = 2  # an attacker moves the checkpoint back before cutting the log
    path.write_text(json.dumps(data))
    out = run_cli("audit", "verify")
    assert out.returncode == 1 and b"checkpoint" in out.stderr and b"altered" in out.stderr


@pytest.mark.postgres
def test_helper_log_cut_short_is_reported_from_the_servers_checkpoint(server: Any, home: Path) -> None:
    """The central server keeps each helper's latest signed head, out of the sender's reach."""
    central.connect_helper(home, server.url, server.token("taro@example.co.jp"))
    helper = Helper(home)
    assert helper.sync is not None
    for i in range(2):
        helper.outbox.submit(make_message(to=f"x{i}@partner.example").as_bytes(), "taro@example.co.jp",
                             [f"x{i}@partner.example"])
    helper.sync.report_checkpoint(every=0)
    seen = helper.sync.client.get_checkpoint(helper.store.setting("audit_db_id", str))
    helper.store.close()
    assert seen and seen["seq"] >= 2
    (home / audit.CHECKPOINT_FILE).unlink(missing_ok=True)  # the local copy is gone too

    def cut(conn: Any) -> None:
        conn.execute(delete(store.audit).where(store.audit.c.seq > 1))
        rechain(conn)

    tamper(home, cut)
    out = run_cli("audit", "verify")
    assert out.returncode == 1 and b"truncated" in out.stderr, out.stdout + out.stderr
