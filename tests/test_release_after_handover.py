"""Once a transport has taken a message, nothing after that point may send it again (fault audit).

1. SMTP relay: the reply to the end of DATA decides. A relay that answered 250 and then answers QUIT with
   421/554, drops the connection at QUIT or never answers it has the message: ``sent``, one copy. A
   refusal of DATA stays a refusal whatever QUIT gets.
2. Gmail without a way to look in Sent (``reconcile = "off"``, only gmail.send): a send whose answer was
   lost (5xx after Gmail sent it) may have gone out and cannot be asked about, so it goes to
   ``needs_attention``, never out a second time. An answer that says nothing was sent is still retried.

Real helper (SMTP submission, worker, connector, smtplib / google-api-python-client) against a small
socket relay in this file and the fake Google of ``tests/fakes``.
"""

from __future__ import annotations

import email
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_message, smtp_send, wait_for

from sendguard import certs, secrets
from sendguard import config as config_mod
from tests.fakes.gmail_server import SEND, FakeGoogle

pytestmark = pytest.mark.slow

FAST_RETRY = "[retry]\nbase_seconds = 0.2\nmax_seconds = 1.0\ninline_wait_seconds = 0.2\n"
POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n\n[confirm]\nwhen = "never"\n'
FINAL = ("sent", "needs_attention", "cancelled")
PORTS = range(31000, 31100)  # the relay's port: the first free one here


