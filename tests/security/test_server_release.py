"""``[approval] release = "server"`` (issue #10, enforced approval): the central server keeps a flagged
message and sends it itself, through the organization's relay, once an approver said yes.

The peers are real: the server app on PostgreSQL, the sender's helper (its own SQLite, its own Maildir
transport), an aiosmtpd relay behind a TCP proxy that can be cut, and another proxy between the helper
and the server. "Leaves" means reaches the organization's relay; the helper's own transport must never
carry a message the server sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import email.utils
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import test_central_server as central
from conftest import make_message, run_cli, smtp_send, wait_for
from fakes.tcpproxy import TcpProxy
from sqlalchemy import select, update

from sendguard import audit
from sendguard.central import CentralClient, item_from_json
from sendguard.errors import PermissionDenied
from sendguard.store import outbox

pg_url = central.pg_url
pytestmark = pytest.mark.postgres

SERVER_POLICY = """
[approval]
approvers = ["boss@example.co.jp"]
expire_hours = 24
release = "server"
"""


class Relay:
    """The organization's SMTP relay (aiosmtpd), keeping every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse = False  # answer 554 to every message (a relay not allowed to send as the sender)
        # with ``stall``, each message waits in DATA for one ``let_one.release()``, then gets a 451 (a relay
        # that takes its time and then fails: the server is in the middle of sending all that while)
        self.stall = False
        self.let_one = threading.Semaphore(0)
        self.stalled = 0
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self.controller.start()
        self.proxy = TcpProxy([("127.0.0.1", self.controller.port)])

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return "554 5.7.1 Sender address rejected: not allowed to send as this user"
        if self.stall and envelope.original_content and b"X-SendGuard-Notice" not in envelope.original_content:
            self.stalled += 1
            await asyncio.get_running_loop().run_in_executor(None, self.let_one.acquire)
            return "451 4.3.0 Try again later"
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                              envelope.original_content or envelope.content))
        await asyncio.sleep(0)
        return "250 2.0.0 queued"

    def released(self, message_id: str) -> list[tuple[str, list[str], bytes]]:
        """Messages the server released with this Message-ID (not its own approval emails)."""
        out = []
        for r in self.received:
            msg = email.message_from_bytes(r[2], policy=email.policy.default)
            if msg.get("X-SendGuard-Notice") is None and msg.get("Message-ID", "").strip("<>") == message_id.strip("<>"):
                out.append(r)
        return out

    def notices(self, item_id: str) -> list[email.message.EmailMessage]:
        out = []
        for _f, _t, data in self.received:
            msg = email.message_from_bytes(data, policy=email.policy.default)
            if msg.get("X-SendGuard-Notice") == f"approval-request; item={item_id}":
                out.append(msg)
        return out

    def stop(self) -> None:
        self.stall = False
        self.let_one.release(100)  # no send left waiting (the controller's stop would wait for it)
        self.proxy.close()
        self.controller.stop()


class Server:
    """The server app (werkzeug in a thread) whose policy says release = "server", mailing through ``relay``."""

    def __init__(self, url: str, policy: Path, relay: Relay):
        from werkzeug.serving import make_server

        from addin.server import create_server_app, migrate

        migrate(url)
        relay_url = f"smtp://127.0.0.1:{relay.proxy.port}?security=none"
        self.app = create_server_app(url, "http://127.0.0.1", policy, mail_url=relay_url,
                                     mail_from="sendguard@example.co.jp")
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.service = self.app.config["SENDGUARD_SERVICE"]
        if hasattr(self.service, "releaser"):  # (absent before server-side release existed)
            self.service.releaser.interval = 0.3
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.direct = f"http://127.0.0.1:{self.server.server_port}"
        self.proxy = TcpProxy([("127.0.0.1", self.server.server_port)])  # the network between helper and server
        self.url = self.proxy.url
        self.service.public_url = self.direct

    def token(self, user: str) -> str:
        from addin.server import issue_token

        return issue_token(self.service.store, user)

    def stop(self) -> None:
        self.proxy.close()
        self.server.shutdown()
        self.service.close()


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay()
    yield r
    r.stop()


