"""A request body the API cannot read is refused (400 ``bad_json``), never read as ``{}``.

A confirm whose JSON was cut short, or sent as text/plain, was taken for an empty body and released the
message to every recipient, without the removals or the Bcc the user asked for. JSON nested too deeply
was a 500 with a traceback. The helper's API and the central server's endpoints are both covered here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import test_addin_relay as relay_tests
from conftest import make_message
from test_api import AUTH, error_of, make_app

from addin.openapi import SPEC
from sendguard import audit

DEEP = b"[" * 100_000 + b"]" * 100_000
JSON = {"Content-Type": "application/json"}

# (body, content type): each one a body the API cannot read as a JSON object
UNREADABLE = {
    "cut_short": (b'{"removed_recipients": ["wrong@other.example"]', "application/json"),
    "text_plain": (b'{"removed_recipients": ["wrong@other.example"], "bcc": true}', "text/plain"),
    "form": (b"removed_recipients=wrong%40other.example", "application/x-www-form-urlencoded"),
    "no_content_type": (b'{"removed_recipients": ["wrong@other.example"]}', None),
    "null": (b"null", "application/json"),
    "list": (b'["wrong@other.example"]', "application/json"),
    "not_utf8": ('{"removed_recipients": ["wrong@other.example"], "reason": "誤送信"}'.encode("shift_jis"),
                 "application/json"),
    "deep": (DEEP, "application/json"),
}


@pytest.fixture
def app(home: Path) -> Iterator[Any]:
    app = make_app(home)
    yield app
    app.config["SENDGUARD_SERVICE"].stop()


def held(app: Any, subject: str = "bad body") -> str:
    """A message waiting for the user's confirmation, to one kept and one wrong recipient."""
    helper = app.config["SENDGUARD_SERVICE"]
    msg = make_message(to="keep@partner.example, wrong@other.example", subject=subject)
    item = helper.outbox.submit(msg.as_bytes(), "taro@example.co.jp", ["keep@partner.example", "wrong@other.example"])
    assert item.state == "awaiting_confirmation"
    return str(item.id)


def post(client: Any, path: str, body: bytes, ctype: str | None, headers: dict[str, str] | None = None) -> Any:
    headers = {**(AUTH if headers is None else headers), **({"Content-Type": ctype} if ctype else {})}
    return client.post(path, data=body, headers=headers)


def assert_untouched(app: Any, item_id: str, before: list[str]) -> None:
    helper = app.config["SENDGUARD_SERVICE"]
    assert helper.outbox.get(item_id).state == "awaiting_confirmation"
    assert [r["event"] for r in audit.records(helper.store, item_id)] == before


def events(app: Any, item_id: str) -> list[str]:
    return [r["event"] for r in audit.records(app.config["SENDGUARD_SERVICE"].store, item_id)]


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_a_confirm_whose_body_cannot_be_read_is_refused_and_the_message_stays_held(app: Any, name: str,
                                                                                   caplog: Any) -> None:
    client = app.test_client()
    item_id = held(app)
    before = events(app, item_id)
    body, ctype = UNREADABLE[name]
    with caplog.at_level(logging.ERROR):
        r = post(client, f"/api/v1/outbox/{item_id}/confirm", body, ctype)
    assert r.status_code == 400, (name, r.status_code, r.get_data()[:300])
    assert error_of(r) == "bad_json"
    message = r.get_json()["error"]["message"]
    assert "nothing was done" in message and "application/json" in message, message
    assert_untouched(app, item_id, before)
    assert "unexpected error" not in caplog.text  # no traceback in the log


def test_the_bad_json_error_says_what_was_wrong_and_where(app: Any) -> None:
    client = app.test_client()
    item_id = held(app)
    path = f"/api/v1/outbox/{item_id}/confirm"
    cut = post(client, path, *UNREADABLE["cut_short"]).get_json()["error"]["message"]
    assert "not valid JSON" in cut and "line 1 column" in cut and "removed_recipients" in cut, cut
    plain = post(client, path, *UNREADABLE["text_plain"]).get_json()["error"]["message"]
    assert "text/plain" in plain, plain
    listed = post(client, path, *UNREADABLE["list"]).get_json()["error"]["message"]
    assert "a list" in listed and "JSON object" in listed, listed
    deep = post(client, path, *UNREADABLE["deep"]).get_json()["error"]["message"]
    assert "nested too deeply" in deep, deep


