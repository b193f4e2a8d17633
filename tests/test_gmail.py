"""Gmail connector against a local fake Google: the real google-api-python-client and OAuth flow."""

from __future__ import annotations

import base64
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import keyring
import pytest
from click.testing import CliRunner
from keyrings.alt.file import PlaintextKeyring

from sendguard import config, secrets
from sendguard.accounts import gmail as gmail_accounts
from sendguard.mailboxes import gmail, registry
from sendguard.mailboxes.base import AuthError, PermanentError, ReleaseItem, TransientError
from tests.fakes.gmail_server import READONLY, SEND, FakeGoogle

ADDR = "alice@example.com"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """SENDGUARD_HOME and a plain-file test keyring in tmp_path; http allowed for the fake token endpoint."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)  # the shared conftest may have made it
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake token endpoint is plain http
    for var in ("SENDGUARD_GMAIL_CLIENT_SECRETS", "SENDGUARD_GMAIL_CLIENT_ID"):
        monkeypatch.delenv(var, raising=False)
    store = PlaintextKeyring()  # where a child process with this environment finds it too
    store.file_path = str(tmp_path / "data" / "python_keyring" / "keyring_pass.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(store)
    yield home
    keyring.set_keyring(previous)


@pytest.fixture
def google():
    with FakeGoogle(email=ADDR) as fake:
        yield fake


@pytest.fixture
def browser(monkeypatch):
    """A stand-in for the user's browser: opens the consent URL the flow built and follows the redirect."""
    from google_auth_oauthlib.flow import InstalledAppFlow

    original = InstalledAppFlow.authorization_url
    visits: list[str] = []

    def visit(url: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # 302 -> http://localhost:PORT/?code=...
                resp.read()
        except Exception as exc:  # the test sees the flow time out; keep the reason
            visits.append(f"error: {exc!r}")

    def authorization_url(self, **kwargs):
        url, state = original(self, **kwargs)
        visits.append(url)
        threading.Thread(target=visit, args=(url,), daemon=True).start()
        return url, state

    monkeypatch.setattr(InstalledAppFlow, "authorization_url", authorization_url)
    return visits


def client_file(tmp_path: Path, google: FakeGoogle) -> Path:
    path = tmp_path / "client.json"
    path.write_text(json.dumps(google.client_file()))
    return path


def add_account(tmp_path, google, *extra: str) -> object:
    args = [
        "--address",
        ADDR,
        "--client-secrets",
        str(client_file(tmp_path, google)),
        "--api-endpoint",
        google.url,
        "--no-browser",
        *extra,
    ]
    return CliRunner().invoke(gmail_accounts.add_command, args)


def tune(name: str = ADDR, **settings) -> config.Account:
    """Fast retries for tests (the product default backs off in seconds)."""
    account = config.load().account(name)
    account.settings.update({"backoff_seconds": 0.01, **settings})
    config.save_account(account)
    return account


def mailbox(name: str = ADDR) -> gmail.GmailMailbox:
    cfg = config.load()
    box = registry.build(cfg.account(name), Path(cfg.path).parent)
    assert isinstance(box, gmail.GmailMailbox)
    return box


def make_raw(
    to="bob@partner.example",
    cc=None,
    frm=ADDR,
    msgid="<t1.123@sendguard.test>",
    body="Hello",
    attachment: bytes | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Alice <{frm}>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = "見積書のご送付"
    msg["Message-ID"] = msgid
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def item(raw: bytes, recipients=("bob@partner.example",), bcc=(), **kw) -> ReleaseItem:
    return ReleaseItem(
        outbox_id=kw.pop("outbox_id", "ob1"),
        message_id=kw.pop("message_id", "<t1.123@sendguard.test>"),
        raw=raw,
        envelope_from=ADDR,
        recipients=tuple(recipients),
        bcc=tuple(bcc),
        **kw,
    )


@pytest.fixture
def account(env, tmp_path, google, browser):
    result = add_account(tmp_path, google)
    assert result.exit_code == 0, result.output
    return tune()


# -- sign-in ----------------------------------------------------------------------------------------------


def test_consent_stores_refresh_token_in_keyring_and_least_scopes(env, tmp_path, google, browser):
    result = add_account(tmp_path, google)
    assert result.exit_code == 0, result.output
    assert "added" in result.output
    auth_url = next(v for v in browser if v.startswith("http"))
    assert "code_challenge_method=S256" in auth_url and "access_type=offline" in auth_url
    asked = set(dict(p.split("=", 1) for p in auth_url.split("?", 1)[1].split("&"))["scope"].split("+"))
    assert {urllib.parse.unquote(s) for s in asked} == {"openid", gmail.IDENTITY_SCOPES[1], SEND, READONLY}

    acc = config.load().account(ADDR)
    assert acc.kind == "gmail" and acc.address == ADDR
    token = secrets.get(acc.secret_key("refresh_token"))
    assert token in google.refresh_tokens  # the very token the fake issued, kept in the keyring
    assert token not in (env / "config.toml").read_text()
    assert acc.settings["api_endpoint"] == google.url
    assert acc.settings["gmail_account"] == ADDR
    assert SEND in acc.settings["scopes"] and gmail.SCOPE_COMPOSE not in acc.settings["scopes"]


def test_drafts_feature_asks_compose_instead_of_send(env, tmp_path, google, browser):
    assert add_account(tmp_path, google, "--drafts").exit_code == 0
    scopes = config.load().account(ADDR).settings["scopes"]
    assert gmail.SCOPE_COMPOSE in scopes and SEND not in scopes


def test_consent_denied_is_one_clear_line(env, tmp_path, google, browser):
    google.consent = "deny"
    result = add_account(tmp_path, google)
    assert result.exit_code == 1
    assert "Consent was denied" in result.output and "Traceback" not in result.output
    assert config.load().account(ADDR) is None


def test_send_permission_unticked_is_refused(env, tmp_path, google, browser):
    google.drop_scopes = {SEND}
    result = add_account(tmp_path, google)
    assert result.exit_code == 1
    assert "not allowed to send email" in result.output


def test_reconcile_permission_unticked_downgrades_with_a_note(env, tmp_path, google, browser):
    google.drop_scopes = {READONLY}
    result = add_account(tmp_path, google)
    assert result.exit_code == 0, result.output
    assert "look in Sent mail" in result.output
    assert mailbox().reconcile == "off"


def test_signed_in_as_another_account_needs_confirmation(env, tmp_path, google, browser):
    google.email = "someone.else@example.com"
    result = add_account(tmp_path, google)
    assert result.exit_code == 1
    assert "signed in to Google as someone.else@example.com" in result.output
    result = add_account(tmp_path, google, "--yes")
    assert result.exit_code == 0, result.output
    assert config.load().account(ADDR).settings["gmail_account"] == "someone.else@example.com"


def test_authorized_user_import_without_browser(env, tmp_path, google, monkeypatch):
    from google_auth_oauthlib.flow import InstalledAppFlow

    monkeypatch.setattr(InstalledAppFlow, "run_local_server", lambda *a, **k: pytest.fail("no browser flow"))
    path = tmp_path / "authorized_user.json"
    token = google.write_authorized_user(path, ["openid", gmail.IDENTITY_SCOPES[1], SEND, READONLY], typed=True)
    result = CliRunner().invoke(
        gmail_accounts.add_command, ["--address", ADDR, "--authorized-user", str(path), "--api-endpoint", google.url]
    )
    assert result.exit_code == 0, result.output
    acc = config.load().account(ADDR)
    assert secrets.get(acc.secret_key("refresh_token")) == token
    assert mailbox().reconcile == "search"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--address", "not-an-address"], "is not an email address"),
        (["--address", ADDR, "--client-secrets", "a.json", "--authorized-user", "b.json"], "not both"),
        (["--address", ADDR, "--api-endpoint", "ftp://x"], "not an http(s) URL"),
        (["--address", ADDR, "--client-secrets", "/nonexistent/client.json"], "no such file"),
        (["--address", ADDR, "--authorized-user", "/nonexistent/user.json"], "no such file"),
        (["--address", ADDR], "No OAuth client for Gmail"),
    ],
)
def test_bad_input_is_refused_with_one_line(env, args, message):
    result = CliRunner().invoke(gmail_accounts.add_command, args)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