@pytest.fixture
def server(pg_url: str, tmp_path: Path, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    from sendguard.mailboxes import _retry

    monkeypatch.setattr(_retry, "BASE", 0.3)  # the server's back-off for its relay, short for the test
    monkeypatch.setattr(_retry, "CAP", 1.0)
    policy = tmp_path / "server-policy.toml"
    policy.write_text(SERVER_POLICY, encoding="utf-8")
    s = Server(pg_url, policy, relay)
    yield s
    s.stop()


@pytest.fixture
def sender_helper(home: Path, server: Server) -> Iterator[Any]:
    from sendguard.service import Helper

    central.connect_helper(home, server.url, server.token("taro@example.co.jp"))
    with (home / "config.toml").open("a", encoding="utf-8") as fh:  # short back-off (the server's too)
        fh.write("\n[retry]\nbase_seconds = 0.3\nmax_seconds = 1.0\n")
    helper = Helper(home)
    assert helper.sync is not None
    helper.sync.long_poll = 1.0
    helper.sync.max_backoff = 1.0
    helper.notices = []
    helper.notifier = lambda title, body: helper.notices.append((title, body))
    helper.start(smtp=True, smtp_port=0)
    yield helper
    helper.stop()


def held(helper: Any, body: str = "社外秘の資料です。") -> tuple[str, str, bytes]:
    """A flagged message confirmed by the sender: (id, Message-ID, the content handed over)."""
    msg = make_message(subject="社外秘 見積", body=body)
    if msg["Message-ID"] is None:
        msg["Message-ID"] = email.utils.make_msgid(domain="example.co.jp")
    smtp_send(helper.smtp.port, msg, ["a@partner.example"])  # the mail program hands it to the helper
    item = wait_for(lambda: next((i for i in helper.outbox.list(["awaiting_confirmation"])
                                  if i.message_id.strip("<>") == msg["Message-ID"].strip("<>")), None), timeout=20)
    item = helper.outbox.confirm(item.id)
    assert item.state == "awaiting_approval"
    full = helper.outbox.get(item.id, with_bodies=True)
    return str(item.id), full.message_id, full.final_raw or full.raw


def handed_over(helper: Any, item_id: str) -> bool:
    """The server took the message over: the helper shows it held, for the server to send once approved."""
    item = helper.outbox.get(item_id)
    return (item.decision or {}).get("release") == "server" and \
        (item.last_error or "").startswith("Waiting for approval: the central server keeps this message")


def sent_by_helper(helper: Any, item_id: str) -> bool:
    return any(p.name == f"sendguard-{item_id}" for p in central.maildir(helper.home))


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def stored_sha256(server: Server, item_id: str) -> str:
    with server.service.store.engine.connect() as conn:
        row = conn.execute(select(outbox.c.final_raw).where(outbox.c.id == item_id)).first()
    return hashlib.sha256(row[0]).hexdigest()


def test_the_server_sends_approved_mail_itself_exactly_as_the_approver_saw_it(
        server: Server, relay: Relay, sender_helper: Any) -> None:
    item_id, mid, content = held(sender_helper)
    wait_for(lambda: handed_over(sender_helper, item_id), timeout=20)
    local = sender_helper.outbox.get(item_id)
    assert local.state == "awaiting_approval" and local.decision["release"] == "server"
    assert local.decision["server_sha256"] == hashlib.sha256(content).hexdigest() == stored_sha256(server, item_id)
    listed = run_cli("queue", "list")  # what the sender sees: held, and who sends it
    assert listed.returncode == 0 and "the central server keeps this message and sends it itself" in \
        listed.stdout.decode(), listed.stderr
    # what the approver is shown: the page behind the link the server mailed through the relay
    notice = wait_for(lambda: relay.notices(item_id), timeout=20)[0]
    link = re.search(r"(https?://\S+/approve/\S+)", notice.get_content()).group(1)
    browser = requests.Session()
    page = browser.get(link, timeout=10)
    assert page.status_code == 200 and "社外秘の資料です" in page.text and "a@partner.example" in page.text
    time.sleep(1.0)
    assert relay.released(mid) == [] and not sent_by_helper(sender_helper, item_id)  # nothing before a yes

    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = browser.post(f"{server.direct}/approve/{item_id}", data={"csrf": csrf, "decision": "approve",
                                                                    "comment": "OK"},
                        headers={"Origin": server.direct}, timeout=10)
    assert done.status_code == 200 and "SendGuard server sends the message now" in done.text, done.text
    wait_for(lambda: relay.released(mid), timeout=20)
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=20)
    time.sleep(1.5)
    [(mail_from, rcpts, data)] = relay.released(mid)  # once
    assert mail_from == "taro@example.co.jp" and rcpts == ["a@partner.example"]
    assert lf(data) == lf(content)  # exactly the approved content (SMTP only changes line ends)
    assert not sent_by_helper(sender_helper, item_id)  # the helper never sent it itself
    events = [r["event"] for r in audit.records(server.service.store, item_id)]
    assert events.count("approved") == 1 and events.count("released") == 1
    shown = json.loads(run_cli("queue", "show", item_id, "--json").stdout)
    assert shown["state"] == "sent" and shown["approval"]["released_by"] == "server"
    local_events = [r["event"] for r in audit.records(sender_helper.store, item_id)]
    assert "released_by_server" in local_events and "released" not in local_events
    assert audit.verify(server.service.store) == [] and audit.verify(sender_helper.store) == []


