"""Edges of the outbox's fault handling found by the fault audit.

1. A resend the user asks for while SendGuard waits to learn a send's fate: the old waiting text goes,
   so the real send is "being sent right now" (never cancelled under way); a send whose item was settled
   meanwhile is never dropped silently, and never sent again.
2. A server's ``Retry-After: 0`` never makes a retry loop: the wait is at least the own back-off.
3. Deadlines stored while the system clock was ahead (a boot before NTP) do not hold mail for the whole
   skew after the clock is corrected and the helper restarted; the undo window and approval expiry stay.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import test_clock
from conftest import make_message, run_cli, smtp_send, wait_for
from test_faults import ADDRESS, FAST_RETRY, graph_account

from sendguard import audit
from sendguard.mailboxes import _retry
from sendguard.mailboxes.maildir import MaildirMailbox
from sendguard.outbox import WAITING_PREFIX, State
from sendguard.service import Helper
from tests.fakes.graph_server import FakeGraph

pytestmark = pytest.mark.slow

DAY = 86400.0


@pytest.fixture
def fake():
    with FakeGraph(address=ADDRESS) as server:
        yield server


@pytest.fixture
def graph_home(home: Path, fake: FakeGraph):
    """A home whose mail goes out through the Graph stand-in; ``graph_home(retry)`` sets [retry]."""

    def make(retry: str = FAST_RETRY) -> Path:
        return graph_account(home, fake, retry)  # type: ignore[no-any-return]

    return make


class Gate:
    """``Outbox.mailbox_for`` whose connector stops inside ``release`` until ``go`` is set: a send under
    way for as long as the test needs (the real connector sends once let through)."""

    def __init__(self, mailbox_for: Any):
        self.mailbox_for = mailbox_for
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self, item: Any) -> Any:
        box, gate = self.mailbox_for(item), self

        class Held:
            def __getattr__(self, name: str) -> Any:
                return getattr(box, name)

            def release(self, release_item: Any) -> Any:
                gate.entered.set()
                assert gate.go.wait(60)
                return box.release(release_item)

        return Held()


def confirmed(h: Helper, msgid: str) -> str:
    raw = bytes(make_message(to="a@partner.example", sender=ADDRESS, message_id=msgid))
    item = h.outbox.submit(raw, ADDRESS, ["a@partner.example"])
    assert item.state == State.CONFIRMED, item.state
    return item.id


def release_in_background(h: Helper, item_id: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(h.outbox.release(item_id))
        except Exception as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def events(h: Helper, item_id: str) -> list[str]:
    return [r["event"] for r in audit.records(h.store, item_id)]


def test_a_resend_asked_for_while_waiting_cannot_be_cancelled_while_it_goes_out(graph_home, fake):
    h = Helper(graph_home())
    gate = Gate(h.outbox.mailbox_for)
    try:
        item_id = confirmed(h, "<edge1@contoso.example>")
        # interrupted earlier (its sender died: the lease is over), and Graph cannot be asked now
        h.outbox.transition(item_id, "start_release", "sendguard", only_from=[State.CONFIRMED],
                            release_after=h.outbox.clock() - 1)
        fake.outage.down("drop")
        h.outbox.reconcile_due()
        assert (h.outbox.get(item_id).last_error or "").startswith(WAITING_PREFIX)
        fake.outage.up()
        resent = h.outbox.resolve(item_id, sent=False)  # `sendguard queue resolve ID --resend`
        assert not (resent.last_error or "").startswith(WAITING_PREFIX)
        h.outbox.mailbox_for = gate
        thread, outcome = release_in_background(h, item_id)
        assert gate.entered.wait(60)
        going = h.outbox.get(item_id)
        assert going.state == State.RELEASING and going.waiting_for == "Sending now"
        out = run_cli("queue", "cancel", item_id)
        assert out.returncode != 0 and b"being sent right now" in out.stderr, (out.stdout, out.stderr)
        gate.go.set()
        thread.join(60)
        assert [o.state for o in outcome] == [State.SENT], outcome
        assert h.outbox.get(item_id).state == State.SENT
        assert [s.internet_message_id for s in fake.sends] == ["<edge1@contoso.example>"]
        assert events(h, item_id)[-1] == "released"
    finally:
        gate.go.set()
        h.stop()


@pytest.mark.parametrize("step", ["cancel_interrupted", "resolve_resend"])
def test_a_send_whose_item_was_settled_meanwhile_is_recorded_and_never_sent_again(graph_home, fake, step,
                                                                                 caplog):
    """Settled by hand under a live send (possible only once its lease is over: another process, a
    send slower than ``RELEASE_LEASE``): the transport's success is logged, recorded, and shown."""
    h = Helper(graph_home())
    gate = Gate(h.outbox.mailbox_for)
    h.outbox.mailbox_for = gate
    try:
        item_id = confirmed(h, "<edge2@contoso.example>")
        thread, outcome = release_in_background(h, item_id)
        assert gate.entered.wait(60)
        h.outbox.transition(item_id, step, "user", only_from=[State.RELEASING], release_after=0.0)
        with caplog.at_level(logging.ERROR, logger="sendguard.outbox"):
            gate.go.set()
            thread.join(60)
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
        item = h.outbox.get(item_id)
        assert "went out" in (item.last_error or ""), item.last_error
        assert "sent_after_settled" in events(h, item_id)
        assert any(r.levelno >= logging.ERROR and item_id in r.getMessage() for r in caplog.records)
        # never sent again: an item left to be retried goes to the user instead
        assert item.state == (State.CANCELLED if step == "cancel_interrupted" else State.NEEDS_ATTENTION)
        h.outbox.release_due()
        assert [s.internet_message_id for s in fake.sends] == ["<edge2@contoso.example>"]
    finally:
        gate.go.set()
        h.stop()


