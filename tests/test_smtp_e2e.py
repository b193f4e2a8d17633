"""Real SMTP end to end: smtplib -> our aiosmtpd server -> outbox -> CLI confirm -> Maildir."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

from conftest import make_message, run_cli, smtp_send, wait_for

from sendguard.mailboxes.maildir import MaildirMailbox


def released(home: Path) -> list[email.message.EmailMessage]:
    box = MaildirMailbox(home / "sent")
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in box.messages()]


def test_submit_list_confirm_with_removals_releases_exact_message(home, helper, write_policy):
    write_policy()
    h = helper()
    msg = make_message(
        to=["Hanako <hanako@partner.example>", "jiro@other.example"],
        cc="boss@example.co.jp",
        attachments=[("見積書.pdf", b"%PDF-1.4 quote", "application/pdf"),
                     ("顧客一覧.csv", b"name,mail\nA,a@x\n", "text/csv")],
    )
    # Bcc only in the envelope, as mail clients do
    reply = smtp_send(h.smtp.port, msg, to_addrs=["hanako@partner.example", "jiro@other.example",
                                                   "boss@example.co.jp", "secret@partner.example"])
    assert reply == {}
    item = wait_for(lambda: [i for i in h.outbox.list() if i.state == "awaiting_confirmation"])[0]

    out = run_cli("queue", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [x["id"] for x in listed] == [item.id]
    entry = listed[0]
    assert {"id", "state", "from", "subject", "recipients", "attachments", "created_at"} <= set(entry)
    assert entry["state"] == "awaiting_confirmation"
    assert entry["subject"] == "見積書の送付"
    fields = {r["address"]: r["field"] for r in entry["recipients"]}
    assert fields == {"hanako@partner.example": "to", "jiro@other.example": "to", "boss@example.co.jp": "cc",
                      "secret@partner.example": "bcc"}
    assert [a["filename"] for a in entry["attachments"]] == ["見積書.pdf", "顧客一覧.csv"]

    out = run_cli("queue", "confirm", item.id, "--remove", "jiro@other.example", "--remove-attachment", "顧客一覧.csv")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: h.outbox.get(item.id).state == "sent")

    [sent] = released(home)
    assert sent["To"] == "Hanako <hanako@partner.example>"
    assert sent["Cc"] == "boss@example.co.jp"
    assert sent["Bcc"] is None
    assert "secret@partner.example" not in sent.as_string().split("\n\n", 1)[0].replace(
        "X-SendGuard-Envelope-To: secret@partner.example", "")
    assert sorted(sent.get_all("X-SendGuard-Envelope-To")) == sorted(
        ["hanako@partner.example", "boss@example.co.jp", "secret@partner.example"])
    names = [p.get_filename() for p in sent.iter_attachments()]
    assert names == ["見積書.pdf"]
    assert next(sent.iter_attachments()).get_content() == b"%PDF-1.4 quote"
    assert sent["Subject"] == "見積書の送付"

    show = json.loads(run_cli("queue", "show", item.id, "--json").stdout)
    events = [a["event"] for a in show["audit"]]
    assert events == ["received", "verdict", "confirmed", "releasing", "released"]
    confirmed = next(a for a in show["audit"] if a["event"] == "confirmed")
    assert confirmed["data"]["removed_recipients"] == ["jiro@other.example"]
    assert confirmed["data"]["removed_attachments"] == ["2"]


def test_allow_verdict_released_without_window(home, helper, write_policy):
    write_policy()
    h = helper()
    smtp_send(h.smtp.port, make_message(to="hanako@example.co.jp", cc="dev@sub.example.co.jp"))
    [item] = wait_for(lambda: h.outbox.list(["sent"]))  # the file is written while still "releasing"
    assert len(released(home)) == 1
    assert item.verdict.action == "allow"


def test_confirm_when_always_holds_internal_mail(home, helper, write_policy):
    write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "always"\n')
    h = helper()
    smtp_send(h.smtp.port, make_message(to="hanako@example.co.jp"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert item.verdict.action == "confirm"  # `check` gives what the helper does for this user
    assert [r.rule for r in item.verdict.reasons] == ["confirm_always"]
    assert not released(home)


def test_bcc_conversion_moves_external_addresses_out_of_headers(home, helper, write_policy):
    write_policy()
    h = helper()
    rcpts = [f"user{i}@customer{i}.example" for i in range(12)]
    smtp_send(h.smtp.port, make_message(to=rcpts, cc="boss@example.co.jp"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert item.check.force_bcc is True
    assert any(r.rule == "many_external_recipients" for r in item.verdict.reasons)
    assert run_cli("queue", "confirm", item.id, "--bcc").returncode == 0
    wait_for(lambda: h.outbox.get(item.id).state == "sent")
    [sent] = released(home)
    assert sent["To"] == "undisclosed-recipients:;"
    assert sent["Cc"] == "boss@example.co.jp"
    assert sent["Bcc"] is None
    assert sorted(sent.get_all("X-SendGuard-Envelope-To")) == sorted(rcpts + ["boss@example.co.jp"])


def test_auto_bcc_applies_without_user_choice(home, helper, write_policy):
    write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n'
                 '[rules]\nmany_external_recipients = 3\nauto_bcc = true\n')
    h = helper()
    smtp_send(h.smtp.port, make_message(to=[f"u{i}@c{i}.example" for i in range(3)]))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert run_cli("queue", "confirm", item.id).returncode == 0
    wait_for(lambda: h.outbox.get(item.id).state == "sent")
    [sent] = released(home)
    assert sent["To"] == "undisclosed-recipients:;"


def test_cancel_keeps_message_and_export_returns_it(home, helper, write_policy, tmp_path):
    write_policy()
    h = helper()
    msg = make_message(to="x@partner.example")
    smtp_send(h.smtp.port, msg)
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert run_cli("queue", "cancel", item.id).returncode == 0
    assert h.outbox.get(item.id).state == "cancelled"
    out = tmp_path / "m.eml"
    assert run_cli("queue", "export", item.id, "--out", str(out)).returncode == 0
    exported = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert exported["Subject"] == "見積書の送付"
    # a cancelled message can never be confirmed
    again = run_cli("queue", "confirm", item.id)
    assert again.returncode != 0 and b"cancelled" in again.stderr
    assert not released(home)


def test_hold_seconds_gives_an_undo_window(home, helper, write_policy):
    write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nhold_seconds = 3\n')
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    h.outbox.confirm(item.id)
    assert h.outbox.get(item.id).state == "confirmed"
    h.outbox.cancel(item.id, reason="undo")
    h.tick()
    assert h.outbox.get(item.id).state == "cancelled"
    assert not released(home)


def test_block_verdict_cannot_be_confirmed_until_recipient_removed(home, helper, write_policy):
    write_policy()
    h = helper()
    smtp_send(h.smtp.port, make_message(to=["x@rival.example", "y@partner.example"]))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert item.verdict.action == "block"
    refused = run_cli("queue", "confirm", item.id)
    assert refused.returncode == 1
    assert b"x@rival.example" in refused.stderr and b"Traceback" not in refused.stderr
    assert run_cli("queue", "confirm", item.id, "--remove", "x@rival.example").returncode == 0
    wait_for(lambda: h.outbox.get(item.id).state == "sent")


def test_unknown_removal_is_a_clear_error(home, helper, write_policy):
    write_policy()
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    out = run_cli("queue", "confirm", item.id, "--remove", "nobody@nowhere.example")
    assert out.returncode == 1
    assert out.stderr.decode().strip() == f"Error: message {item.id} has no recipient 'nobody@nowhere.example'"
    out = run_cli("queue", "confirm", item.id, "--remove-attachment", "nothing.pdf")
    assert out.returncode == 1 and b"no attachment 'nothing.pdf'" in out.stderr
    assert h.outbox.get(item.id).state == "awaiting_confirmation"


def test_a_policy_unreadable_at_start_holds_every_message(home, helper, write_policy):
    """A policy.toml with a mistake at start: no good policy was ever in force, so the helper cannot know
    what the organization blocks. Every message is held for the user with the reason, none released on the
    built-in defaults; once the file is fixed the organization's rules apply again."""
    bad = write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n[rules]\n'
                       'blocked_domains = ["rival.example"]\nencrypted_attachment = "warn"\n')
    h = helper()
    smtp_send(h.smtp.port, make_message(to="hanako@example.co.jp"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert item.verdict.action == "confirm"
    [reason] = [r for r in item.verdict.reasons if r.rule == "policy_error"]
    assert "policy.toml:5" in reason.message and "encrypted_attachment" in reason.message
    assert not released(home)

    bad.write_text('[organization]\ninternal_domains = ["example.co.jp"]\n[rules]\n'
                   'blocked_domains = ["rival.example"]\n', encoding="utf-8")
    smtp_send(h.smtp.port, make_message(to="k@rival.example", subject="fixed"))
    fixed = wait_for(lambda: [i for i in h.outbox.list() if i.subject == "fixed" and i.verdict])[0]
    assert fixed.verdict.action == "block"
    assert "policy_error" not in [r.rule for r in fixed.verdict.reasons]


def test_a_machine_policy_still_applies_when_the_users_policy_is_unreadable(home, helper, write_policy, tmp_path,
                                                                            monkeypatch):
    admin = tmp_path / "admin-policy.toml"
    admin.write_text('[rules]\nblocked_domains = ["rival.example"]\n', encoding="utf-8")
    monkeypatch.setenv("SENDGUARD_ADMIN_POLICY", str(admin))
    write_policy('[organization]\ninternal_domains = ["example.co.jp"\n')  # not TOML
    h = helper()
    smtp_send(h.smtp.port, make_message(to="k@rival.example"))
    item = wait_for(lambda: [i for i in h.outbox.list() if i.verdict])[0]
    assert item.verdict.action == "block"
    assert "policy_error" in [r.rule for r in item.verdict.reasons]
    assert not released(home)
