"""A fleet of helpers on one central server process: many more helpers poll than the server may hold waiting.

Each connected helper keeps two polls open (decisions, and relayed Outlook checks). The server holds at
most a share of its threads waiting; helpers beyond that share are answered at once with what there is
(and told when to ask again) instead of being refused, so every helper still hears its decision and
takes its relayed checks within seconds, /healthz answers, and nobody sees 503. A real `sendguard server`
(gunicorn) on PostgreSQL, the helpers' production client (CentralClient) in threads.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import test_addin_relay as relay_tests
import test_central_server as central_tests
from conftest import make_message, wait_for
from test_central_server import SERVER_POLICY, Proc, ThreadServer, _healthy, env_for, held_for_approval

from addin.server import database_url, issue_token
from sendguard.central import CentralClient
from sendguard.errors import ConfigError, SendGuardError
from sendguard.store import Store

pytestmark = pytest.mark.postgres

pg_url, tenant = relay_tests.pg_url, relay_tests.tenant
sender_helper = central_tests.sender_helper
HELPERS = 40
BUDGET = 8  # waiting requests per server process (SENDGUARD_SERVER_LONG_POLLS)


class FleetHelper:
    """One PC's helper as the server sees it: its decisions poll and its relay poll, each in a thread,
    following the server's answers (the same client and the same waits as sendguard.central/addin_relay)."""

    def __init__(self, url: str, user: str, token: str, errors: Counter[str]):
        self.user = user
        self.client = CentralClient(url, token)
        self.errors = errors
        self.decided: dict[str, float] = {}
        self.taken: dict[str, float] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(self._decisions,), daemon=True),
                        threading.Thread(target=self._loop, args=(self._relay,), daemon=True)]

    def _loop(self, work: Any) -> None:
        while not self.stop.is_set():
            try:
                work()
            except SendGuardError as exc:
                self.errors[str(exc)[:120]] += 1
                self.stop.wait(1.0)
                continue
            hint = getattr(self.client, "poll_after", None)  # (absent before the fleet change: the test fails)
            if hint:
                self.stop.wait(hint)

    def _decisions(self) -> None:
        statuses = self.client.decisions(wait=25)
        for status in statuses:
            self.decided.setdefault(str(status["id"]), time.monotonic())
        if statuses:
            self.client.ack([str(s["id"]) for s in statuses])

    def _relay(self) -> None:
        pending = self.client.relay_pending(wait=25) if hasattr(self.client, "relay_pending") else \
            self.client._call("GET", "/api/v1/central/relay/pending", params={"wait": 25}, timeout=40)
        for request in pending:
            self.taken.setdefault(request["id"], time.monotonic())
            self.client._call("POST", f"/api/v1/central/relay/{request['id']}/status",
                              json={"state": "cancelled", "user_message": "seen by the fleet test"})

    def start(self) -> FleetHelper:
        for thread in self.threads:
            thread.start()
        return self


