"""A send whose answer was lost is not sent again by a helper restarted within the Sent Items grace.

Exchange (Graph and EWS) files a message it accepted late under load. After a lost answer the connector
reads "not in Sent Items" as "not filed yet" for a grace (``_retry.sent_items_grace``). That grace was
kept in the running helper's memory only: a helper stopped and started again within it looked once, found
nothing and sent the message a second time. The outbox now keeps the loss on record (the ``failed``
audit record says ``answer_lost``) and every later release counts the grace from it
(``ReleaseItem.answer_lost_ago``). Once the grace is over: a message sent with sendMail / CreateItem that
is nowhere in the mailbox is sent (nothing went out); a held draft that has left Drafts and is nowhere
goes to ``needs_attention`` (it may have gone out), as in a helper that was never restarted.

Real helpers, connectors and client libraries (requests/msal, exchangelib) against the local Graph and
EWS stand-ins; only how late the stand-ins file a sent message is set here.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import make_message, smtp_send, wait_for

from sendguard import audit, secrets
from sendguard import config as config_mod
from sendguard.mailboxes.graph import MsalTokenSource
from sendguard.service import Helper
from tests.fakes.ews_server import FakeEWS
from tests.fakes.graph_server import FakeGraph
from tests.test_graph import ADDRESS, account_for, message

pytestmark = pytest.mark.slow

EWS_ADDRESS = "user@example.co.jp"
POLICY = ('[organization]\ninternal_domains = ["contoso.example", "example.co.jp"]\n\n'
          '[confirm]\nwhen = "never"\n')
HELD_POLICY = '[organization]\ninternal_domains = ["contoso.example"]\n\n[confirm]\nwhen = "external"\n'


def retry(max_seconds: float) -> str:
    """Fast back-off; the grace after a lost answer is min(60 s, ``max_seconds``)."""
    return f"[retry]\nbase_seconds = 0.2\nmax_seconds = {max_seconds}\ninline_wait_seconds = 0.2\n"


class LateGraph(FakeGraph):
    """Exchange Online under load: a draft sent with ``/send`` leaves Drafts at once but is in no folder
    Graph shows until ``send_filing_delay`` seconds later (never, with None)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.send_filing_delay: float | None = 0.0

    def _submit(self, msg, route):
        super()._submit(msg, route)
        if route != "send" or self.send_filing_delay == 0.0:
            return
        del self.messages[msg.id]  # sent (in ``sends``), not filed anywhere yet

        def file() -> None:
            with self.lock:
                self.messages[msg.id] = msg

        if self.send_filing_delay is not None:
            timer = threading.Timer(self.send_filing_delay, file)
            timer.daemon = True
            timer.start()


class LateEWS(FakeEWS):
    """Exchange under load: a message sent with CreateItem (SendAndSaveCopy) reaches Sent Items
    ``filing_delay`` seconds after the send."""

    filing_delay = 0.0

    def _submit(self, item, operation, save_to):
        if not (save_to and self.filing_delay):
            return super()._submit(item, operation, save_to)
        super()._submit(item, operation, None)  # sent (in ``sends``), in no folder yet

        def file() -> None:
            with self.lock:
                item.folder = save_to
                self.items[item.id] = item
                self._event("CreatedEvent", item)

        timer = threading.Timer(self.filing_delay, file)
        timer.daemon = True
        timer.start()


# ---------------------------------------------------------------------------------------------- set-up
def graph_home(home: Path, fake: FakeGraph, retry_text: str, policy: str = POLICY) -> None:
    """Mail goes out through the Graph stand-in; its Outbox is watched only for the held-draft tests
    (``HELD_POLICY``), so a stop is quick where nothing is taken from it."""
    (home / "policy.toml").write_text(policy)
    (home / "config.toml").write_text(retry_text)
    account = account_for(fake)
    account.settings.update(timeout=5, intercept_outbox=policy == HELD_POLICY)
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)


def ews_home(home: Path, fake: FakeEWS, retry_text: str) -> None:
    (home / "policy.toml").write_text(POLICY)
    (home / "config.toml").write_text(retry_text)
    account = config_mod.Account("work", "exchange", EWS_ADDRESS, {
        "server": fake.url, "username": "user", "timeout": 5, "intercept_outbox": False})
    config_mod.save_account(account, home / "config.toml")
    secrets.put(account.secret_key("password"), "secret")


