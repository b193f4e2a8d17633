"""Issue #11 item 10: no approval dead ends. Nobody to approve → the sender hears it at Send and the
message stays with them; approvers changed in the policy → held messages go to the new approvers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import make_message, smtp_send, wait_for

from sendguard.errors import StateError

BASE = '[organization]\ninternal_domains = ["example.co.jp"]\n'
CARD = "カード番号 4111 1111 1111 1111"


def _held(helper, home: Path) -> str:
    h = helper()
    msg = make_message(to="x@partner.example", body=CARD)
    smtp_send(h.smtp.port, msg)
    item = wait_for(lambda: next(iter(h.outbox.list(["awaiting_confirmation"])), None))
    return h, item.id


def test_default_policy_without_approvers_tells_the_sender_at_send(helper, home: Path) -> None:
    h, item_id = _held(helper, home)  # embedded defaults: personal_data = "approve", no approvers
    assert h.outbox.get(item_id).verdict.action == "approve"
    with pytest.raises(StateError, match=r"no approver is configured .*\[approval\] approvers"):
        h.outbox.confirm(item_id)
    assert h.outbox.get(item_id).state == "awaiting_confirmation"  # still the sender's to fix or cancel
    # the admin adds an approver: the same Send now goes to them
    (home / "policy.toml").write_text(BASE + '[approval]\napprovers = ["boss@example.co.jp"]\n', encoding="utf-8")
    os.utime(home / "policy.toml", (time.time() + 5, time.time() + 5))
    item = h.outbox.confirm(item_id)
    assert item.state == "awaiting_approval" and item.approvers == ["boss@example.co.jp"]


def test_held_messages_follow_changed_approvers(helper, home: Path) -> None:
    (home / "policy.toml").write_text(BASE + '[approval]\napprovers = ["old@example.co.jp"]\n', encoding="utf-8")
    h, item_id = _held(helper, home)
    assert h.outbox.confirm(item_id).approvers == ["old@example.co.jp"]
    (home / "policy.toml").write_text(BASE + '[approval]\napprovers = ["new@example.co.jp"]\n', encoding="utf-8")
    os.utime(home / "policy.toml", (time.time() + 5, time.time() + 5))
    h.wake()
    wait_for(lambda: h.outbox.get(item_id).approvers == ["new@example.co.jp"])
    with pytest.raises(Exception, match="approvers are: new@example.co.jp"):
        h.approvals.approve(item_id, "old@example.co.jp")
    assert h.approvals.approve(item_id, "new@example.co.jp").state in ("approved", "releasing", "sent")


def test_passed_on_without_a_window_but_nobody_can_approve_is_held_where_the_user_sees_it(helper, home: Path) -> None:
    """confirm.when = "never": an approve verdict goes straight to approval; with no approver it cannot,
    so it waits in the window with the reason, not unseen in ``received`` (found by bench/soak.py)."""
    (home / "policy.toml").write_text(BASE + '[confirm]\nwhen = "never"\n', encoding="utf-8")
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example", body=CARD))
    item = wait_for(lambda: next(iter(h.outbox.list(["awaiting_confirmation"])), None), timeout=30)
    assert item.verdict.action == "approve"
    assert "no approver is configured" in (item.last_error or "")
    assert h.outbox.list(["received"]) == []
