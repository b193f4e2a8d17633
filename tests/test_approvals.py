"""Supervisor approval in the core: routing, deputies, self-approval, first decision wins, expiry,
approver emails and sender notices, all on the embedded SQLite store."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sendguard import audit
from sendguard.approvals import Approvals
from sendguard.errors import PermissionDenied, StateError
from sendguard.service import Helper

POLICY = """
[organization]
internal_domains = ["example.co.jp"]

[approval]
approvers = ["boss@example.co.jp"]
allow_self_approval = {self_ok}
expire_hours = 1

[[approval.route]]
senders = ["*@sales.example.co.jp"]
approvers = ["sales-lead@example.co.jp", "sales_vp@example.co.jp"]

[[approval.route]]
senders = ["*@example.co.jp"]
approvers = ["boss@example.co.jp"]
{deputies}
[[rules.keywords]]
pattern = "社外秘"
action = "approve"
"""


def deputies_block(start: date, end: date) -> str:
    return (f'\n[[approval.deputies]]\napprover = "boss@example.co.jp"\ndeputy = "deputy@example.co.jp"\n'
            f'start = "{start.isoformat()}"\nend = "{end.isoformat()}"\n')


@pytest.fixture
def make_helper(home: Path) -> Any:
    made: list[Helper] = []

    def make(self_ok: bool = False, deputies: str = "") -> Helper:
        (home / "policy.toml").write_text(POLICY.format(self_ok=str(self_ok).lower(), deputies=deputies),
                                          encoding="utf-8")
        helper = Helper(home)
        helper.notices: list[tuple[str, str]] = []  # type: ignore[misc]
        helper.notifier = lambda title, body: helper.notices.append((title, body))  # type: ignore[attr-defined]
        made.append(helper)
        return helper

    yield make
    for h in made:
        h.store.close()


def held(helper: Helper, message_factory: Any, sender: str = "taro@example.co.jp", **kw: Any) -> str:
    """A flagged message submitted and confirmed: now awaiting approval."""
    msg = message_factory(sender=sender, subject="社外秘: 見積", body="社外秘の資料を送ります",
                          attachments=[("見積.pdf", b"%PDF-1.4 test", "application/pdf")], **kw)
    item = helper.outbox.submit(msg.as_bytes(), sender, ["x@partner.example"])
    item = helper.outbox.confirm(item.id)
    assert item.state == "awaiting_approval", item
    return item.id


def sent_files(home: Path) -> list[Path]:
    folder = home / "sent" / "new"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def notice_emails(home: Path) -> list[email.message.EmailMessage]:
    out = []
    for path in sent_files(home):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if str(msg.get("X-SendGuard-Notice", "")).startswith("approval-request"):
            out.append(msg)
    return out


@pytest.mark.parametrize("sender, expected", [
    ("ken@sales.example.co.jp", ["sales-lead@example.co.jp", "sales_vp@example.co.jp"]),
    ("taro@example.co.jp", ["boss@example.co.jp"]),
    ("someone@other.example", ["boss@example.co.jp"]),  # no route matches: the default approvers
])
def test_routing_first_matching_route_wins(make_helper: Any, message_factory: Any, sender: str,
                                           expected: list[str]) -> None:
    helper = make_helper()
    item = helper.outbox.get(held(helper, message_factory, sender=sender))
    assert item.approvers == expected
    assert item.expires_at is not None and item.expires_at - item.created_at == pytest.approx(3600, abs=60)


def test_only_named_approver_decides_and_refusals_are_audited(make_helper: Any, message_factory: Any) -> None:
    helper = make_helper()
    item_id = held(helper, message_factory)
    with pytest.raises(PermissionDenied, match="intruder@example.co.jp is not an approver.*boss@example.co.jp"):
        helper.approvals.approve(item_id, "intruder@example.co.jp")
    assert helper.outbox.get(item_id).state == "awaiting_approval"
    refused = [r for r in audit.records(helper.store, item_id) if r["event"] == "approval_refused"]
    assert refused and refused[0]["actor"] == "intruder@example.co.jp"

    item = helper.approvals.approve(item_id, "Boss@Example.co.jp", "ok to send")
    assert item.state == "approved"
    assert item.approval["by"] == "boss@example.co.jp" and item.approval["self_approved"] is False
    # the first decision wins; the second is refused with who decided and when, and audited
    with pytest.raises(StateError, match=r"already approved by boss@example.co.jp at \d{4}-"):
        helper.approvals.reject(item_id, "boss@example.co.jp", "changed my mind")
    events = [r["event"] for r in audit.records(helper.store, item_id)]
    assert events.count("approved") == 1 and events.count("approval_refused") == 2
    decided = next(r for r in audit.records(helper.store, item_id) if r["event"] == "approved")
    assert decided["actor"] == "boss@example.co.jp" and decided["ts"] and decided["data"]["comment"] == "ok to send"
    assert audit.verify(helper.store) == []


def test_rejection_needs_a_reason_and_keeps_the_message(make_helper: Any, message_factory: Any) -> None:
    helper = make_helper()
    item_id = held(helper, message_factory)
    with pytest.raises(PermissionDenied, match="reason"):
        helper.approvals.reject(item_id, "boss@example.co.jp", "  ")
    item = helper.approvals.reject(item_id, "boss@example.co.jp", "取引先が違います")
    assert item.state == "rejected" and item.approval["reason"] == "取引先が違います"
    helper.tick()
    assert helper.outbox.get(item_id).state == "rejected"
    assert not any(p.name == f"sendguard-{item_id}" for p in sent_files(helper.home))
    # the sender is told, once, with the approver's reason
    assert any("取引先が違います" in body for _t, body in helper.notices)  # type: ignore[attr-defined]
    helper.tick()
    assert len(helper.notices) == 1  # type: ignore[attr-defined]
    # and can export it to edit and send again
    from sendguard.cli import main

    result = CliRunner().invoke(main, ["queue", "export", item_id])
    assert result.exit_code == 0, result.output
    assert "社外秘" in email.message_from_bytes(result.stdout_bytes, policy=email.policy.default).get_body(
        ("plain",)).get_content()


def test_deputy_decides_only_inside_the_date_range(make_helper: Any, message_factory: Any) -> None:
    today = date.today()
    helper = make_helper(deputies=deputies_block(today - timedelta(days=1), today + timedelta(days=1)))
    item_id = held(helper, message_factory)
    assert [i.id for i in helper.approvals.pending_for("deputy@example.co.jp")] == [item_id]
    item = helper.approvals.approve(item_id, "deputy@example.co.jp", "代理で承認")
    assert item.approval["on_behalf_of"] == "boss@example.co.jp"

    past = make_helper(deputies=deputies_block(today - timedelta(days=10), today - timedelta(days=5)))
    other = held(past, message_factory)
    assert past.approvals.pending_for("deputy@example.co.jp") == []
    with pytest.raises(PermissionDenied):
        past.approvals.approve(other, "deputy@example.co.jp")


def test_self_approval_needs_a_comment_and_is_marked(make_helper: Any, message_factory: Any) -> None:
    helper = make_helper(self_ok=True)
    item_id = held(helper, message_factory)
    with pytest.raises(PermissionDenied, match="comment"):
        helper.approvals.approve(item_id, "taro@example.co.jp")
    item = helper.approvals.approve(item_id, "taro@example.co.jp", "急ぎのため自己承認")
    assert item.approval["self_approved"] is True
    record = next(r for r in audit.records(helper.store, item_id) if r["event"] == "approved")
    assert record["data"]["self_approved"] is True and record["actor"] == "taro@example.co.jp"

    strict = make_helper(self_ok=False)
    other = held(strict, message_factory)
    with pytest.raises(PermissionDenied):
        strict.approvals.approve(other, "taro@example.co.jp", "please")


def test_a_message_past_its_deadline_is_no_longer_listed_to_decide(make_helper: Any, message_factory: Any) -> None:
    """Once its deadline has passed a message cannot be approved (the attempt expires it): the approver's list
    must not offer it in the meantime, before the worker's next turn marks it expired."""
    helper = make_helper()
    item_id = held(helper, message_factory)
    assert [i.id for i in helper.approvals.pending_for("boss@example.co.jp")] == [item_id]
    later = helper.outbox.get(item_id).expires_at + 1  # type: ignore[operator]
    helper.approvals.clock = lambda: later
    assert helper.outbox.get(item_id).state == "awaiting_approval"  # not swept yet
    assert helper.approvals.pending_for("boss@example.co.jp") == []
    assert helper.approvals.pending_for() == []


