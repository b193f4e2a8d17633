"""A send whose answer was lost is not repeated while Exchange Online has not filed it yet.

Graph accepts ``POST /me/sendMail`` (202) and files the message later (under load seconds after the
answer: through the Outbox, or nowhere visible at first). When the 202 is lost (the connection dropped
after the server acted), "not in Sent Items" must not be read as "not sent" until the service has had
time to file it. (Fault audit: graph_sent_lag_drop_after.)
"""

from __future__ import annotations

import time

import pytest
from conftest import make_message, smtp_send, wait_for

from sendguard import config as config_mod
from sendguard.mailboxes.graph import MsalTokenSource
from sendguard.service import Helper
from tests.fakes.graph_server import FakeGraph

ADDRESS = "user@contoso.example"
POLICY = '[organization]\ninternal_domains = ["contoso.example"]\n\n[confirm]\nwhen = "never"\n'
# fast back-off; max_seconds 10 leaves room for the grace a lost answer gets (min(60 s, max_seconds))
RETRY = "[retry]\nbase_seconds = 0.2\nmax_seconds = 10\ninline_wait_seconds = 0.2\n"
LAG = 3.0  # seconds Exchange takes to file an accepted sendMail


@pytest.fixture
def fake():
    with FakeGraph(address=ADDRESS) as server:
        yield server


def start_helper(home, fake, retry=RETRY) -> Helper:
    (home / "policy.toml").write_text(POLICY)
    (home / "config.toml").write_text(retry)
    account = config_mod.Account("m365", "graph", ADDRESS, {
        "tenant": fake.tenant, "client_id": fake.client_id, "authority": fake.base, "intercept_outbox": False,
        "graph_endpoint": fake.graph_endpoint, "ca_bundle": str(fake.ca_file), "timeout": 5})
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    return Helper(home).start(smtp=True, smtp_port=0)


def hand_in(h: Helper, msgid: str) -> None:
    raw = bytes(make_message(to="a@partner.example", sender=ADDRESS, message_id=msgid))
    assert smtp_send(h.smtp.port, raw, ["a@partner.example"], sender=ADDRESS) == {}


def item_of(h: Helper, msgid: str):
    return next((i for i in h.outbox.list(None) if i.message_id == msgid), None)


@pytest.mark.parametrize("filing", ["outbox", "hidden"])
def test_lost_answer_to_sendmail_filed_late_is_sent_once(home, fake, filing):
    fake.sendmail_filing = filing
    fake.submission_delay = LAG
    fake.fail_next("POST /v1.0/me/sendMail", "drop_after")
    h = start_helper(home, fake)
    try:
        msgid = f"<lag-{filing}@contoso.example>"
        hand_in(h, msgid)
        wait_for(lambda: (i := item_of(h, msgid)) is not None and i.state == "sent", timeout=60)
        time.sleep(LAG + 1.5)  # anything sent a second time has been filed by now
        copies = [s.internet_message_id for s in fake.sends].count(msgid)
        assert copies == 1, f"{copies} copies; sendMail calls: {fake.requests.count('POST /v1.0/me/sendMail')}"
        assert fake.requests.count("POST /v1.0/me/sendMail") == 1
    finally:
        h.stop()


def test_dropped_before_the_server_acted_is_sent_after_the_grace(home, fake):
    """Nothing was accepted (the connection broke before the server acted): once the grace is over and
    the message is nowhere in the mailbox, it is sent - once."""
    fake.fail_next("POST /v1.0/me/sendMail", "drop")
    h = start_helper(home, fake, retry="[retry]\nbase_seconds = 0.2\nmax_seconds = 1.5\ninline_wait_seconds = 0.2\n")
    try:
        msgid = "<lag-before@contoso.example>"
        hand_in(h, msgid)
        wait_for(lambda: (i := item_of(h, msgid)) is not None and i.state == "sent", timeout=60)
        assert [s.internet_message_id for s in fake.sends].count(msgid) == 1
    finally:
        h.stop()


def test_answered_send_is_not_delayed(home, fake):
    h = start_helper(home, fake)
    try:
        msgid = "<lag-none@contoso.example>"
        began = time.monotonic()
        hand_in(h, msgid)
        wait_for(lambda: (i := item_of(h, msgid)) is not None and i.state == "sent", timeout=30)
        assert time.monotonic() - began < 5
        assert fake.requests.count("POST /v1.0/me/sendMail") == 1
        assert fake.requests.count("GET /v1.0/me/mailFolders/outbox/messages") == 0
    finally:
        h.stop()
