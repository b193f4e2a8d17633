"""The EWS connector against a local EWS SOAP server, through the real exchangelib client."""

from __future__ import annotations

import email
import email.policy
import io
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from sendguard import config as config_mod
from sendguard import secrets
from sendguard.accounts.exchange import add_command
from sendguard.mailboxes import _retry, registry
from sendguard.mailboxes.base import AuthError, PermanentError, ReleaseItem, TransientError
from sendguard.mailboxes.exchange import (
    DRAFT_CATEGORY,
    HOLD_FOLDER,
    TAKEN_CATEGORY,
    ExchangeMailbox,
)
from tests.fakes.ews_server import FakeEWS

ADDRESS = "user@example.co.jp"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """Pauses the connector would honour in place are recorded, not slept (conftest isolates home and keyring)."""
    monkeypatch.setattr(_retry, "sleep", lambda seconds: None)


@pytest.fixture
def fake():
    with FakeEWS(address=ADDRESS) as server:
        yield server


@pytest.fixture
def box(fake):
    mailbox = ExchangeMailbox("work", ADDRESS, server=fake.url, username="user", password="secret")
    yield mailbox
    mailbox.close()


def message(to="a@partner.example, b@partner.example", cc="boss@example.co.jp", bcc=None,
            attachments=("quote.pdf", "internal.xlsx"), msgid="<m1@example.co.jp>") -> bytes:
    m = EmailMessage()
    m["From"] = ADDRESS
    m["To"] = to
    if cc:
        m["Cc"] = cc
    if bcc:
        m["Bcc"] = bcc
    m["Subject"] = "見積書"
    if msgid:
        m["Message-ID"] = msgid
    m.set_content("お見積りをお送りします。")
    for name in attachments:
        m.add_attachment(_content_for(name), maintype="application", subtype="octet-stream", filename=name)
    return bytes(m)


def _content_for(name: str) -> bytes:
    """Content of the type the name says (a PDF under an .xlsx name is a disguised file: unsafe_attachment)."""
    if not name.endswith(".xlsx"):
        return b"%PDF-1.4 data " + name.encode()
    buf = io.BytesIO()
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types '
                   'xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("xl/workbook.xml", f'<?xml version="1.0"?><workbook xmlns="{main}"/>')
        z.writestr("xl/worksheets/sheet1.xml", f'<?xml version="1.0"?><worksheet xmlns="{main}"><sheetData/></worksheet>')
    return buf.getvalue()


def final(held_raw: bytes, to: list[str], cc: list[str], keep: tuple[str, ...]) -> bytes:
    """What the outbox hands back after confirmation: headers rewritten, removed attachments gone."""
    m = email.message_from_bytes(held_raw, policy=email.policy.default)
    for name, values in (("To", to), ("Cc", cc), ("Bcc", [])):
        del m[name]
        if values:
            m[name] = ", ".join(values)
    m.set_payload([p for p in m.get_payload() if p.get_filename() in (None, *keep)])
    return m.as_bytes(policy=email.policy.SMTP)


def take_one(box, fake, raw=None, **kw):
    box.ensure_hold_folder()
    fake.put_item(raw or message(), **kw)
    held = box.fetch_held()
    assert len(held) == 1
    box.ack_held(held[0].ref)
    return held[0]


def test_first_run_creates_the_hold_folder_and_finds_nothing(box, fake):
    assert fake.folder_by_name(HOLD_FOLDER) is None
    assert box.fetch_held() == []
    hold = fake.folder_by_name(HOLD_FOLDER)
    assert hold is not None and hold.parent == fake.folder_by_key("msgfolderroot").id
    assert fake.requests.count("CreateFolder") == 1
    box.close()
    again = ExchangeMailbox("work", ADDRESS, server=fake.url, username="user", password="secret")
    again.fetch_held()
    assert fake.requests.count("CreateFolder") == 1  # found, not created twice