# -- release ------------------------------------------------------------------------------------------------


def test_release_sends_exact_mime_once_and_restart_reconciles(account, google):
    raw = make_raw()
    receipt = mailbox().release(item(raw))
    assert receipt.transport == "gmail" and receipt.detail["method"] == "messages.send"
    assert len(google.sends) == 1
    assert google.sends[0]["raw"] == raw  # base64url-decoded by the fake, compared byte for byte
    assert google.sends[0]["upload"] == "json"

    # Crash before the outbox recorded "sent": a new process asks Gmail instead of sending again.
    google.expire_access_tokens()  # a new process has no access token; it refreshes from the keyring
    restarted = mailbox()
    assert restarted.find_sent("<t1.123@sendguard.test>") is True
    assert restarted.find_sent("<never-sent@sendguard.test>") is False
    assert len(google.sends) == 1
    q = [query for route, _m, query in google.calls if route == "messages.list" and "q" in query]
    assert q[0]["q"] == ["rfc822msgid:t1.123@sendguard.test"] and q[0]["labelIds"] == ["SENT"]


def test_reconcile_sees_a_send_the_search_index_has_not_caught_up_with(account, google):
    mailbox().release(item(make_raw()))
    google.search_lag = 1
    assert mailbox().find_sent("<t1.123@sendguard.test>") is True


