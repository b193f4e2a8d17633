"""The fault matrix (issue #16): every connector × every way its peer can fail, through the real helper.

Each cell runs one in-process helper (real SMTP submission, real worker thread, real connector and client
library against a local stand-in speaking the wire format), injects one fault at one point, lifts it, and
checks the promise: every message exactly once in the peer's Sent Items (an SMTP relay, which cannot be
asked, ends in ``needs_attention`` whenever the outcome is unknown — never re-sent), nothing lost, nothing
sent while the fault lasted where it must not be, the helper running and taking mail after recovery, and
no restart in between.

Faults (rows): ``down_at_start`` (peer unreachable when the helper starts and mail comes in),
``drop_before`` (connection lost as the send request goes out, before the server acts on it),
``drop_after`` (the server carried the send out, the answer was lost), ``down_in_reconcile`` (the
process died right after the transport sent; on restart the peer is down while SendGuard asks),
``throttled`` (429 / busy with Retry-After, longer than is waited out in place), ``slow`` (every answer
later than the client's timeout; the work is done), ``revoked`` (sign-in refused: password changed,
refresh token revoked; the user is told how to sign in again, then does), ``cert_changed`` (the peer
presents a certificate from another CA; TLS peers only).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_message, smtp_send, wait_for

from sendguard import certs, secrets
from sendguard import config as config_mod
from sendguard.mailboxes.graph import MsalTokenSource
from sendguard.service import Helper
from sendguard.submission import SubmissionServer
from tests.fakes.ews_server import FakeEWS
from tests.fakes.gmail_server import READONLY, SEND, FakeGoogle
from tests.fakes.graph_server import FakeGraph

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

ROOT = Path(__file__).resolve().parents[1]
FAST_RETRY = "[retry]\nbase_seconds = 0.2\nmax_seconds = 1.0\ninline_wait_seconds = 0.2\n"
TIMEOUT = 2  # the connectors' network timeout in these tests, seconds
SLOW = 3.5  # how late a slow peer answers
FINAL = ("sent", "needs_attention", "cancelled")


# ---------------------------------------------------------------------------------------------- peers
class Peer:
    """One connector's stand-in and the fault switches the matrix needs."""

    kind = ""
    address = ""  # the sender whose mail goes through this peer ("" = the default route)
    unknown_outcome_attention = False  # True: an unknown outcome ends in needs_attention (SMTP relay)
    faults: tuple[str, ...] = ()

    def start(self, home: Path, monkeypatch: pytest.MonkeyPatch) -> None: ...
    def stop(self) -> None: ...
    def sent(self) -> list[str]:
        """Message-IDs in the peer's Sent Items (one entry per copy that went out)."""
        raise NotImplementedError
    def down(self) -> None: ...
    def up(self) -> None: ...
    def hits(self) -> int:
        """Requests the peer refused or delayed since the fault began (proof the fault was met)."""
        return 0
    def drop(self, when: str) -> None: ...
    def throttle(self) -> None: ...
    def slow(self) -> None: ...
    def revoke(self) -> None: ...
    def sign_in_again(self) -> None: ...
    def change_cert(self) -> None: ...
    def restore_cert(self) -> None: ...


class GraphPeer(Peer):
    kind = "graph"
    address = "user@contoso.example"
    faults = ("down_at_start", "drop_before", "drop_after", "down_in_reconcile", "throttled", "slow", "revoked",
              "cert_changed")

    def start(self, home, monkeypatch):
        self.fake = FakeGraph(address=self.address).__enter__()
        self.account = config_mod.Account("m365", "graph", self.address, {
            "tenant": self.fake.tenant, "client_id": self.fake.client_id, "authority": self.fake.base,
            "graph_endpoint": self.fake.graph_endpoint, "ca_bundle": str(self.fake.ca_file), "timeout": TIMEOUT})
        config_mod.save_account(self.account, home / "config.toml")
        self.sign_in_again()

    def stop(self):
        self.fake.__exit__(None, None, None)

    def sent(self):
        return [s.internet_message_id for s in self.fake.sends]

    def down(self):
        self.fake.outage.down("drop")

    def up(self):
        self.fake.outage.up()
        self.fake.failures.clear()

    def hits(self):
        return self.fake.outage.hits + len([r for r in self.fake.requests if "sendMail" in r])

    def drop(self, when):
        self.fake.fail_next("POST /v1.0/me/sendMail", "drop" if when == "before" else "drop_after")

    def throttle(self):
        self.fake.fail_next("POST /v1.0/me/sendMail", "429", times=4, retry_after=1)

    def slow(self):
        self.fake.outage.slow(SLOW)

    def revoke(self):
        self.fake.revoke()

    def sign_in_again(self):
        MsalTokenSource.for_account(self.account).sign_in(device_code=True, echo=lambda line: None)

    def change_cert(self):
        self.fake.change_certificate()

    def restore_cert(self):
        self.fake.restore_certificate()


