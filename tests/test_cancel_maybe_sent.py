"""A message whose send lost its answer may already be with its recipients: a cancel and the status line
say so.

The transport lost the answer to a send (``AnswerLost``): the outbox holds the message in ``failed`` and
looks for it in Sent before sending it again. Cancelling it (``sendguard queue cancel``, the API and the
window share ``Outbox.cancel``) stops any further send, and tells the user, as for an interrupted send in
``releasing``, that it may have gone out: the CLI's line on stderr, the JSON's ``last_error``, the
``cancelled`` audit record's ``may_have_been_sent``. The window's and the tray's status line
(``sendguard.waiting``) says the same instead of "wait for the mail service to take them". A clean
refusal (nothing went out) is cancelled as before, without the warning.

Real helper, Graph connector and client libraries against the local Graph stand-in; the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_message, run_cli
from test_lost_answer_restart import (
    HELD_POLICY,
    POLICY,
    LateGraph,
    graph_home,
    held_and_lost,
    release_after_backoff,
    retry,
)

from sendguard import audit
from sendguard.i18n import translator
from sendguard.service import Helper
from sendguard.waiting import waiting
from tests.test_graph import ADDRESS

pytestmark = pytest.mark.slow


@pytest.fixture
def graph():
    with LateGraph(address=ADDRESS) as server:
        yield server


def cancelled_record(h: Helper, item_id: str) -> dict:
    (record,) = [r for r in audit.records(h.outbox.store, item_id) if r["event"] == "cancelled"]
    return record["data"]


def cancelled_with_the_warning(item_id: str) -> dict:
    """`sendguard queue cancel ID --json`: cancelled, and the last error says it may have gone out."""
    out = run_cli("queue", "cancel", item_id, "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["state"] == "cancelled"
    assert "could not tell whether it had gone out" in (shown["last_error"] or ""), shown
    assert "check your Sent mail" in shown["last_error"]
    return shown


def nothing_more_is_sent(home: Path, graph: LateGraph, item_id: str, sends: int) -> None:
    """A helper started after the back-off releases nothing: the cancel stopped the send for good."""
    h = Helper(home)
    try:
        h.outbox.clock = (lambda steady: lambda: steady() + 3600.0)(h.outbox.clock)  # every wait is over
        assert h.outbox.release_due() == []
        assert h.outbox.get(item_id).state == "cancelled"
        assert len(graph.sends) == sends
    finally:
        h.stop()


def test_cli_cancel_of_a_send_whose_answer_was_lost_says_it_may_have_gone_out(home, graph):
    graph.send_filing_delay = None  # it went out, and Exchange has not filed it (yet)
    graph_home(home, graph, retry(20), HELD_POLICY)
    item_id = held_and_lost(home, graph)

    cancelled_with_the_warning(item_id)

    h = Helper(home)
    try:
        data = cancelled_record(h, item_id)
        assert data["may_have_been_sent"] is True and data["answer_lost"] is True, data
        assert "could not tell" in (h.outbox.get(item_id).last_error or "")
    finally:
        h.stop()
    nothing_more_is_sent(home, graph, item_id, sends=1)


def test_cli_cancel_after_a_look_in_sent_that_found_nothing_yet_still_warns(home, graph):
    """The try after the lost answer, within the grace, sends nothing and does not find it filed: its clean
    "not filed yet" failure leaves the doubt as it was."""
    graph.send_filing_delay = None
    graph_home(home, graph, retry(20), HELD_POLICY)
    item_id = held_and_lost(home, graph)
    h = Helper(home)
    try:
        again = release_after_backoff(h, item_id)
        assert again.state == "failed" and "not filed" in (again.last_error or ""), again.last_error
    finally:
        h.stop()

    out = run_cli("queue", "cancel", item_id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == f"{item_id}: cancelled"
    err = out.stderr.decode()
    assert "could not tell whether it had gone out" in err and "check your Sent mail" in err, err
    h = Helper(home)
    try:
        assert cancelled_record(h, item_id)["may_have_been_sent"] is True
        failed = [r["data"] for r in audit.records(h.outbox.store, item_id) if r["event"] == "failed"]
        assert "answer_lost" not in failed[-1]  # the grace still counts from the loss itself
        assert failed[-1]["may_have_been_sent"] is True
    finally:
        h.stop()
    nothing_more_is_sent(home, graph, item_id, sends=1)


def test_cli_cancel_of_a_clean_refusal_is_a_plain_cancel(home, graph):
    """Graph answered 503 to sendMail: nothing went out. Cancelled as before: no warning."""
    graph_home(home, graph, retry(20), POLICY)
    graph.fail_next("POST /v1.0/me/sendMail", "503", times=5, retry_after=60)
    h = Helper(home)
    try:
        raw = bytes(make_message(to="a@partner.example", sender=ADDRESS, message_id="<clean@contoso.example>"))
        item = h.outbox.submit(raw, ADDRESS, ["a@partner.example"])
        failed = h.outbox.release(item.id)
        assert failed.state == "failed" and "503" in (failed.last_error or ""), failed.last_error
        assert [w.text.split(" (")[0] for w in waiting(h.outbox, translator("en"))] == [
            "1 message(s) wait for the mail service to take them"]
    finally:
        h.stop()

    out = run_cli("queue", "cancel", item.id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == f"{item.id}: cancelled" and out.stderr.decode() == ""
    h = Helper(home)
    try:
        data = cancelled_record(h, item.id)
        assert "may_have_been_sent" not in data and "answer_lost" not in data, data
    finally:
        h.stop()
    assert len(graph.sends) == 0


def test_status_line_says_a_send_whose_answer_was_lost_may_have_gone_out(home, graph):
    graph.send_filing_delay = None
    graph_home(home, graph, retry(20), HELD_POLICY)
    item_id = held_and_lost(home, graph)
    h = Helper(home)
    try:
        lines = waiting(h.outbox, translator("en"))
        assert [w.kind for w in lines] == ["retry"] and lines[0].ids == (item_id,)
        text = lines[0].text
        assert "may have gone out" in text and "looks for them in Sent before sending again" in text, text
        assert "wait for the mail service to take them" not in text
        assert "送信済みの可能性" in waiting(h.outbox, translator("ja"))[0].text
        assert "可能已经发出" in waiting(h.outbox, translator("zh"))[0].text

        again = release_after_backoff(h, item_id)  # within the grace: not filed yet, still in doubt
        assert again.state == "failed", again.last_error
        assert "may have gone out" in waiting(h.outbox, translator("en"))[0].text

        h.outbox.resolve(item_id, sent=False)  # the user: it did not go out, send it again
        assert "wait for the mail service to take them" in waiting(h.outbox, translator("en"))[0].text
    finally:
        h.stop()
