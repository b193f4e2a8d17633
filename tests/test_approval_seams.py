"""Seams of the approval journey: an emailed approval link kept by an approver the policy moved the
message away from, opened once the message was decided or cancelled."""

from __future__ import annotations

import email
import email.policy
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import SAMPLE_POLICY, smtp_send, wait_for

from sendguard import audit

NEW_APPROVER = SAMPLE_POLICY.replace('approvers = ["boss@example.co.jp"]', 'approvers = ["new-boss@example.co.jp"]')


@pytest.fixture
def started(runner: Any, write_policy: Any) -> Any:
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.helper.notifier = lambda title, body: None
    return r


def _held(r: Any, message_factory: Any) -> str:
    msg = message_factory(subject="社外秘 見積 (seams)", body="社外秘の資料です。",
                          attachments=[("見積.pdf", b"%PDF-1.4 quote", "application/pdf")])
    assert smtp_send(r.helper.smtp.port, msg) == {}
    item = wait_for(lambda: next(iter(r.helper.outbox.list(["awaiting_confirmation"])), None))
    item = r.helper.outbox.confirm(item.id, actor="window")
    assert item.state == "awaiting_approval" and item.approvers == ["boss@example.co.jp"]
    return str(item.id)


def _emailed_link(r: Any, item_id: str, to: str) -> str:
    """The approval link in the email ``to`` received (from the Maildir sink), as a path."""
    folder = r.home / "sent" / "new"

    def find() -> str | None:
        for path in (folder.iterdir() if folder.is_dir() else ()):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg.get("X-SendGuard-Notice") == f"approval-request; item={item_id}" and msg["To"] == to:
                match = re.search(r"(https?://\S+/approve/\S+)", msg.get_content())
                return match.group(1) if match else None
        return None

    link = urlsplit(str(wait_for(find, timeout=20)))
    return f"{link.path}?{link.query}"


def _reroute_to_new_boss(r: Any, home: Path, item_id: str) -> None:
    """The administrator names another approver while the message waits: it is handed over."""
    policy = home / "policy.toml"
    policy.write_text(NEW_APPROVER, encoding="utf-8")
    later = time.time() + 5
    os.utime(policy, (later, later))
    assert r.helper.policy.get().approvers == ("new-boss@example.co.jp",)
    r.helper.approvals.follow_policy()
    assert r.helper.outbox.get(item_id).approvers == ["new-boss@example.co.jp"]


@pytest.mark.parametrize("outcome", ["approved_by_the_new_approver", "cancelled_by_the_sender"])
def test_an_old_link_of_an_approver_the_message_was_moved_from_shows_nothing_once_it_is_settled(
        started: Any, message_factory: Any, home: Path, outcome: str) -> None:
    """boss is emailed a link; the policy then hands the message to new-boss. While it waits, boss's link is
    refused. Once new-boss decided it (or the sender cancelled it) the same unused link must still be
    refused: boss is no approver of that message any more, and the page would show him its recipients,
    attachments and body (the signed-in page, ``/approve/{id}`` without a link, already refuses him)."""
    r = started
    item_id = _held(r, message_factory)
    old_link = _emailed_link(r, item_id, "boss@example.co.jp")
    _reroute_to_new_boss(r, home, item_id)
    client = r.app.test_client()

    waiting = client.get(old_link)
    assert waiting.status_code == 403
    assert "boss@example.co.jp is not an approver" in waiting.get_data(as_text=True)

    if outcome == "approved_by_the_new_approver":
        r.helper.approvals.approve(item_id, "new-boss@example.co.jp", "ok", via="cli")
    else:
        r.helper.outbox.cancel(item_id, actor="taro@example.co.jp")
    assert r.helper.outbox.get(item_id).state != "awaiting_approval"

    settled = client.get(old_link)
    html = settled.get_data(as_text=True)
    assert settled.status_code == 403, html
    assert "boss@example.co.jp is not an approver" in html
    for hidden in ("社外秘 見積 (seams)", "見積.pdf", "社外秘の資料です", "a@partner.example"):
        assert hidden not in html
    refused = [rec for rec in audit.records(r.helper.store, item_id)
               if rec["event"] == "approval_refused" and rec["actor"] == "boss@example.co.jp"]
    assert len(refused) == 2  # the attempt while it waited and the one after


def test_the_approver_it_was_moved_to_still_sees_the_settled_message_through_their_link(
        started: Any, message_factory: Any, home: Path) -> None:
    """The other side: the approver named now opens their link after the sender cancelled the message and
    sees the page, saying it is no longer waiting (nothing to decide)."""
    r = started
    item_id = _held(r, message_factory)
    _reroute_to_new_boss(r, home, item_id)
    r.helper.wake()
    link = _emailed_link(r, item_id, "new-boss@example.co.jp")
    r.helper.outbox.cancel(item_id, actor="taro@example.co.jp")
    page = r.app.test_client().get(link)
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html
    assert "社外秘 見積 (seams)" in html and 'id="approve-form"' not in html


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_decision_made_while_the_policy_hands_the_message_on_is_not_recorded(
        started: Any, message_factory: Any, home: Path, monkeypatch: Any, decision: str) -> None:
    """boss passes the check of who decides; before his decision is written, the policy (edited by the
    administrator) hands the message to new-boss. boss's decision must not be written over new-boss's
    turn: it is refused (audited), the message still waits, and new-boss decides it."""
    from sendguard import errors
    from sendguard.approvals import Approvals

    r = started
    item_id = _held(r, message_factory)
    checked = Approvals._check

    def check_then_reroute(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = checked(self, *args, **kwargs)
        _reroute_to_new_boss(r, home, item_id)  # the worker's turn comes between the check and the write
        return result

    monkeypatch.setattr(Approvals, "_check", check_then_reroute)
    approvals = r.helper.approvals
    with pytest.raises(errors.PermissionDenied, match="handed to other approvers"):
        if decision == "approve":
            approvals.approve(item_id, "boss@example.co.jp", via="web")
        else:
            approvals.reject(item_id, "boss@example.co.jp", "宛先が違います", via="web")
    item = r.helper.outbox.get(item_id)
    assert item.state == "awaiting_approval" and item.approvers == ["new-boss@example.co.jp"]
    assert not (item.approval or {}).get("decision")
    refusals = [e for e in audit.records(r.helper.store, item_id) if e["event"] == "approval_refused"]
    assert any("handed to other approvers" in e["data"]["reason"] for e in refusals)
    monkeypatch.setattr(Approvals, "_check", checked)
    assert approvals.approve(item_id, "new-boss@example.co.jp", via="web").state in ("approved", "releasing", "sent")