@pytest.mark.slow
def test_a_fleet_of_helpers_beyond_the_wait_budget_all_get_their_answers(pg_url: str, tmp_path: Path,
                                                                         tenant: Any) -> None:
    env = env_for(tmp_path, "server")
    env.update(SENDGUARD_AUDIT_KEY="fleet-audit-key", SENDGUARD_SERVER_LONG_POLLS=str(BUDGET),
               SENDGUARD_SERVER_SSO_JWKS_URL=tenant.jwks_url, SENDGUARD_SERVER_SSO_AUDIENCE=relay_tests.AUDIENCE,
               SENDGUARD_SERVER_SSO_ISSUER=relay_tests.ISSUER)
    (tmp_path / "server" / "policy.toml").write_text(SERVER_POLICY, encoding="utf-8")
    ready = tmp_path / "ready.json"
    server = Proc(["server", "--database", pg_url, "--bind", "127.0.0.1:0", "--ready-file", str(ready),
                   "--workers", "1", "--threads", "16"], env, tmp_path / "server.log").start()
    helpers: list[FleetHelper] = []
    try:
        url = str(wait_for(lambda: ready.exists() and json.loads(ready.read_text())["url"], timeout=30))
        wait_for(lambda: _healthy(url), timeout=30)
        users = [f"user{n:02d}@example.co.jp" for n in range(HELPERS)]
        store = Store(database_url(pg_url))
        try:  # (the CLI that issues them is tested in test_central_server)
            tokens = {u: issue_token(store, u) for u in [*users, "boss@example.co.jp"]}
        finally:
            store.close()
        for user in users:  # each helper handed one message over for approval
            raw = make_message(sender=user, subject="社外秘").as_bytes()
            CentralClient(url, tokens[user])._call("POST", "/api/v1/central/requests", json={
                "id": f"r-{user[:6]}", "sender": user, "raw": base64.b64encode(raw).decode()})
        errors: Counter[str] = Counter()
        helpers = [FleetHelper(url, u, tokens[u], errors).start() for u in users]
        time.sleep(3.0)  # every helper's polls are in: BUDGET of them at most wait, the rest are answered at once

        health = []
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            health.append(time.monotonic() - started)

        boss = CentralClient(url, tokens["boss@example.co.jp"])
        decided_at = {}
        for user in users:
            boss.decide(f"r-{user[:6]}", "approve", "boss@example.co.jp")
            decided_at[f"r-{user[:6]}"] = time.monotonic()
        deadline = time.monotonic() + 30
        while not all(h.decided for h in helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = [h.user for h in helpers if not h.decided]
        assert not missing, f"{len(missing)} of {HELPERS} helpers never heard their decision; errors: {errors}"
        late = {h.user: round(h.decided[f"r-{h.user[:6]}"] - decided_at[f"r-{h.user[:6]}"], 2) for h in helpers}
        assert max(late.values()) < 6.0, late

        # an Outlook check relayed through the server reaches a helper that cannot hold a waiting poll
        relayed = {}
        for user in users[-5:]:
            session = requests.post(f"{url}/relay/api/v1/addin/session", timeout=10,
                                    headers={"Authorization": f"Bearer {tenant.token(user)}", "Origin": url})
            assert session.status_code == 200, session.text
            check = {"source": "outlook", "from": {"address": user}, "to": [{"address": "x@partner.example"}],
                     "subject": "見積", "body": "本文"}
            started = time.monotonic()
            answer = requests.post(f"{url}/relay/api/v1/checks", json=check, timeout=30,
                                   headers={"Authorization": f"Bearer {session.json()['token']}", "Origin": url})
            relayed[user] = (answer.status_code, round(time.monotonic() - started, 2), answer.text[:200])
        assert all(code == 201 and took < 6.0 for code, took, _ in relayed.values()), relayed

        for _ in range(5):
            started = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            health.append(time.monotonic() - started)
        assert max(health) < 1.0, health
        print(f"fleet: {HELPERS} helpers, budget {BUDGET}: decision after {max(late.values())} s at most, "
              f"relayed check answered after {max(t for _, t, _ in relayed.values())} s at most, "
              f"/healthz {max(health) * 1000:.0f} ms at most")
        assert not errors, errors  # no 503, no 429, no backoff: the polls follow the server's hint
    finally:
        for h in helpers:
            h.stop.set()
        server.stop()



# ---------------------------------------------------------------------- one real helper, budget taken
@pytest.fixture
def server(pg_url: str, tmp_path: Path) -> Iterator[ThreadServer]:
    """A server that holds no helper's poll waiting (its helpers' share of waits: 0)."""
    policy = tmp_path / "server-policy.toml"
    policy.write_text(SERVER_POLICY, encoding="utf-8")
    s = ThreadServer(pg_url, policy, LONG_POLLS_TOTAL=3, LONG_POLLS_BACKGROUND=0)
    yield s
    s.stop()


def test_a_helper_that_cannot_wait_on_the_server_short_polls_quietly(server: ThreadServer, sender_helper: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    polls = server.app.extensions["sendguard_long_polls"]
    # a helper's polls are answered at once, with the hint; the client reads it
    taro = CentralClient(server.url, server.token("taro@example.co.jp"))
    started = time.monotonic()
    assert taro.decisions(wait=20) == [] and time.monotonic() - started < 2.0
    assert taro.poll_after is not None and 2.0 <= taro.poll_after <= 15.0 * 1.3
    assert taro.relay_pending(wait=20) == [] and taro.poll_after is not None
    assert polls.short_polling() >= 1 and polls.waiting() == 0
    assert taro.statuses(["nothing"]) == [] and taro.poll_after is not None  # only polls change the hint

    # the real helper (its decisions and relay loops) short-polls and still gets its decision in seconds
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    item_id = held_for_approval(sender_helper)
    wait_for(lambda: [i.id for i in boss.pending()] == [item_id], timeout=20)
    boss.decide(item_id, "approve", "boss@example.co.jp", "OK")
    decided = time.monotonic()
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=20)
    assert time.monotonic() - decided < 8.0
    assert polls.waiting() == 0  # it never held a thread waiting
    # never refused, never backed off: nothing to warn about
    noisy = [r.getMessage() for r in caplog.records if r.name.startswith(("sendguard.central",
                                                                          "sendguard.addin_relay"))]
    assert noisy == []


def test_wait_budget_follows_the_threads_and_refuses_nonsense() -> None:
    from addin.server import wait_budget

    assert wait_budget(16) == {"LONG_POLLS_TOTAL": 12, "LONG_POLLS_BACKGROUND": 8}
    assert wait_budget(64) == {"LONG_POLLS_TOTAL": 48, "LONG_POLLS_BACKGROUND": 32}
    assert wait_budget(4) == {"LONG_POLLS_TOTAL": 2, "LONG_POLLS_BACKGROUND": 1}
    assert wait_budget(1) == {"LONG_POLLS_TOTAL": 1, "LONG_POLLS_BACKGROUND": 1}
    assert wait_budget(16, "8") == {"LONG_POLLS_TOTAL": 8, "LONG_POLLS_BACKGROUND": 5}
    assert wait_budget(16, "8", "20") == {"LONG_POLLS_TOTAL": 8, "LONG_POLLS_BACKGROUND": 8}
    with pytest.raises(ConfigError, match="SENDGUARD_SERVER_LONG_POLLS='many'.*whole number"):
        wait_budget(16, "many")
    with pytest.raises(ConfigError, match="SENDGUARD_SERVER_HELPER_POLLS='-1'"):
        wait_budget(16, None, "-1")


def test_interactive_waits_keep_their_share_and_the_per_token_bound_stays() -> None:
    from addin.security import ApiError, LongPolls

    polls = LongPolls(per_credential=2, total=4, background=2)
    with polls.hold("helper:a", background=True) as a, polls.hold("helper:b", background=True) as b:
        assert a and b
        with polls.hold("helper:c", background=True) as c:
            assert not c  # over the helpers' share: answered at once, not refused
            assert polls.waiting() == 2
        with polls.hold("addin:x") as x, polls.hold("addin:y") as y:  # add-ins still have their places
            assert x and y
            with pytest.raises(ApiError) as busy:
                polls.hold("addin:z").__enter__()
            assert busy.value.status == 503
    assert polls.waiting() == 0
    roomy = LongPolls(per_credential=2, total=8, background=4)
    with roomy.hold("helper:a", background=True), roomy.hold("helper:a", background=True):
        with pytest.raises(ApiError) as many:
            roomy.hold("helper:a", background=True).__enter__()
        assert many.value.status == 429  # one token: 2 waiting at a time, as before
