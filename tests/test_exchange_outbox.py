"""Outbox interception on Exchange (messages Outlook defers in the server's Outbox): the helper takes deferred items out of the server-side
Outbox before the server sends them, holds them, and releases each exactly once.

The fake EWS server sends Outbox items itself when their deferred time passes (``advance`` moves its
clock), so every race here is real: an item left in the Outbox is sent by the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sendguard import config as config_mod
from sendguard import secrets
from sendguard.mailboxes import _retry
from sendguard.mailboxes.exchange import HOLD_FOLDER, TAKEN_CATEGORY, ExchangeMailbox
from sendguard.service import Helper
from tests.fakes.ews_server import FakeEWS
from tests.test_exchange import ADDRESS, message

# the sample's "internal.xlsx" is not a real workbook (unsafe_attachment would ask for an approver)
POLICY = ('[organization]\ninternal_domains = ["example.co.jp"]\n\n[confirm]\nwhen = "external"\n\n'
          '[rules]\nunsafe_attachment = "confirm"\n')
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(_retry, "sleep", lambda seconds: None)


@pytest.fixture
def fake():
    with FakeEWS(address=ADDRESS) as server:
        yield server


def configure(home: Path, fake: FakeEWS, **settings) -> config_mod.Account:
    (home / "policy.toml").write_text(POLICY)
    account = config_mod.Account("work", "exchange", ADDRESS, {"server": fake.url, "username": "user", **settings})
    config_mod.save_account(account, home / "config.toml")
    secrets.put(account.secret_key("password"), "secret")
    return account


@pytest.fixture
def helper(fake, home):
    configure(home, fake)
    h = Helper(home)
    h.notices = []
    h.notifier = lambda title, body: h.notices.append((title, body))
    yield h
    h.stop()


def outbox_ids(fake: FakeEWS) -> list[str]:
    return [i.id for i in fake.items_in(fake.folder_by_key("outbox").id)]


def audit_events(helper: Helper, item_id: str) -> list[str]:
    from sqlalchemy import select

    from sendguard.store import audit

    with helper.store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(audit.c.event).where(audit.c.item_id == item_id)
                                           .order_by(audit.c.seq)).all()]


def test_deferred_item_is_taken_checked_and_released_once_after_its_time_passed(helper, fake):
    fake.submission_delay = 3600  # an ordinary send in progress stays in the Outbox while we look
    ordinary = fake.outlook_send(message(msgid="<plain@example.co.jp>", attachments=()))
    fake.outlook_send(message(attachments=("quote.pdf", "internal.xlsx")), defer_seconds=60)

    assert helper.watch_outboxes(force=True) == 1
    (item,) = helper.outbox.list()
    assert (item.state, item.source, item.account) == ("awaiting_confirmation", "exchange-outbox", "work")
    assert item.message_id == "<m1@example.co.jp>"
    assert outbox_ids(fake) == [ordinary]  # out of the Outbox at once; the ordinary send untouched
    held = fake.items[item.source_ref]
    assert held.folder == fake.folder_by_name(HOLD_FOLDER).id and TAKEN_CATEGORY in held.categories

    # the user still has the window open when the deferred time passes: the server sends nothing of it
    fake.advance(120)
    assert fake.sends == []
    helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"], removed_attachments=["internal.xlsx"])
    assert helper.outbox.release_due()[0].state == "sent"
    (sent,) = fake.sends
    assert sent.operation == "UpdateItem" and sent.message_id == "<m1@example.co.jp>"
    assert sent.to == ["a@partner.example"] and sent.cc == ["boss@example.co.jp"]
    assert sent.attachments == ["quote.pdf"] and sent.deferred is None
    assert fake.items[item.source_ref].folder == fake.folder_by_key("sentitems").id

    # more looks, more time: nothing is sent again and nothing is reported as missed
    fake.advance(600)
    helper._missed_at.clear()
    helper.watch_outboxes(force=True)
    assert len(fake.sends) == 1 and len(helper.outbox.list()) == 1 and helper.notices == []
    events = audit_events(helper, item.id)
    assert events[0] == "received" and events.count("released") == 1


def test_release_before_the_deferred_time_goes_out_now_not_at_the_deferred_time(helper, fake):
    """Exchange queues an item that still carries a future 0x3FEF: the release must clear it."""
    fake.outlook_send(message(), defer_seconds=600)
    helper.watch_outboxes(force=True)
    (item,) = helper.outbox.list()
    helper.outbox.confirm(item.id)
    assert helper.outbox.release(item.id).state == "sent"
    (sent,) = fake.sends
    assert sent.operation == "UpdateItem" and sent.deferred is None
    assert outbox_ids(fake) == []
    fake.advance(1200)
    assert len(fake.sends) == 1


def test_an_item_without_a_deferred_time_is_never_touched(helper, fake):
    fake.submission_delay = 3600
    ordinary = fake.outlook_send(message(attachments=()))
    before = fake.items[ordinary].changekey
    for _ in range(3):
        assert helper.watch_outboxes(force=True) == 0
    assert outbox_ids(fake) == [ordinary] and fake.items[ordinary].changekey == before
    assert fake.items[ordinary].categories == []
    assert "MoveItem" not in fake.requests and "UpdateItem" not in fake.requests
    assert helper.outbox.list() == []
    fake.submission_delay = 0
    fake.deliver_due()
    assert [s.operation for s in fake.sends] == ["ServerTransport"]


def test_an_item_already_due_is_left_to_the_server(helper, fake):
    fake.delivering = False  # the transport is slow to pick it up; its time has come all the same
    due = fake.outlook_send(message(), defer_seconds=-5)
    assert helper.watch_outboxes(force=True) == 0
    assert outbox_ids(fake) == [due] and "MoveItem" not in fake.requests


def test_cancelled_goes_back_to_drafts_and_is_never_sent(helper, fake):
    fake.outlook_send(message(), defer_seconds=60)
    helper.watch_outboxes(force=True)
    (item,) = helper.outbox.list()
    helper.outbox.cancel(item.id)
    helper.watch_outboxes(force=True)
    (draft,) = fake.items_in(fake.folder_by_key("drafts").id)
    assert draft.message_id == "<m1@example.co.jp>" and draft.deferred is None and draft.is_draft
    assert TAKEN_CATEGORY not in draft.categories
    assert fake.items_in(fake.folder_by_name(HOLD_FOLDER).id) == []
    fake.advance(3600)
    helper.watch_outboxes(force=True)
    assert fake.sends == []
    assert audit_events(helper, item.id).count("returned_to_drafts") == 1
    assert len(helper.outbox.list()) == 1  # the draft in Drafts is the user's again, not taken


def test_helper_down_at_the_deferred_time_records_what_the_server_sent(fake, home):
    configure(home, fake)
    first = Helper(home)
    first.notifier = lambda title, body: None
    first.watch_outboxes(force=True)  # SendGuard watches this Outbox from now on
    first.stop()

    fake.outlook_send(message(), defer_seconds=60)  # the helper is not running
    fake.advance(120)
    (sent,) = fake.sends
    assert sent.operation == "ServerTransport" and sent.deferred is not None

    again = Helper(home)
    notices = []
    again.notifier = lambda title, body: notices.append((title, body))
    try:
        again.watch_outboxes(force=True)
        (item,) = again.outbox.list()
        assert (item.state, item.source, item.message_id) == ("sent", "exchange-outbox", "<m1@example.co.jp>")
        assert "not checked" in (item.last_error or "")
        assert "missed" in audit_events(again, item.id)
        assert len(notices) == 1 and "見積書" in notices[0][1]
        again._missed_at.clear()
        again.watch_outboxes(force=True)  # told once, recorded once
        assert len(again.outbox.list()) == 1 and len(notices) == 1
        assert again.outbox.release_due() == [] and again.outbox.reconcile() == []
    finally:
        again.stop()
    assert len(fake.sends) == 1  # never a second copy


def test_mail_the_server_sent_before_sendguard_watched_is_not_reported(fake, home):
    fake.outlook_send(message(), defer_seconds=-1)  # sent at once by the server, before SendGuard ran
    deadline = time.monotonic() + 10
    while not fake.sends and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fake.sends) == 1
    time.sleep(1.1)  # EWS times have one-second resolution
    configure(home, fake)
    helper = Helper(home)
    helper.notifier = lambda title, body: pytest.fail("nothing was missed")
    try:
        helper.watch_outboxes(force=True)
        assert helper.outbox.list() == []
    finally:
        helper.stop()


def release_killed_after_the_transport(item_id: str) -> subprocess.CompletedProcess:
    script = ("import sys; from sendguard.service import Helper; "
              "Helper().outbox.release(sys.argv[1]); print('recorded')")
    env = dict(os.environ, SENDGUARD_CRASH_AT="release.after_transport")
    return subprocess.run([sys.executable, "-c", script, item_id], env=env, capture_output=True, timeout=60,
                          cwd=ROOT)


def test_kill_9_during_release_is_reconciled_from_sent_items(fake, home):
    configure(home, fake)
    helper = Helper(home)
    helper.notifier = lambda title, body: None
    try:
        fake.outlook_send(message(attachments=("quote.pdf",)), defer_seconds=60)
        helper.watch_outboxes(force=True)
        (item,) = helper.outbox.list()
        helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"])
    finally:
        helper.stop()

    crashed = release_killed_after_the_transport(item.id)
    assert crashed.returncode == -signal.SIGKILL and b"recorded" not in crashed.stdout, crashed.stderr
    (sent,) = fake.sends
    assert sent.operation == "UpdateItem" and sent.to == ["a@partner.example"]
    fake.advance(120)  # the deferred time passes while the helper is down: nothing left to send

    restarted = Helper(home)
    restarted.notifier = lambda title, body: pytest.fail("a released message is not a missed one")
    try:
        assert restarted.outbox.get(item.id).state == "releasing"
        restarted.outbox.reconcile()  # found in Sent Items by its Message-ID
        assert restarted.outbox.get(item.id).state == "sent"
        assert restarted.outbox.release_due() == []
        restarted.watch_outboxes(force=True)
        assert len(restarted.outbox.list()) == 1
    finally:
        restarted.stop()
    assert len(fake.sends) == 1


def test_the_running_helper_takes_within_its_poll_interval(fake, home):
    """The watch runs in its own thread: started helper, one-second interval, a one-minute defer."""
    configure(home, fake, outbox_poll_seconds=1)
    helper = Helper(home)
    helper.notifier = lambda title, body: None
    helper.start(smtp=False)
    try:
        fake.outlook_send(message(), defer_seconds=60)
        deadline = time.monotonic() + 30
        while not helper.outbox.list() and time.monotonic() < deadline:
            time.sleep(0.1)
        (item,) = helper.outbox.list()
        item = helper.outbox.wait(item.id, ["received"], 10)  # taken in; the check runs right after
        assert item.source == "exchange-outbox" and item.state == "awaiting_confirmation"
        assert outbox_ids(fake) == []
    finally:
        helper.stop()
    fake.advance(120)
    assert fake.sends == []


def test_cli_and_audit_trail_name_the_outbox_interception(helper, fake):
    from click.testing import CliRunner

    from sendguard.cli import main

    fake.outlook_send(message(), defer_seconds=60)
    helper.watch_outboxes(force=True)
    result = CliRunner().invoke(main, ["queue", "list", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["source"], row["source_label"]) == ("exchange-outbox", "Outbox interception (Exchange)")
    listing = CliRunner().invoke(main, ["queue", "list"])
    assert listing.exit_code == 0 and "[Outbox interception (Exchange)]" in listing.output, listing.output
    shown = CliRunner().invoke(main, ["queue", "show", row["id"]])
    assert shown.exit_code == 0 and "Came from: Outbox interception (Exchange)" in shown.output, shown.output
    trail = json.loads(CliRunner().invoke(main, ["queue", "show", row["id"], "--json"]).output)["audit"]
    assert trail[0]["event"] == "received" and trail[0]["data"]["source"] == "exchange-outbox"


def test_streaming_notifications_wake_the_watch_long_before_the_next_poll(fake, home):
    """With a two-minute poll, only the streaming subscription can take the item within the minute."""
    configure(home, fake, outbox_poll_seconds=120)
    helper = Helper(home)
    helper.notifier = lambda title, body: None
    helper.start(smtp=False)
    try:
        deadline = time.monotonic() + 30
        while not fake.streams_open and time.monotonic() < deadline:  # first look done, stream connected
            time.sleep(0.05)
        assert fake.streams_open == 1 and "GetStreamingEvents" in fake.requests
        time.sleep(0.3)
        fake.outlook_send(message(), defer_seconds=60)
        deadline = time.monotonic() + 45
        while not helper.outbox.list() and time.monotonic() < deadline:
            time.sleep(0.1)
        (item,) = helper.outbox.list()
        assert item.source == "exchange-outbox" and outbox_ids(fake) == []
    finally:
        helper.stop()
    fake.advance(120)
    assert fake.sends == []


def test_streaming_refused_polling_still_takes(fake, home):
    configure(home, fake, outbox_poll_seconds=1)
    fake.fail_next("GetStreamingEvents", "ErrorSubscriptionNotFound", times=50)  # streaming never works here
    helper = Helper(home)
    helper.notifier = lambda title, body: None
    helper.start(smtp=False)
    try:
        fake.outlook_send(message(), defer_seconds=60)
        deadline = time.monotonic() + 30
        while not helper.outbox.list() and time.monotonic() < deadline:
            time.sleep(0.1)
        (item,) = helper.outbox.list()
        assert item.source == "exchange-outbox" and fake.streams_open == 0
        assert "GetStreamingEvents" in fake.requests
    finally:
        helper.stop()


def test_killed_between_the_take_and_the_intake_the_item_is_taken_in_after_restart(fake, home):
    """kill -9 right after MoveItem: the item waits in the hold folder with its deferred time and is
    taken in (as an Outbox item) by the restarted helper; the server never sends it."""
    configure(home, fake)
    first = Helper(home)
    first.notifier = lambda title, body: None
    first.poll_held()  # the hold folder exists
    first.stop()
    fake.outlook_send(message(), defer_seconds=60)
    box = ExchangeMailbox(
        "work", ADDRESS, server=fake.url, username="user", password="secret")
    assert box.watch_outbox() == 1  # moved, and then the process died before anything was recorded
    box.close()
    fake.advance(120)
    assert fake.sends == []

    restarted = Helper(home)
    restarted.notifier = lambda title, body: pytest.fail("nothing was missed")
    try:
        restarted.poll_held()
        (item,) = restarted.outbox.list()
        assert (item.source, item.state) == ("exchange-outbox", "awaiting_confirmation")
        restarted.outbox.confirm(item.id)
        assert restarted.outbox.release(item.id).state == "sent"
    finally:
        restarted.stop()
    (sent,) = fake.sends
    assert sent.operation == "UpdateItem" and sent.deferred is None


def test_an_outbox_that_cannot_be_watched_is_reported_once_per_outage(helper, fake):
    fake.fail_next("FindItem", "unauthorized", times=5)  # the password was changed on the server
    for _ in range(5):
        assert helper.watch_outboxes(force=True) == 0
    assert len(helper.notices) == 1
    title, body = helper.notices[0]
    assert "cannot watch your Outbox" in title and "sign in again" in body and "unchecked" in body
    fake.outlook_send(message(), defer_seconds=60)
    assert helper.watch_outboxes(force=True) == 1  # back: taken as usual, no further notice
    assert len(helper.notices) == 1
