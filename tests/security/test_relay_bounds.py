"""The central server's Outlook relay cannot be used to tie up the server (issue #10 finding 2, issue #19).

Each waiting request holds one of the server's threads. A user with an Office sign-in token (so any
user of the tenant) can mint add-in tokens at will, and a helper token is on every user's PC: neither
may hold more than its share, waiting requests are refused at once beyond the bounds, and a relay id
that the server cannot have given out never reaches the database. On PostgreSQL.
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
from sqlalchemy import event, func, select

pytestmark = pytest.mark.postgres

TARO, HANAKO = "taro@example.co.jp", "hanako@example.co.jp"
TOTAL = 7  # waiting requests per server process in these tests

pg_url, tenant = relay_tests.pg_url, relay_tests.tenant


@pytest.fixture
def server(pg_url: str, tmp_path: Path, tenant: Any) -> Iterator[Any]:
    with relay_tests.running_server(pg_url, tmp_path, tenant, RELAY_PICKUP_SECONDS=5.0, LONG_POLLS_TOTAL=TOTAL) as s:
        yield s


def addin_session(server: Any, tenant: Any, user: str) -> dict[str, str]:
    r = requests.post(f"{server.url}/relay/api/v1/addin/session", timeout=10,
                      headers={"Authorization": f"Bearer {tenant.token(user)}", "Origin": server.url})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}", "Origin": server.url}


def outlook_check(user: str) -> dict[str, Any]:
    return {"source": "outlook", "from": {"address": user}, "to": [{"address": "x@partner.example"}],
            "subject": "見積", "body": "本文"}


def relayed_check(server: Any, addin: dict[str, str], user: str) -> str:
    """A check through the relay, taken and answered by the user's helper over the real endpoints."""
    answer: dict[str, Any] = {}

    def submit() -> None:
        answer["r"] = requests.post(f"{server.url}/relay/api/v1/checks", json=outlook_check(user), headers=addin,
                                    timeout=30)

    t = threading.Thread(target=submit)
    t.start()
    helper = server.helper(user)
    for _ in range(50):
        taken = requests.get(f"{server.url}/api/v1/central/relay/pending?wait=0", headers=helper, timeout=10).json()
        if taken:
            break
        time.sleep(0.1)
    [(relay_id)] = [t["id"] for t in taken]
    status(server, user, relay_id, "awaiting_confirmation")
    t.join(30)
    assert answer["r"].status_code == 201, answer["r"].text
    assert answer["r"].json()["id"] == relay_id
    return relay_id


def status(server: Any, user: str, relay_id: str, state: str) -> None:
    r = requests.post(f"{server.url}/api/v1/central/relay/{relay_id}/status", json={"state": state},
                      headers=server.helper(user), timeout=10)
    assert r.status_code == 200, r.text