def hand_in(h: Helper, sender: str, msgid: str) -> None:
    raw = bytes(make_message(to="a@partner.example", sender=sender, message_id=msgid))
    assert smtp_send(h.smtp.port, raw, ["a@partner.example"], sender=sender) == {}


def item_of(h: Helper, msgid: str):
    return next((i for i in h.outbox.list(None) if i.message_id == msgid), None)


def answer_lost(h: Helper, msgid: str) -> bool:
    """The send's answer was lost and the outbox holds the message to be looked for."""
    item = item_of(h, msgid)
    return item is not None and item.state == "failed" and "may have gone out" in (item.last_error or "")


def released_via(h: Helper, item_id: str) -> list[str]:
    return [r["data"].get("via") for r in audit.records(h.outbox.store, item_id) if r["event"] == "released"]


# ---------------------------------------------------------------------------------------------- Graph sendMail
@pytest.fixture
def graph():
    with LateGraph(address=ADDRESS) as server:
        yield server


def test_graph_restart_within_the_grace_does_not_send_again(home, graph):
    """sendMail's 202 is lost; Exchange files the message 5 s later. The helper is stopped and a new one
    started meanwhile: it looks, finds nothing yet, waits, and records the message sent once it is filed."""
    graph.sendmail_filing, graph.submission_delay = "hidden", 5.0
    graph.fail_next("POST /v1.0/me/sendMail", "drop_after")
    graph_home(home, graph, retry(20))  # grace 20 s
    msgid = "<restart-graph@contoso.example>"
    first = Helper(home).start(smtp=True, smtp_port=0)
    try:
        hand_in(first, ADDRESS, msgid)
        wait_for(lambda: answer_lost(first, msgid), timeout=30)
    finally:
        first.stop()
    assert graph.requests.count("POST /v1.0/me/sendMail") == 1

    second = Helper(home).start(smtp=False)
    try:
        item_id = item_of(second, msgid).id
        wait_for(lambda: second.outbox.get(item_id).state == "sent", timeout=60)
        time.sleep(6.5)  # a second copy, had one been sent, is filed by now
        assert graph.requests.count("POST /v1.0/me/sendMail") == 1, second.outbox.get(item_id).last_error
        assert [s.internet_message_id for s in graph.sends].count(msgid) == 1
        assert released_via(second, item_id) == ["already-sent"]
    finally:
        second.stop()


def test_graph_restart_then_nothing_filed_is_sent_once_after_the_grace(home, graph):
    """The connection broke before Exchange acted (nothing was accepted). A helper started within the grace
    does not send it at once; after the grace, found nowhere, it is sent - once."""
    grace = 6.0
    graph.fail_next("POST /v1.0/me/sendMail", "drop")
    graph_home(home, graph, retry(grace))
    msgid = "<restart-graph-none@contoso.example>"
    first = Helper(home).start(smtp=True, smtp_port=0)
    try:
        hand_in(first, ADDRESS, msgid)
        wait_for(lambda: answer_lost(first, msgid), timeout=30)
        lost_at = time.monotonic()
    finally:
        first.stop()

    second = Helper(home).start(smtp=False)
    try:
        item_id = item_of(second, msgid).id
        wait_for(lambda: second.outbox.get(item_id).state == "sent", timeout=60)
        assert time.monotonic() - lost_at >= grace - 1.0, "sent again within the grace"
        assert [s.internet_message_id for s in graph.sends].count(msgid) == 1
        assert released_via(second, item_id) == ["sendMail"]
    finally:
        second.stop()


# ---------------------------------------------------------------------------------------------- Graph held draft
def held_and_lost(home: Path, graph: LateGraph) -> str:
    """A deferred message taken from the Outbox, confirmed, and sent with /send whose answer is lost;
    then that helper stops. Returns the outbox id."""
    h = Helper(home)
    try:
        graph.outlook_send(message(), defer_seconds=60)
        h.watch_outboxes(force=True)
        (item,) = h.outbox.list()
        h.outbox.confirm(item.id, removed_recipients=["b@partner.example"])
        graph.fail_next("/send", "drop_after")
        lost = h.outbox.release(item.id)
        assert lost.state == "failed" and "may have gone out" in (lost.last_error or ""), lost.last_error
        assert len(graph.sends) == 1
        return item.id
    finally:
        h.stop()


