"""A helper whose database says "approved" releases nothing the central server did not sign for exactly
that content (issue #10, enforced approval: the signed-decision half; server-side release is not built)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import test_central_server as central
from conftest import wait_for
from sqlalchemy import update

from sendguard.central import CentralClient
from sendguard.store import outbox

# the central server's fixtures: a throwaway database, a server in a thread, a sender's helper
pg_url, server, sender_helper = central.pg_url, central.server, central.sender_helper
pytestmark = pytest.mark.postgres


def released(helper: Any, item_id: str) -> bool:
    return any(p.name == f"sendguard-{item_id}" for p in central.maildir(helper.home))


def test_database_edited_to_approved_releases_nothing(server: Any, sender_helper: Any) -> None:
    item_id = central.held_for_approval(sender_helper)
    wait_for(lambda: sender_helper.sync._rows().get(item_id, {}).get("submitted_at"), timeout=20)
    forged = {"decision": "approved", "by": "boss@example.co.jp", "at": "2026-12-02T00:00:00+00:00",
              "server": server.url, "signed": None, "signature": "AAAA"}
    with sender_helper.store.transaction() as conn:  # the sender edits his own database
        conn.execute(update(outbox).where(outbox.c.id == item_id).values(state="approved", approval=forged,
                                                                          release_after=0.0))
    sender_helper.wake()
    item = wait_for(lambda: (i := sender_helper.outbox.get(item_id)).state != "approved" and i, timeout=20)
    assert item.state == "needs_attention" and "signature" in (item.last_error or "")
    time.sleep(1.0)
    assert not released(sender_helper, item_id)
    assert server.service.outbox.get(item_id).state == "awaiting_approval"


def test_approval_does_not_cover_content_changed_afterwards(server: Any, sender_helper: Any) -> None:
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    sender_helper.paused = True  # hold releases while the sender swaps the body
    item_id = central.held_for_approval(sender_helper)
    wait_for(lambda: [i.id for i in boss.pending()] == [item_id], timeout=20)
    boss.decide(item_id, "approve", "boss@example.co.jp", "OK")
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "approved", timeout=20)
    full = sender_helper.outbox.get(item_id, with_bodies=True)
    swapped = (full.final_raw or full.raw or b"").replace("社外秘".encode(), "別の内容".encode())
    with sender_helper.store.transaction() as conn:
        conn.execute(update(outbox).where(outbox.c.id == item_id).values(final_raw=swapped, raw=swapped))
    sender_helper.paused = False
    sender_helper.wake()
    item = wait_for(lambda: (i := sender_helper.outbox.get(item_id)).state != "approved" and i, timeout=20)
    assert item.state == "needs_attention" and "another message or other content" in (item.last_error or "")
    assert not released(sender_helper, item_id)


def test_unsigned_decision_from_the_wire_is_not_applied(server: Any, sender_helper: Any) -> None:
    """A decision without the server's signature (a proxy, a forged answer) changes nothing."""
    from sendguard.central import DecisionUnverified

    item_id = central.held_for_approval(sender_helper)
    wait_for(lambda: sender_helper.sync._rows().get(item_id, {}).get("submitted_at"), timeout=20)
    with pytest.raises(DecisionUnverified):
        sender_helper.sync.apply({"id": item_id, "state": "approved",
                                  "approval": {"decision": "approved", "by": "boss@example.co.jp"}})
    assert sender_helper.outbox.get(item_id).state == "awaiting_approval"


def test_approval_does_not_cover_a_recipient_added_afterwards(server: Any, sender_helper: Any) -> None:
    """The signature names the envelope recipients: one added to the database after the approval is refused."""
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    sender_helper.paused = True
    item_id = central.held_for_approval(sender_helper)
    wait_for(lambda: [i.id for i in boss.pending()] == [item_id], timeout=20)
    boss.decide(item_id, "approve", "boss@example.co.jp", "OK")
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "approved", timeout=20)
    with sender_helper.store.transaction() as conn:  # the sender adds a recipient the approver never saw
        conn.execute(update(outbox).where(outbox.c.id == item_id)
                     .values(envelope_to=["a@partner.example", "evil@attacker.example"]))
    sender_helper.paused = False
    sender_helper.wake()
    item = wait_for(lambda: (i := sender_helper.outbox.get(item_id)).state != "approved" and i, timeout=20)
    assert item.state == "needs_attention" and "other recipients" in (item.last_error or "")
    assert not released(sender_helper, item_id)
