"""An add-in token bound to a user files only that user's own mail (issue #10, finding 2).

On the central server an add-in token names its user, as a helper token does. It was refused only an
envelope sender of someone else: a check of taro's with ``"boss@example.co.jp" <taro@example.co.jp>``
in From was filed, and the approval pages and the audit showed it as if it came from the boss. The same
went for the Outlook relay (add-in served by the server, Office sign-in), which handed such a check on
to taro's helper. Both now hold a helper token's rules (``own_mail_only``): the envelope sender, the
From and Sender headers and the From display name (look-alike forms included) must all be the user's,
or the check is refused with ``403 wrong_sender``, audited, and nothing is stored or relayed.

The add-in's JSON cannot set a Sender header, nor a From address other than its envelope sender
(``compose.from_fields`` makes both from ``from.address``, and refuses CR/LF in a name): what it can
write is the From display name and the From address itself, tested here. On PostgreSQL.
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
import test_central_server as central
from conftest import SAMPLE_POLICY
from sqlalchemy import func, select
from test_central_server import SERVER_POLICY, ThreadServer

from addin import create_app
from sendguard import audit
from sendguard.service import Helper
from sendguard.store import addin_relay, outbox

TARO, BOSS = "taro@example.co.jp", "boss@example.co.jp"

pg_url, tenant = central.pg_url, relay_tests.tenant

# what an add-in can put in the From of its JSON to make taro's mail look like the boss's
DISGUISES = [
    pytest.param(TARO, BOSS, "display name in the From header", id="boss-address-as-display-name"),
    pytest.param(TARO, f"Boss <{BOSS}>", "display name in the From header", id="boss-address-in-display-name"),
    pytest.param(TARO, "boss＠example．co．jp", "display name in the From header", id="look-alike-display-name"),
    pytest.param(TARO, "=?utf-8?q?boss=40example.co.jp?=", "display name in the From header",
                 id="encoded-word-display-name"),
    pytest.param(BOSS, "Taro", "envelope sender", id="boss-address-as-from"),
]


@pytest.fixture
def server(pg_url: str, tmp_path: Path, tenant: Any) -> Iterator[ThreadServer]:
    """The central server, with the Outlook relay signed in through the test tenant."""
    policy = tmp_path / "server-policy.toml"
    policy.write_text(SERVER_POLICY, encoding="utf-8")
    s = ThreadServer(pg_url, policy, RELAY_SSO_JWKS_URL=tenant.jwks_url, RELAY_SSO_AUDIENCE=relay_tests.AUDIENCE,
                     RELAY_SSO_ISSUER=relay_tests.ISSUER, RELAY_PICKUP_SECONDS=2.0)
    yield s
    s.stop()


def check_from(address: str, name: str | None = None, subject: str = "見積") -> dict[str, Any]:
    return {"source": "outlook", "from": {"address": address, **({"name": name} if name else {})},
            "to": [{"address": "x@partner.example", "name": "X"}], "subject": subject, "body": "本文"}


def addin_session(server: ThreadServer, user: str = TARO) -> dict[str, str]:
    """An add-in token of the server's own, asked for with the user's helper token (as the add-in does)."""
    r = requests.post(f"{server.url}/api/v1/addin/session", timeout=10,
                      headers={"Authorization": f"Bearer {server.token(user)}", "Origin": server.url})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}", "Origin": server.url}


def relay_session(server: ThreadServer, tenant: Any, user: str = TARO) -> dict[str, str]:
    """An add-in token of the Outlook relay, asked for with the user's Office sign-in token."""
    r = requests.post(f"{server.url}/relay/api/v1/addin/session", timeout=10,
                      headers={"Authorization": f"Bearer {tenant.token(user)}", "Origin": server.url})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}", "Origin": server.url}


def filed(server: ThreadServer) -> list[tuple[str, str]]:
    with server.service.store.engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(select(outbox.c.id, outbox.c.sender)).all()]


def relayed(server: ThreadServer) -> int:
    with server.service.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(addin_relay)).scalar_one())


def refusals(server: ThreadServer) -> list[dict[str, Any]]:
    return [r for r in audit.records(server.service.store) if r["event"] == "approval_refused"]


