"""Interrupted sends come back by themselves (issue #16, the two named defects).

1. A message left ``releasing`` while the mail service cannot answer is asked about again by the worker,
   with back-off, until the service answers; ``queue list`` shows it and what SendGuard waits for; the
   user can settle it (``queue resolve --sent|--resend``, ``queue cancel``).
2. ``sendguard serve`` starts and takes SMTP mail while Microsoft's sign-in service answers 5xx.
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
from conftest import make_message, run_cli, smtp_send, wait_for

from sendguard import config as config_mod
from sendguard.mailboxes.graph import MsalTokenSource
from sendguard.service import Helper
from tests.fakes.graph_server import FakeGraph

ROOT = Path(__file__).resolve().parents[1]
ADDRESS = "user@contoso.example"
POLICY = '[organization]\ninternal_domains = ["contoso.example"]\n\n[confirm]\nwhen = "never"\n'
WAITING_PREFIX = "Waiting for "  # sendguard.outbox.WAITING_PREFIX: an interrupted send still being asked about
FAST_RETRY = "[retry]\nbase_seconds = 0.1\nmax_seconds = 0.5\ninline_wait_seconds = 0.1\n"


@pytest.fixture
def fake():
    with FakeGraph(address=ADDRESS) as server:
        yield server


def graph_account(home, fake, retry=FAST_RETRY):
    """Set up ``home`` to release through the Graph stand-in, signed in, with ``retry`` as [retry]."""
    (home / "policy.toml").write_text(POLICY)
    (home / "config.toml").write_text(retry)
    account = config_mod.Account("m365", "graph", ADDRESS, {
        "tenant": fake.tenant, "client_id": fake.client_id, "authority": fake.base,
        "graph_endpoint": fake.graph_endpoint, "ca_bundle": str(fake.ca_file), "timeout": 5})
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    return home


@pytest.fixture
def graph_home(home, fake):
    return graph_account(home, fake)


def interrupted_send(home: Path, msgid: str, sender: str = ADDRESS) -> str:
    """A message confirmed for release, then the process killed (-9) right after ``releasing`` was
    committed and before the transport was called: what a power cut leaves behind."""
    helper = Helper(home)
    try:
        raw = bytes(make_message(to="a@partner.example", sender=sender, message_id=msgid))
        item = helper.outbox.submit(raw, sender, ["a@partner.example"])
        assert item.state == "confirmed", item.state
        helper.outbox.clock = lambda: 0.0  # not due yet: nothing releases it before the kill
    finally:
        helper.stop()
    script = "import sys; from sendguard.service import Helper; Helper().outbox.release(sys.argv[1])"
    env = dict(os.environ, SENDGUARD_CRASH_AT="transition.releasing.committed")
    crashed = subprocess.run([sys.executable, "-c", script, item.id], env=env, capture_output=True, timeout=60,
                             cwd=ROOT)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    return item.id


def state_of(helper: Helper, item_id: str) -> str:
    return helper.outbox.get(item_id).state


def test_interrupted_send_is_asked_about_until_graph_answers(graph_home, fake, helper):
    item_id = interrupted_send(graph_home, "<int1@contoso.example>")
    fake.fail_next("/v1.0/", "503", times=10_000, retry_after=0)  # Graph down; sign-in still answers
    h = helper()
    waiting = wait_for(lambda: (i := h.outbox.get(item_id)).last_error and i.last_error.startswith(WAITING_PREFIX)
                       and i, timeout=60)
    assert waiting.state == "releasing" and "graph account m365" in waiting.last_error
    asked = len(fake.requests)
    wait_for(lambda: len(fake.requests) > asked + 2, timeout=60)  # asked again, and again: not a start-up step
    # the user sees it, and what SendGuard waits for
    listed = json.loads(run_cli("queue", "list", "--json").stdout)
    (row,) = [r for r in listed if r["id"] == item_id]
    assert row["state"] == "releasing" and row["waiting_for"].startswith("Waiting for graph account m365")
    assert fake.sends == []
    fake.failures.clear()  # Graph is back: found not sent -> sent once, without a restart
    wait_for(lambda: state_of(h, item_id) == "sent", timeout=90)
    assert len(fake.sends) == 1


def test_waiting_send_can_be_settled_by_the_user(graph_home, fake, helper):
    first = interrupted_send(graph_home, "<int2@contoso.example>")
    second = interrupted_send(graph_home, "<int3@contoso.example>")
    third = interrupted_send(graph_home, "<int4@contoso.example>")
    fake.fail_next("/v1.0/", "503", times=10_000, retry_after=0)
    h = helper()
    for item_id in (first, second, third):
        wait_for(lambda i=item_id: (h.outbox.get(i).last_error or "").startswith(WAITING_PREFIX), timeout=60)
    out = run_cli("queue", "resolve", first, "--sent")
    assert out.returncode == 0, out.stderr
    out = run_cli("queue", "cancel", second)
    assert out.returncode == 0, out.stderr
    out = run_cli("queue", "resolve", third, "--resend")
    assert out.returncode == 0, out.stderr
    assert (state_of(h, first), state_of(h, second)) == ("sent", "cancelled")
    fake.failures.clear()
    wait_for(lambda: state_of(h, third) == "sent", timeout=90)
    assert [s.internet_message_id for s in fake.sends] == ["<int4@contoso.example>"]


def test_a_send_in_flight_cannot_be_settled_by_the_user(graph_home, fake):
    helper = Helper(graph_home)
    try:
        raw = bytes(make_message(to="a@partner.example", sender=ADDRESS, message_id="<fl@contoso.example>"))
        item = helper.outbox.submit(raw, ADDRESS, ["a@partner.example"])
        helper.outbox.transition(item.id, "start_release", "sendguard", only_from=["confirmed"],
                                 release_after=helper.outbox.clock() + 900)
    finally:
        helper.stop()
    for args in (("resolve", item.id, "--sent"), ("cancel", item.id)):
        out = run_cli("queue", *args)
        assert out.returncode != 0 and b"being sent right now" in out.stderr, out.stderr


def test_serve_starts_and_takes_mail_while_the_sign_in_service_answers_503(graph_home, fake, serve_process):
    item_id = interrupted_send(graph_home, "<int5@contoso.example>")
    fake.outage.down("503")  # sign-in discovery and Graph: HTTP 503
    proc = serve_process().start()
    reply = smtp_send(proc.smtp_port, make_message(to="b@partner.example", sender=ADDRESS), sender=ADDRESS)
    assert reply == {}
    wait_for(lambda: fake.outage.hits > 0, timeout=60)
    assert proc.proc.poll() is None
    out = run_cli("queue", "show", item_id, "--json")
    assert json.loads(out.stdout)["state"] == "releasing"
    fake.outage.up()
    box = Helper(graph_home).outbox
    wait_for(lambda: box.get(item_id).state == "sent" and len(box.list(["sent"])) == 2, timeout=120)
    assert sorted(s.internet_message_id for s in fake.sends).count("<int5@contoso.example>") == 1
    assert len(fake.sends) == 2
    assert proc.proc.poll() is None


def test_the_user_is_told_once_that_a_send_waits_for_its_service(graph_home, fake):
    item_id = interrupted_send(graph_home, "<int6@contoso.example>")
    fake.fail_next("/v1.0/", "503", times=10_000, retry_after=0)
    h = Helper(graph_home)
    notices: list[tuple[str, str]] = []
    h.notifier = lambda title, body: notices.append((title, body))
    h.start(smtp=False)
    try:
        wait_for(lambda: notices, timeout=60)
        time.sleep(1.0)  # asked again meanwhile: still one notice
        assert len(notices) == 1 and "waiting to learn" in notices[0][0]
        assert f"sendguard queue show {item_id}" in notices[0][1]
        fake.failures.clear()
        wait_for(lambda: state_of(h, item_id) == "sent", timeout=90)
    finally:
        h.stop()