def test_a_release_heard_twice_is_recorded_once(server: Server, relay: Relay, sender_helper: Any) -> None:
    """The helper follows the server from two rounds at once (its decisions poll and the round that asks
    after messages the server sends). One of them can hold the server's "sent" from before the other
    applied it: hearing it again must add nothing. A full run once showed two released_by_server records."""
    item_id, mid, _content = held(sender_helper)
    wait_for(lambda: handed_over(sender_helper, item_id), timeout=20)
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=30)
    [status] = sender_helper.sync.client.statuses([item_id])  # what the later round holds
    assert status["state"] == "sent" and status.get("release") == "server"
    assert sender_helper.sync.apply(status) is False
    assert sender_helper.sync.apply(status) is False
    local_events = [r["event"] for r in audit.records(sender_helper.store, item_id)]
    assert local_events.count("released_by_server") == 1, local_events
    assert sender_helper.outbox.get(item_id).last_error is None  # no "had already started sending" note
    [_once] = relay.released(mid)


def test_a_message_cancelled_here_but_sent_by_the_server_is_recorded_as_sent_once(
        server: Server, relay: Relay, sender_helper: Any) -> None:
    """The server had started sending when the sender cancelled here: both rounds that follow the server
    may hear "sent"; the helper notes it and records it once, its own state staying cancelled."""
    item_id, _mid, _content = held(sender_helper)
    wait_for(lambda: handed_over(sender_helper, item_id), timeout=20)
    sender_helper.outbox.cancel(item_id, reason="wrong customer")
    [status] = sender_helper.sync.client.statuses([item_id])
    heard = {**status, "state": "sent"}  # what the server answered while it was sending
    assert heard.get("release") == "server"
    assert sender_helper.sync.apply(heard) is True
    assert sender_helper.sync.apply(heard) is False
    item = sender_helper.outbox.get(item_id)
    assert item.state == "cancelled" and item.last_error == "The central server had already started sending it: it was sent"
    local_events = [r["event"] for r in audit.records(sender_helper.store, item_id)]
    assert local_events.count("released_by_server") == 1, local_events
    assert audit.verify(sender_helper.store) == []