def assert_refused_as_wrong_sender(r: requests.Response, where: str, server: ThreadServer) -> None:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "wrong_sender", error
    assert where in error["message"] and TARO in error["message"], error
    [record] = refusals(server)  # audited once, as taro's attempt (never as the boss's)
    assert record["actor"] == TARO and record["item_id"] is None
    assert where in record["data"]["reason"]
    assert all(r["actor"] != BOSS for r in audit.records(server.service.store))


# ---------------------------------------------------------------------- POST /api/v1/checks, add-in token
@pytest.mark.postgres
@pytest.mark.parametrize("address, name, where", DISGUISES)
def test_addin_token_cannot_file_mail_that_shows_another_sender(server: ThreadServer, address: str, name: str,
                                                                where: str) -> None:
    r = requests.post(f"{server.url}/api/v1/checks", json=check_from(address, name, "上司の名で"),
                      headers=addin_session(server), timeout=30)
    assert_refused_as_wrong_sender(r, where, server)
    assert filed(server) == []  # nothing for an approver to see as the boss's mail


@pytest.mark.postgres
def test_addin_tokens_own_mail_is_still_filed(server: ThreadServer) -> None:
    r = requests.post(f"{server.url}/api/v1/checks", json=check_from(TARO, "山田 太郎"), headers=addin_session(server),
                      timeout=30)
    assert r.status_code == 201, r.text
    assert filed(server) == [(r.json()["id"], TARO)]
    assert refusals(server) == []


# ---------------------------------------------------------------------- the Outlook relay
@pytest.mark.postgres
@pytest.mark.parametrize("address, name, where", DISGUISES)
def test_relay_does_not_pass_on_mail_that_shows_another_sender(server: ThreadServer, tenant: Any, address: str,
                                                               name: str, where: str) -> None:
    r = requests.post(f"{server.url}/relay/api/v1/checks", json=check_from(address, name, "上司の名で"),
                      headers=relay_session(server, tenant), timeout=30)
    assert_refused_as_wrong_sender(r, where, server)
    assert relayed(server) == 0  # refused before it is stored: the user's helper never takes it


@pytest.mark.postgres
def test_relay_passes_on_the_users_own_mail(server: ThreadServer, tenant: Any) -> None:
    answer: dict[str, requests.Response] = {}
    addin = relay_session(server, tenant)

    def press_send() -> None:
        answer["r"] = requests.post(f"{server.url}/relay/api/v1/checks", json=check_from(TARO, "山田 太郎"),
                                    headers=addin, timeout=30)

    sending = threading.Thread(target=press_send)
    sending.start()
    helper = {"Authorization": f"Bearer {server.token(TARO)}"}
    taken: list[dict[str, Any]] = []
    for _ in range(50):  # taro's helper takes the check over its own connection and answers it
        taken = requests.get(f"{server.url}/api/v1/central/relay/pending?wait=0", headers=helper, timeout=10).json()
        if taken:
            break
        time.sleep(0.1)
    [check] = taken
    assert check["request"]["from"] == {"address": TARO, "name": "山田 太郎"}
    requests.post(f"{server.url}/api/v1/central/relay/{check['id']}/status", json={"state": "awaiting_confirmation"},
                  headers=helper, timeout=10).raise_for_status()
    sending.join(30)
    assert answer["r"].status_code == 201, answer["r"].text
    assert answer["r"].json()["id"] == check["id"]
    assert refusals(server) == []


# ---------------------------------------------------------------------- the user's own helper
def test_unbound_addin_token_on_the_users_own_helper_files_any_from(home: Path) -> None:
    """The helper's add-in token names no user (the helper is the user's): the From display name is the
    checks' business there (display_name_mismatch), not a refusal."""
    (home / "policy.toml").write_text(SAMPLE_POLICY, encoding="utf-8")
    client = create_app(Helper(home), {"API_TOKEN": "test-token-0123456789", "SECRET_KEY": "k" * 32,
                                       "TESTING": True}).test_client()
    own = {"Origin": "https://localhost:8765", "Host": "localhost:8765"}
    token = client.post("/api/v1/addin/session", headers=own).get_json()["token"]
    r = client.post("/api/v1/checks", json=check_from(TARO, BOSS), headers={**own, "Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.get_json()
