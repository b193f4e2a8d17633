"""kill -9 at each state transition: nothing lost, nothing released twice."""

from __future__ import annotations

import os
import smtplib
import threading

import pytest
from conftest import SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for
from sqlalchemy import select

from sendguard import audit, config, outbox, policy, store
from sendguard.mailboxes.maildir import MaildirMailbox
from sendguard.submission import SubmissionServer

pytestmark = pytest.mark.slow


def items(home):
    box = outbox.Outbox(store.Store(home / "sendguard.db"), lambda: policy.Policy())
    return box.list(None)


def sent_files(home):
    return MaildirMailbox(home / "sent").messages()


def held_item(home):
    return wait_for(lambda: [i for i in items(home) if i.state == "awaiting_confirmation"])[0]


@pytest.fixture
def setup(home, write_policy, serve_process):
    write_policy(SAMPLE_POLICY)
    return serve_process


def test_crash_after_commit_before_250_keeps_the_message(home, setup):
    proc = setup().start(crash_at="smtp.before_250")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
    assert proc.wait_dead() == -9
    setup().start()
    item = held_item(home)
    assert item.subject == "見積書の送付"
    assert len(items(home)) == 1


def test_crash_while_committing_at_intake_leaves_the_mail_with_the_client(home, setup):
    """Killed while the checked message's transaction is open: no 250, nothing half-stored."""
    proc = setup().start(crash_at="intake.uncommitted")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
    assert proc.wait_dead() == -9
    assert items(home) == []
    proc = setup().start()
    smtp_send(proc.smtp_port, make_message(to="x@partner.example"))  # the client's retry
    assert held_item(home).subject == "見積書の送付"
    assert len(items(home)) == 1


def test_a_small_message_is_stored_already_checked_in_one_commit(home, setup):
    proc = setup().start()
    smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
    [item] = items(home)  # right after the 250, without waiting for the worker
    assert item.state == "awaiting_confirmation"
    assert item.check.verdict.action == "confirm"
    events = [r["event"] for r in audit.records(store.Store(home / "sendguard.db"), item.id)]
    assert events == ["received", "verdict"]


def test_crash_after_250_before_check_is_rechecked_on_restart(home, setup):
    """A message too large to check at intake is stored ``received``; the worker checks it later."""
    proc = setup().start(crash_at="transition.verdict.uncommitted")
    big = make_message(to="x@partner.example",
                       attachments=[("data.bin", os.urandom(outbox.INTAKE_CHECK_MAX_BYTES + 1),
                                     "application/octet-stream")])
    smtp_send(proc.smtp_port, big)  # 250 came back: it is ours now
    assert proc.wait_dead() == -9
    [item] = items(home)
    assert item.state == "received"
    setup().start()
    assert held_item(home).id == item.id


def test_crash_during_confirm_leaves_it_held_then_confirm_again(home, setup):
    proc = setup().start()
    smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
    item = held_item(home)
    env = dict(os.environ, SENDGUARD_CRASH_AT="transition.confirmed.uncommitted")
    crashed = run_cli("queue", "confirm", item.id, env=env)
    assert crashed.returncode == -9
    assert [i.state for i in items(home)] == ["awaiting_confirmation"]
    assert run_cli("queue", "confirm", item.id).returncode == 0
    wait_for(lambda: items(home)[0].state == "sent")
    assert len(sent_files(home)) == 1


def test_crash_while_passing_a_checked_message_on_writes_nothing_of_that_step(home, setup):
    """The check's result is written by the step that follows the check, in its audited transaction:
    killed before that commits, the message is as received (no unaudited verdict) and is checked again."""
    proc = setup().start(crash_at="transition.confirmed.uncommitted")
    smtp_send(proc.smtp_port, make_message(to="colleague@example.co.jp"))  # internal: the policy passes it on
    assert proc.wait_dead() == -9
    [item] = items(home)
    assert (item.state, item.check, item.subject) == ("received", None, "")
    assert [r["event"] for r in audit.records(store.Store(home / "sendguard.db"), item.id)] == ["received"]
    setup().start()
    wait_for(lambda: items(home)[0].state == "sent")
    assert items(home)[0].check.verdict.action == "allow"
    assert len(sent_files(home)) == 1


@pytest.mark.parametrize("point", ["transition.releasing.committed", "release.after_transport",
                                   "transition.released.uncommitted"])
def test_crash_during_maildir_release_is_reconciled_once(home, setup, point):
    proc = setup().start(crash_at=point)
    smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
    item = held_item(home)
    assert run_cli("queue", "confirm", item.id).returncode == 0
    assert proc.wait_dead() == -9
    assert items(home)[0].state == "releasing"
    setup().start()
    wait_for(lambda: items(home)[0].state == "sent")
    assert len(sent_files(home)) == 1
    trail = audit.records(store.Store(home / "sendguard.db"), item.id)
    events = [r["event"] for r in trail]
    if point == "transition.releasing.committed":  # not sent yet: found missing, sent again once
        assert events.count("releasing") == 2 and ("reconciled", False) in [
            (r["event"], r["data"].get("found")) for r in trail]
    else:  # the file was written: found, recorded as sent, not sent again
        assert events.count("releasing") == 1
        assert trail[-1]["event"] == "released" and trail[-1]["data"]["reconciled"] is True
    # the domain was counted with the "released" step itself: once, however often the send was interrupted
    with store.Store(home / "sendguard.db").engine.connect() as conn:
        counts = conn.execute(select(store.domains.c.domain, store.domains.c.count)).all()
    assert [tuple(r) for r in counts] == [("partner.example", 1)]


class Sink:
    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def test_crash_during_smtp_relay_release_needs_attention(home, setup):
    sink = Sink()
    relay = SubmissionServer(sink, "127.0.0.1", 0).start()
    try:
        port = relay.port
        config.save_account(config.Account("relay", "smtp", "", {"host": "127.0.0.1", "port": port,
                                                                  "security": "none"}), home / "config.toml")
        proc = setup().start(crash_at="release.after_transport")
        smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
        item = held_item(home)
        assert run_cli("queue", "confirm", item.id).returncode == 0
        assert proc.wait_dead() == -9
        assert len(sink.messages) == 1
        setup().start()
        wait_for(lambda: items(home)[0].state == "needs_attention")
        assert len(sink.messages) == 1  # never sent twice on its own
        shown = run_cli("queue", "show", item.id)
        assert b"cannot tell whether it went out" in shown.stdout
        assert run_cli("queue", "resolve", item.id, "--sent").returncode == 0
        assert items(home)[0].state == "sent"
        assert len(sink.messages) == 1
    finally:
        relay.stop()


def test_maildir_find_sent_reads_the_header_not_forwarded_copies(tmp_path):
    from sendguard.mailboxes.base import ReleaseItem

    box = MaildirMailbox(tmp_path / "sent")
    forwarded = (b"From: a@example.co.jp\r\nTo: b@x.example\r\nMessage-ID: <outer@example.co.jp>\r\n\r\n"
                 b"Forwarded:\r\nMessage-ID: <inner@example.co.jp>\r\n")
    box.release(ReleaseItem("o1", "<outer@example.co.jp>", forwarded, "a@example.co.jp", ("b@x.example",)))
    assert box.find_sent("<outer@example.co.jp>") is True
    assert box.find_sent("<inner@example.co.jp>") is False