class EwsPeer(Peer):
    kind = "exchange"
    address = "user@example.co.jp"
    faults = ("down_at_start", "drop_before", "drop_after", "down_in_reconcile", "throttled", "slow", "revoked")

    def start(self, home, monkeypatch):
        self.fake = FakeEWS(address=self.address).__enter__()
        self.account = config_mod.Account("work", "exchange", self.address, {
            "server": self.fake.url, "username": "user", "timeout": TIMEOUT})
        config_mod.save_account(self.account, home / "config.toml")
        secrets.put(self.account.secret_key("password"), "secret")

    def stop(self):
        self.fake.stop()

    def sent(self):
        return [s.message_id for s in self.fake.sends]

    def down(self):
        self.fake.outage.down("drop")

    def up(self):
        self.fake.outage.up()
        self.fake.failures.clear()

    def hits(self):
        return self.fake.outage.hits + self.fake.requests.count("CreateItem")

    def drop(self, when):
        self.fake.fail_next("CreateItem", "drop" if when == "before" else "drop_after")

    def throttle(self):
        self.fake.fail_next("CreateItem", "http503", times=4, retry_after=1)

    def slow(self):
        self.fake.outage.slow(SLOW)

    def revoke(self):
        self.fake.password = "changed-by-admin"

    def sign_in_again(self):
        secrets.put(self.account.secret_key("password"), "changed-by-admin")


class GmailPeer(Peer):
    kind = "gmail"
    address = "alice@example.com"
    faults = ("down_at_start", "drop_before", "drop_after", "down_in_reconcile", "throttled", "slow", "revoked")

    def start(self, home, monkeypatch):
        monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake token endpoint is plain http
        self.fake = FakeGoogle(email=self.address).__enter__()
        self.account = config_mod.Account("gmail", "gmail", self.address, {
            "client_id": self.fake.client_id, "token_uri": self.fake.token_uri, "api_endpoint": self.fake.url,
            "scopes": [SEND, READONLY], "gmail_account": self.address, "backoff_seconds": 0.05,
            "timeout_seconds": TIMEOUT})
        config_mod.save_account(self.account, home / "config.toml")
        secrets.put(self.account.secret_key("client_secret"), self.fake.client_secret)
        self.sign_in_again()

    def stop(self):
        self.fake.stop()

    def sent(self):
        out = []
        for s in self.fake.sends:
            head = email.message_from_bytes(s["raw"], policy=email.policy.default)
            out.append(str(head.get("Message-ID", "")).strip())
        return out

    def down(self):
        self.fake.outage.down("drop")

    def up(self):
        self.fake.outage.up()
        self.fake.faults.clear()

    def hits(self):
        return self.fake.outage.hits + self.fake.route_count("messages.send")

    def drop(self, when):
        # Gmail: a 500 before doing anything, or after sending (the answer lost)
        self.fake.fail("messages.send", 500, after=(when == "after"))

    def throttle(self):
        self.fake.fail("messages.send", 429, reason="rateLimitExceeded", message="User-rate limit exceeded.",
                       times=4, headers={"Retry-After": "1"})

    def slow(self):
        self.fake.outage.slow(SLOW)

    def revoke(self):
        self.fake.revoke_all()

    def sign_in_again(self):
        token = self.fake.issue_refresh_token([SEND, READONLY])
        secrets.put(self.account.secret_key("refresh_token"), token)