def test_a_retry_after_of_zero_waits_at_least_the_own_back_off(graph_home, fake):
    h = Helper(graph_home("[retry]\nbase_seconds = 2\nmax_seconds = 8\ninline_wait_seconds = 0.1\n"))
    try:
        fake.fail_next("POST /v1.0/me/sendMail", "429", times=10_000, retry_after=0)
        item_id = confirmed(h, "<edge3@contoso.example>")
        failed = h.outbox.release(item_id)
        assert failed.state == State.FAILED
        (record,) = [r for r in audit.records(h.store, item_id) if r["event"] == "failed"]
        lowest = 2 * (1 - _retry.JITTER)  # the first back-off: base_seconds, less the jitter
        assert record["data"]["retry_in"] >= lowest
        assert failed.release_after - h.outbox.clock() >= lowest - 0.5
        # what the user reads says the wait SendGuard keeps, not the server's 0 s
        assert f"trying again in {record['data']['retry_in']:.0f} s" in (failed.last_error or ""), failed.last_error
        asked = fake.requests.count("POST /v1.0/me/sendMail")
        assert h.outbox.release_due() == []  # not due again at once
        assert fake.requests.count("POST /v1.0/me/sendMail") == asked
    finally:
        h.stop()


jump = test_clock.jump  # the system clock as Python sees it; ``jump(s)`` sets it ``s`` seconds off


def test_waits_stored_with_the_clock_a_day_ahead_do_not_hold_mail_after_it_is_corrected(
        home, helper, write_policy, jump):
    write_policy('[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "never"\n'
                 'hold_seconds = 3\n[approval]\napprovers = ["boss@example.co.jp"]\nexpire_hours = 1\n'
                 '[[rules.keywords]]\npattern = "社外秘"\naction = "approve"\n')
    (home / "config.toml").write_text("[retry]\nbase_seconds = 0.2\nmax_seconds = 1.0\ninline_wait_seconds = 0.2\n")
    sent = home / "sent"
    sent.write_text("not a folder")  # the Maildir sink is unavailable: a release fails and is retried
    jump(+DAY)  # the helper starts before NTP has set the clock
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example", message_id="<retried@example.co.jp>"))
    by_id = lambda: {i.message_id: i for i in h.outbox.list(None)}  # noqa: E731
    wait_for(lambda: by_id()["<retried@example.co.jp>"].state == State.FAILED, timeout=60)
    smtp_send(h.smtp.port, make_message(to="x@partner.example", message_id="<undo@example.co.jp>"))
    smtp_send(h.smtp.port, make_message(to="x@partner.example", message_id="<approve@example.co.jp>",
                                        body="社外秘の資料です。"))
    wait_for(lambda: by_id()["<undo@example.co.jp>"].state == State.CONFIRMED
             and by_id()["<approve@example.co.jp>"].state == State.AWAITING_APPROVAL, timeout=60)
    expires = by_id()["<approve@example.co.jp>"].expires_at
    h.stop()
    jump(0.0)  # the clock is corrected; the helper starts again with the sink back
    sent.unlink()
    h = helper()
    assert by_id()["<undo@example.co.jp>"].state == State.CONFIRMED  # the undo window is not skipped
    wait_for(lambda: by_id()["<retried@example.co.jp>"].state == State.SENT
             and by_id()["<undo@example.co.jp>"].state == State.SENT, timeout=30)
    delivered = b"".join(f.read_bytes() for f in MaildirMailbox(sent).messages())
    assert delivered.count(b"<retried@example.co.jp>") == delivered.count(b"<undo@example.co.jp>") == 1
    held = by_id()["<approve@example.co.jp>"]
    assert held.state == State.AWAITING_APPROVAL and held.expires_at == expires  # never expired early
