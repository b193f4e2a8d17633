"""Clock jumps (issue #16): a system clock set forward or back while the helper runs does not expire an
approval early, end a ``hold_seconds`` undo window early, or make a spent approval link usable again.

The jump is what every Python caller of ``time.time()`` sees (the process's view of the system clock,
installed before the helper starts); the monotonic clocks do not move, exactly as when NTP or a user
steps the clock. A helper whose deadlines follow ``time.time`` fails these tests.
"""

from __future__ import annotations

import time

import pytest
from conftest import make_message, smtp_send, wait_for

from sendguard import links
from sendguard.errors import PermissionDenied
from sendguard.mailboxes.maildir import MaildirMailbox

DAY = 86400.0


@pytest.fixture
def jump(monkeypatch):
    """The system clock as Python sees it, set in place before the helper starts; ``jump(s)`` steps it."""
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def to(seconds: float) -> None:
        offset[0] = seconds

    return to


def test_forward_jump_does_not_end_the_hold_seconds_window(home, helper, write_policy, jump):
    write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "never"\n'
                 'hold_seconds = 600\n')
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example"))
    (item,) = wait_for(lambda: h.outbox.list(["confirmed"]), timeout=60)
    jump(+DAY)
    time.sleep(1.5)  # several worker turns with the clock a day ahead
    assert h.outbox.get(item.id).state == "confirmed"
    assert MaildirMailbox(home / "sent").messages() == []
    assert h.outbox.cancel(item.id).state == "cancelled"  # the undo window is still open


def test_forward_jump_does_not_expire_an_approval_early(home, helper, write_policy, jump):
    write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "never"\n'
                 '[approval]\napprovers = ["boss@example.co.jp"]\nexpire_hours = 1\n'
                 '[[rules.keywords]]\npattern = "社外秘"\naction = "approve"\n')
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example", body="社外秘の資料です。"))
    (item,) = wait_for(lambda: h.outbox.list(["awaiting_approval"]), timeout=60)
    jump(+2 * 3600)  # past expire_hours by the system clock; a few seconds by the real one
    time.sleep(1.5)
    assert h.outbox.get(item.id).state == "awaiting_approval"
    h.approvals.approve(item.id, "boss@example.co.jp")
    wait_for(lambda: h.outbox.get(item.id).state == "sent", timeout=60)


def test_backward_jump_does_not_make_a_spent_link_usable(home, helper, jump):
    h = helper()
    signer = links.LinkSigner(links.signing_key(), "approve")
    token = signer.sign("item1", approver="boss@example.co.jp")
    claims = signer.load(token, "item1", max_age=3600)
    links.use_once(h.store, claims["jti"])
    for offset in (-DAY, -60.0, +60.0):  # back a day (the link looks not yet issued), a minute, forward
        jump(offset)
        with pytest.raises(PermissionDenied, match="expired|already been used"):
            links.use_once(h.store, signer.load(token, "item1", max_age=3600)["jti"])
    jump(-60.0)
    with pytest.raises(PermissionDenied, match="already been used"):  # spent is spent, whatever the clock
        links.use_once(h.store, claims["jti"])