def test_a_tampered_helper_cannot_release_or_change_what_is_sent(
        server: Server, relay: Relay, sender_helper: Any) -> None:
    from sendguard.central import CentralClient as Client

    token = server.token("taro@example.co.jp")
    item_id, mid, content = held(sender_helper)
    wait_for(lambda: handed_over(sender_helper, item_id), timeout=20)
    sender_helper.sync.stop()  # from here on, the sender's own code talks to the server
    me = Client(server.direct, token)
    # his database says approved, and no longer that the server sends it (the server signs nothing it
    # sends itself, so there is no signature he could copy)
    with sender_helper.store.transaction() as conn:
        conn.execute(update(outbox).where(outbox.c.id == item_id).values(
            state="approved", release_after=0.0, decision={},
            approval={"decision": "approved", "by": "boss@example.co.jp"}))
    sender_helper.wake()
    item = wait_for(lambda: (i := sender_helper.outbox.get(item_id)).state != "approved" and i, timeout=20)
    assert item.state == "needs_attention" and "signature" in (item.last_error or "")
    # he tells the server he sent it, approves it himself, hands over other content under the same id
    r = requests.post(f"{server.direct}/api/v1/central/requests/{item_id}/released",
                      headers={"Authorization": f"Bearer {token}"}, json={}, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "server_releases"
    refused = [r["data"] for r in audit.records(server.service.store, item_id) if r["event"] == "approval_refused"]
    assert any("cannot report it sent" in d.get("reason", "") for d in refused)
    with pytest.raises(PermissionDenied):
        me.decide(item_id, "approve", "taro@example.co.jp", "me")
    altered = content.replace("社外秘の資料です".encode(), "別の資料です".encode())
    answer = me.submit(sender_helper.outbox.get(item_id), altered)
    assert answer["sha256"] == hashlib.sha256(content).hexdigest() != hashlib.sha256(altered).hexdigest()
    # a new request that sends to an address the approver would not be shown is refused outright
    sneaky = dataclasses.replace(sender_helper.outbox.get(item_id), id="sneaky1",
                                 envelope_to=["a@partner.example", "evil@attacker.example"])
    r = requests.post(f"{server.direct}/api/v1/central/requests", headers={"Authorization": f"Bearer {token}"},
                      json={**_payload(sneaky, altered)}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unlisted_recipients"
    assert "evil@attacker.example" in r.json()["error"]["message"]
    # a hand-over whose hash does not match what arrived is refused (nothing stored)
    broken = {**_payload(sneaky, altered), "id": "broken1", "recipients": ["a@partner.example"],
              "sha256": hashlib.sha256(content).hexdigest()}
    r = requests.post(f"{server.direct}/api/v1/central/requests", headers={"Authorization": f"Bearer {token}"},
                      json=broken, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_hash"
    time.sleep(1.5)
    assert relay.released(mid) == []  # nothing left without the approver
    assert server.service.outbox.get(item_id).state == "awaiting_approval"
    # the approver says yes: the server sends what it was first given, never the altered copy
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    [(_f, _r, data)] = wait_for(lambda: relay.released(mid), timeout=20)
    assert lf(data) == lf(content) and "別の資料".encode() not in data
    assert not sent_by_helper(sender_helper, item_id)


def _payload(item: Any, raw: bytes) -> dict[str, Any]:
    import base64

    return {"id": item.id, "sender": item.sender, "subject": item.subject, "message_id": item.message_id,
            "envelope_from": item.envelope_from, "recipients": item.envelope_to, "check": item.check.to_json() if item.check else None,
            "decision": item.decision, "source": item.source, "raw": base64.b64encode(raw).decode("ascii"),
            "sha256": hashlib.sha256(raw).hexdigest()}


def test_server_down_during_hand_over_keeps_it_held_and_nothing_is_lost(
        server: Server, relay: Relay, sender_helper: Any) -> None:
    server.proxy.cut()
    item_id, mid, content = held(sender_helper)
    wait_for(lambda: sender_helper.sync.last_error, timeout=20)
    assert "cannot reach the central server" in sender_helper.sync.last_error
    item = sender_helper.outbox.get(item_id, with_bodies=True)
    assert item.state == "awaiting_approval" and (item.final_raw or item.raw) == content
    assert server.service.outbox.list() == [] and not sent_by_helper(sender_helper, item_id)
    server.proxy.heal()
    wait_for(lambda: handed_over(sender_helper, item_id), timeout=30)
    assert stored_sha256(server, item_id) == hashlib.sha256(content).hexdigest()
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=30)
    time.sleep(1.0)
    assert len(relay.released(mid)) == 1 and not sent_by_helper(sender_helper, item_id)


def test_relay_down_after_approval_is_retried_by_the_server_and_sent_once(
        server: Server, relay: Relay, sender_helper: Any) -> None:
    item_id, mid, content = held(sender_helper)
    wait_for(lambda: relay.notices(item_id), timeout=20)
    relay.proxy.cut()  # the organization's relay goes down before the approver decides
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    failed = wait_for(lambda: (i := server.service.outbox.get(item_id)).state == "failed" and i, timeout=20)
    assert "cannot reach the SMTP relay" in (failed.last_error or "")
    # the sender sees that it is approved and what the server waits for; it is not released here
    note = wait_for(lambda: "could not send it yet" in (sender_helper.outbox.get(item_id).last_error or "")
                    and sender_helper.outbox.get(item_id).last_error, timeout=20)
    assert "approved by boss@example.co.jp" in note and sender_helper.outbox.get(item_id).state == "awaiting_approval"
    from sendguard.waiting import waiting

    [line] = [w for w in waiting(sender_helper.outbox, str, sender_helper.sync) if w.ids == (item_id,)]
    assert line.kind == "central" and "the central server sends them itself" in line.text  # the status line
    shown = helper_api(sender_helper, f"/api/v1/outbox/{item_id}")  # the sender's window and add-in read this
    assert shown["state"] == "awaiting_approval" and shown["user_message"].startswith(
        "Approved; the SendGuard server sends it itself") and "could not send it yet" in shown["user_message"]
    wait_for(lambda: server.service.outbox.get(item_id).attempts >= 2, timeout=20)  # it keeps trying
    relay.proxy.heal()
    wait_for(lambda: server.service.outbox.get(item_id).state == "sent", timeout=30)
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=30)
    time.sleep(1.5)
    [(_f, _r, data)] = relay.released(mid)  # sent once
    assert lf(data) == lf(content) and not sent_by_helper(sender_helper, item_id)
    assert helper_api(sender_helper, f"/api/v1/outbox/{item_id}")["user_message"] == \
        "Approved and sent by the SendGuard server."


def helper_api(helper: Any, path: str) -> Any:
    """GET from the sender's own helper API (the one its window and the Outlook add-in use)."""
    from werkzeug.serving import make_server

    from addin import create_app

    app = create_app(helper, {"API_TOKEN": "tok"})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{http.server_port}{path}", headers={"Authorization": "Bearer tok"},
                              timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()
    finally:
        http.shutdown()


def test_the_sender_can_still_cancel_until_the_server_sends(server: Server, relay: Relay, sender_helper: Any) -> None:
    item_id, mid, _content = held(sender_helper)
    wait_for(lambda: relay.notices(item_id), timeout=20)
    relay.proxy.cut()
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    wait_for(lambda: server.service.outbox.get(item_id).state == "failed", timeout=20)
    sender_helper.outbox.cancel(item_id, reason="wrong customer")  # in his window, after the approval
    wait_for(lambda: server.service.outbox.get(item_id).state == "cancelled", timeout=20)
    relay.proxy.heal()
    time.sleep(2.0)
    assert relay.released(mid) == [] and not sent_by_helper(sender_helper, item_id)
    assert sender_helper.outbox.get(item_id).state == "cancelled"


def test_a_cancel_reaches_the_server_at_once_while_the_decisions_poll_waits(server: Server, relay: Relay,
                                                                          sender_helper: Any) -> None:
    """The helper's decisions poll waits up to its full length (20 s by default) on the server; a cancel
    made meanwhile must not wait for it, or the server may send what the user just stopped."""
    from sendguard.central import LONG_POLL

    item_id, mid, _content = held(sender_helper)
    wait_for(lambda: relay.notices(item_id), timeout=20)
    relay.proxy.cut()
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    wait_for(lambda: server.service.outbox.get(item_id).state == "failed", timeout=20)
    sender_helper.sync.long_poll = LONG_POLL
    time.sleep(2.5)  # the poll running now is one of the full length
    sender_helper.outbox.cancel(item_id, reason="wrong customer")
    wait_for(lambda: server.service.outbox.get(item_id).state == "cancelled", timeout=6)
    relay.proxy.heal()
    time.sleep(1.0)
    assert relay.released(mid) == [] and not sent_by_helper(sender_helper, item_id)


def test_a_cancel_the_server_refuses_while_it_is_sending_lands_as_soon_as_that_send_fails(
        server: Server, relay: Relay, sender_helper: Any) -> None:
    """The server refuses a cancel while it is handing the message to the relay (it cannot yet tell
    whether it went). When that attempt fails, the cancel must land before the server's next attempt
    (here 0.3-1 s later), not wait for the helper's next round of 2 s, when the server may be sending
    again, and again: a stop that never lands while the relay is slow."""
    item_id, mid, _content = held(sender_helper)
    wait_for(lambda: relay.notices(item_id), timeout=20)
    relay.stall = True
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    wait_for(lambda: relay.stalled == 1, timeout=20)  # the server is in the middle of its send
    assert server.service.outbox.get(item_id).state == "releasing"
    sender_helper.outbox.cancel(item_id, reason="wrong customer")
    time.sleep(1.0)  # the helper has asked, and was told the server is sending it
    assert server.service.outbox.get(item_id).state == "releasing"
    relay.let_one.release()  # that send fails; the server tries again shortly, and stalls again
    wait_for(lambda: server.service.outbox.get(item_id).state == "cancelled", timeout=8)
    assert relay.stalled <= 2
    relay.stall = False
    for _ in range(relay.stalled):
        relay.let_one.release()
    time.sleep(1.5)
    assert relay.released(mid) == [] and not sent_by_helper(sender_helper, item_id)
    assert sender_helper.outbox.get(item_id).state == "cancelled"


def test_a_message_the_relay_refuses_waits_for_the_admin_and_goes_once_resent(
        pg_url: str, server: Server, relay: Relay, sender_helper: Any) -> None:
    from click.testing import CliRunner

    from addin.server import server_command

    item_id, mid, content = held(sender_helper)
    wait_for(lambda: relay.notices(item_id), timeout=20)
    relay.refuse = True  # the relay may not send as the sender: a permanent refusal, not retried
    CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                           "boss@example.co.jp", "OK")
    wait_for(lambda: server.service.outbox.get(item_id).state == "needs_attention", timeout=20)
    note = wait_for(lambda: "will not try again" in (sender_helper.outbox.get(item_id).last_error or "")
                    and sender_helper.outbox.get(item_id).last_error, timeout=20)
    assert "554" in note and "Ask your administrator" in note
    cli = CliRunner()
    listed = cli.invoke(server_command, ["releases", "list", "--database", pg_url])
    assert listed.exit_code == 0 and item_id in listed.output and "554" in listed.output, listed.output
    refused = cli.invoke(server_command, ["releases", "resolve", item_id, "--database", pg_url])
    assert refused.exit_code != 0 and "--sent" in refused.output and "--resend" in refused.output
    relay.refuse = False  # the admin fixed the relay's permissions
    done = cli.invoke(server_command, ["releases", "resolve", item_id, "--resend", "--database", pg_url])
    assert done.exit_code == 0 and "failed" in done.output, done.output
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=30)
    time.sleep(1.0)
    [(_f, _r, data)] = relay.released(mid)
    assert lf(data) == lf(content)
    assert "nothing waiting" in cli.invoke(server_command, ["releases", "list", "--database", pg_url]).output