def test_reconcile_with_headers_scope_or_none(env, tmp_path, google, browser):
    assert add_account(tmp_path, google, "--reconcile", "headers").exit_code == 0
    box = mailbox()
    assert box.reconcile == "headers"
    box.release(item(make_raw()))
    assert box.find_sent("<t1.123@sendguard.test>") is True
    assert box.find_sent("<other@sendguard.test>") is None  # headers mode cannot prove a negative
    assert not [q for r, _m, q in google.calls if r == "messages.list" and "q" in q]

    assert add_account(tmp_path, google, "--reconcile", "off").exit_code == 0
    assert mailbox().find_sent("<t1.123@sendguard.test>") is None


def test_blind_copies_go_into_a_bcc_header_for_gmail(account, google):
    raw = make_raw(cc="carol@example.com")
    mailbox().release(
        item(
            raw,
            recipients=("bob@partner.example", "carol@example.com", "dave@partner.example"),
            bcc=("dave@partner.example",),
        )
    )
    sent = google.sends[0]["raw"]
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"\r\nBcc: dave@partner.example" in head
    assert body == raw.partition(b"\r\n\r\n")[2]
    assert gmail.with_bcc(sent, []) == raw


def test_removed_recipient_still_in_header_is_refused(account, google):
    raw = make_raw(to="bob@partner.example, eve@rival.example")
    with pytest.raises(PermanentError, match="eve@rival.example"):
        mailbox().release(item(raw, recipients=("bob@partner.example",)))
    assert google.sends == []


def test_from_other_than_the_account_is_refused(account, google):
    with pytest.raises(PermanentError, match="mallory@example.com"):
        mailbox().release(item(make_raw(frm="mallory@example.com")))
    assert google.sends == []


def test_retries_5xx_with_backoff_then_sends_once(account, google):
    google.fail("messages.send", 503, times=2)
    mailbox().release(item(make_raw()))
    assert len(google.sends) == 1
    assert google.route_count("messages.send") == 3


def test_quota_exceeded_is_transient_with_retry_after(account, google):
    google.fail(
        "messages.send",
        429,
        reason="rateLimitExceeded",
        message="User-rate limit exceeded.",
        times=10,
        headers={"Retry-After": "3600"},
    )
    with pytest.raises(TransientError, match="quota exceeded") as exc_info:
        mailbox().release(item(make_raw()))
    assert exc_info.value.retry_after == 3600
    assert google.sends == [] and google.route_count("messages.send") == 1  # an hour's wait is not slept here


def test_500_after_gmail_sent_is_reconciled_not_resent(account, google):
    google.fail("messages.send", 500, after=True)  # Gmail sent it, then the answer was lost
    receipt = mailbox().release(item(make_raw()))
    assert receipt.detail.get("reconciled") is True
    assert len(google.sends) == 1