class Calls:
    """Requests started in threads; their answers are collected as they come."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, int, dict[str, Any]]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def start(self, label: str, method: str, url: str, **kwargs: Any) -> None:
        def run() -> None:
            r = requests.request(method, url, timeout=60, **kwargs)
            body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
            with self.lock:
                self.answers.append((label, r.status_code, body))

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def of(self, label: str) -> list[tuple[int, dict[str, Any]]]:
        with self.lock:
            return [(code, body) for lab, code, body in self.answers if lab == label]

    def until(self, label: str, count: int, seconds: float = 8.0) -> list[tuple[int, dict[str, Any]]]:
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(self.of(label)) < count:
            time.sleep(0.05)
        return self.of(label)

    def join(self) -> None:
        for t in self.threads:
            t.join(60)


def wait_for_waiting(server: Any, count: int) -> None:
    end = time.monotonic() + 8
    while time.monotonic() < end and server.polls.waiting() < count:
        time.sleep(0.05)
    assert server.polls.waiting() == count


def relay_rows(server: Any, user: str) -> int:
    from sendguard.store import addin_relay

    with server.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(addin_relay)
                                .where(addin_relay.c.user == user)).scalar_one())


def test_addin_long_polls_are_bounded_per_token_per_user_and_per_server(server: Any, tenant: Any) -> None:
    """One user's add-in tokens hold at most 2 polls each and 4 together; the server at most its total;
    the rest are refused at once (a refused check is not stored), and /healthz still answers."""
    a, b, c = (addin_session(server, tenant, TARO) for _ in range(3))
    d, e = addin_session(server, tenant, HANAKO), addin_session(server, tenant, HANAKO)
    ids = {name: relayed_check(server, token, TARO if name in "abc" else HANAKO)
           for name, token in (("a", a), ("b", b), ("c", c), ("d", d), ("e", e))}
    calls = Calls()

    def poll(label: str, token: dict[str, str], name: str) -> None:
        calls.start(label, "GET", f"{server.url}/relay/api/v1/outbox/{ids[name]}?wait=30", headers=token)

    for _ in range(3):  # per token: 2 wait, the third is refused at once
        poll("a", a, "a")
    [(code, body)] = calls.until("a", 1)
    assert code == 429 and body["error"]["code"] == "too_many_waits", body
    for _ in range(3):  # another token of the same user: 2 more (4 for the user)
        poll("b", b, "b")
    assert [code for code, _ in calls.until("b", 1)] == [429]
    wait_for_waiting(server, 4)
    poll("c", c, "c")  # a third token of the same user: the user's 4 are taken
    [(code, body)] = calls.until("c", 1)
    assert code == 429 and "per signed-in user" in body["error"]["message"], body
    rows = relay_rows(server, TARO)
    refused = requests.post(f"{server.url}/relay/api/v1/checks", json=outlook_check(TARO), headers=c, timeout=10)
    assert refused.status_code == 429, refused.text  # refused before it is stored: no helper ever takes it
    assert relay_rows(server, TARO) == rows

    poll("d", d, "d")  # another user, and the helper's own poll, fill the server's total (7)
    poll("d", d, "d")
    calls.start("helper", "GET", f"{server.url}/api/v1/central/relay/pending?wait=6", headers=server.helper(HANAKO))
    wait_for_waiting(server, TOTAL)
    poll("e", e, "e")
    [(code, body)] = calls.until("e", 1)
    assert code == 503 and body["error"]["code"] == "busy", body
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert len(calls.of("a")) == 1 and len(calls.of("b")) == 1 and not calls.of("d")  # the others still wait

    for name, user in (("a", TARO), ("b", TARO), ("d", HANAKO)):  # the helper's news ends the waits
        status(server, user, ids[name], "cancelled")
    calls.join()
    for label in ("a", "b", "d"):
        answered = [body["state"] for code, body in calls.of(label) if code == 200]
        assert answered == ["cancelled", "cancelled"], calls.of(label)
    assert server.polls.waiting() == 0
    # the bounds were about waiting at once: the same token polls again once its answers came
    again = requests.get(f"{server.url}/relay/api/v1/outbox/{ids['c']}?wait=1", headers=c, timeout=10)
    assert again.status_code == 200


def test_helper_relay_polls_are_bounded_per_helper_token(server: Any, tenant: Any) -> None:
    """The helper's long poll for relayed checks counts with its decisions poll: 2 per helper token."""
    helper = server.helper(TARO)
    calls = Calls()
    for _ in range(3):
        calls.start("pending", "GET", f"{server.url}/api/v1/central/relay/pending?wait=8", headers=helper)
    [(code, body)] = calls.until("pending", 1)
    assert code == 429 and body["error"]["code"] == "too_many_waits", body
    decisions = requests.get(f"{server.url}/api/v1/central/decisions?wait=5", headers=helper, timeout=10)
    assert decisions.status_code == 429
    # a check arrives: one waiting poll takes it, at once (the add-in is answered as soon as the helper is)
    addin = addin_session(server, tenant, TARO)
    started = time.monotonic()
    submitted: dict[str, Any] = {}
    t = threading.Thread(target=lambda: submitted.update(r=requests.post(
        f"{server.url}/relay/api/v1/checks", json=outlook_check(TARO), headers=addin, timeout=30)))
    t.start()
    taken = [body for code, body in calls.until("pending", 2) if code == 200]
    assert len(taken) == 1 and len(taken[0]) == 1 and time.monotonic() - started < 5, calls.of("pending")
    status(server, TARO, taken[0][0]["id"], "awaiting_confirmation")
    t.join(30)
    assert submitted["r"].status_code == 201
    calls.join()


@pytest.mark.parametrize("bad", ["a" * 200, "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 16 + "%00" + "0" * 15,
                                 "%27%20OR%201%3D1--"])
def test_malformed_relay_ids_never_reach_the_database(server: Any, tenant: Any, bad: str) -> None:
    addin = addin_session(server, tenant, TARO)
    helper = server.helper(TARO)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = server.store.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for method, path, headers, body in (
                ("GET", f"/relay/api/v1/outbox/{bad}?wait=0", addin, None),
                ("GET", f"/relay/api/v1/outbox/{bad}?wait=5", addin, None),
                ("POST", f"/relay/api/v1/outbox/{bad}/cancel", addin, {}),
                ("POST", f"/api/v1/central/relay/{bad}/status", {}, {"state": "sent"}),
                ("POST", f"/api/v1/central/relay/{bad}/status", helper, {"state": "sent"})):
            started = time.monotonic()
            r = requests.request(method, server.url + path, headers=headers, json=body, timeout=10)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "not_found" and "32" in r.json()["error"]["message"]
            assert time.monotonic() - started < 2  # no wait was held for it either
        assert statements == []
        # the control: a well-formed id that does not exist is looked up (and is not found)
        r = requests.get(f"{server.url}/relay/api/v1/outbox/{'0' * 32}?wait=0", headers=addin, timeout=10)
        assert r.status_code == 404 and statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def test_wait_that_is_not_a_number_of_seconds_is_refused_at_once(server: Any, tenant: Any) -> None:
    """``?wait=nan`` made a deadline that never comes: the request held a server thread for good."""
    addin = addin_session(server, tenant, TARO)
    relay_id = relayed_check(server, addin, TARO)
    helper = server.helper(TARO)
    for value in ("nan", "NaN", "-1", "abc", "1e400x"):
        for path, headers in ((f"/relay/api/v1/outbox/{relay_id}?wait={value}", addin),
                              (f"/api/v1/central/relay/pending?wait={value}", helper)):
            try:
                r = requests.get(server.url + path, headers=headers, timeout=5)
            except requests.Timeout:
                pytest.fail(f"{path}: still waiting after 5 s")
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_wait", (path, r.text)
    assert server.polls.waiting() == 0