@pytest.mark.slow
def test_real_processes_server_killed_after_the_approval_sends_once(pg_url: str, tmp_path: Path, relay: Relay) -> None:
    """`sendguard server` (gunicorn, two workers, each with its releaser) and `sendguard serve` as separate
    processes; the relay down at the approval and the server killed with kill -9 while it retries."""
    from sendguard.store import Store

    server_env = central.env_for(tmp_path, "server")
    server_env["SENDGUARD_AUDIT_KEY"] = central.AUDIT_KEY
    (tmp_path / "server" / "policy.toml").write_text(SERVER_POLICY, encoding="utf-8")
    ready = tmp_path / "ready.json"
    procs: list[Any] = []
    relay_url = f"smtp://127.0.0.1:{relay.proxy.port}?security=none"

    def start_server(bind: str) -> str:
        ready.unlink(missing_ok=True)
        p = central.Proc(["server", "--database", pg_url, "--bind", bind, "--ready-file", str(ready),
                          "--workers", "2", "--threads", "8", "--mail-relay", relay_url,
                          "--mail-from", "sendguard@example.co.jp"], server_env, tmp_path / "server.log").start()
        procs.append(p)
        url = wait_for(lambda: ready.exists() and json.loads(ready.read_text())["url"], timeout=30)
        wait_for(lambda: central._healthy(url), timeout=30)
        return str(url)

    store = Store(pg_url.replace("postgresql://", "postgresql+psycopg://"), audit_key=central.AUDIT_KEY.encode())

    def on_server(item_id: str) -> Any:
        with store.engine.connect() as conn:
            return conn.execute(select(outbox.c.state, outbox.c.attempts).where(outbox.c.id == item_id)).first()

    sender_env = central.env_for(tmp_path, "sender")
    try:
        url = start_server("127.0.0.1:0")
        port = url.rsplit(":", 1)[1]
        token = central.cli(server_env, "server", "token", "issue", "--database", pg_url,
                            "--user", "taro@example.co.jp").stdout.strip()
        boss = CentralClient(url, central.cli(server_env, "server", "token", "issue", "--database", pg_url,
                                              "--user", "boss@example.co.jp").stdout.strip())
        (Path(sender_env["SENDGUARD_HOME"]) / "policy.toml").write_text(central.HELPER_POLICY, encoding="utf-8")
        central.cli(sender_env, "server", "connect", url, "--token", token)
        procs.append(central.Proc(["serve", "--no-window", "--smtp-port", "0", "--api-port", "0"], sender_env,
                                  tmp_path / "sender.log").start())
        sender_home = Path(sender_env["SENDGUARD_HOME"])
        runtime = wait_for(lambda: central._runtime(sender_home), timeout=30)
        msg = make_message(subject="社外秘 見積", body="社外秘の資料です。")
        msg["Message-ID"] = email.utils.make_msgid(domain="example.co.jp")
        smtp_send(runtime["smtp_port"], msg, ["a@partner.example"])
        item_id = wait_for(lambda: central._held_id(sender_env), timeout=30)
        central.cli(sender_env, "queue", "confirm", item_id)
        wait_for(lambda: on_server(item_id), timeout=30)
        wait_for(lambda: relay.notices(item_id), timeout=30)

        relay.proxy.cut()
        boss.decide(item_id, "approve", "boss@example.co.jp", "OK")
        wait_for(lambda: tuple(on_server(item_id)) == ("failed", 1), timeout=30)
        procs[0].kill9()  # between two attempts (the next one is seconds away)
        relay.proxy.heal()
        start_server(f"127.0.0.1:{port}")
        wait_for(lambda: central._state(sender_env, item_id) == "sent", timeout=90)
        time.sleep(3.0)  # time enough for a second copy to show up, if there were one
        [(_f, rcpts, data)] = relay.released(msg["Message-ID"])
        with store.engine.connect() as conn:
            kept = conn.execute(select(outbox.c.final_raw).where(outbox.c.id == item_id)).scalar_one()
        assert rcpts == ["a@partner.example"] and lf(data) == lf(kept)  # the copy handed over and approved
        assert not any(p.name == f"sendguard-{item_id}" for p in central.maildir(sender_home))
    finally:
        for p in reversed(procs):
            p.stop()
    try:
        events = [r["event"] for r in audit.records(store, item_id)]
        assert events.count("approved") == 1 and events.count("released") == 1 and events.count("failed") >= 1
        assert audit.verify(store) == []
    finally:
        store.close()
    sender_log = [json.loads(line) for line in central.cli(sender_env, "audit", "export").stdout.splitlines()]
    local = [r["event"] for r in sender_log if r["item_id"] == item_id]
    assert local.count("released_by_server") == 1 and "released" not in local