# ---------------------------------------------------------------------------------------------- SMTP relay
class QuitRelay(socketserver.ThreadingTCPServer):
    """An SMTP relay speaking the wire format by hand, to answer QUIT as no library server would.

    ``quit``: the answer to the first QUIT ("421 ...", "554 ...", ``drop`` = close without a word,
    ``silent`` = never answer); later QUITs get 221. ``data_reply``: the answer to the end of the first
    DATA (later ones 250). ``security``: ``none``, ``starttls`` or ``ssl`` (implicit TLS)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, quit: str, security: str = "none", data_reply: str = "250 2.0.0 queued",
                 context: ssl.SSLContext | None = None):
        self.quit, self.security, self.data_reply, self.context = quit, security, data_reply, context
        self.received: list[bytes] = []
        self.quits: list[str] = []
        self.datas = 0
        self.lock = threading.Lock()
        for port in PORTS:
            try:
                super().__init__(("127.0.0.1", port), _RelayHandler)
                break
            except OSError:
                continue
        else:
            raise RuntimeError(f"no free port in {PORTS}")
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def copies(self, msgid: str) -> int:
        return sum(1 for raw in self.received
                   if str(email.message_from_bytes(raw).get("Message-ID", "")).strip() == msgid)


class _RelayHandler(socketserver.BaseRequestHandler):
    server: QuitRelay

    def handle(self) -> None:
        relay = self.server
        sock: socket.socket = self.request
        sock.settimeout(10)
        if relay.security == "ssl":
            assert relay.context is not None
            sock = relay.context.wrap_socket(sock, server_side=True)
        rfile, wfile = sock.makefile("rb"), sock.makefile("wb", buffering=0)

        def say(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")

        say("220 relay.test ESMTP")
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip().upper()
            if cmd.startswith("EHLO"):
                say("250-relay.test" if relay.security == "starttls" else "250 relay.test")
                if relay.security == "starttls":
                    say("250 STARTTLS")
            elif cmd.startswith("HELO"):
                say("250 relay.test")
            elif cmd == "STARTTLS" and relay.context is not None:
                say("220 2.0.0 ready for TLS")
                sock = relay.context.wrap_socket(sock, server_side=True)
                rfile, wfile = sock.makefile("rb"), sock.makefile("wb", buffering=0)
            elif cmd.startswith(("MAIL", "RCPT", "RSET", "NOOP")):
                say("250 OK")
            elif cmd == "DATA":
                say("354 go ahead")
                data = b""
                while (chunk := rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                with relay.lock:
                    relay.datas += 1
                    reply = relay.data_reply if relay.datas == 1 else "250 2.0.0 queued"
                    if reply.startswith("2"):
                        relay.received.append(data)
                say(reply)
            elif cmd == "QUIT":
                with relay.lock:
                    answer = relay.quit if not relay.quits else "221 bye"
                    relay.quits.append(answer)
                if answer == "drop":
                    return
                if answer == "silent":  # the client gives up after its timeout and closes
                    while rfile.readline():
                        pass
                    return
                say(answer)
                return
            else:
                say("502 5.5.2 not implemented")


@pytest.fixture
def smtp_home(home: Path) -> Path:
    (home / "policy.toml").write_text(POLICY)
    (home / "config.toml").write_text(FAST_RETRY)
    return home


def use_relay(home: Path, relay: QuitRelay, cafile: Path | None = None) -> None:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": relay.port, "security": relay.security, "timeout": 1}
    if cafile:
        settings["cafile"] = str(cafile)
    config_mod.save_account(config_mod.Account("relay", "smtp", "", settings), home / "config.toml")


counter = [0]


def hand_in(h: Any, sender: str) -> str:
    """One message in over SMTP, as a mail client hands it over; returns its Message-ID."""
    counter[0] += 1
    msgid = f"<handover{counter[0]}.{time.monotonic_ns()}@sendguard.test>"
    raw = bytes(make_message(to="a@partner.example", sender=sender, message_id=msgid, subject="handover"))
    assert smtp_send(h.smtp.port, raw, ["a@partner.example"], sender=sender) == {}
    return msgid


def settled(h: Any, msgid: str, timeout: float = 60) -> Any:
    """The item once it reaches a final state; a little later, so a second send would have happened."""
    item = wait_for(lambda: next((i for i in h.outbox.list(None) if i.message_id == msgid
                                  and i.state in FINAL), None), timeout=timeout)
    time.sleep(1.0)  # FAST_RETRY: a retry would be due well within this
    return h.outbox.get(item.id)


@pytest.mark.parametrize("security,quit", [
    ("none", "421 4.3.2 Service shutting down"),
    ("none", "554 5.3.0 closing"),
    ("starttls", "421 4.3.2 Service shutting down"),
    ("ssl", "554 5.3.0 closing"),
    ("none", "drop"),
    ("none", "silent"),
], ids=["421", "554", "starttls-421", "ssl-554", "drop", "no-answer"])
def test_smtp_message_taken_at_data_is_sent_whatever_quit_gets(smtp_home, helper, security, quit):
    context = None
    cafile = None
    if security != "none":
        paths = certs.ensure_certificates(smtp_home.parent / "relay")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(paths.server_cert, paths.server_key)
        cafile = paths.ca_cert
    relay = QuitRelay(quit, security, context=context)
    try:
        use_relay(smtp_home, relay, cafile)
        h = helper()
        msgid = hand_in(h, "taro@example.co.jp")
        item = settled(h, msgid)
        assert relay.quits and relay.quits[0] == quit  # the fault was met
        assert relay.copies(msgid) == 1, f"the relay got {relay.copies(msgid)} copies"
        assert item.state == "sent", (item.state, item.last_error)
        assert item.last_error is None
    finally:
        relay.stop()


def test_smtp_refused_data_stays_refused_whatever_quit_gets(smtp_home, helper):
    relay = QuitRelay("421 4.3.2 Service shutting down", data_reply="554 5.7.1 message refused")
    try:
        use_relay(smtp_home, relay)
        h = helper()
        msgid = hand_in(h, "taro@example.co.jp")
        item = settled(h, msgid)
        assert relay.quits and relay.quits[0].startswith("421")
        assert relay.copies(msgid) == 0 and relay.datas == 1  # refused once, never offered again
        assert item.state == "needs_attention", (item.state, item.last_error)
        assert "554" in (item.last_error or "") and "refused" in (item.last_error or "")
    finally:
        relay.stop()


# ---------------------------------------------------------------------------------------------- Gmail
GMAIL = "alice@example.com"


@pytest.fixture
def google():
    with FakeGoogle(email=GMAIL) as fake:
        yield fake


@pytest.fixture
def gmail_send_only(home: Path, google: FakeGoogle, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Gmail account signed in with gmail.send only: SendGuard cannot look in Sent mail."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake token endpoint is plain http
    (home / "policy.toml").write_text(POLICY)
    (home / "config.toml").write_text(FAST_RETRY)
    account = config_mod.Account("gmail", "gmail", GMAIL, {
        "client_id": google.client_id, "token_uri": google.token_uri, "api_endpoint": google.url,
        "scopes": [SEND], "reconcile": "off", "gmail_account": GMAIL, "backoff_seconds": 0.05,
        "timeout_seconds": 2})
    config_mod.save_account(account, home / "config.toml")
    secrets.put(account.secret_key("client_secret"), google.client_secret)
    secrets.put(account.secret_key("refresh_token"), google.issue_refresh_token([SEND]))
    return home


def gmail_copies(google: FakeGoogle, msgid: str) -> int:
    return sum(1 for s in google.sends
               if str(email.message_from_bytes(s["raw"]).get("Message-ID", "")).strip() == msgid)


@pytest.mark.parametrize("status", [500, 503])
def test_gmail_send_answer_lost_without_lookup_needs_attention(gmail_send_only, google, helper, status):
    google.fail("messages.send", status, after=True)  # Gmail sent it, then the answer was lost
    h = helper()
    msgid = hand_in(h, GMAIL)
    item = settled(h, msgid)
    assert gmail_copies(google, msgid) == 1, f"Gmail sent {gmail_copies(google, msgid)} copies"
    assert item.state == "needs_attention", (item.state, item.last_error)
    text = item.last_error or ""
    assert "may have" in text and f"sendguard queue resolve {item.id} --sent" in text, text


def test_gmail_refusal_before_sending_is_still_retried_without_lookup(gmail_send_only, google, helper):
    google.fail("messages.send", 429, reason="rateLimitExceeded", message="User-rate limit exceeded.",
                headers={"Retry-After": "1"})  # nothing was sent: a plain retry is safe
    h = helper()
    msgid = hand_in(h, GMAIL)
    item = settled(h, msgid)
    assert google.route_count("messages.send") >= 2  # refused once, then sent
    assert gmail_copies(google, msgid) == 1
    assert item.state == "sent", (item.state, item.last_error)
