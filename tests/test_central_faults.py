"""The central server under faults (issue #16): partitioned from a helper, PostgreSQL restarted in the
middle of a decision, two server processes behind one address. Helpers keep holding and keep their users'
decisions; every decision happens once; every message goes out once.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import make_message, stop_central_rounds, wait_for
from sqlalchemy import create_engine, text
from test_central_server import ThreadServer, connect_helper, maildir

from sendguard import audit
from sendguard.central import CentralClient
from sendguard.errors import SendGuardError
from tests.fakes.tcpproxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

@pytest.fixture
def db():
    """A database of its own on the throwaway cluster (this module restarts the cluster: pre-ping)."""
    base = os.environ.get("SENDGUARD_TEST_DATABASE_URL")
    if not base:
        pytest.skip("SENDGUARD_TEST_DATABASE_URL is not set: run through tools/with-postgres.sh (make test)")
    name = "sg_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + "/" + name
    stop_central_rounds()  # before the database goes: they would fail (and log) every round after
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


SERVER_POLICY = '[approval]\napprovers = ["boss@example.co.jp"]\nexpire_hours = 24\n'


def _server(pg_url: str, tmp_path: Path, name: str = "a") -> ThreadServer:
    policy = tmp_path / f"server-policy-{name}.toml"
    policy.write_text(SERVER_POLICY, encoding="utf-8")
    return ThreadServer(pg_url, policy)


def _helper(home: Path, url: str, token: str) -> Any:
    from sendguard.service import Helper

    connect_helper(home, url, token)
    helper = Helper(home)
    helper.sync.long_poll = 1.0
    helper.notifier = lambda title, body: None
    return helper.start(smtp=True, smtp_port=0)


def held_for_approval(helper: Any, subject: str = "社外秘 見積") -> str:
    """A message the user sent and confirmed, held for approval (checked by the running worker)."""
    msg = make_message(subject=subject, body="社外秘の資料です。")
    item_id = helper.outbox.receive(msg.as_bytes(), "taro@example.co.jp", ["a@partner.example"])
    helper.enqueue(item_id)
    wait_for(lambda: helper.outbox.get(item_id).state == "awaiting_confirmation", timeout=60)
    assert helper.outbox.confirm(item_id).state == "awaiting_approval"
    return str(item_id)


def _sent_once(helper: Any, item_id: str) -> None:
    wait_for(lambda: helper.outbox.get(item_id).state == "sent", timeout=60)
    time.sleep(1.0)  # room for a duplicate to show, if there were one
    assert [p.name for p in maildir(helper.home)].count(f"sendguard-{item_id}") == 1


def _decide_until_known(client: CentralClient, item_id: str, deadline: float = 60) -> str:
    """What an approver's client does: try until the server answers (done, or already decided)."""
    end = time.monotonic() + deadline
    while True:
        try:
            return client.decide(item_id, "approve", "boss@example.co.jp", "OK").state
        except SendGuardError as exc:
            if "already approved" in str(exc):
                return "approved"
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_partitioned_helper_keeps_holding_and_keeps_its_users_decision(db, tmp_path, home):
    server = _server(db, tmp_path)
    proxy = TcpProxy([("127.0.0.1", server.server.server_port)])
    helper = _helper(home, proxy.url, server.token("taro@example.co.jp"))
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    try:
        proxy.cut()  # the helper cannot reach the server
        item_id = held_for_approval(helper)  # the user's Send: taken and kept, no error
        time.sleep(2.0)
        assert helper.outbox.get(item_id).state == "awaiting_approval"
        assert boss.pending() == [] and helper._worker.is_alive()
        proxy.heal()
        wait_for(lambda: [i.id for i in boss.pending()] == [item_id], timeout=30)
        proxy.cut()  # partitioned again while the approver decides
        assert boss.decide(item_id, "approve", "boss@example.co.jp", "OK").state == "approved"
        time.sleep(2.0)
        assert helper.outbox.get(item_id).state == "awaiting_approval"  # holds until it hears
        proxy.heal()
        _sent_once(helper, item_id)
        events = [r["event"] for r in audit.records(server.service.store, item_id)]
        assert events.count("approved") == 1 and events.count("approval_requested") == 1
    finally:
        helper.stop()
        proxy.close()
        server.stop()