def test_auto_bcc_added_at_confirmation_is_shown_to_the_approver_and_sent(
        home: Path, server: Server, relay: Relay) -> None:
    from sendguard.service import Helper

    central.connect_helper(home, server.url, server.token("taro@example.co.jp"))
    with (home / "policy.toml").open("a", encoding="utf-8") as fh:
        fh.write('\n[[rules.auto_cc]]\nbcc = ["archive@example.co.jp"]\n')
    helper = Helper(home)
    helper.sync.long_poll = 1.0
    helper.start(smtp=True, smtp_port=0)
    try:
        item_id, mid, content = held(helper)
        wait_for(lambda: handed_over(helper, item_id), timeout=20)
        notice = wait_for(lambda: relay.notices(item_id), timeout=20)[0]
        link = re.search(r"(https?://\S+/approve/\S+)", notice.get_content()).group(1)  # type: ignore[union-attr]
        page = requests.Session().get(link, timeout=10)
        assert "archive@example.co.jp" in page.text  # the approver sees the added Bcc
        CentralClient(server.direct, server.token("boss@example.co.jp")).decide(item_id, "approve",
                                                                               "boss@example.co.jp", "OK")
        [(_f, rcpts, _data)] = wait_for(lambda: relay.released(mid), timeout=20)
        assert sorted(rcpts) == ["a@partner.example", "archive@example.co.jp"]
    finally:
        helper.stop()