class _Relay:
    """An SMTP relay (aiosmtpd) with the faults a real one shows."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.mode: str | None = None
        self.remaining = 0
        self.hits = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mode == "drop_before" and self.remaining > 0:
            self.remaining -= 1
            self.hits += 1
            return "421 4.3.2 Service shutting down, closing channel"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.mode == "throttled" and self.remaining > 0:
            self.remaining -= 1
            self.hits += 1
            return "451 4.7.1 Too many messages, slow down"
        self.received.append(envelope.original_content or envelope.content)
        if self.mode == "slow":
            self.hits += 1
            await asyncio.sleep(SLOW)
        if self.mode == "drop_after" and self.remaining > 0:
            self.remaining -= 1
            self.hits += 1
            server.transport.close()
        return "250 2.0.0 queued"


def _authenticator(expected: dict[str, bytes]):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and data.login == b"taro" and data.password == expected["pw"]
        return AuthResult(success=ok, handled=False)

    return check


class SmtpPeer(Peer):
    kind = "smtp"
    unknown_outcome_attention = True
    faults = ("down_at_start", "drop_before", "drop_after", "down_in_reconcile", "throttled", "slow", "revoked",
              "cert_changed")

    def start(self, home, monkeypatch):
        self.dir = home.parent / "relay"
        paths = certs.ensure_certificates(self.dir)
        self.cert, self.key = paths.server_cert, paths.server_key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, self.key)
        self.relay = _Relay()
        self.password = {"pw": b"pa55word"}
        self.port = 0
        self.server: SubmissionServer | None = None
        self.up()
        self.account = config_mod.Account("relay", "smtp", "", {
            "host": "127.0.0.1", "port": self.port, "security": "starttls", "username": "taro",
            "cafile": str(paths.ca_cert), "timeout": TIMEOUT})
        config_mod.save_account(self.account, home / "config.toml")
        secrets.put(self.account.secret_key("password"), "pa55word")

    def stop(self):
        if self.server:
            self.server.stop()

    def sent(self):
        return [str(email.message_from_bytes(raw).get("Message-ID", "")).strip() for raw in self.relay.received]

    def down(self):
        if self.server:
            self.server.stop()
            self.server = None
            self.relay.hits += 1

    def up(self):
        self.relay.mode = None
        if self.server is None:
            options = dict(auth_required=True, authenticator=_authenticator(self.password),
                           auth_exclude_mechanism=["LOGIN"], tls_context=self.context, require_starttls=True)
            self.server = SubmissionServer(self.relay, "127.0.0.1", self.port, **options).start()
            self.port = self.server.port

    def hits(self):
        return self.relay.hits

    def drop(self, when):
        self.relay.mode, self.relay.remaining = f"drop_{when}", 1

    def throttle(self):
        self.relay.mode, self.relay.remaining = "throttled", 4

    def slow(self):
        self.relay.mode = "slow"

    def revoke(self):
        self.password["pw"] = b"changed-by-admin"
        self.relay.hits += 1

    def sign_in_again(self):
        secrets.put(self.account.secret_key("password"), "changed-by-admin")

    def change_cert(self):
        other = certs.ensure_certificates(self.dir / "other")  # another CA's certificate
        self.context.load_cert_chain(other.server_cert, other.server_key)
        self.relay.hits += 1

    def restore_cert(self):
        self.context.load_cert_chain(self.cert, self.key)


class MaildirPeer(Peer):
    """The embedded default sink; "down" is its folder gone (an unmounted share, replaced by a file)."""

    kind = "maildir"
    faults = ("down_at_start", "down_in_reconcile")

    def start(self, home, monkeypatch):
        self.path = home / "sent"
        self.moved = home / "sent.away"

    def sent(self):
        out = []
        for sub in ("new", "cur"):
            folder = self.path / sub
            for file in sorted(folder.iterdir()) if folder.is_dir() else []:
                out.append(str(email.message_from_bytes(file.read_bytes()).get("Message-ID", "")).strip())
        return out

    def down(self):
        if self.path.exists():
            self.path.rename(self.moved)
        self.path.write_text("not a folder")

    def up(self):
        if self.path.is_file():
            self.path.unlink()
        if self.moved.exists():
            self.moved.rename(self.path)

    def hits(self):
        return 1 if self.path.is_file() else 0


PEERS = {"maildir": MaildirPeer, "smtp": SmtpPeer, "exchange": EwsPeer, "graph": GraphPeer, "gmail": GmailPeer}
CELLS = [(kind, fault) for kind, cls in PEERS.items() for fault in cls.faults]


# ---------------------------------------------------------------------------------------------- harness
class Cell:
    def __init__(self, home: Path, peer: Peer, start_helper):
        self.home, self.peer, self._start = home, peer, start_helper
        self.helper: Helper | None = None
        self.counter = 0
        self.ids: list[str] = []  # Message-IDs handed in

    def start(self) -> Helper:
        self.helper = self._start()
        return self.helper

    def message(self) -> tuple[str, bytes]:
        self.counter += 1
        msgid = f"<fm{self.counter}.{time.monotonic_ns()}@{self.peer.kind}.test>"
        sender = self.peer.address or "taro@example.co.jp"
        return msgid, bytes(make_message(to="a@partner.example", sender=sender, message_id=msgid,
                                         subject=f"matrix {self.counter}"))

    def hand_in(self, n: int = 2) -> list[str]:
        """Mail in over SMTP, as a mail client hands it over (the 250 means SendGuard holds it)."""
        assert self.helper is not None and self.helper.smtp is not None
        out = []
        for _ in range(n):
            msgid, raw = self.message()
            sender = self.peer.address or "taro@example.co.jp"
            assert smtp_send(self.helper.smtp.port, raw, ["a@partner.example"], sender=sender) == {}
            out.append(msgid)
        self.ids += out
        return out

    def items(self) -> dict[str, Any]:
        assert self.helper is not None
        return {i.message_id: i for i in self.helper.outbox.list(None)}

    def settled(self, ids: list[str]) -> bool:
        items = self.items()
        return all(m in items and items[m].state in FINAL for m in ids)

    def finish(self, timeout: float = 120) -> None:
        """Every message settled exactly once; an unknown outcome only where the peer cannot be asked."""
        try:
            wait_for(lambda: self.settled(self.ids), timeout=timeout)
        except AssertionError:  # say where each message stands, and why
            items = self.items()
            raise AssertionError("not settled: " + "; ".join(
                f"{m}: {items[m].state if m in items else 'missing'}"
                f" ({items[m].last_error if m in items else ''}, attempts {items[m].attempts if m in items else 0})"
                for m in self.ids)) from None
        items = self.items()
        sent = self.peer.sent()
        for m in self.ids:
            state = items[m].state
            if state == "needs_attention":
                assert self.peer.unknown_outcome_attention, (m, items[m].last_error)
                assert sent.count(m) <= 1, (m, sent)
                # the user checks the relay's log and settles it: it went out
                self.helper.outbox.resolve(items[m].id, sent=sent.count(m) == 1)
            else:
                assert state == "sent", (m, state, items[m].last_error)
        wait_for(lambda: self.settled(self.ids) and all(
            i.state == "sent" for m, i in self.items().items() if m in self.ids), timeout=timeout)
        sent = self.peer.sent()
        assert {m: sent.count(m) for m in self.ids} == {m: 1 for m in self.ids}, sent  # no loss, no double
        # the helper is still running and takes (and sends) new mail: recovered without a restart
        assert self.helper._worker is not None and self.helper._worker.is_alive()
        (after,) = self.hand_in(1)
        wait_for(lambda: self.items().get(after) is not None and self.items()[after].state == "sent",
                 timeout=timeout)
        assert self.peer.sent().count(after) == 1

    def crash_after_transport(self) -> str:
        """A message released by another process that is killed right after the transport sent it."""
        msgid, raw = self.message()
        sender = self.peer.address or "taro@example.co.jp"
        h = Helper(self.home)
        try:
            item = h.outbox.submit(raw, sender, ["a@partner.example"])
            assert item.state == "confirmed", (item.state, item.last_error)
        finally:
            h.stop()
        script = "import sys; from sendguard.service import Helper; Helper().outbox.release(sys.argv[1])"
        env = dict(os.environ, SENDGUARD_CRASH_AT="release.after_transport")
        crashed = subprocess.run([sys.executable, "-c", script, item.id], env=env, capture_output=True,
                                 timeout=90, cwd=ROOT)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
        assert self.peer.sent().count(msgid) == 1  # it did go out before the crash
        self.ids.append(msgid)
        return msgid


@pytest.fixture
def cell(request, home, monkeypatch, helper):
    kind = request.param
    (home / "policy.toml").write_text('[organization]\ninternal_domains = ["example.co.jp"]\n\n'
                                      '[confirm]\nwhen = "never"\n')
    (home / "config.toml").write_text(FAST_RETRY)
    peer = PEERS[kind]()
    peer.start(home, monkeypatch)
    c = Cell(home, peer, lambda: helper())
    yield c
    if c.helper is not None:
        c.helper.stop()
    with contextlib.suppress(Exception):
        peer.up()
    peer.stop()
    with contextlib.suppress(Exception):
        shutil.rmtree(home.parent / "relay", ignore_errors=True)


def _wait_hit(cell: Cell, before: int = 0) -> None:
    wait_for(lambda: cell.peer.hits() > before, timeout=90)


def _nothing_sent(cell: Cell, ids: list[str]) -> None:
    sent = cell.peer.sent()
    assert not any(m in sent for m in ids), sent
    items = cell.items()
    assert all(items[m].state not in ("sent", "cancelled") for m in ids)


@pytest.mark.parametrize("cell,fault", CELLS, indirect=["cell"], ids=[f"{k}-{f}" for k, f in CELLS])
def test_fault_matrix(cell: Cell, fault: str) -> None:
    peer = cell.peer
    if fault == "down_at_start":
        peer.down()
        cell.start()
        ids = cell.hand_in(2)  # the helper started and takes mail although its peer is down
        _wait_hit(cell)
        wait_for(lambda: all(cell.items()[m].last_error for m in ids), timeout=90)  # the user is told why
        _nothing_sent(cell, ids)
        peer.up()
    elif fault in ("drop_before", "drop_after"):
        cell.start()
        peer.drop(fault.split("_")[1])
        cell.hand_in(2)
    elif fault == "down_in_reconcile":
        cell.crash_after_transport()
        peer.down()
        h = cell.start()
        if not peer.unknown_outcome_attention:
            wait_for(lambda: any((i.last_error or "").startswith("Waiting for ") for i in h.outbox.list(["releasing"])),
                     timeout=90)
            time.sleep(1.0)  # several rounds of asking while down
            (waiting,) = h.outbox.list(["releasing"])
            assert waiting.summary()["waiting_for"].startswith("Waiting for ")
        peer.up()
    elif fault == "throttled":
        cell.start()
        peer.throttle()
        cell.hand_in(2)
        _wait_hit(cell)
    elif fault == "slow":
        cell.start()
        peer.slow()
        ids = cell.hand_in(1)
        _wait_hit(cell)
        wait_for(lambda: cell.items()[ids[0]].state in ("failed", "needs_attention"), timeout=90)
        peer.up()
    elif fault == "revoked":
        cell.start()
        peer.revoke()
        ids = cell.hand_in(2)
        wait_for(lambda: all(cell.items()[m].state == "failed" and cell.items()[m].last_error for m in ids),
                 timeout=90)
        for m in ids:  # the user is told how to sign in again; nothing went out
            text = cell.items()[m].last_error.lower()
            assert "sign in again" in text or "reconnect" in text or "password" in text, text
        _nothing_sent(cell, ids)
        peer.sign_in_again()
    elif fault == "cert_changed":
        cell.start()
        peer.change_cert()
        ids = cell.hand_in(1)
        wait_for(lambda: cell.items()[ids[0]].state == "failed", timeout=90)
        assert "certificate" in (cell.items()[ids[0]].last_error or "").lower(), cell.items()[ids[0]].last_error
        time.sleep(1.0)  # asked again meanwhile: still refused, still nothing sent
        _nothing_sent(cell, ids)
        peer.restore_cert()
    else:  # pragma: no cover - a typo in CELLS
        raise AssertionError(fault)
    cell.finish()


def test_matrix_covers_every_connector_and_fault() -> None:
    """The matrix as the issue asks for it: each connector × each fault (certificates where TLS is used)."""
    assert set(PEERS) == {"maildir", "smtp", "exchange", "graph", "gmail"}
    for kind in ("smtp", "exchange", "graph", "gmail"):
        assert {"down_at_start", "drop_before", "drop_after", "down_in_reconcile", "throttled", "slow",
                "revoked"} <= set(PEERS[kind].faults), kind
    assert "cert_changed" in PEERS["graph"].faults and "cert_changed" in PEERS["smtp"].faults