def test_held_items_are_taken_once(box, fake):
    box.ensure_hold_folder()
    in_hold = fake.put_item(message(msgid="<hold@example.co.jp>"))
    marked = fake.put_item(message(msgid="<draft@example.co.jp>"), folder="drafts", categories=[DRAFT_CATEGORY])
    fake.put_item(message(msgid="<plain@example.co.jp>"), folder="drafts")  # an ordinary draft: not ours
    held = {h.ref: h for h in box.fetch_held()}
    assert set(held) == {in_hold, marked}
    h = held[in_hold]
    assert h.source == "exchange" and h.envelope_from == ADDRESS
    assert set(h.recipients) == {"a@partner.example", "b@partner.example", "boss@example.co.jp"}
    parsed = email.message_from_bytes(h.raw, policy=email.policy.default)
    assert parsed["Message-ID"] == "<hold@example.co.jp>" and str(parsed["Subject"]) == "見積書"
    for ref in held:
        box.ack_held(ref)
    assert TAKEN_CATEGORY in fake.items[in_hold].categories
    assert box.fetch_held() == []
    # nothing changed: the pull subscription says so and no folder scan is made
    finds = fake.requests.count("FindItem")
    assert box.fetch_held() == []
    assert fake.requests.count("FindItem") == finds


def test_subscription_lapse_falls_back_to_a_scan(box, fake):
    box.ensure_hold_folder()
    assert box.fetch_held() == []
    fake.subscriptions.clear()  # the server forgot the subscription (expired, restarted)
    ref = fake.put_item(message())
    assert [h.ref for h in box.fetch_held()] == [ref]
    assert fake.requests.count("Subscribe") == 2


def test_release_held_item_applies_removals_and_sends_once(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, to=["a@partner.example"], cc=["boss@example.co.jp"], keep=("quote.pdf",))
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example", "boss@example.co.jp"),
                       source="exchange", source_ref=held.ref)
    receipt = box.release(item)
    assert receipt.transport == "exchange"
    assert len(fake.sends) == 1
    sent = fake.sends[0]
    assert sent.to == ["a@partner.example"] and sent.cc == ["boss@example.co.jp"] and sent.bcc == []
    assert "b@partner.example" not in sent.to + sent.cc + sent.bcc
    assert sent.attachments == ["quote.pdf"]
    assert sent.message_id == "<m1@example.co.jp>"
    copy = fake.items[held.ref]
    assert copy.folder == fake.folder_by_key("sentitems").id and not copy.is_draft
    assert TAKEN_CATEGORY not in copy.categories
    assert fake.items_in(fake.folder_by_name(HOLD_FOLDER).id) == []
    assert box.find_sent("<m1@example.co.jp>") is True
    # a second release (the outbox retrying after a lost answer) finds the copy and sends nothing
    assert box.release(item).detail["via"] == "already-sent"
    assert len(fake.sends) == 1


def test_release_held_item_with_bcc_conversion(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, to=[], cc=["boss@example.co.jp"], keep=("quote.pdf", "internal.xlsx"))
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS,
                       ("a@partner.example", "b@partner.example", "boss@example.co.jp"),
                       bcc=("a@partner.example", "b@partner.example"), source="exchange", source_ref=held.ref)
    box.release(item)
    (sent,) = fake.sends
    assert sent.to == [] and sent.cc == ["boss@example.co.jp"]
    assert sorted(sent.bcc) == ["a@partner.example", "b@partner.example"]


def test_release_smtp_mail_is_created_sent_and_saved(box, fake):
    raw = message(to="a@partner.example", cc=None, attachments=("quote.pdf",), msgid="<smtp1@example.co.jp>")
    item = ReleaseItem("o2", "<smtp1@example.co.jp>", raw, ADDRESS, ("a@partner.example", "hidden@partner.example"),
                       bcc=("hidden@partner.example",))
    assert box.find_sent("<smtp1@example.co.jp>") is False
    receipt = box.release(item)
    assert receipt.detail["via"] == "CreateItem"
    (sent,) = fake.sends
    assert sent.operation == "CreateItem"
    assert sent.to == ["a@partner.example"] and sent.bcc == ["hidden@partner.example"]
    assert sent.message_id == "<smtp1@example.co.jp>" and sent.attachments == ["quote.pdf"]
    assert box.find_sent("<smtp1@example.co.jp>") is True
    assert fake.items_in(fake.folder_by_key("sentitems").id)