def test_the_approval_page_shows_every_address_even_one_the_check_does_not_list(pg_url: str, tmp_path: Path) -> None:
    """With the helper releasing (the default), a changed helper could hand over a check that hides an
    address its envelope has: the approver is shown it all the same."""
    policy = tmp_path / "helper-release.toml"
    policy.write_text(central.SERVER_POLICY, encoding="utf-8")
    s = central.ThreadServer(pg_url, policy)
    try:
        token = s.token("taro@example.co.jp")
        msg = make_message(subject="見積", body="資料です。")
        item = dataclasses.replace(
            item_from_json({"id": "hidden1", "state": "awaiting_approval", "from": "taro@example.co.jp",
                                    "recipients": [{"address": "a@partner.example", "field": "to", "flags": []}]}),
            envelope_to=["a@partner.example", "evil@attacker.example"], message_id="<hidden1@example.co.jp>")
        r = requests.post(f"{s.url}/api/v1/central/requests", headers={"Authorization": f"Bearer {token}"},
                          json=_payload(item, msg.as_bytes()), timeout=10)
        assert r.status_code == 201, r.text
        link = wait_for(lambda: central.approval_link_in(s.mail, "hidden1"), timeout=20)
        page = requests.Session().get(link, timeout=10)
        assert page.status_code == 200 and "evil@attacker.example" in page.text
        assert r.json()["release"] == "helper"
    finally:
        s.stop()


def _card_list(from_addr: str, to_header: bool = True) -> bytes:
    """Card numbers in an attached CSV: the server's own policy holds it for approval (personal_data)."""
    msg = email.message.EmailMessage()
    msg["From"] = from_addr
    if to_header:
        msg["To"] = "a@partner.example"
    msg["Subject"] = "顧客カード情報一覧"
    msg["Message-ID"] = "<cards-1@example.co.jp>"
    msg.set_content("来週の打ち合わせの件です。一覧を添付します。")
    msg.add_attachment(b"name,card\nYamada,4111 1111 1111 1111\nSato,5555 5555 5555 4444\n",
                       maintype="text", subtype="csv", filename="customers.csv")
    return msg.as_bytes()


def _hand_over(server: Server, token: str, item_id: str, raw: bytes, envelope_from: str,
               check: dict[str, Any] | None, subject: str = "週報") -> requests.Response:
    import base64

    return requests.post(f"{server.direct}/api/v1/central/requests", headers={"Authorization": f"Bearer {token}"},
                         json={"id": item_id, "sender": "taro@example.co.jp", "envelope_from": envelope_from,
                               "subject": subject, "message_id": "<cards-1@example.co.jp>",
                               "recipients": ["a@partner.example"], "check": check,
                               "decision": {"removed_attachments": ["1"]}, "raw": base64.b64encode(raw).decode(),
                               "sha256": hashlib.sha256(raw).hexdigest()}, timeout=10)