def test_revoked_token_asks_to_reconnect(account, google):
    google.revoke_all()
    with pytest.raises(AuthError, match="revoked or has expired.*sendguard gmail reconnect"):
        mailbox().release(item(make_raw()))
    assert google.sends == []


def test_reconnect_after_revocation(account, google, browser):
    google.revoke_all()
    result = CliRunner().invoke(gmail_accounts.gmail_group, ["reconnect", ADDR, "--no-browser"])
    assert result.exit_code == 0, result.output
    tune()
    mailbox().release(item(make_raw()))
    assert len(google.sends) == 1


def test_missing_permission_is_an_auth_error(account, google):
    token = secrets.get(config.load().account(ADDR).secret_key("refresh_token"))
    google.refresh_tokens[token]["scopes"] = {"openid"}
    with pytest.raises(AuthError, match="has not allowed SendGuard"):
        mailbox().release(item(make_raw()))


def test_large_message_goes_through_resumable_upload(account, google):
    tune(upload_threshold=64 * 1024, upload_chunk=256 * 1024)
    raw = make_raw(attachment=bytes(range(256)) * 2400)  # ~800 kB after base64
    mailbox().release(item(raw))
    assert len(google.sends) == 1
    assert google.sends[0]["raw"] == raw and google.sends[0]["upload"] == "upload-resumable"
    assert google.route_count("upload.chunk") >= 3


def test_message_too_large_is_permanent(account, google, monkeypatch):
    monkeypatch.setattr(gmail, "MAX_MESSAGE_BYTES", 10_000)
    with pytest.raises(PermanentError, match="too large for Gmail"):
        mailbox().release(item(make_raw(attachment=b"x" * 20_000)))
    assert google.calls == []


def test_too_large_answer_from_gmail_is_permanent(account, google):
    google.fail("messages.send", 413, reason="uploadTooLarge", message="Request Entity Too Large")
    with pytest.raises(PermanentError, match="too large for Gmail"):
        mailbox().release(item(make_raw()))


# -- drafts -------------------------------------------------


@pytest.fixture
def drafts_account(env, tmp_path, google, browser):
    assert add_account(tmp_path, google, "--drafts").exit_code == 0
    return tune()