def test_a_removed_address_left_in_the_headers_stops_the_release(box, fake):
    raw = message(to="a@partner.example, b@partner.example", cc=None)
    item = ReleaseItem("o3", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example",))
    with pytest.raises(PermanentError, match="b@partner.example"):
        box.release(item)
    assert fake.sends == []


def test_crash_between_releasing_and_sent_reconciles_without_a_second_send(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, to=["a@partner.example"], cc=[], keep=("quote.pdf",))
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example",), source="exchange",
                       source_ref=held.ref)
    fake.fail_next("UpdateItem", "drop_after")  # the server sends, the answer never arrives
    with pytest.raises(TransientError, match="Cannot reach the Exchange server"):
        box.release(item)
    assert len(fake.sends) == 1
    # "restart": a new connector, as the helper would build after the crash
    restarted = ExchangeMailbox("work", ADDRESS, server=fake.url, username="user", password="secret")
    assert restarted.find_sent(item.message_id) is True
    assert restarted.release(item).detail["via"] == "already-sent"
    assert len(fake.sends) == 1
    restarted.close()


def test_short_throttling_is_waited_out(box, fake, monkeypatch):
    waits = []
    monkeypatch.setattr(_retry, "sleep", waits.append)
    held = take_one(box, fake)
    raw = final(held.raw, to=["a@partner.example"], cc=[], keep=())
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    fake.fail_next("UpdateItem", "busy", back_off_ms=800)
    box.release(item)
    assert waits == [0.8]
    assert len(fake.sends) == 1


