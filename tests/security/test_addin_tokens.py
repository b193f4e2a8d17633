"""An add-in token creates checks and reads or polls its own items, nothing else (finding 2 of issue #10)."""

from __future__ import annotations

import base64
import threading
from typing import Any

import pytest
import requests
import test_central_server as central
from conftest import SAMPLE_POLICY, make_message
from test_central_server import ThreadServer

from addin import create_app
from sendguard.service import Helper

TOKEN = "test-token-0123456789"
OWN = {"Origin": "https://localhost:8765", "Host": "localhost:8765"}

# the central server's fixtures: a throwaway database and a server in a thread
pg_url, server = central.pg_url, central.server


def outlook_check(sender: str = "taro@example.co.jp", subject: str = "見積") -> dict[str, Any]:
    return {"source": "outlook", "from": {"address": sender}, "to": [{"address": "x@partner.example", "name": "X"}],
            "subject": subject, "body": "本文"}


@pytest.fixture
def app(home: Any) -> Any:
    (home / "policy.toml").write_text(SAMPLE_POLICY, encoding="utf-8")
    return create_app(Helper(home), {"API_TOKEN": TOKEN, "SECRET_KEY": "k" * 32, "TESTING": True})


def addin_token(client: Any) -> dict[str, str]:
    r = client.post("/api/v1/addin/session", headers=OWN)
    assert r.status_code == 200, r.get_json()
    return {**OWN, "Authorization": f"Bearer {r.get_json()['token']}"}


def test_anyone_without_the_addins_origin_gets_no_addin_token(app: Any) -> None:
    client = app.test_client()
    r = client.post("/api/v1/addin/session", headers={"Host": "localhost:8765"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "origin_required"


def test_addin_token_cannot_list_read_or_cancel_other_messages(app: Any) -> None:
    client = app.test_client()
    api = {"Authorization": f"Bearer {TOKEN}", **OWN}
    theirs = client.post("/api/v1/checks", json=outlook_check(subject="他人の見積"), headers=api).get_json()["id"]
    mine_token = addin_token(client)
    mine = client.post("/api/v1/checks", json=outlook_check(), headers=mine_token)
    assert mine.status_code == 201
    mine_id = mine.get_json()["id"]
    listed = client.get("/api/v1/outbox?all=1", headers=mine_token)
    assert listed.status_code == 403 and "他人の見積" not in listed.get_data(as_text=True)
    for method, path in (("GET", f"/api/v1/outbox/{theirs}"), ("GET", f"/api/v1/outbox/{theirs}?wait=1"),
                         ("POST", f"/api/v1/outbox/{theirs}/cancel"), ("POST", f"/api/v1/outbox/{theirs}/confirm"),
                         ("GET", "/api/v1/approvals")):
        r = client.open(path, method=method, headers=mine_token, json={})
        assert r.status_code in (403, 404), (method, path, r.status_code)
        assert "他人の見積" not in r.get_data(as_text=True)
    assert client.get(f"/api/v1/outbox/{theirs}", headers=api).get_json()["state"] == "awaiting_confirmation"
    # another add-in session (another Outlook) cannot reach the first one's item either
    assert client.get(f"/api/v1/outbox/{mine_id}", headers=addin_token(client)).status_code == 404
    # its own item: read, poll and cancel
    assert client.get(f"/api/v1/outbox/{mine_id}?wait=0", headers=mine_token).get_json()["id"] == mine_id
    assert client.post(f"/api/v1/outbox/{mine_id}/cancel", headers=mine_token, json={}).status_code == 200


def test_long_polls_cannot_starve_the_helper(runner: Any, write_policy: Any) -> None:
    """A dozen ?wait=60 polls: a few are held per token and per server, the rest are refused at once."""
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = TOKEN
    polls = r.app.extensions.get("sendguard_long_polls")
    if polls is not None:
        polls.total = 4  # of the server's threads, this many may wait at once
    own = {"Origin": r.base_url}
    api = {"Authorization": f"Bearer {TOKEN}"}
    sessions = []
    for _ in range(3):
        token = requests.post(f"{r.base_url}/api/v1/addin/session", headers=own, timeout=10).json()["token"]
        headers = {**own, "Authorization": f"Bearer {token}"}
        made = requests.post(f"{r.base_url}/api/v1/checks", json=outlook_check(), headers=headers, timeout=30).json()
        sessions.append((headers, made["id"]))
    answers: list[int] = []
    lock = threading.Lock()

    def poll(headers: dict[str, str], item_id: str) -> None:
        got = requests.get(f"{r.base_url}/api/v1/outbox/{item_id}?wait=60", headers=headers, timeout=90)
        with lock:
            answers.append(got.status_code)

    threads = [threading.Thread(target=poll, args=sessions[i % 3]) for i in range(12)]
    for t in threads:
        t.start()
    # the refused ones come back at once, while the held ones still wait
    deadline = threading.Event()
    for _ in range(600):
        with lock:
            if len(answers) >= 8:
                break
        deadline.wait(0.05)
    with lock:
        early = sorted(answers)
    assert len(early) == 8 and set(early) <= {429, 503}, early
    assert requests.get(f"{r.base_url}/healthz", timeout=5).status_code == 200
    for _headers, item_id in sessions:  # a decision ends the held polls
        requests.post(f"{r.base_url}/api/v1/outbox/{item_id}/cancel", headers=api, json={}, timeout=10)
    for t in threads:
        t.join(30)
    assert sorted(answers).count(200) == 4, answers


# ---------------------------------------------------------------------- the central server
@pytest.mark.postgres
def test_addin_token_on_the_server_belongs_to_an_authenticated_user(server: ThreadServer) -> None:
    url = server.url
    anonymous = requests.post(f"{url}/api/v1/addin/session", headers={"Origin": url}, timeout=10)
    assert anonymous.status_code == 401
    no_origin = requests.post(f"{url}/api/v1/addin/session", timeout=10)
    assert no_origin.status_code == 401

    def session_of(user: str) -> dict[str, str]:
        r = requests.post(f"{url}/api/v1/addin/session",
                          headers={"Authorization": f"Bearer {server.token(user)}", "Origin": url}, timeout=10)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}", "Origin": url}

    taro, hanako = session_of("taro@example.co.jp"), session_of("hanako@example.co.jp")
    forged = requests.post(f"{url}/api/v1/checks", json=outlook_check("hanako@example.co.jp"), headers=taro,
                           timeout=30)
    assert forged.status_code == 403
    theirs = requests.post(f"{url}/api/v1/checks", json=outlook_check("hanako@example.co.jp", "花子の見積"),
                           headers=hanako, timeout=30)
    assert theirs.status_code == 201, theirs.text
    theirs_id = theirs.json()["id"]
    for method, path in (("GET", "/api/v1/outbox?all=1"), ("GET", f"/api/v1/outbox/{theirs_id}"),
                         ("POST", f"/api/v1/outbox/{theirs_id}/cancel")):
        r = requests.request(method, url + path, headers=taro, json={}, timeout=10)
        assert r.status_code in (403, 404) and "花子の見積" not in r.text, (method, path, r.status_code)
    raw = base64.b64encode(make_message(subject="社外秘").as_bytes()).decode()
    injected = requests.post(f"{url}/api/v1/central/requests", headers=taro, timeout=10,
                             json={"id": "inj1", "sender": "taro@example.co.jp", "raw": raw})
    assert injected.status_code == 403
    assert requests.get(f"{url}/api/v1/outbox/{theirs_id}", headers=hanako, timeout=10).status_code == 200