def test_expiry_keeps_the_message_unsent_and_tells_the_sender(make_helper: Any, message_factory: Any) -> None:
    helper = make_helper()
    item_id = held(helper, message_factory)
    later = helper.outbox.get(item_id).expires_at + 1  # type: ignore[operator]
    helper.outbox.clock = lambda: later
    helper.approvals.clock = lambda: later
    # a decision arriving after the deadline is refused (the message expires instead)
    with pytest.raises(StateError, match="expired"):
        helper.approvals.approve(item_id, "boss@example.co.jp")
    assert helper.outbox.get(item_id).state == "expired"
    helper.notify_approvals()
    assert any("expired" in title for title, _b in helper.notices)  # type: ignore[attr-defined]
    helper.outbox.release_due()
    assert not any(p.name == f"sendguard-{item_id}" for p in sent_files(helper.home))


def test_approvers_get_one_email_each_with_everything_they_need(make_helper: Any, message_factory: Any) -> None:
    today = date.today()
    helper = make_helper(deputies=deputies_block(today, today))
    item_id = held(helper, message_factory)
    helper.notify_approvals()
    helper.notify_approvals()  # a second round sends nothing more
    mails = notice_emails(helper.home)
    assert sorted(str(m["To"]) for m in mails) == ["boss@example.co.jp", "deputy@example.co.jp"]
    body = next(m for m in mails if str(m["To"]) == "boss@example.co.jp").get_content()
    assert "社外秘" in body and "x@partner.example" in body and "見積.pdf" in body
    link = re.search(r"https?://\S+/approve/(\w+)\?t=\S+", body)
    assert link and link.group(1) == item_id
    deputy_body = next(m for m in mails if str(m["To"]) == "deputy@example.co.jp").get_content()
    assert "deputy of boss@example.co.jp" in deputy_body
    notified = [r for r in audit.records(helper.store, item_id) if r["event"] == "approval_request_notified"]
    assert len(notified) == 2


