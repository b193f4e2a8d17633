"""The Graph connector against a local Graph + sign-in server, through the real msal and requests."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from sendguard import config as config_mod
from sendguard import secrets
from sendguard.accounts.graph import add_command
from sendguard.config import Account
from sendguard.mailboxes import _retry, registry
from sendguard.mailboxes.base import AuthError, PermanentError, ReleaseItem, TransientError
from sendguard.mailboxes.graph import (
    DRAFT_CATEGORY,
    HOLD_FOLDER,
    TAKEN_CATEGORY,
    GraphMailbox,
    MsalTokenSource,
)
from tests.fakes.graph_server import FakeGraph

ADDRESS = "user@contoso.example"
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """Pauses the connector would honour in place are recorded, not slept (conftest isolates home and keyring)."""
    monkeypatch.setattr(_retry, "sleep", lambda seconds: None)


@pytest.fixture
def fake():
    with FakeGraph(address=ADDRESS) as server:
        yield server


def account_for(fake: FakeGraph) -> Account:
    return Account("m365", "graph", ADDRESS, {
        "tenant": fake.tenant, "client_id": fake.client_id, "authority": fake.base,
        "graph_endpoint": fake.graph_endpoint, "ca_bundle": str(fake.ca_file)})


@pytest.fixture
def box(fake, home):
    account = account_for(fake)
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    mailbox = registry.build(account, home)
    yield mailbox
    mailbox.close()


def message(to="a@partner.example, b@partner.example", cc="boss@contoso.example", attachments=("quote.pdf",),
            msgid="<g1@contoso.example>", sizes=None) -> bytes:
    m = EmailMessage()
    m["From"] = ADDRESS
    m["To"] = to
    if cc:
        m["Cc"] = cc
    m["Subject"] = "見積書"
    if msgid:
        m["Message-ID"] = msgid
    m.set_content("お見積りをお送りします。")
    for index, name in enumerate(attachments):
        size = (sizes or {}).get(name, 64)
        m.add_attachment(bytes([index + 1]) * size, maintype="application", subtype="octet-stream", filename=name)
    return bytes(m)


def final(held_raw: bytes, to, cc, keep) -> bytes:
    m = email.message_from_bytes(held_raw, policy=email.policy.default)
    for name, values in (("To", to), ("Cc", cc), ("Bcc", [])):
        del m[name]
        if values:
            m[name] = ", ".join(values)
    if m.is_multipart():
        m.set_payload([p for p in m.get_payload() if p.get_filename() in (None, *keep)])
    return m.as_bytes(policy=email.policy.SMTP)


def take_one(box, fake, raw=None, **kw):
    box.ensure_hold_folder()
    fake.put_item(raw or message(attachments=("quote.pdf", "internal.xlsx")), **kw)
    (held,) = box.fetch_held()
    box.ack_held(held.ref)
    return held


def test_registry_builds_a_graph_mailbox(box):
    assert isinstance(box, GraphMailbox) and box.kind == "graph"


def test_first_run_creates_hold_folder_and_items_are_taken_once(box, fake):
    assert box.fetch_held() == []
    assert fake.requests.count("POST /v1.0/me/mailFolders") == 1
    in_hold = fake.put_item(message(msgid="<h@contoso.example>"))
    marked = fake.put_item(message(msgid="<d@contoso.example>"), folder="drafts", categories=[DRAFT_CATEGORY])
    fake.put_item(message(msgid="<p@contoso.example>"), folder="drafts")
    held = {h.ref: h for h in box.fetch_held()}
    assert set(held) == {in_hold, marked}
    h = held[in_hold]
    assert h.source == "graph" and h.envelope_from == ADDRESS
    assert set(h.recipients) == {"a@partner.example", "b@partner.example", "boss@contoso.example"}
    assert email.message_from_bytes(h.raw)["Message-ID"] == "<h@contoso.example>"
    for ref in held:
        box.ack_held(ref)
    assert TAKEN_CATEGORY in fake.messages[in_hold].categories
    assert box.fetch_held() == []
    again = GraphMailbox("m365", ADDRESS, box.tokens, endpoint=fake.graph_endpoint)
    again.ensure_hold_folder()
    assert fake.requests.count("POST /v1.0/me/mailFolders") == 1


def test_release_held_item_applies_removals_and_sends_once(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, ["a@partner.example"], ["boss@contoso.example"], ("quote.pdf",))
    item = ReleaseItem("o1", "<g1@contoso.example>", raw, ADDRESS, ("a@partner.example", "boss@contoso.example"),
                       source="graph", source_ref=held.ref)
    receipt = box.release(item)
    assert receipt.transport == "graph" and receipt.detail["via"] == "messages/send"
    (sent,) = fake.sends
    assert sent.route == "send"
    assert sent.to == ["a@partner.example"] and sent.cc == ["boss@contoso.example"] and sent.bcc == []
    assert sent.attachments == ["quote.pdf"]
    assert sent.internet_message_id == "<g1@contoso.example>"
    assert fake.messages[held.ref].folder == fake.folder_id("sentitems")
    assert TAKEN_CATEGORY not in fake.messages[held.ref].categories
    assert box.find_sent("<g1@contoso.example>") is True
    assert box.release(item).detail["via"] == "already-sent"
    assert len(fake.sends) == 1


def test_release_held_item_with_bcc_conversion(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, [], ["boss@contoso.example"], ("quote.pdf", "internal.xlsx"))
    item = ReleaseItem("o1", "<g1@contoso.example>", raw, ADDRESS,
                       ("a@partner.example", "b@partner.example", "boss@contoso.example"),
                       bcc=("a@partner.example", "b@partner.example"), source_ref=held.ref)
    box.release(item)
    (sent,) = fake.sends
    assert sent.to == [] and sent.cc == ["boss@contoso.example"]
    assert sorted(sent.bcc) == ["a@partner.example", "b@partner.example"]


def test_release_smtp_mail_with_sendmail(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<s1@contoso.example>")
    item = ReleaseItem("o2", "<s1@contoso.example>", raw, ADDRESS, ("a@partner.example", "hidden@partner.example"),
                       bcc=("hidden@partner.example",))
    assert box.find_sent("<s1@contoso.example>") is False
    assert box.release(item).detail["via"] == "sendMail"
    (sent,) = fake.sends
    assert sent.route == "sendMail"
    assert sent.to == ["a@partner.example"] and sent.bcc == ["hidden@partner.example"]
    assert sent.internet_message_id == "<s1@contoso.example>"
    assert box.find_sent("<s1@contoso.example>") is True


def test_large_attachment_goes_through_an_upload_session(box, fake):
    raw = message(to="a@partner.example", cc=None, attachments=("big.bin", "small.txt"),
                  sizes={"big.bin": 5 * MB, "small.txt": 100}, msgid="<big@contoso.example>")
    item = ReleaseItem("o3", "<big@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    receipt = box.release(item)
    assert receipt.detail["via"] == "messages/send+uploadSession" and receipt.detail["uploads"] == 1
    (sent,) = fake.sends
    assert sorted(sent.attachments) == ["big.bin", "small.txt"]
    assert dict(zip(sent.attachments, sent.attachment_sizes, strict=True))["big.bin"] == 5 * MB
    puts = [r for r in fake.requests if r.startswith("PUT /uploadSessions/")]
    assert len(puts) == 2  # 5 MB in 3.2 MiB ranges
    assert fake.in_folder("drafts") == []


def test_crash_between_releasing_and_sent_reconciles_without_a_second_send(box, fake, home):
    held = take_one(box, fake)
    raw = final(held.raw, ["a@partner.example"], [], ("quote.pdf",))
    item = ReleaseItem("o1", "<g1@contoso.example>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    fake.fail_next("/send", "drop_after")
    with pytest.raises(TransientError, match="Cannot reach Microsoft Graph"):
        box.release(item)
    assert len(fake.sends) == 1
    # as after a restart: a new connector, token cache read from the keyring
    restarted = registry.build(account_for(fake), home)
    assert restarted is not box
    assert restarted.find_sent(item.message_id) is True
    assert restarted.release(item).detail["via"] == "already-sent"
    assert len(fake.sends) == 1


def test_lost_answer_to_sendmail_is_not_sent_twice(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<s2@contoso.example>")
    item = ReleaseItem("o2", "<s2@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    fake.fail_next("/sendMail", "drop_after")
    with pytest.raises(TransientError):
        box.release(item)
    box.release(item)
    assert len(fake.sends) == 1


def test_throttling_honours_retry_after(box, fake, monkeypatch):
    waits = []
    monkeypatch.setattr(_retry, "sleep", waits.append)
    held = take_one(box, fake)
    raw = final(held.raw, ["a@partner.example"], [], ())
    item = ReleaseItem("o1", "<g1@contoso.example>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    fake.fail_next("/send", "429", retry_after=2)
    fake.fail_next("PATCH", "503", retry_after=1)
    box.release(item)
    assert sorted(waits) == [1.0, 2.0]
    assert len(fake.sends) == 1


def test_long_throttling_goes_back_to_the_outbox(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<t@contoso.example>")
    item = ReleaseItem("o1", "<t@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    fake.fail_next("/sendMail", "429", retry_after=90)
    with pytest.raises(TransientError, match="throttling") as info:
        box.release(item)
    assert info.value.retry_after == 90
    assert fake.sends == []
    box.release(item)
    assert len(fake.sends) == 1


def test_503_on_send_is_not_repeated_in_place(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<u@contoso.example>")
    item = ReleaseItem("o1", "<u@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    fake.fail_next("/sendMail", "503", retry_after=1)
    with pytest.raises(TransientError) as info:
        box.release(item)
    assert info.value.retry_after == 1
    assert fake.sends == []


def test_network_loss_keeps_the_mail_held(box, fake):
    held = take_one(box, fake)
    raw = final(held.raw, ["a@partner.example"], [], ())
    item = ReleaseItem("o1", "<g1@contoso.example>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    fake.fail_next("*", "drop", times=2)
    with pytest.raises(TransientError, match="Cannot reach") as first:
        box.release(item)
    with pytest.raises(TransientError) as second:
        box.release(item)
    assert second.value.retry_after > first.value.retry_after
    assert fake.sends == [] and fake.messages[held.ref].is_draft
    box.release(item)
    assert len(fake.sends) == 1


def test_expired_access_token_is_refreshed_silently(box, fake):
    box.ensure_hold_folder()
    fake.access_tokens.clear()  # every access token expired; refresh tokens still good
    assert box.fetch_held() == []
    assert "refresh_token" in fake.grants


def test_revoked_sign_in_asks_to_sign_in_again_and_sends_nothing(box, fake, caplog):
    caplog.set_level(logging.DEBUG)
    raw = message(to="a@partner.example", cc=None, msgid="<r@contoso.example>")
    item = ReleaseItem("o1", "<r@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    box.ensure_hold_folder()
    fake.revoke()
    with pytest.raises(AuthError, match="sign in again") as info:
        box.release(item)
    assert "stays held" in str(info.value) and "\n" not in str(info.value)
    assert fake.sends == []
    stored = secrets.get(Account("m365", "graph").secret_key("token_cache"))
    for token in json.loads(stored)["RefreshToken"].values():
        assert token["secret"] not in caplog.text


def test_mailbox_full(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<q@contoso.example>")
    item = ReleaseItem("o1", "<q@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    fake.fail_next("/sendMail", "403:ErrorQuotaExceeded")
    with pytest.raises(PermanentError, match="mailbox .* is full"):
        box.release(item)
    assert fake.sends == []


def test_attachment_too_large(box, fake):
    raw = message(to="a@partner.example", cc=None, msgid="<l@contoso.example>")
    item = ReleaseItem("o1", "<l@contoso.example>", raw, ADDRESS, ("a@partner.example",))
    fake.fail_next("/sendMail", "413:ErrorMessageSizeExceeded")
    with pytest.raises(PermanentError, match="too large"):
        box.release(item)
    assert fake.sends == []


def test_item_deleted_by_the_user_meanwhile(box, fake):
    held = take_one(box, fake)
    fake.delete_item(held.ref)
    raw = final(held.raw, ["a@partner.example"], [], ())
    item = ReleaseItem("o1", "<g1@contoso.example>", raw, ADDRESS, ("a@partner.example",), source_ref=held.ref)
    with pytest.raises(PermanentError, match="deleted from the mailbox"):
        box.release(item)
    assert fake.sends == []


def test_add_command_signs_in_with_device_code_and_keeps_tokens_out_of_config(fake, home):
    result = CliRunner().invoke(add_command, [
        "--address", ADDRESS, "--tenant", fake.tenant, "--client-id", fake.client_id, "--authority", fake.base,
        "--graph-endpoint", fake.graph_endpoint, "--ca-bundle", str(fake.ca_file)])
    assert result.exit_code == 0, result.output
    assert "ABCD-EFGH" in result.output  # the device code shown to the user
    text = (home / "config.toml").read_text()
    assert "access_token" not in text and "refresh" not in text.lower()
    (account,) = config_mod.load(home / "config.toml").accounts
    assert account.kind == "graph" and account.settings["tenant"] == fake.tenant
    assert secrets.get(account.secret_key("token_cache"))
    assert fake.in_folder(HOLD_FOLDER) == []  # created
    mailbox = registry.build(account, home)
    fake.put_item(message())
    assert len(mailbox.fetch_held()) == 1


@pytest.mark.parametrize("args, needle", [
    (["--address", "nobody", "--client-id", "x"], "not an email address"),
    (["--address", ADDRESS, "--client-id", "x", "--graph-endpoint", "http://graph.local/v1.0"], "https URL"),
    (["--address", ADDRESS, "--client-id", "x", "--authority", "ftp://login"], "https URL"),
    (["--address", ADDRESS, "--client-id", "x", "--tenant", "a/b"], "not a tenant"),
    (["--address", ADDRESS], "--client-id"),
])
def test_add_command_rejects_bad_input(home, args, needle):
    result = CliRunner().invoke(add_command, args)
    assert result.exit_code != 0 and needle in result.output
    assert "Traceback" not in result.output
    assert not (home / "config.toml").exists()


def test_add_command_unknown_application_is_one_clear_line(fake, home):
    result = CliRunner().invoke(add_command, [
        "--address", ADDRESS, "--tenant", fake.tenant, "--client-id", "wrong", "--authority", fake.base,
        "--graph-endpoint", fake.graph_endpoint, "--ca-bundle", str(fake.ca_file)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert not (home / "config.toml").exists()


# -- end to end through the outbox: hold folder -> confirm -> one send -> kill -9 -> reconcile ------------

E2E_POLICY = '[organization]\ninternal_domains = ["contoso.example"]\n\n[confirm]\nwhen = "external"\n'
ROOT = Path(__file__).resolve().parents[1]


def test_end_to_end_hold_folder_confirm_crash_and_reconcile(fake, home):
    from sendguard.service import Helper

    (home / "policy.toml").write_text(E2E_POLICY)
    account = account_for(fake)
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    helper = Helper(home)
    try:
        helper.poll_held()  # first run: the hold folder is created
        ref = fake.put_item(message(attachments=("quote.pdf", "internal.xlsx")))
        helper.poll_held()
        helper.poll_held()
        (item,) = helper.outbox.list()
        assert (item.state, item.source, item.source_ref) == ("awaiting_confirmation", "graph", ref)
        helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"],
                              removed_attachments=["internal.xlsx"])
    finally:
        helper.stop()

    script = ("import sys; from sendguard.service import Helper; "
              "Helper().outbox.release(sys.argv[1]); print('recorded')")
    env = dict(os.environ, SENDGUARD_CRASH_AT="release.after_transport")
    crashed = subprocess.run([sys.executable, "-c", script, item.id], env=env, capture_output=True, timeout=60,
                             cwd=ROOT)
    assert crashed.returncode == -signal.SIGKILL and b"recorded" not in crashed.stdout, crashed.stderr
    (sent,) = fake.sends
    assert sent.route == "send" and sent.to == ["a@partner.example"] and sent.cc == ["boss@contoso.example"]
    assert sent.attachments == ["quote.pdf"]

    restarted = Helper(home)
    try:
        assert restarted.outbox.get(item.id).state == "releasing"
        restarted.outbox.reconcile()
        assert restarted.outbox.get(item.id).state == "sent"
        assert restarted.outbox.release_due() == []
    finally:
        restarted.stop()
    assert len(fake.sends) == 1


def test_end_to_end_revoked_sign_in_keeps_mail_held(fake, home):
    from sendguard.service import Helper

    (home / "policy.toml").write_text(E2E_POLICY)
    account = account_for(fake)
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    helper = Helper(home)
    try:
        raw = message(to="a@partner.example", cc=None, msgid="<rev@contoso.example>")
        item = helper.outbox.submit(raw, ADDRESS, ["a@partner.example"])
        helper.outbox.confirm(item.id)
        fake.revoke()
        failed = helper.outbox.release(item.id)
        assert failed.state == "failed" and "sign in again" in failed.last_error
        assert fake.sends == []
        # the user signs in again (another process writes the keyring); the next attempt goes out once
        MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
        helper.outbox.clock = lambda: time.time() + 601
        helper.outbox.release_due()
        assert helper.outbox.get(item.id).state == "sent"
    finally:
        helper.stop()
    assert len(fake.sends) == 1
