"""Release through a real SMTP relay: STARTTLS and implicit TLS, AUTH with the password from keyring."""

from __future__ import annotations

import ssl

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import make_message, run_cli, smtp_send, wait_for

from sendguard import certs, config
from sendguard.mailboxes.base import AuthError, ReleaseItem, TransientError
from sendguard.mailboxes.smtp import SmtpRelay
from sendguard.submission import SubmissionServer

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class Relay:
    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                              session.authenticated))
        return "250 2.0.0 queued"


def authenticator(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b"taro" and data.password == b"pa55word"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def tls(tmp_path):
    paths = certs.ensure_certificates(tmp_path / "relay-home")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths.server_cert, paths.server_key)
    return context, paths.ca_cert


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_release_via_relay_with_tls_and_auth(home, helper, write_policy, tls, security):
    context, ca = tls
    relay = Relay()
    options = dict(auth_required=True, authenticator=authenticator, auth_exclude_mechanism=["LOGIN"])
    if security == "starttls":
        server = SubmissionServer(relay, "127.0.0.1", 0, tls_context=context, require_starttls=True, **options)
    else:  # implicit TLS on the listening socket
        server = SubmissionServer(relay, "127.0.0.1", 0, listen_ssl=context, auth_require_tls=False, **options)
    server.start()
    try:
        out = run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "localhost", "--port", str(server.port),
                      "--security", security, "--username", "taro", "--password-stdin", input=b"pa55word\n")
        assert out.returncode == 0, out.stderr
        cfg_path = home / "config.toml"
        cfg = config.load(cfg_path)
        cfg.accounts[0].settings["cafile"] = str(ca)
        config.save_account(cfg.accounts[0], cfg_path)
        write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n')
        h = helper()
        smtp_send(h.smtp.port, make_message(to="x@partner.example", bcc="hidden@partner.example"))
        item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
        h.outbox.confirm(item.id)
        wait_for(lambda: h.outbox.get(item.id).state == "sent")
        [(mail_from, rcpts, content, authed)] = relay.received
        assert authed and mail_from == "taro@example.co.jp"
        assert sorted(rcpts) == ["hidden@partner.example", "x@partner.example"]
        assert b"hidden@partner.example" not in content
    finally:
        server.stop()


def item_for(port):
    return ReleaseItem("id1", "<m@x>", b"From: a@example.co.jp\r\nTo: b@x.example\r\n\r\nhi\r\n",
                       "a@example.co.jp", ("b@x.example",))


def test_wrong_password_is_auth_error(tls):
    context, ca = tls
    server = SubmissionServer(Relay(), "127.0.0.1", 0, tls_context=context, require_starttls=True,
                              auth_required=True, authenticator=authenticator,
                              auth_exclude_mechanism=["LOGIN"]).start()
    try:
        relay = SmtpRelay("corp", "localhost", server.port, "starttls", "taro", "wrong", cafile=str(ca))
        with pytest.raises(AuthError, match="refused the login"):
            relay.release(item_for(server.port))
    finally:
        server.stop()


def test_untrusted_certificate_and_unreachable_relay_are_transient(tls, tmp_path):
    context, _ca = tls
    server = SubmissionServer(Relay(), "127.0.0.1", 0, tls_context=context, require_starttls=True).start()
    try:
        relay = SmtpRelay("corp", "localhost", server.port, "starttls")  # system CAs: our CA is unknown
        with pytest.raises(TransientError, match="cannot reach the SMTP relay"):
            relay.release(item_for(server.port))
    finally:
        server.stop()
    with pytest.raises(TransientError):
        SmtpRelay("corp", "127.0.0.1", server.port, "none", timeout=5).release(item_for(server.port))