class OwnCluster:
    """A PostgreSQL cluster of this test's own (restarting the shared one would break tests running beside)."""

    def __init__(self, tmp: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: [int(x) for x in p.split("/")[-2].split(".") if x.isdigit()])
        if not bins:
            pytest.skip("no PostgreSQL server binaries")
        self.bin = bins[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="sendguard-pg."))  # outside root's private pytest folder
        self.as_pg: list[str] = []
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "sendguard", "-E", "UTF8",
                  "--locale=C")
        self.pg_ctl("start", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off")
        self.url = f"postgresql+psycopg://sendguard@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        env = dict(os.environ, LANG="C", LC_ALL="C")
        done = subprocess.run([*self.as_pg, f"{self.bin}/{tool}", *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, env=env)
        assert done.returncode == 0, done.stderr

    def pg_ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-m", "fast", "-w",
                  *extra, action)

    def stop(self) -> None:
        try:
            self.pg_ctl("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def test_postgres_restarted_mid_decision_decides_once(tmp_path, home):
    if not os.environ.get("SENDGUARD_TEST_DATABASE_URL"):
        pytest.skip("SENDGUARD_TEST_DATABASE_URL is not set: run through tools/with-postgres.sh (make test)")
    cluster = OwnCluster(tmp_path)
    try:
        server = _server(cluster.url, tmp_path)
    except BaseException:
        cluster.stop()
        raise
    helper = _helper(home, server.url, server.token("taro@example.co.jp"))
    boss = CentralClient(server.url, server.token("boss@example.co.jp"), timeout=5)
    try:
        item_id = held_for_approval(helper)
        wait_for(lambda: [i.id for i in boss.pending()] == [item_id], timeout=30)
        outcome: dict[str, Any] = {}
        restart = threading.Thread(target=lambda: outcome.update(restart=cluster.pg_ctl("restart")))
        restart.start()
        time.sleep(0.05)  # the decision lands while the database goes down and comes back
        outcome["state"] = _decide_until_known(boss, item_id)
        restart.join(120)
        assert outcome["state"] == "approved"
        _sent_once(helper, item_id)
        events = [r["event"] for r in audit.records(server.service.store, item_id)]
        assert events.count("approved") == 1, events
        assert audit.verify(server.service.store) == []
    finally:
        helper.stop()
        server.stop()
        cluster.stop()


def test_two_server_processes_behind_one_address_give_the_same_results(db, tmp_path, home):
    first, second = _server(db, tmp_path, "a"), _server(db, tmp_path, "b")
    proxy = TcpProxy([("127.0.0.1", first.server.server_port), ("127.0.0.1", second.server.server_port)])
    helper = _helper(home, proxy.url, first.token("taro@example.co.jp"))
    boss_token = second.token("boss@example.co.jp")
    try:
        item_ids = [held_for_approval(helper, subject=f"社外秘 {n}") for n in range(3)]
        via_proxy = CentralClient(proxy.url, boss_token)
        wait_for(lambda: sorted(i.id for i in via_proxy.pending()) == sorted(item_ids), timeout=30)
        # both servers see the same queue
        assert sorted(i.id for i in CentralClient(first.url, boss_token).pending()) == sorted(item_ids)
        assert sorted(i.id for i in CentralClient(second.url, boss_token).pending()) == sorted(item_ids)
        # the same decision sent to both servers at once: it happens once
        results: list[str] = []
        racers = [threading.Thread(target=lambda u=u: results.append(_decide_until_known(
            CentralClient(u, boss_token), item_ids[0]))) for u in (first.url, second.url)]
        for t in racers:
            t.start()
        for t in racers:
            t.join(60)
        assert results == ["approved", "approved"]
        via_proxy.decide(item_ids[1], "approve", "boss@example.co.jp", "OK")
        via_proxy.decide(item_ids[2], "reject", "boss@example.co.jp", "宛先が違います")
        for item_id in item_ids[:2]:
            _sent_once(helper, item_id)
        wait_for(lambda: helper.outbox.get(item_ids[2]).state == "rejected", timeout=30)
        for item_id in item_ids:
            events = [r["event"] for r in audit.records(first.service.store, item_id)]
            assert events.count("approved") + events.count("rejected") == 1, events
        assert audit.verify(first.service.store) == []
        assert proxy.connections > 2
    finally:
        helper.stop()
        proxy.close()
        first.stop()
        second.stop()