def test_the_server_shows_and_sends_only_what_it_checked_itself(server: Server, relay: Relay) -> None:
    """taro's own code hands over a card list with a check, a subject and a decision that hide it (and, first,
    as the CEO). The server reads the message itself: it refuses another sender, and the approver's email and
    page show the real subject, sender, attachment and body, which is exactly what the relay then gets."""
    token = server.token("taro@example.co.jp")
    honest = server.service.outbox.evaluate(_card_list("taro@example.co.jp"), "taro@example.co.jp",
                                            ["a@partner.example"]).to_json()
    forged = {**honest, "attachments": [], "subject": "週報",
              "verdict": {"action": "approve", "approvers": [], "reasons": [
                  {"rule": "keyword", "action": "approve", "target": "社外秘", "message": "keyword 社外秘 in the body"}]}}
    # as the CEO: by the envelope, then by the From header alone
    for item_id, from_addr, envelope in (("ceo1", "ceo@example.co.jp", "ceo@example.co.jp"),
                                         ("ceo2", "ceo@example.co.jp", "taro@example.co.jp"),
                                         ("ceo3", "Taro <taro@example.co.jp>", "ceo@example.co.jp"),
                                         # the display name shows the CEO's address (full-width ＠)
                                         ("ceo4", '"ceo＠example.co.jp" <taro@example.co.jp>', "taro@example.co.jp")):
        r = _hand_over(server, token, item_id, _card_list(from_addr), envelope, forged)
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_sender", (item_id, r.text)
        assert "ceo@example.co.jp" in r.json()["error"]["message"] and "taro@example.co.jp" in \
            r.json()["error"]["message"]
        with pytest.raises(Exception, match="no message"):
            server.service.outbox.get(item_id)
        refused = [x["data"] for x in audit.records(server.service.store, item_id) if x["event"] == "approval_refused"]
        assert refused and "ceo@example.co.jp" in refused[0]["reason"]
    # as himself, but hiding what it is (no To header either: the body must still be previewed)
    raw = _card_list("Taro Yamada <taro@example.co.jp>", to_header=False)
    r = _hand_over(server, token, "cards1", raw, "taro@example.co.jp", forged)
    assert r.status_code == 201, r.text
    kept = server.service.outbox.get("cards1")
    assert kept.subject == "顧客カード情報一覧" and [a.filename for a in kept.check.attachments] == ["customers.csv"]
    assert "personal_data" in [x.rule for x in kept.check.verdict.reasons]
    assert "removed_attachments" not in (kept.decision or {})
    notice = wait_for(lambda: relay.notices("cards1"), timeout=20)[0]
    text = notice.get_content()
    assert "顧客カード情報一覧" in str(notice["Subject"]) and "週報" not in str(notice["Subject"])
    assert "customers.csv" in text and "週報" not in text
    link = re.search(r"(https?://\S+/approve/\S+)", text).group(1)  # type: ignore[union-attr]
    browser = requests.Session()
    page = browser.get(link, timeout=10)
    assert page.status_code == 200
    assert "顧客カード情報一覧" in page.text and "customers.csv" in page.text and "週報" not in page.text
    assert "来週の打ち合わせの件です" in page.text  # the preview, although the message has no To/Cc
    assert "taro@example.co.jp" in page.text and "Taro Yamada" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = browser.post(f"{server.direct}/approve/cards1", data={"csrf": csrf, "decision": "approve"},
                        headers={"Origin": server.direct}, timeout=10)
    assert done.status_code == 200, done.text
    [(mail_from, rcpts, data)] = wait_for(lambda: relay.released("<cards-1@example.co.jp>"), timeout=20)
    out = email.message_from_bytes(data, policy=email.policy.default)
    assert mail_from == "taro@example.co.jp" and rcpts == ["a@partner.example"]
    assert out["From"] == "Taro Yamada <taro@example.co.jp>" and out["Subject"] == "顧客カード情報一覧"
    assert [p.get_filename() for p in out.iter_attachments()] == ["customers.csv"]  # what the approver saw
    assert lf(data).rstrip(b"\n") == lf(raw).rstrip(b"\n")  # byte for byte (SMTP may end it with a line end)


def test_the_approval_page_says_when_the_message_has_no_from_header(server: Server, relay: Relay) -> None:
    """The page never shows the envelope sender as if it were the From the recipients will see."""
    raw = b"".join(line for line in _card_list("taro@example.co.jp").splitlines(keepends=True)
                   if not line.startswith(b"From:"))
    check = server.service.outbox.evaluate(raw, "taro@example.co.jp", ["a@partner.example"]).to_json()
    r = _hand_over(server, server.token("taro@example.co.jp"), "nofrom1", raw, "taro@example.co.jp", check)
    assert r.status_code == 201, r.text
    notice = wait_for(lambda: relay.notices("nofrom1"), timeout=20)[0]
    link = re.search(r"(https?://\S+/approve/\S+)", notice.get_content()).group(1)  # type: ignore[union-attr]
    page = requests.Session().get(link, timeout=10)
    assert page.status_code == 200 and "(no From header; envelope sender taro@example.co.jp)" in page.text