def test_long_throttling_goes_back_to_the_outbox(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<t@example.co.jp>")
    item = ReleaseItem("o1", "<t@example.co.jp>", raw, ADDRESS, ("a@partner.example",))
    fake.fail_next("CreateItem", "busy", back_off_ms=120_000)
    with pytest.raises(TransientError) as info:
        box.release(item)
    assert info.value.retry_after == 120 and "busy" in str(info.value)
    assert fake.sends == []
    box.release(item)
    assert len(fake.sends) == 1


def test_http_503_is_transient_and_nothing_is_lost(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<t@example.co.jp>")
    item = ReleaseItem("o1", "<t@example.co.jp>", raw, ADDRESS, ("a@partner.example",))
    box.ensure_hold_folder()
    fake.fail_next("*", "http503", times=5, retry_after=30)
    with pytest.raises(TransientError) as info:
        box.release(item)
    assert info.value.retry_after is not None and info.value.retry_after > 0
    fake.failures.clear()
    box.release(item)
    assert len(fake.sends) == 1


def test_network_loss_is_transient_with_backoff(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, to=["a@partner.example"], cc=[], keep=())
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    fake.fail_next("*", "drop", times=2)
    with pytest.raises(TransientError, match="Cannot reach") as first:
        box.release(item)
    with pytest.raises(TransientError) as second:
        box.release(item)
    assert second.value.retry_after > first.value.retry_after  # backing off
    assert fake.sends == [] and held.ref in fake.items  # still held
    box.release(item)
    assert len(fake.sends) == 1


def test_unreachable_server(tmp_path):
    dead = FakeEWS(address=ADDRESS)
    url = dead.url
    dead.httpd.server_close()  # nothing listens there any more
    mailbox = ExchangeMailbox("work", ADDRESS, server=url, username="user", password="secret", timeout=5)
    with pytest.raises(TransientError, match="Cannot reach the Exchange server at http://127.0.0.1"):
        mailbox.fetch_held()


def test_wrong_password_asks_to_sign_in_again_and_sends_nothing(fake, caplog):
    caplog.set_level(logging.DEBUG)
    mailbox = ExchangeMailbox("work", ADDRESS, server=fake.url, username="user", password="not-the-password")
    item = ReleaseItem("o1", "<t@example.co.jp>", message(to="a@partner.example", cc=None), ADDRESS,
                       ("a@partner.example",))
    with pytest.raises(AuthError, match="sign in again") as info:
        mailbox.release(item)
    assert "\n" not in str(info.value) and "stays held" in str(info.value)
    assert fake.sends == []
    assert "not-the-password" not in caplog.text


def test_password_revoked_while_running(box, fake):
    box.ensure_hold_folder()
    fake.password = "changed-by-admin"
    with pytest.raises(AuthError):
        box.fetch_held()


def test_mailbox_full(box, fake):
    item = ReleaseItem("o1", "<t@example.co.jp>", message(to="a@partner.example", cc=None), ADDRESS,
                       ("a@partner.example",))
    box.ensure_hold_folder()
    fake.fail_next("CreateItem", "ErrorQuotaExceeded")
    with pytest.raises(PermanentError, match="mailbox .* is full"):
        box.release(item)
    assert fake.sends == []


def test_attachment_too_large(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, to=["a@partner.example"], cc=[], keep=("quote.pdf", "internal.xlsx"))
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    fake.fail_next("UpdateItem", "ErrorMessageSizeExceeded")
    with pytest.raises(PermanentError, match="too large"):
        box.release(item)
    assert fake.sends == []


def test_item_deleted_by_the_user_meanwhile(box, fake):
    held = take_one(box, fake)
    fake.delete_item(held.ref)
    raw = final(held.raw, to=["a@partner.example"], cc=[], keep=())
    item = ReleaseItem("o1", "<m1@example.co.jp>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    with pytest.raises(PermanentError, match="deleted from the mailbox"):
        box.release(item)
    assert fake.sends == []


def test_add_command_stores_password_in_keyring_not_config(fake, home):
    runner = CliRunner()
    result = runner.invoke(add_command, ["--address", ADDRESS, "--server", fake.url, "--username", "user",
                                         "--password-stdin"], input="secret\n")
    assert result.exit_code == 0, result.output
    text = (home / "config.toml").read_text()
    assert "secret" not in text
    cfg = config_mod.load(home / "config.toml")
    (account,) = cfg.accounts
    assert account.kind == "exchange" and account.address == ADDRESS and account.settings["server"] == fake.url
    assert secrets.get(account.secret_key("password")) == "secret"
    assert fake.folder_by_name(HOLD_FOLDER) is not None  # created on first run
    mailbox = registry.build(account, home)
    assert isinstance(mailbox, ExchangeMailbox)
    fake.put_item(message())
    assert len(mailbox.fetch_held()) == 1
    mailbox.close()


@pytest.mark.parametrize("args, stdin, needle", [
    (["--address", "nobody", "--server", "http://x/EWS/Exchange.asmx", "--password-stdin"], "pw\n",
     "not an email address"),
    (["--address", ADDRESS, "--password-stdin"], "pw\n", "exactly one of --server"),
    (["--address", ADDRESS, "--server", "ftp://x", "--password-stdin"], "pw\n", "not an http(s) URL"),
    (["--address", ADDRESS, "--server", "http://x/EWS/Exchange.asmx"], "", "--password-stdin"),
    (["--address", ADDRESS, "--server", "http://x/EWS/Exchange.asmx", "--password-stdin"], "\n", "No password"),
])
def test_add_command_rejects_bad_input(home, args, stdin, needle):
    result = CliRunner().invoke(add_command, args, input=stdin)
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not (home / "config.toml").exists()


def test_add_command_wrong_password_saves_nothing(fake, home):
    result = CliRunner().invoke(add_command, ["--address", ADDRESS, "--server", fake.url, "--username", "user",
                                              "--password-stdin"], input="wrong\n")
    assert result.exit_code == 1
    assert "Error: Exchange refused the sign-in" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (home / "config.toml").exists()
    assert secrets.get(f"account:{ADDRESS}:password") is None


# -- end to end through the outbox: hold folder -> confirm -> one send -> kill -9 -> reconcile ------------

E2E_POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n\n[confirm]\nwhen = "external"\n'
ROOT = Path(__file__).resolve().parents[1]


def release_in_a_process_killed_after_the_transport(item_id: str) -> subprocess.CompletedProcess:
    script = ("import sys; from sendguard.service import Helper; "
              "Helper().outbox.release(sys.argv[1]); print('recorded')")
    env = dict(os.environ, SENDGUARD_CRASH_AT="release.after_transport")
    return subprocess.run([sys.executable, "-c", script, item_id], env=env, capture_output=True, timeout=60,
                          cwd=ROOT)


def test_end_to_end_hold_folder_confirm_crash_and_reconcile(fake, home):
    from sendguard.service import Helper

    (home / "policy.toml").write_text(E2E_POLICY)
    account = config_mod.Account("work", "exchange", ADDRESS, {"server": fake.url, "username": "user"})
    config_mod.save_account(account, home / "config.toml")
    secrets.put(account.secret_key("password"), "secret")
    helper = Helper(home)
    try:
        helper.poll_held()  # first run: the hold folder is created
        assert fake.folder_by_name(HOLD_FOLDER) is not None
        ref = fake.put_item(message(attachments=("quote.pdf",)))
        helper.poll_held()
        helper.poll_held()  # taken once, not twice
        (item,) = helper.outbox.list()
        assert (item.state, item.source, item.source_ref, item.account) == (
            "awaiting_confirmation", "exchange", ref, "work")
        assert item.message_id == "<m1@example.co.jp>"
        helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"])
        assert helper.outbox.get(item.id).state == "confirmed"
    finally:
        helper.stop()

    crashed = release_in_a_process_killed_after_the_transport(item.id)
    assert crashed.returncode == -signal.SIGKILL and b"recorded" not in crashed.stdout, crashed.stderr
    (sent,) = fake.sends
    assert sent.to == ["a@partner.example"] and sent.cc == ["boss@example.co.jp"] and sent.bcc == []
    assert sent.message_id == "<m1@example.co.jp>"

    restarted = Helper(home)
    try:
        assert restarted.outbox.get(item.id).state == "releasing"
        restarted.outbox.reconcile()  # Sent Items has it
        assert restarted.outbox.get(item.id).state == "sent"
        assert restarted.outbox.release_due() == []
    finally:
        restarted.stop()
    assert len(fake.sends) == 1
    assert fake.requests.count("UpdateItem") >= 1 and fake.requests.count("SendItem") == 0


def test_end_to_end_smtp_mail_released_through_exchange(fake, home):
    from sendguard.service import Helper

    (home / "policy.toml").write_text(E2E_POLICY)
    account = config_mod.Account("work", "exchange", ADDRESS, {"server": fake.url, "username": "user"})
    config_mod.save_account(account, home / "config.toml")
    secrets.put(account.secret_key("password"), "secret")
    helper = Helper(home)
    try:
        raw = message(to="a@partner.example", cc=None, attachments=(), msgid="<smtp-e2e@example.co.jp>")
        item = helper.outbox.submit(raw, ADDRESS, ["a@partner.example", "hidden@partner.example"])
        assert item.state == "awaiting_confirmation"
        helper.outbox.confirm(item.id)
        fake.fail_next("CreateItem", "busy", back_off_ms=60_000)  # throttled: nothing sent, retried later
        assert helper.outbox.release(item.id).state == "failed"
        assert fake.sends == []
        assert [i.id for i in helper.outbox.due()] == []  # waits for the back-off
        helper.outbox.clock = lambda: time.time() + 120
        helper.outbox.release_due()
        assert helper.outbox.get(item.id).state == "sent"
    finally:
        helper.stop()
    (sent,) = fake.sends
    assert sent.operation == "CreateItem" and sent.bcc == ["hidden@partner.example"]


def test_oauth_sign_in_with_msal_and_bearer_tokens_on_ews(home, monkeypatch):
    """--oauth: msal device-code sign-in (token cache in the keyring), then EWS calls with the bearer token."""
    from tests.fakes.graph_server import FakeGraph

    # oauthlib refuses bearer tokens over plain http; the local EWS server is http (production is https)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with FakeGraph(address=ADDRESS) as idp:
        with FakeEWS(address=ADDRESS, token=idp.access_tokens) as ews:
            result = CliRunner().invoke(add_command, [
                "--address", ADDRESS, "--server", ews.url, "--oauth", "--tenant", idp.tenant,
                "--client-id", idp.client_id, "--authority", idp.base, "--name", "onprem"],
                env={"REQUESTS_CA_BUNDLE": str(idp.ca_file)})
            assert result.exit_code == 0, result.output
            assert "ABCD-EFGH" in result.output
            (account,) = config_mod.load(home / "config.toml").accounts
            assert account.settings["auth"] == "oauth"
            assert secrets.get(account.secret_key("password")) is None
            assert "RefreshToken" in secrets.get(account.secret_key("token_cache"))
            account.settings["ca_bundle"] = str(idp.ca_file)
            mailbox = registry.build(account, home)
            ews.put_item(message())
            assert len(mailbox.fetch_held()) == 1
            idp.revoke()  # tokens revoked by the admin: EWS says 401, msal cannot refresh
            with pytest.raises(AuthError, match="sign in again"):
                mailbox.fetch_held()
            mailbox.close()