def test_approved_mail_is_released_exactly_once(make_helper: Any, message_factory: Any) -> None:
    helper = make_helper()
    item_id = held(helper, message_factory)
    helper.approvals.approve(item_id, "boss@example.co.jp")
    for _ in range(3):
        helper.tick()
    assert helper.outbox.get(item_id).state == "sent"
    assert [p.name for p in sent_files(helper.home)].count(f"sendguard-{item_id}") == 1
    assert [r["event"] for r in audit.records(helper.store, item_id)].count("released") == 1


def test_pending_list_matches_addresses_exactly(make_helper: Any, message_factory: Any) -> None:
    helper = make_helper()
    sales = held(helper, message_factory, sender="ken@sales.example.co.jp")
    held(helper, message_factory)
    assert [i.id for i in helper.approvals.pending_for("sales_vp@example.co.jp")] == [sales]
    # "_" is a LIKE wildcard: salesXvp must not see sales_vp's messages
    assert helper.approvals.pending_for("salesxvp@example.co.jp") == []
    assert len(helper.approvals.pending_for(None)) == 2


def test_cli_refuses_the_wrong_approver_clearly(make_helper: Any, message_factory: Any) -> None:
    from sendguard.cli import main

    helper = make_helper()
    item_id = held(helper, message_factory)
    result = CliRunner().invoke(main, ["approvals", "approve", item_id, "--as", "nobody@example.co.jp"])
    assert result.exit_code != 0
    assert "nobody@example.co.jp is not an approver" in result.output
    result = CliRunner().invoke(main, ["approvals", "approve", item_id, "--as", "boss@example.co.jp"])
    assert result.exit_code == 0, result.output
    assert Approvals(helper.outbox, helper.policy.get, remote=None).pending_for("boss@example.co.jp") == []


def test_a_recipient_blocked_while_the_message_waits_is_not_sent_when_approved(
        make_helper: Any, message_factory: Any, home: Path) -> None:
    """The admin blocks partner.example while a message to it waits for the boss: the approval does not
    send it. The message is held (needs attention) with the reason, and nothing reaches the mail service."""
    helper = make_helper()
    item_id = held(helper, message_factory)
    policy = home / "policy.toml"
    policy.write_text(policy.read_text(encoding="utf-8").replace(
        "[[rules.keywords]]", '[rules]\nblocked_domains = ["partner.example"]\n\n[[rules.keywords]]'),
        encoding="utf-8")
    assert helper.policy.get().blocked_domains == ("partner.example",)
    helper.approvals.approve(item_id, "boss@example.co.jp", "ok")
    helper.outbox.release_due()
    item = helper.outbox.get(item_id)
    assert item.state == "needs_attention"
    assert "x@partner.example" in (item.last_error or "") and "blocked" in (item.last_error or "")
    assert not sent_files(home) or not [p for p in sent_files(home) if b"x@partner.example" in p.read_bytes()
                                        and b"X-SendGuard-Notice" not in p.read_bytes()]


def test_a_message_approved_under_an_unchanged_policy_is_sent(make_helper: Any, message_factory: Any,
                                                              home: Path) -> None:
    helper = make_helper()
    item_id = held(helper, message_factory)
    helper.approvals.approve(item_id, "boss@example.co.jp", "ok")
    helper.outbox.release_due()
    assert helper.outbox.get(item_id).state == "sent"


def test_a_crash_between_confirmation_and_the_approval_request_is_repaired_at_start(
        make_helper: Any, message_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """confirm and request_approval are two transactions: a helper killed between them left the message
    ``confirmed`` and waiting for approval nobody was asked for, for good. The next start asks."""
    helper = make_helper()
    msg = message_factory(subject="社外秘: 見積", body="社外秘の資料を送ります")
    item = helper.outbox.submit(msg.as_bytes(), "taro@example.co.jp", ["x@partner.example"])
    real = helper.outbox.transition

    def crash(item_id: str, action: str, *args: Any, **kwargs: Any) -> Any:
        if action == "request_approval":
            raise SystemExit("killed")
        return real(item_id, action, *args, **kwargs)

    monkeypatch.setattr(helper.outbox, "transition", crash)
    with pytest.raises(SystemExit):
        helper.outbox.confirm(item.id)
    monkeypatch.setattr(helper.outbox, "transition", real)
    assert helper.outbox.get(item.id).state == "confirmed"
    helper.outbox.reconcile()  # what the worker does at start
    again = helper.outbox.get(item.id)
    assert again.state == "awaiting_approval" and again.approvers == ["boss@example.co.jp"]
    assert helper.approvals.approve(item.id, "boss@example.co.jp").state == "approved"
