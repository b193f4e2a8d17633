"""The wrong-customer and forgotten-file rules through the product: real SMTP -> outbox -> CLI -> Maildir, and `sendguard check`."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

from conftest import SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for

from sendguard.mailboxes.maildir import MaildirMailbox

POLICY = SAMPLE_POLICY + """
[[rules.address]]
match = ["*@careful.example"]
action = "reconfirm"
message = "careful.example は要注意の取引先です"

[[rules.auto_cc]]
when_recipient = ["*@customer.example"]
cc = ["legal@example.co.jp"]
bcc = ["archive@example.co.jp"]

[rules.suppression]
files = ["optout.csv"]
action = "remove"
"""


def released(home: Path) -> list[email.message.EmailMessage]:
    box = MaildirMailbox(home / "sent")
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in box.messages()]


def setup_policy(home: Path) -> None:
    (home / "optout.csv").write_text("address\noptout@customer.example\n", encoding="utf-8")
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")


def held(h, state="awaiting_confirmation"):
    return wait_for(lambda: h.outbox.list([state]))[0]


def test_reconfirm_needs_the_second_confirmation_on_the_cli(home, helper):
    setup_policy(home)
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@careful.example"))
    item = held(h)
    assert item.verdict.action == "reconfirm"
    out = run_cli("queue", "confirm", item.id)
    err = out.stderr.decode()
    assert out.returncode == 1 and "--reconfirmed" in err and "要注意の取引先" in err and "Traceback" not in err
    assert h.outbox.get(item.id).state == "awaiting_confirmation"
    out = run_cli("queue", "confirm", item.id, "--reconfirmed")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: h.outbox.get(item.id).state == "sent")
    show = json.loads(run_cli("queue", "show", item.id, "--json").stdout)
    confirmed = next(a for a in show["audit"] if a["event"] == "confirmed")
    assert confirmed["data"]["reconfirmed"] == ["address_rule"]


def test_auto_cc_is_released_and_suppressed_recipient_is_removed(home, helper):
    setup_policy(home)
    h = helper()
    msg = make_message(to=["a@customer.example", "optout@customer.example"])
    smtp_send(h.smtp.port, msg)
    item = held(h)
    rows = item.check.by_address
    assert "auto_added" in rows["legal@example.co.jp"].flags and rows["legal@example.co.jp"].field == "cc"
    assert "auto_added" in rows["archive@example.co.jp"].flags and rows["archive@example.co.jp"].field == "bcc"
    assert "suppressed" in rows["optout@customer.example"].flags
    reasons = {r.rule: r for r in item.verdict.reasons}
    assert "optout@customer.example" in reasons["suppressed"].message
    assert run_cli("queue", "confirm", item.id).returncode == 0
    wait_for(lambda: h.outbox.get(item.id).state == "sent")
    [sent] = released(home)
    assert sent["To"] == "a@customer.example"
    assert sent["Cc"] == "legal@example.co.jp"
    assert sent["Bcc"] is None
    assert sorted(sent.get_all("X-SendGuard-Envelope-To")) == [
        "a@customer.example", "archive@example.co.jp", "legal@example.co.jp"]


def test_reply_adding_a_domain_and_lookalike_of_a_sent_to_domain(home, helper):
    setup_policy(home)
    h = helper()
    first = make_message(to="a@client1.example", message_id="<thread-1@example.co.jp>")
    smtp_send(h.smtp.port, first)
    item = held(h)
    assert run_cli("queue", "confirm", item.id).returncode == 0
    wait_for(lambda: h.outbox.get(item.id).state == "sent")

    reply = make_message(to=["a@client1.example", "z@other.example"], subject="Re: 見積書の送付")
    reply["In-Reply-To"] = "<thread-1@example.co.jp>"
    path = home / "reply.eml"
    path.write_bytes(reply.as_bytes())
    result = json.loads(run_cli("check", str(path), "--json").stdout)
    assert [r["target"] for r in result["verdict"]["reasons"] if r["rule"] == "reply_new_domain"] == ["other.example"]

    typo = home / "typo.eml"
    typo.write_bytes(make_message(to="a@c1ient1.example").as_bytes())
    result = json.loads(run_cli("check", str(typo), "--json").stdout)
    [look] = [r for r in result["verdict"]["reasons"] if r["rule"] == "lookalike_domain"]
    assert "client1.example" in look["message"] and result["verdict"]["action"] == "approve"
    fine = home / "fine.eml"
    fine.write_bytes(make_message(to="a@client1.example").as_bytes())
    result = json.loads(run_cli("check", str(fine), "--json").stdout)
    assert not [r for r in result["verdict"]["reasons"] if r["rule"] in ("lookalike_domain", "new_domain")]


def test_check_prints_a_reason_line_per_rule_in_japanese(home):
    setup_policy(home)
    (home / "config.toml").write_text('language = "ja"\n', encoding="utf-8")
    path = home / "m.eml"
    path.write_bytes(make_message(to="x@careful.example", body="山田様\n\n見積書を添付いたします。").as_bytes())
    out = run_cli("check", str(path))
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    assert "要注意の取引先" in text
    assert "添付" in text and "ありません" in text  # missing_attachment, in Japanese
    assert "宛先" in text  # name_mismatch, in Japanese


def test_auto_cc_on_allowed_internal_mail_goes_out_without_a_window(home, helper):
    (home / "policy.toml").write_text(SAMPLE_POLICY + '\n[[rules.auto_cc]]\nwhen_keyword = "契約書"\n'
                                      'cc = ["legal@example.co.jp"]\n', encoding="utf-8")
    h = helper()
    smtp_send(h.smtp.port, make_message(to="hanako@example.co.jp", subject="契約書の件"))
    [item] = wait_for(lambda: h.outbox.list(["sent"]))
    assert item.verdict.action == "allow"
    [sent] = released(home)
    assert sent["Cc"] == "legal@example.co.jp"
    assert sorted(sent.get_all("X-SendGuard-Envelope-To")) == ["hanako@example.co.jp", "legal@example.co.jp"]
