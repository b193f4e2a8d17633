"""Outbox interception on Exchange Online over Microsoft Graph (messages Outlook defers in the server's Outbox).

The fake Graph server sends Outbox messages itself when their deferred time (``SystemTime 0x3FEF``)
passes, so a message left in the Outbox is really sent by the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sendguard import config as config_mod
from sendguard.mailboxes import _retry
from sendguard.mailboxes.graph import HOLD_FOLDER, TAKEN_CATEGORY, MsalTokenSource
from sendguard.service import Helper
from tests.fakes.graph_server import FakeGraph
from tests.test_graph import ADDRESS, account_for, message

POLICY = '[organization]\ninternal_domains = ["contoso.example"]\n\n[confirm]\nwhen = "external"\n'
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(_retry, "sleep", lambda seconds: None)


@pytest.fixture
def fake():
    with FakeGraph(address=ADDRESS) as server:
        yield server


def configure(home: Path, fake: FakeGraph, **settings) -> config_mod.Account:
    (home / "policy.toml").write_text(POLICY)
    account = account_for(fake)
    account.settings.update(settings)
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    return account


def new_helper(home: Path) -> Helper:
    h = Helper(home)
    h.notices = []
    h.notifier = lambda title, body: h.notices.append((title, body))
    return h


@pytest.fixture
def helper(fake, home):
    configure(home, fake)
    h = new_helper(home)
    yield h
    h.stop()


def outbox_ids(fake: FakeGraph) -> list[str]:
    return [m.id for m in fake.in_folder("outbox")]


def test_deferred_message_is_taken_checked_and_released_once_after_its_time_passed(helper, fake):
    fake.submission_delay = 3600  # an ordinary send in progress stays in the Outbox while we look
    ordinary = fake.outlook_send(message(msgid="<plain@contoso.example>", attachments=()))
    fake.outlook_send(message(attachments=("quote.pdf", "internal.xlsx")), defer_seconds=60)

    assert helper.watch_outboxes(force=True) == 1
    (item,) = helper.outbox.list()
    assert (item.state, item.source, item.account) == ("awaiting_confirmation", "graph-outbox", "m365")
    assert item.message_id == "<g1@contoso.example>"
    assert outbox_ids(fake) == [ordinary]
    held = fake.messages[item.source_ref]
    assert held.folder == fake.folder_id(HOLD_FOLDER) and TAKEN_CATEGORY in held.categories

    fake.advance(120)  # the window is still open when the deferred time passes
    assert fake.sends == []
    helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"], removed_attachments=["internal.xlsx"])
    released = helper.outbox.release_due()[0]
    assert released.state == "sent", released.last_error
    (sent,) = fake.sends
    assert sent.route == "send" and sent.internet_message_id == "<g1@contoso.example>"
    assert sent.to == ["a@partner.example"] and sent.attachments == ["quote.pdf"]
    assert sent.deferred is not None and sent.deferred.year == 2000  # set in the past by the release

    fake.advance(600)
    helper._missed_at.clear()
    helper.watch_outboxes(force=True)
    assert len(fake.sends) == 1 and len(helper.outbox.list()) == 1 and helper.notices == []


def test_release_before_the_deferred_time_goes_out_now(helper, fake):
    fake.outlook_send(message(), defer_seconds=600)
    helper.watch_outboxes(force=True)
    (item,) = helper.outbox.list()
    helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"])
    assert helper.outbox.release(item.id).state == "sent"
    (sent,) = fake.sends
    assert sent.route == "send" and outbox_ids(fake) == []
    fake.advance(1200)
    assert len(fake.sends) == 1


def test_a_message_without_a_deferred_time_is_never_touched(helper, fake):
    fake.submission_delay = 3600
    ordinary = fake.outlook_send(message(attachments=()))
    for _ in range(3):
        assert helper.watch_outboxes(force=True) == 0
    assert outbox_ids(fake) == [ordinary] and fake.messages[ordinary].categories == []
    assert not [r for r in fake.requests if r.startswith(("POST", "PATCH", "DELETE")) and ordinary in r]
    assert helper.outbox.list() == []


def test_cancelled_goes_back_to_drafts_and_is_never_sent(helper, fake):
    fake.outlook_send(message(), defer_seconds=60)
    helper.watch_outboxes(force=True)
    (item,) = helper.outbox.list()
    helper.outbox.cancel(item.id)
    helper.watch_outboxes(force=True)
    (draft,) = fake.in_folder("drafts")
    assert draft.internet_message_id == "<g1@contoso.example>" and draft.is_draft
    assert TAKEN_CATEGORY not in draft.categories and draft.deferred.year == 2000
    assert fake.in_folder(HOLD_FOLDER) == []
    fake.advance(3600)
    helper.watch_outboxes(force=True)
    assert fake.sends == []


def test_helper_down_at_the_deferred_time_records_what_the_server_sent(fake, home):
    configure(home, fake)
    first = new_helper(home)
    first.watch_outboxes(force=True)
    first.stop()

    fake.outlook_send(message(), defer_seconds=60)
    fake.advance(120)
    (sent,) = fake.sends
    assert sent.route == "ServerTransport"

    again = new_helper(home)
    try:
        again.watch_outboxes(force=True)
        (item,) = again.outbox.list()
        assert (item.state, item.source, item.message_id) == ("sent", "graph-outbox", "<g1@contoso.example>")
        assert len(again.notices) == 1
        again._missed_at.clear()
        again.watch_outboxes(force=True)
        assert len(again.outbox.list()) == 1 and len(again.notices) == 1
    finally:
        again.stop()
    assert len(fake.sends) == 1


def test_kill_9_during_release_is_reconciled_from_sent_items(fake, home):
    configure(home, fake)
    helper = new_helper(home)
    try:
        fake.outlook_send(message(), defer_seconds=60)
        helper.watch_outboxes(force=True)
        (item,) = helper.outbox.list()
        helper.outbox.confirm(item.id, removed_recipients=["b@partner.example"])
    finally:
        helper.stop()

    script = ("import sys; from sendguard.service import Helper; "
              "Helper().outbox.release(sys.argv[1]); print('recorded')")
    env = dict(os.environ, SENDGUARD_CRASH_AT="release.after_transport")
    crashed = subprocess.run([sys.executable, "-c", script, item.id], env=env, capture_output=True, timeout=60,
                             cwd=ROOT)
    assert crashed.returncode == -signal.SIGKILL and b"recorded" not in crashed.stdout, crashed.stderr
    (sent,) = fake.sends
    assert sent.route == "send" and sent.to == ["a@partner.example"]
    fake.advance(120)

    restarted = new_helper(home)
    try:
        assert restarted.outbox.get(item.id).state == "releasing"
        restarted.outbox.reconcile()
        assert restarted.outbox.get(item.id).state == "sent"
        assert restarted.outbox.release_due() == []
        restarted.watch_outboxes(force=True)
        assert len(restarted.outbox.list()) == 1 and restarted.notices == []
    finally:
        restarted.stop()
    assert len(fake.sends) == 1


def test_the_running_helper_takes_within_its_poll_interval(fake, home):
    configure(home, fake, outbox_poll_seconds=1)
    helper = new_helper(home)
    helper.start(smtp=False)
    try:
        fake.outlook_send(message(), defer_seconds=60)
        deadline = time.monotonic() + 30
        while not helper.outbox.list() and time.monotonic() < deadline:
            time.sleep(0.1)
        (item,) = helper.outbox.list()
        assert item.source == "graph-outbox" and outbox_ids(fake) == []
    finally:
        helper.stop()
    fake.advance(120)
    assert fake.sends == []