def test_drafts_lists_only_labelled_drafts(drafts_account, google):
    labelled = google.add_draft(make_raw(msgid="<d1@x>"))
    google.add_draft(make_raw(msgid="<d2@x>"), labels=())
    result = CliRunner().invoke(gmail_accounts.gmail_group, ["drafts", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [d["id"] for d in listed] == [labelled]
    assert listed[0]["subject"] == "見積書のご送付"


def test_drafts_need_the_drafts_feature(account, google):
    result = CliRunner().invoke(gmail_accounts.gmail_group, ["drafts"])
    assert result.exit_code == 1 and "--drafts" in result.output


def test_check_and_send_takes_the_draft_and_cancel_leaves_it_untouched(drafts_account, google, env):
    from sendguard.service import Helper

    (env / "policy.toml").write_text(POLICY)
    raw = make_raw(cc="carol@example.com", msgid="<d1@x>")
    draft_id = google.add_draft(raw)
    helper = Helper(env)
    try:
        item = gmail_accounts.submit_draft(helper.outbox, mailbox(), draft_id)
        taken = helper.outbox.get(item.id, with_bodies=True)
        assert taken.state == "awaiting_confirmation" and taken.account == ADDR
        assert taken.raw == raw and taken.source == "gmail" and taken.source_ref == f"draft:{draft_id}"
        assert taken.envelope_to == ["bob@partner.example", "carol@example.com"] and taken.envelope_from == ADDR
        helper.outbox.cancel(item.id)
    finally:
        helper.stop()
    # The user cancels: nothing else happens to the draft.
    assert google.messages[google.drafts[draft_id]]["raw"] == raw
    assert not [r for r, _m, _q in google.calls if r in ("drafts.update", "drafts.send", "messages.send")]


def test_confirmed_draft_is_sent_as_confirmed_in_its_thread_then_deleted(drafts_account, google):
    raw = make_raw(msgid="<d1@x>")
    draft_id = google.add_draft(raw)
    thread = google.messages[google.drafts[draft_id]]["thread"]
    held = mailbox().take_draft(draft_id)
    receipt = mailbox().release(item(held.raw, message_id="<d1@x>", source="gmail", source_ref=held.ref))
    assert receipt.detail["method"] == "messages.send" and receipt.detail["draft_id"] == draft_id
    assert receipt.detail["draft_deleted"] is True
    assert [s["method"] for s in google.sends] == ["messages.send"] and google.sends[0]["raw"] == raw
    assert google.sends[0]["threadId"] == thread
    assert google.route_count("drafts.update") == 0 and google.route_count("drafts.send") == 0
    assert draft_id not in google.drafts


def test_an_autosave_after_confirmation_is_not_what_goes_out(drafts_account, google):
    """Regression (#18 item 8): the confirmed MIME is sent, not whatever Gmail saved in the meantime."""
    raw = make_raw(msgid="<d1@x>")
    draft_id = google.add_draft(raw)
    held = mailbox().take_draft(draft_id)
    unconfirmed = make_raw(to="eve@rival.example", msgid="<d1@x>")
    google.autosave(draft_id, unconfirmed)  # the compose window is still open and saves...
    for route in ("drafts.get", "drafts.update"):  # ...at any moment of the release, too
        google.after[route] = lambda: google.autosave(draft_id, unconfirmed)
    mailbox().release(item(held.raw, message_id="<d1@x>", source="gmail", source_ref=held.ref))
    assert [s["raw"] for s in google.sends] == [raw]
    assert draft_id not in google.drafts  # no sendable copy of the unconfirmed content is left behind


def test_draft_with_a_removed_recipient_sends_the_confirmed_mime(drafts_account, google):
    raw = make_raw(to="bob@partner.example, eve@rival.example", msgid="<d1@x>")
    draft_id = google.add_draft(raw)
    final = make_raw(to="bob@partner.example", msgid="<d1@x>")
    mailbox().release(item(final, message_id="<d1@x>", source="gmail", source_ref=f"draft:{draft_id}"))
    assert google.route_count("drafts.update") == 0
    assert [s["method"] for s in google.sends] == ["messages.send"] and google.sends[0]["raw"] == final


def test_a_draft_that_cannot_be_deleted_still_counts_as_sent(drafts_account, google):
    draft_id = google.add_draft(make_raw(msgid="<d1@x>"))
    google.fail("drafts.delete", 403, reason="forbidden", message="no")
    receipt = mailbox().release(
        item(make_raw(msgid="<d1@x>"), message_id="<d1@x>", source="gmail", source_ref=f"draft:{draft_id}")
    )
    assert receipt.detail["draft_deleted"] is False and len(google.sends) == 1


def test_draft_deleted_in_gmail_is_a_clear_error(drafts_account, google):
    with pytest.raises(PermanentError, match="no longer exists"):
        mailbox().release(
            item(make_raw(msgid="<gone@x>"), message_id="<gone@x>", source="gmail", source_ref="draft:r-999")
        )
    assert google.sends == []


def test_draft_sent_before_a_crash_is_not_sent_again(drafts_account, google):
    draft_id = google.add_draft(make_raw(msgid="<d1@x>"))
    google.fail("messages.send", 502, after=True)
    first = mailbox().release(
        item(make_raw(msgid="<d1@x>"), message_id="<d1@x>", source="gmail", source_ref=f"draft:{draft_id}")
    )
    assert first.detail.get("reconciled") is True
    again = mailbox().release(
        item(make_raw(msgid="<d1@x>"), message_id="<d1@x>", source="gmail", source_ref=f"draft:{draft_id}")
    )
    assert again.detail.get("reconciled") is True
    assert len(google.sends) == 1


def test_find_drafts_matches_the_compose_events_recipients_across_autosaves(drafts_account, google):
    """Regression (#18 item 3): the draft is found by its metadata, and its id survives autosave."""
    other = google.add_draft(make_raw(to="carol@example.com", msgid="<o@x>"), labels=())
    draft_id = google.add_draft(make_raw(msgid="<d1@x>"), labels=())
    google.autosave(draft_id, make_raw(msgid="<d1@x>"))
    found = mailbox().find_drafts(to=["Bob <BOB@partner.example>"])
    assert [d["id"] for d in found if d["exact"]] == [draft_id]
    assert {d["id"] for d in found} == {draft_id, other}
    assert found[0]["id"] == draft_id  # newest saved first


def test_drafts_with_header_reconciliation_is_refused_at_set_up(env, tmp_path, google, browser):
    """Regression (#18 item 9): gmail.metadata on the token would break every draft read."""
    result = add_account(tmp_path, google, "--drafts", "--reconcile", "headers")
    assert result.exit_code != 0 and "--reconcile headers" in result.output
    assert config.load().accounts == []


def test_a_reply_sent_over_smtp_stays_in_its_thread(account, google):
    """Regression (#18 item 11): messages.send names the thread of the message replied to."""
    original = google._store(make_raw(msgid="<orig@partner.example>"), {"INBOX"})
    thread = google.messages[original]["thread"]
    reply = make_raw(msgid="<reply@x>").replace(
        b"Subject:", b"In-Reply-To: <orig@partner.example>\r\nReferences: <orig@partner.example>\r\nSubject:", 1)
    mailbox().release(item(reply, message_id="<reply@x>"))
    assert google.sends[0]["threadId"] == thread


def test_with_bcc_keeps_lf_messages_and_replaces_an_old_bcc():
    raw = b"From: a@x\nTo: b@y\nBcc: old@z,\n  older@z\nSubject: s\n\nbody\n"
    assert gmail.with_bcc(raw, ["n@z"]) == b"From: a@x\nTo: b@y\nSubject: s\nBcc: n@z\n\nbody\n"
    assert gmail.with_bcc(raw, []) == b"From: a@x\nTo: b@y\nSubject: s\n\nbody\n"


def test_unb64_roundtrip():
    data = "テスト".encode() * 7
    assert gmail._unb64(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data


# -- end to end through the outbox: SMTP submit -> confirm -> Gmail; kill -9 mid-release -> restart ---------

POLICY = '[organization]\ninternal_domains = ["example.com"]\n\n[confirm]\nwhen = "always"\n'


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def smtp_submit(port: int, raw: bytes, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(ADDR, rcpts, raw)


def test_smtp_submit_confirm_release_once_then_crash_and_reconcile(account, google, env):
    from sendguard.service import Helper

    (env / "policy.toml").write_text(POLICY)
    helper = Helper(env).start(smtp_port=0)
    try:
        # 1. an ordinary message: SMTP -> window -> confirm -> released by the helper's worker
        first = make_raw(msgid="<e2e-1@sendguard.test>")
        smtp_submit(helper.smtp.port, first, ["bob@partner.example"])
        held = wait_for(lambda: helper.outbox.list(["awaiting_confirmation"]))
        helper.outbox.confirm(held[0].id)
        wait_for(lambda: helper.outbox.get(held[0].id).state == "sent")
        assert [s["raw"] for s in google.sends] == [first]

        # 2. a second one, confirmed while the helper is paused, so a separate process releases it
        helper.paused = True
        second = make_raw(msgid="<e2e-2@sendguard.test>", body="Second")
        smtp_submit(helper.smtp.port, second, ["bob@partner.example"])
        item_id = wait_for(lambda: helper.outbox.list(["awaiting_confirmation"]))[0].id
        helper.outbox.confirm(item_id)
    finally:
        helper.stop()

    # The releasing process is killed (-9) the moment Gmail has sent it, before it can record "sent".
    script = (
        "import sys; from sendguard.service import Helper; "
        "Helper().outbox.release(sys.argv[1]); print('recorded')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, item_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    google.on_send = lambda record: os.kill(proc.pid, signal.SIGKILL)
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and b"recorded" not in out
    assert len(google.sends) == 2 and google.sends[1]["raw"] == second

    restarted = Helper(env)
    try:
        assert restarted.outbox.get(item_id).state == "releasing"  # the crash left it mid-release
        restarted.start(smtp=False)  # the worker reconciles first thing: Gmail's Sent has it
        wait_for(lambda: restarted.outbox.get(item_id).state == "sent")
        restarted.outbox.release_due()
    finally:
        restarted.stop()
    assert len(google.sends) == 2  # reconciled, not resent
    assert google.route_count("messages.send") == 2


def test_the_helper_keeps_one_gmail_connector_and_signs_in_once(account, google, env):
    """The helper owns its connectors: three releases share one sign-in (one access token from Google), not a
    new connector and a new token for every release; stop closes it, and a later use builds a new one."""
    from sendguard.service import Helper

    (env / "policy.toml").write_text(POLICY)
    tokens_before = len(google.access_tokens)
    helper = Helper(env).start(smtp_port=0)
    try:
        for n in range(3):
            smtp_submit(helper.smtp.port, make_raw(msgid=f"<own-{n}@sendguard.test>"), ["bob@partner.example"])
            held = wait_for(lambda: helper.outbox.list(["awaiting_confirmation"]))
            helper.outbox.confirm(held[0].id)
            wait_for(lambda item_id=held[0].id: helper.outbox.get(item_id).state == "sent")
        item = helper.outbox.list(["sent"])[0]
        box = helper.mailbox_for(item)
        assert box is helper.mailbox_for(item) and isinstance(box, gmail.GmailMailbox)
    finally:
        helper.stop()
    assert google.route_count("messages.send") == 3
    assert len(google.access_tokens) - tokens_before == 1, "each release signed in to Google anew"
    assert helper.mailbox_for(item) is not box  # closed at stop; a later use builds a new one


# -- a lost answer whose Sent search fails too: looked for again with back-off, never sent blind ------------

NEVER = '[organization]\ninternal_domains = ["example.com"]\n\n[confirm]\nwhen = "never"\n'
FAST_RETRY = "\n[retry]\nbase_seconds = 0.2\nmax_seconds = 2\ninline_wait_seconds = 0.2\n"


def releasing_helper(env, smtp: bool = True):
    """A running helper that releases at once (no window) and retries fast (grace after a lost answer: 2 s)."""
    from sendguard.service import Helper

    (env / "policy.toml").write_text(NEVER)
    path = Path(config.load().path)
    if "[retry]" not in path.read_text():
        path.write_text(path.read_text() + FAST_RETRY)
    return Helper(env).start(smtp=smtp, smtp_port=0)


def handed_in(helper, msgid: str):
    smtp_submit(helper.smtp.port, make_raw(msgid=msgid), ["bob@partner.example"])
    return wait_for(lambda: next((i for i in helper.outbox.list(None) if i.message_id == msgid), None))


def test_lost_answer_whose_sent_search_fails_is_looked_for_again_not_resent(account, google, env):
    """Gmail sent the message and the answer was lost (500); the Sent search fails too, three times. The
    message is never sent again: each retry looks in Sent first, until the search answers and finds it."""
    google.fail("messages.send", 500, after=True)
    google.fail("messages.list", 500, times=9)  # 3 look-ups of 3 tries each
    helper = releasing_helper(env)
    try:
        item = handed_in(helper, "<lost-search@sendguard.test>")
        wait_for(lambda: helper.outbox.get(item.id).state == "sent", timeout=60)
    finally:
        helper.stop()
    assert google.route_count("messages.send") == 1 and len(google.sends) == 1
    assert not [f for f in google.faults if f["times"]]  # every failing search was made: asked again
    assert helper.outbox.get(item.id).attempts >= 3


def test_lost_answer_whose_sent_search_fails_is_not_resent_after_a_restart(account, google, env):
    """As above, and the helper is stopped while Sent cannot be searched. The next helper looks in Sent
    before anything else, finds the message there and records it sent: one copy."""
    google.fail("messages.send", 500, after=True)
    google.fail("messages.list", 500, times=10_000)
    first = releasing_helper(env)
    try:
        item = handed_in(first, "<lost-restart@sendguard.test>")
        wait_for(lambda: (i := first.outbox.get(item.id)).attempts >= 2 and i.state in ("failed", "sent"),
                 timeout=60)
    finally:
        first.stop()
    assert google.route_count("messages.send") == 1
    assert "may have gone out" in (first.outbox.get(item.id).last_error or "")
    google.faults.clear()  # Sent can be searched again

    second = releasing_helper(env, smtp=False)
    try:
        wait_for(lambda: second.outbox.get(item.id).state == "sent", timeout=60)
    finally:
        second.stop()
    assert google.route_count("messages.send") == 1 and len(google.sends) == 1


def test_lost_answer_is_sent_again_only_after_sent_has_answered(account, google, env):
    """Gmail refused the send (500) before doing anything, and the Sent search after it fails. Only once a
    search has answered that the message is not there (and the grace is over) is it sent again: once."""
    google.fail("messages.send", 500)
    google.fail("messages.list", 500, times=3)  # the look-up right after the send
    helper = releasing_helper(env)
    try:
        item = handed_in(helper, "<lost-unsent@sendguard.test>")
        wait_for(lambda: helper.outbox.get(item.id).state == "sent", timeout=60)
    finally:
        helper.stop()
    assert len(google.sends) == 1 and google.route_count("messages.send") == 2
    calls = [route for route, _method, _query in google.calls]
    resend = [n for n, route in enumerate(calls) if route == "messages.send"][1]
    assert calls[:resend].count("messages.list") > 3, calls  # a search answered before the second send


def test_check_and_send_cli_puts_the_draft_in_the_outbox(drafts_account, google, env):
    from sendguard.service import Helper

    (env / "policy.toml").write_text(POLICY)
    raw = make_raw(msgid="<draft-e2e@x>")
    draft_id = google.add_draft(raw)
    result = CliRunner().invoke(gmail_accounts.gmail_group, ["check-and-send", draft_id])
    assert result.exit_code == 0, result.output
    assert "awaiting_confirmation" in result.output
    again = CliRunner().invoke(gmail_accounts.gmail_group, ["check-and-send", draft_id])
    assert again.exit_code == 0  # the same draft is not taken twice

    helper = Helper(env)
    try:
        items = helper.outbox.list()
        assert len(items) == 1 and items[0].source == "gmail" and items[0].source_ref == f"draft:{draft_id}"
        helper.outbox.confirm(items[0].id)
        assert helper.outbox.release(items[0].id).state == "sent"
    finally:
        helper.stop()
    assert [s["method"] for s in google.sends] == ["messages.send"] and google.sends[0]["raw"] == raw
    assert draft_id not in google.drafts


def test_cancelled_draft_is_left_untouched(drafts_account, google, env):
    from sendguard.service import Helper

    (env / "policy.toml").write_text(POLICY)
    raw = make_raw(msgid="<draft-cancel@x>")
    draft_id = google.add_draft(raw)
    assert CliRunner().invoke(gmail_accounts.gmail_group, ["check-and-send", draft_id]).exit_code == 0
    helper = Helper(env)
    try:
        item = helper.outbox.list()[0]
        helper.outbox.cancel(item.id)
        helper.outbox.release_due()
    finally:
        helper.stop()
    assert google.sends == [] and google.messages[google.drafts[draft_id]]["raw"] == raw
    assert not [r for r, _m, _q in google.calls if r in ("drafts.update", "drafts.send")]


def test_headless_machine_keeps_the_token_in_the_encrypted_file(env, tmp_path, google, monkeypatch):
    from keyring.backends import fail

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    keyring.set_keyring(fail.Keyring())  # no OS keyring, as on a headless Linux server
    path = tmp_path / "authorized_user.json"
    token = google.write_authorized_user(path, ["openid", gmail.IDENTITY_SCOPES[1], SEND, READONLY])
    result = CliRunner().invoke(
        gmail_accounts.add_command, ["--address", ADDR, "--authorized-user", str(path), "--api-endpoint", google.url]
    )
    assert result.exit_code == 0, result.output
    assert "encrypted file" in result.output
    store = env / "secrets.cfg"
    assert store.exists() and token not in store.read_text()
    tune()
    mailbox().release(item(make_raw()))
    assert len(google.sends) == 1
