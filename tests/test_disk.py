"""The disk under the store (issue #16): full or read-only -> SMTP 451 (the client keeps the mail), the API
503 with the reason, health says so; everything comes back by itself when the disk does. A damaged store
is refused at start with a clear error and a way out (`doctor`), never reset silently.

The store's SQLite file is limited the real way: ``PRAGMA max_page_count`` makes SQLite itself answer
SQLITE_FULL ("database or disk is full") exactly as on a full disk, and ``PRAGMA query_only`` makes it
answer SQLITE_READONLY, on every connection of the running helper.
"""

from __future__ import annotations

import smtplib

import pytest
import requests
from conftest import SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for
from sqlalchemy import event

from sendguard.store import Store

TOKEN = "disk-test-token-0123456789"


class DiskFault:
    """Applies a PRAGMA to every (new) connection of a store's engine; the pool is emptied so it takes."""

    def __init__(self, store: Store):
        self.store = store
        self.pragma: str | None = None
        event.listen(store.engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_conn, _record) -> None:
        if self.pragma:
            dbapi_conn.execute(self.pragma)

    def apply(self, pragma: str | None) -> None:
        self.pragma = pragma
        self.store.engine.dispose()

    def full(self) -> None:
        with self.store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        self.apply(f"PRAGMA max_page_count = {pages}")

    def read_only(self) -> None:
        self.apply("PRAGMA query_only = 1")

    def fixed(self) -> None:
        self.apply(None)


def big_message(n: int):
    return make_message(to="x@partner.example", subject=f"disk {n}",
                        attachments=[("data.bin", bytes(range(256)) * 1200, "application/octet-stream")])


@pytest.mark.parametrize("fault,reason", [("full", "full"), ("read_only", "read-only")])
def test_store_full_or_read_only_refuses_with_451_and_503_then_recovers(runner, write_policy, fault, reason):
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = TOKEN
    auth = {"Authorization": f"Bearer {TOKEN}"}
    port = r.helper.smtp.port
    smtp_send(port, make_message(to="x@partner.example", subject="before"))
    (held,) = wait_for(lambda: r.helper.outbox.list(["awaiting_confirmation"]), timeout=60)
    disk = DiskFault(r.helper.store)
    getattr(disk, fault)()

    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(port, big_message(1))
    assert refused.value.smtp_code == 451 and f"store {reason}".encode() in refused.value.smtp_error
    health = requests.get(f"{r.base_url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["store"]["reason"] == fault
    if fault == "read_only":  # (a full disk may still take a write that fits in the file's free pages)
        cancel = requests.post(f"{r.base_url}/api/v1/outbox/{held.id}/cancel", headers=auth, timeout=10)
        assert cancel.status_code == 503 and cancel.json()["error"]["code"] == "store_unavailable"
        assert "held mail is safe" in cancel.json()["error"]["message"]
    assert r.helper.outbox.get(held.id).state == "awaiting_confirmation"  # nothing changed, nothing lost

    disk.fixed()  # space is back: no restart
    smtp_send(port, big_message(2))
    wait_for(lambda: len(r.helper.outbox.list(["awaiting_confirmation"])) == 2, timeout=60)
    assert requests.get(f"{r.base_url}/healthz", timeout=10).status_code == 200
    cancel = requests.post(f"{r.base_url}/api/v1/outbox/{held.id}/cancel", headers=auth, timeout=10)
    assert cancel.status_code == 200
    assert r.helper._worker.is_alive()


def test_damaged_store_is_refused_at_start_with_a_way_out(home, write_policy, serve_process):
    write_policy(SAMPLE_POLICY)
    store = Store(home / "sendguard.db")
    with store.transaction() as conn:
        for n in range(200):  # enough pages that damage lands inside a table
            conn.exec_driver_sql("INSERT INTO domains (domain, first_sent, last_sent, count) VALUES (?, 0, 0, 1)",
                                 (f"d{n}-{'x' * 200}.example",))
    store.close()
    db = home / "sendguard.db"
    size = db.stat().st_size
    with open(db, "r+b") as fh:  # a torn write in the middle of the file
        fh.seek(size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 1024)

    out = run_cli("queue", "list")
    assert out.returncode != 0 and b"is damaged" in out.stderr and b"Traceback" not in out.stderr, out.stderr
    proc = serve_process().start(wait=False)
    assert proc.wait_dead(60) != 0
    log = (home / "serve.log").read_bytes()
    assert b"is damaged" in log and b"doctor --set-aside-store" in log and b"Traceback" not in log, log[-2000:]
    assert db.exists() and db.stat().st_size == size  # changed nothing

    doctor = run_cli("doctor")
    assert doctor.returncode != 0 and b"is damaged" in doctor.stdout and b"--set-aside-store" in doctor.stdout, doctor.stdout
    fixed = run_cli("doctor", "--set-aside-store")
    assert fixed.returncode == 0 and b"set aside" in fixed.stdout, fixed.stderr
    assert list(home.glob("sendguard.db.damaged-*"))  # kept, not deleted
    proc = serve_process().start()
    smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
    assert run_cli("queue", "list").returncode == 0


def test_set_aside_refuses_a_healthy_store(home):
    Store(home / "sendguard.db").close()
    out = run_cli("doctor", "--set-aside-store")
    assert out.returncode != 0 and b"passes" in out.stderr
    assert not list(home.glob("sendguard.db.damaged-*"))
