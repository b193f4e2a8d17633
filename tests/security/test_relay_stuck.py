"""A relayed Outlook check that the user's helper took but never answers does not hold a server thread for good.

``_hand_over`` waited for the helper's first report with no end once a helper had taken the check: the
pickup deadline only expired rows still pending. A helper whose build step crashed (only logged) or that
died after taking it left the add-in's request, and the waiting slot it holds (2 per add-in token, 4 per
user, the server's total), waiting for ever. Now the request ends within ``RELAY_ANSWER_SECONDS`` of the take
with a ``504 helper_no_answer`` that the add-in shows as the reason it stopped the send (fail closed), the
slot is free again, and the row is withdrawn: the helper's late report is answered ``cancel``. On PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import test_addin_relay as relay_tests
import test_relay_bounds as bounds
from sqlalchemy import select

pytestmark = pytest.mark.postgres

TARO = "taro@example.co.jp"
ANSWER = 2.0  # RELAY_ANSWER_SECONDS in these tests
SLACK = 4.0  # the request must end within ANSWER + SLACK of the take; the old code never ended it

pg_url, tenant = relay_tests.pg_url, relay_tests.tenant


@pytest.fixture
def server(pg_url: str, tmp_path: Path, tenant: Any) -> Iterator[Any]:
    with relay_tests.running_server(pg_url, tmp_path, tenant, RELAY_PICKUP_SECONDS=5.0, RELAY_ANSWER_SECONDS=ANSWER,
                                     LONG_POLLS_TOTAL=bounds.TOTAL) as s:
        yield s


def submit(server: Any, addin: dict[str, str], answers: list[tuple[float, Any]]) -> threading.Thread:
    """The add-in presses Send; its answer (or the exception: a timeout on the old code) is collected."""
    def run() -> None:
        try:
            r: Any = requests.post(f"{server.url}/relay/api/v1/checks", json=bounds.outlook_check(TARO),
                                   headers=addin, timeout=5.0 + ANSWER + SLACK)  # pickup + answer + slack
        except requests.RequestException as exc:
            r = exc
        answers.append((time.monotonic(), r))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def take(server: Any, count: int) -> list[str]:
    """The helper takes the checks (over the real endpoint) and then never reports: it crashed, or died."""
    taken: list[str] = []
    end = time.monotonic() + 10
    while len(taken) < count and time.monotonic() < end:
        got = requests.get(f"{server.url}/api/v1/central/relay/pending?wait=1", headers=server.helper(TARO),
                           timeout=10)
        assert got.status_code == 200, got.text
        taken += [t["id"] for t in got.json()]
    assert len(taken) == count, taken
    return taken


def relay_state(server: Any, relay_id: str) -> str:
    from sendguard.store import addin_relay

    with server.store.engine.connect() as conn:
        return str(conn.execute(select(addin_relay.c.state).where(addin_relay.c.id == relay_id)).scalar_one())


def test_a_check_the_helper_took_and_never_answers_ends_fail_closed_and_frees_its_slot(server: Any,
                                                                                       tenant: Any) -> None:
    addin = bounds.addin_session(server, tenant, TARO)
    answers: list[tuple[float, Any]] = []
    threads = [submit(server, addin, answers) for _ in range(2)]  # the token's 2 waiting slots
    bounds.wait_for_waiting(server, 2)
    ids = take(server, 2)
    taken_at = time.monotonic()
    for t in threads:
        t.join(5.0 + ANSWER + SLACK + 5)
    assert len(answers) == 2, "the add-in's requests were still waiting"
    for ended, r in answers:
        assert isinstance(r, requests.Response), f"the add-in's request never ended: {r!r}"
        assert ended - taken_at < ANSWER + SLACK, f"answered {ended - taken_at:.1f} s after the take"
        # any status but 200/201 makes launchevent.js stop the send, showing the server's message
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "helper_no_answer", error
        assert "nothing was sent" in error["message"] and "press Send again" in error["message"], error
    # the slots are free: no waiting request is left, and the same token may wait again
    assert server.polls.waiting() == 0 and server.user_polls.waiting() == 0
    again = bounds.relayed_check(server, addin, TARO)  # a healthy helper answers: 201
    assert again not in ids
    # the rows are withdrawn: the helper's late report is answered "cancel" (it cancels its item)
    for relay_id in ids:
        assert relay_state(server, relay_id) == "cancelled"
        late = requests.post(f"{server.url}/api/v1/central/relay/{relay_id}/status",
                             json={"state": "awaiting_confirmation"}, headers=server.helper(TARO), timeout=10)
        assert late.status_code == 200 and late.json()["cancel"] is True, late.text


def test_the_answer_bound_runs_from_the_take_not_from_the_check(server: Any, tenant: Any) -> None:
    """A helper that takes a check late in the pickup window still gets the whole answer bound, and its
    first report (after most of it) is the add-in's answer: no check is cut short for a slow build step."""
    addin = bounds.addin_session(server, tenant, TARO)
    answers: list[tuple[float, Any]] = []
    thread = submit(server, addin, answers)
    time.sleep(3.5)  # of the 5 s pickup
    [relay_id] = take(server, 1)
    time.sleep(ANSWER * 0.6)  # past the pickup deadline, within the answer bound
    bounds.status(server, TARO, relay_id, "awaiting_confirmation")
    thread.join(5.0 + ANSWER + SLACK + 5)
    [(_ended, r)] = answers
    assert isinstance(r, requests.Response) and r.status_code == 201, r
    assert r.json()["id"] == relay_id and r.json()["state"] == "awaiting_confirmation"
    assert relay_state(server, relay_id) == "taken"
