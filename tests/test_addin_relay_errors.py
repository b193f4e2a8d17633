"""A relayed add-in check the helper fails on (a bug in a rule, a ValueError from the email package, a store
error) is refused at once with a clear message, nothing is sent, and the helper goes on taking checks.

Before, only ``SendGuardError`` was reported: any other exception ended the handling with a log line, the
server waited ``ANSWER_SECONDS`` (30 s) and answered 504 "did not answer", and the user waited for nothing.
Real helper relay against the real central server, on PostgreSQL (tools/with-postgres.sh).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import pytest
import requests
import test_addin_relay as relay_tests
from conftest import wait_for
from test_addin_relay import USER, outcome, press_send

pytestmark = pytest.mark.postgres

pg_url, tenant, server, helper = relay_tests.pg_url, relay_tests.tenant, relay_tests.server, relay_tests.helper
BOOM = "injected failure 7f3a"


def boom(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(BOOM)


def outcome_within(proc: subprocess.Popen, seconds: float) -> dict:
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)
        pytest.fail(f"the add-in had no answer within {seconds:g} s")
    assert proc.returncode == 0, err
    return json.loads(out)


def confirm_next_check(server: Any, helper: Any, tenant: Any) -> None:
    """The same helper still takes and answers checks: the user confirms one and Outlook sends it."""
    proc = press_send(server, tenant.token())
    item = wait_for(lambda: next(iter(helper.outbox.list(["awaiting_confirmation"])), None), timeout=30)
    helper.outbox.confirm(item.id)
    result = outcome(proc)
    assert result["completed"] == {"allowEvent": True}, result
    assert helper.outbox.get(item.id).state == "sent"


def test_an_unexpected_error_building_the_check_is_refused_at_once_with_its_message(server, helper, tenant,
                                                                                      monkeypatch):
    monkeypatch.setattr(helper.outbox, "submit", boom)  # a store error, a bug in a rule: anything not ours
    started = time.monotonic()
    proc = press_send(server, tenant.token())
    result = outcome_within(proc, 20)
    elapsed = time.monotonic() - started
    completed = result["completed"]
    assert completed["allowEvent"] is False  # fail closed: nothing sent unchecked
    message = completed["errorMessage"]
    assert "could not check this message" in message and BOOM in message and "RuntimeError" in message, message
    assert "nothing was sent" in message, message
    assert "did not answer" not in message, message  # not the server's 504 after 30 s
    assert elapsed < 15, f"the refusal took {elapsed:.1f} s"
    assert result["to"] == ["x@partner.example", "y@other.example"]  # Outlook changed nothing
    assert helper.outbox.list() == []

    monkeypatch.undo()
    confirm_next_check(server, helper, tenant)


def test_the_server_answers_422_refused_with_the_helpers_message(server, helper, tenant, monkeypatch):
    """The contract itself (no node needed): the add-in's POST /relay/api/v1/checks is a 422 ``refused``."""
    from types import SimpleNamespace

    from sendguard import addin_relay

    def bad_header(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    # the helper's build only: the server (same process) builds the message with the real compose
    monkeypatch.setattr(addin_relay, "compose", SimpleNamespace(from_fields=bad_header))
    session = requests.post(f"{server.url}/relay/api/v1/addin/session", timeout=10,
                            headers={"Authorization": f"Bearer {tenant.token()}", "Origin": server.url}).json()
    addin = {"Authorization": f"Bearer {session['token']}", "Origin": server.url}
    check = {"source": "outlook", "from": {"address": USER}, "to": [{"address": "x@partner.example"}],
             "subject": "s", "body": "b"}
    started = time.monotonic()
    r = requests.post(f"{server.url}/relay/api/v1/checks", json=check, headers=addin, timeout=60)
    elapsed = time.monotonic() - started
    assert r.status_code == 422, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "refused"
    assert "could not read this message" in error["message"] and "linefeed" in error["message"], error
    assert elapsed < 15, f"the refusal took {elapsed:.1f} s"
    assert helper.outbox.list() == []


def test_an_error_after_the_first_report_cancels_the_item_and_stops_the_send(server, helper, tenant,
                                                                              monkeypatch):
    """The check was answered ("awaiting_confirmation"), then the helper's handling fails: the add-in is told at
    once (not left polling until Outlook's 5 minutes are up) and the item is not left asking in the window."""
    real_wait = helper.outbox.wait
    calls = {"n": 0}

    def wait_then_fail(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError(BOOM)
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(helper.outbox, "wait", wait_then_fail)
    started = time.monotonic()
    proc = press_send(server, tenant.token())
    result = outcome_within(proc, 30)
    completed = result["completed"]
    assert completed["allowEvent"] is False
    assert BOOM in completed["errorMessage"] and "nothing was sent" in completed["errorMessage"], completed
    assert time.monotonic() - started < 20
    [item] = helper.outbox.list()
    assert item.state == "cancelled"

    monkeypatch.undo()
    confirm_next_check(server, helper, tenant)


def test_the_poll_loop_survives_an_unexpected_error(server, helper, tenant, monkeypatch):
    """An exception other than SendGuardError in one round of the poll (a malformed answer, no thread to start)
    must not end the loop: the helper would silently stop taking checks until restarted."""
    relay = helper.addin_relay
    real = relay.client.relay_pending
    failed = threading.Event()

    def once(*args: Any, **kwargs: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise TypeError("'NoneType' object is not subscriptable")
        return real(*args, **kwargs)

    monkeypatch.setattr(relay.client, "relay_pending", once)
    # the loop is in a long poll already: the failure comes on its next round, after the first check
    confirm_next_check(server, helper, tenant)
    wait_for(failed.is_set, timeout=40)
    confirm_next_check(server, helper, tenant)