def release_after_backoff(h: Helper, item_id: str):
    wait_for(lambda: h.outbox.get(item_id).release_after <= h.outbox.clock(), timeout=30)
    h.outbox.release_due()
    return h.outbox.get(item_id)


def test_graph_held_draft_filed_late_after_a_restart_is_sent_once(home, graph):
    """The draft left Drafts with the lost /send and reaches Sent Items 8 s later. A restarted helper keeps
    it held (it does not call it deleted), then finds it filed: sent, once, without the user."""
    graph.send_filing_delay = 8.0
    graph_home(home, graph, retry(20), HELD_POLICY)
    item_id = held_and_lost(home, graph)

    h = Helper(home)
    try:
        again = release_after_backoff(h, item_id)
        assert again.state == "failed", again.last_error  # within the grace: not filed yet, asked again
        assert "not filed" in (again.last_error or "")
        assert len(graph.sends) == 1

        def settled() -> bool:
            if h.outbox.get(item_id).state == "failed":
                h.outbox.release_due()
            return h.outbox.get(item_id).state == "sent"

        wait_for(settled, timeout=30)
        assert len(graph.sends) == 1
        assert released_via(h, item_id) == ["already-sent"]
    finally:
        h.stop()


def test_graph_held_draft_found_nowhere_after_the_grace_needs_attention(home, graph):
    """The draft left Drafts with the lost /send and is never filed. After a restart it stays held for the
    grace, then goes to needs_attention saying it may have gone out; it is never sent again."""
    grace = 8.0
    graph.send_filing_delay = None
    graph_home(home, graph, retry(grace), HELD_POLICY)
    item_id = held_and_lost(home, graph)

    h = Helper(home)
    try:
        again = release_after_backoff(h, item_id)
        assert again.state == "failed", again.last_error  # within the grace

        def settled() -> bool:
            if h.outbox.get(item_id).state == "failed":
                h.outbox.release_due()
            return h.outbox.get(item_id).state == "needs_attention"

        wait_for(settled, timeout=30)
        text = h.outbox.get(item_id).last_error or ""
        assert "may have gone out" in text and f"queue resolve {item_id}" in text, text
        records = [r for r in audit.records(h.outbox.store, item_id) if r["event"] == "failed"]
        assert records[-1]["data"].get("outcome_unknown") is True
        assert len(graph.sends) == 1
    finally:
        h.stop()


# ---------------------------------------------------------------------------------------------- EWS
def test_ews_restart_within_the_grace_does_not_send_again(home):
    """CreateItem's answer is lost; Exchange files the sent copy 5 s later. A helper started meanwhile
    waits for it instead of sending a second copy."""
    with LateEWS(address=EWS_ADDRESS) as ews:
        ews.filing_delay = 5.0
        ews.fail_next("CreateItem", "drop_after")
        ews_home(home, ews, retry(20))
        msgid = "<restart-ews@example.co.jp>"
        first = Helper(home).start(smtp=True, smtp_port=0)
        try:
            hand_in(first, EWS_ADDRESS, msgid)
            wait_for(lambda: (i := item_of(first, msgid)) is not None and i.state == "failed", timeout=30)
            # exchangelib reports the dropped answer as ErrorServerBusy: it is no throttling answer
            assert "may have gone out" in (item_of(first, msgid).last_error or ""), item_of(first, msgid).last_error
        finally:
            first.stop()
        assert ews.requests.count("CreateItem") == 1 and len(ews.sends) == 1

        second = Helper(home).start(smtp=False)
        try:
            item_id = item_of(second, msgid).id
            wait_for(lambda: second.outbox.get(item_id).state == "sent", timeout=60)
            assert ews.requests.count("CreateItem") == 1, second.outbox.get(item_id).last_error
            assert [s.message_id for s in ews.sends].count(msgid) == 1
            assert released_via(second, item_id) == ["already-sent"]
        finally:
            second.stop()