def test_a_confirm_without_a_body_confirms_as_shown(app: Any) -> None:
    """As documented: no body at all is "send it as shown" (the window's and scripts' plain Send)."""
    client = app.test_client()
    item_id = held(app)
    r = client.post(f"/api/v1/outbox/{item_id}/confirm", headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"] != "awaiting_confirmation"


def test_a_confirm_with_removals_still_removes(app: Any) -> None:
    client = app.test_client()
    item_id = held(app)
    r = client.post(f"/api/v1/outbox/{item_id}/confirm", json={"removed_recipients": ["wrong@other.example"]},
                    headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert app.config["SENDGUARD_SERVICE"].outbox.get(item_id).envelope_to == ["keep@partner.example"]


def test_the_confirmation_page_gets_bad_json_not_not_checked(app: Any) -> None:
    client = app.test_client()
    item_id = held(app)
    link = urlsplit(app.config["SENDGUARD_SERVICE"].confirm_url(item_id))
    assert client.get(f"{link.path}?{link.query}").status_code == 303  # the page session for this message
    before = events(app, item_id)
    r = post(client, f"/api/v1/outbox/{item_id}/confirm", b'{"checked": {"recipients": ["keep@partner.example"',
             "application/json", headers={})
    assert r.status_code == 400 and error_of(r) == "bad_json", r.get_json()
    assert_untouched(app, item_id, before)


@pytest.mark.parametrize("name", ["cut_short", "text_plain", "deep"])
def test_a_cancel_whose_body_cannot_be_read_is_refused(app: Any, name: str) -> None:
    """``stopped_send`` in a body that cannot be read would be lost: refused rather than guessed."""
    client = app.test_client()
    item_id = held(app)
    before = events(app, item_id)
    body = {"cut_short": b'{"reason": "x", "stopped_send": true', "text_plain": b'{"stopped_send": true}',
            "deep": DEEP}[name]
    r = post(client, f"/api/v1/outbox/{item_id}/cancel", body, "text/plain" if name == "text_plain" else
             "application/json")
    assert r.status_code == 400 and error_of(r) == "bad_json", r.get_json()
    assert_untouched(app, item_id, before)
    # without a body it cancels, as before
    assert client.post(f"/api/v1/outbox/{item_id}/cancel", headers=AUTH).get_json()["state"] == "cancelled"


@pytest.mark.parametrize("action", ["approve", "reject"])
@pytest.mark.parametrize("name", ["cut_short", "text_plain", "null", "deep"])
def test_an_approval_decision_whose_body_cannot_be_read_is_refused(app: Any, action: str, name: str) -> None:
    client = app.test_client()
    r = post(client, f"/api/v1/approvals/0123456789abcdef/{action}", *UNREADABLE[name])
    assert r.status_code == 400 and error_of(r) == "bad_json", r.get_json()


@pytest.mark.parametrize("name", ["cut_short", "null", "list", "deep"])
def test_a_check_whose_json_cannot_be_read_is_refused(app: Any, name: str, caplog: Any) -> None:
    client = app.test_client()
    with caplog.at_level(logging.ERROR):
        r = post(client, "/api/v1/checks", *UNREADABLE[name])
    assert r.status_code == 400 and error_of(r) == "bad_json", r.get_json()
    assert "unexpected error" not in caplog.text
    assert app.config["SENDGUARD_SERVICE"].outbox.list() == []


def test_a_csp_report_nested_too_deeply_is_ignored(app: Any) -> None:
    from addin.outlook import CSP_REPORT_PATH

    r = app.test_client().post(CSP_REPORT_PATH, data=b"[" * 8000 + b"]" * 8000, headers=JSON)
    assert r.status_code == 204


def test_the_openapi_document_says_what_a_bad_body_gets() -> None:
    for path in ("/api/v1/outbox/{item_id}/confirm", "/api/v1/outbox/{item_id}/cancel"):
        op = SPEC["paths"][path]["post"]
        assert "400" in op["responses"], path
        assert "bad_json" in op["description"] and "without a body" in op["description"], path


# ---------------------------------------------------------------------- the central server (PostgreSQL)
pg_url, tenant = relay_tests.pg_url, relay_tests.tenant
TARO = "taro@example.co.jp"


@pytest.fixture
def server(pg_url: str, tmp_path: Path, tenant: Any) -> Iterator[Any]:
    with relay_tests.running_server(pg_url, tmp_path, tenant, RELAY_PICKUP_SECONDS=5.0) as s:
        yield s


def relay_state(server: Any, tenant: Any) -> tuple[dict[str, str], str]:
    """An add-in check relayed to Taro's helper, taken and answered by it: (add-in headers, relay id)."""
    r = requests.post(f"{server.url}/relay/api/v1/addin/session", timeout=10,
                      headers={"Authorization": f"Bearer {tenant.token(TARO)}", "Origin": server.url})
    addin = {"Authorization": f"Bearer {r.json()['token']}", "Origin": server.url}
    answer: dict[str, Any] = {}
    check = {"source": "outlook", "from": {"address": TARO}, "to": [{"address": "x@partner.example"}],
             "subject": "見積", "body": "本文"}
    t = threading.Thread(target=lambda: answer.setdefault("r", requests.post(
        f"{server.url}/relay/api/v1/checks", json=check, headers=addin, timeout=30)))
    t.start()
    taken: list[dict[str, Any]] = []
    for _ in range(50):
        taken = requests.get(f"{server.url}/api/v1/central/relay/pending?wait=0", headers=server.helper(TARO),
                             timeout=10).json()
        if taken:
            break
        time.sleep(0.1)
    relay_id = taken[0]["id"]
    assert requests.post(f"{server.url}/api/v1/central/relay/{relay_id}/status", json={"state": "sent"},
                         headers=server.helper(TARO), timeout=10).status_code == 200
    t.join(30)
    assert answer["r"].status_code == 201, answer["r"].text
    return addin, relay_id


@pytest.mark.postgres
def test_the_central_servers_endpoints_refuse_bodies_they_cannot_read(server: Any, tenant: Any) -> None:
    addin, relay_id = relay_state(server, tenant)
    for path, headers in (("/api/v1/central/requests", server.helper(TARO)),
                          ("/api/v1/central/decisions/ack", server.helper(TARO)),
                          ("/api/v1/central/audit-checkpoint", server.helper(TARO)),
                          (f"/api/v1/central/relay/{relay_id}/status", server.helper(TARO)),
                          ("/relay/api/v1/checks", addin),
                          (f"/relay/api/v1/outbox/{relay_id}/cancel", addin)):
        for body, ctype in (UNREADABLE["cut_short"], UNREADABLE["text_plain"], (DEEP, "application/json")):
            r = requests.post(server.url + path, data=body, headers={**headers, "Content-Type": ctype}, timeout=30)
            assert r.status_code == 400, (path, ctype, r.status_code, r.text[:300])
            assert r.json()["error"]["code"] == "bad_json", (path, r.text[:300])
    # none of it was acted on: the add-in's check is neither cancelled nor reported stopped
    status = requests.post(f"{server.url}/api/v1/central/relay/{relay_id}/status", json={"state": "sent"},
                           headers=server.helper(TARO), timeout=10).json()
    assert status["stopped_send"] is False and status["cancel"] is False


@pytest.mark.postgres
def test_a_relay_cancel_reporting_a_stopped_send_in_a_cut_short_body_is_refused(server: Any, tenant: Any) -> None:
    addin, relay_id = relay_state(server, tenant)
    cut = b'{"reason": "could not apply the removal", "stopped_send": true'
    r = requests.post(f"{server.url}/relay/api/v1/outbox/{relay_id}/cancel", data=cut,
                      headers={**addin, **JSON}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
    # sent whole, it is recorded as the stopped send it is (not a plain cancel)
    r = requests.post(f"{server.url}/relay/api/v1/outbox/{relay_id}/cancel", data=cut + b"}",
                      headers={**addin, **JSON}, timeout=10)
    assert r.status_code == 200, r.text
    status = requests.post(f"{server.url}/api/v1/central/relay/{relay_id}/status", json={"state": "sent"},
                           headers=server.helper(TARO), timeout=10).json()
    assert status["stopped_send"] is True
