"""What the central server takes from a helper token, and input its database cannot hold.

A helper token filed ``POST /api/v1/checks`` as another user's mail (the row was that user's, and so was
the audit record); it is refused now as a hand-over from someone else is (``403 wrong_sender``). NUL
bytes (and lone surrogates) in ids and fields reached PostgreSQL and came back as a 500 whose logged
traceback held the statement's parameters (the subject, the raw message); they are refused with a 400
naming the field, and a database error the server logs anyway never shows the parameters.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import test_central_server as central
from conftest import make_message
from sqlalchemy import select, text
from test_api import AUTH, make_app
from test_central_server import ThreadServer

from sendguard import audit
from sendguard.store import Store, outbox

pytestmark = pytest.mark.postgres
pg_url, server = central.pg_url, central.server

TARO, HANAKO = "taro@example.co.jp", "hanako@example.co.jp"


def helper(server: ThreadServer, user: str = TARO) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(user)}"}


def check_from(sender: str | None, subject: str = "見積", name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"to": [{"address": "a@partner.example"}], "subject": subject, "body": "本文"}
    if sender is not None:
        body["from"] = {"address": sender, **({"name": name} if name else {})}
    return body


def hand_over(raw: bytes | None = None, **fields: Any) -> dict[str, Any]:
    raw = raw or make_message(subject="社外秘 見積").as_bytes()
    return {"id": uuid.uuid4().hex[:20], "sender": TARO, "recipients": ["a@partner.example"],
            "raw": base64.b64encode(raw).decode(), "sha256": hashlib.sha256(raw).hexdigest(), **fields}


def rows(server: ThreadServer) -> list[tuple[str, str]]:
    with server.service.store.engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(select(outbox.c.id, outbox.c.owner)).all()]


def error_of(r: requests.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    return str(body["error"]["code"])


def no_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    assert "unexpected error" not in caplog.text and "DataError" not in caplog.text, caplog.text[-2000:]


# ---------------------------------------------------------------------- checks filed with a helper token
@pytest.mark.parametrize("sender, name, shown", [
    (HANAKO, None, HANAKO),  # another user's address
    (TARO, HANAKO, HANAKO),  # the token's user, but the display name shows another user's address
    (None, None, "(no sender)"),  # no sender at all: nobody's mail
], ids=["other-address", "other-in-display-name", "no-sender"])
def test_a_helper_token_files_checks_only_from_its_own_user(server: ThreadServer, sender: str | None,
                                                            name: str | None, shown: str) -> None:
    r = requests.post(f"{server.url}/api/v1/checks", json=check_from(sender, "花子の見積", name),
                      headers=helper(server), timeout=30)
    assert r.status_code == 403, r.text
    assert error_of(r) == "wrong_sender"
    assert shown in r.json()["error"]["message"] and TARO in r.json()["error"]["message"]
    assert rows(server) == []  # nothing filed, under anyone's name
    records = [x for x in audit.records(server.service.store) if x["event"] != "token_issued"]
    assert [(x["event"], x["actor"]) for x in records] == [("approval_refused", TARO)]
    assert all(x["actor"] != HANAKO for x in records)


def test_a_helper_tokens_own_check_is_filed_as_its_user(server: ThreadServer) -> None:
    r = requests.post(f"{server.url}/api/v1/checks", json=check_from(TARO), headers=helper(server), timeout=30)
    assert r.status_code == 201, r.text
    assert rows(server) == [(r.json()["id"], TARO)]
    records = audit.records(server.service.store, r.json()["id"])
    assert records[0]["event"] == "received" and records[0]["actor"] == TARO
    assert all(x["actor"] != HANAKO for x in records)


def test_the_local_helpers_own_api_files_checks_from_any_of_its_users_addresses(home: Path) -> None:
    """On the user's own helper the API token is the user's: it files mail from any of their accounts."""
    client = make_app(home).test_client()
    r = client.post("/api/v1/checks", json=check_from(HANAKO), headers=AUTH)
    assert r.status_code == 201, r.get_json()


# ---------------------------------------------------------------------- NUL bytes and other unstorable text
@pytest.mark.parametrize("method, path, kwargs, field", [
    ("GET", "/api/v1/central/requests", {"params": {"ids": "a\x00b"}}, "ids"),
    ("GET", "/api/v1/central/requests", {"params": {"ids": "ok1,' OR 1=1--"}}, "ids"),
    ("GET", "/api/v1/central/requests", {"params": {"ids": "a" * 33}}, "ids"),
    ("GET", "/api/v1/central/decisions", {"params": {"skip": "a\x00"}}, "skip"),
    ("POST", "/api/v1/central/decisions/ack", {"json": {"ids": ["a\x00"]}}, "ids"),
    ("POST", "/api/v1/central/decisions/ack", {"json": {"ids": ["abc\n"]}}, "ids"),
], ids=["ids-nul", "ids-quote", "ids-long", "skip-nul", "ack-nul", "ack-newline"])
def test_ids_that_cannot_exist_are_refused_before_the_database(server: ThreadServer, caplog: pytest.LogCaptureFixture,
                                                               method: str, path: str, kwargs: dict[str, Any],
                                                               field: str) -> None:
    r = requests.request(method, server.url + path, headers=helper(server), timeout=10, **kwargs)
    assert r.status_code == 400, r.text
    assert error_of(r) == f"bad_{field}" and r.json()["error"]["message"].startswith(f"{field}:")
    no_internal_error(caplog)


def test_well_formed_ids_are_answered_as_before(server: ThreadServer) -> None:
    headers = helper(server)
    r = requests.post(f"{server.url}/api/v1/central/requests", json=hand_over(), headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    item_id = r.json()["id"]
    got = requests.get(f"{server.url}/api/v1/central/requests", params={"ids": f"{item_id},nosuch"},
                       headers=headers, timeout=10)
    assert [s["id"] for s in got.json()] == [item_id]
    assert requests.get(f"{server.url}/api/v1/central/decisions", params={"skip": f"{item_id},x-1", "wait": "0"},
                        headers=headers, timeout=10).json() == []
    assert requests.post(f"{server.url}/api/v1/central/decisions/ack", json={"ids": [item_id, "nosuch"]},
                         headers=headers, timeout=10).json() == {"acknowledged": 0}


@pytest.mark.parametrize("fields, field", [
    ({"source": "a\x00"}, "source"),
    ({"message_id": "<a\x00b@example.co.jp>"}, "message_id"),
    ({"sender": TARO + "\x00"}, "sender"),
    ({"envelope_from": TARO + "\x00"}, "envelope_from"),
    ({"recipients": ["a\x00@partner.example"]}, "recipients[0]"),
    ({"source": "\ud800"}, "source"),
], ids=["source", "message_id", "sender", "envelope_from", "recipients", "source-surrogate"])
def test_a_hand_over_with_unstorable_text_is_refused_naming_the_field(
        server: ThreadServer, caplog: pytest.LogCaptureFixture, fields: dict[str, Any], field: str) -> None:
    r = requests.post(f"{server.url}/api/v1/central/requests", json=hand_over(**fields), headers=helper(server),
                      timeout=30)
    assert r.status_code == 400, r.text
    assert error_of(r) == "bad_field" and r.json()["error"]["message"].startswith(f"{field}:")
    assert rows(server) == []
    no_internal_error(caplog)


@pytest.mark.parametrize("header, field", [
    (b"Subject: a\x00b", "Subject"),
    (b"Subject: =?utf-8?b?YQBi?=", "Subject"),  # "a\0b", encoded
    (b"Subject: x\r\nMessage-ID: <a\x00b@example.co.jp>", "Message-ID"),
], ids=["subject", "encoded-subject", "message-id"])
def test_a_message_whose_headers_hold_a_nul_is_refused_naming_the_header(
        server: ThreadServer, caplog: pytest.LogCaptureFixture, header: bytes, field: str) -> None:
    raw = b"From: " + TARO.encode() + b"\r\nTo: a@partner.example\r\n" + header + b"\r\n\r\nbody\r\n"
    r = requests.post(f"{server.url}/api/v1/central/requests", json=hand_over(raw), headers=helper(server),
                      timeout=30)
    assert r.status_code == 400, r.text
    assert error_of(r) == "unreadable_message" and field in r.json()["error"]["message"]
    assert rows(server) == []
    no_internal_error(caplog)


@pytest.mark.parametrize("change, field", [
    ({"subject": "a\x00b"}, "subject"),
    ({"subject": "\ud800"}, "subject"),
    ({"from": {"address": TARO, "name": "Taro\x00"}}, "from.name"),
    ({"attachments": [{"name": "a\x00.pdf"}]}, "attachments[0].name"),
], ids=["subject", "subject-surrogate", "from-name", "attachment-name"])
def test_a_check_with_unstorable_text_is_refused_naming_the_field(
        server: ThreadServer, caplog: pytest.LogCaptureFixture, change: dict[str, Any], field: str) -> None:
    r = requests.post(f"{server.url}/api/v1/checks", json={**check_from(TARO), **change}, headers=helper(server),
                      timeout=30)
    assert r.status_code == 400, r.text
    assert error_of(r) == "bad_field" and r.json()["error"]["message"].startswith(f"{field}:")
    assert rows(server) == []
    no_internal_error(caplog)


# ---------------------------------------------------------------------- what a database error leaves in the log
def test_a_database_error_in_the_servers_log_carries_no_parameters(
        server: ThreadServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever still reaches the database and fails there: the logged traceback shows the statement,
    never its values (the raw message, the subject, addresses)."""
    real = server.service.outbox.take_for_approval

    def unstorable(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "source": "bad" + chr(0)})  # as an unchecked field once did

    monkeypatch.setattr(server.service.outbox, "take_for_approval", unstorable)
    subject = "Quarterly-figures-7431"
    body = hand_over(make_message(subject=subject, body="confidential-body-9920").as_bytes())
    with caplog.at_level(logging.ERROR):
        r = requests.post(f"{server.url}/api/v1/central/requests", json=body, headers=helper(server), timeout=30)
    assert r.status_code == 500 and error_of(r) == "internal"
    assert "DataError" in caplog.text  # the failure is logged, with its statement
    for secret in (subject, body["raw"][:40], "confidential-body-9920", "bad\\x00", "[parameters:"):
        assert secret not in caplog.text, secret


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_store_engines_keep_parameters_out_of_errors(pg_url: str, tmp_path: Path, kind: str) -> None:
    store = Store(pg_url if kind == "postgresql" else tmp_path / "store.db")
    try:
        with pytest.raises(Exception) as failed, store.engine.connect() as conn:
            conn.execute(text("SELECT no_such_column FROM outbox WHERE subject = :s"), {"s": "secret-subject-5521"})
        assert "SELECT no_such_column" in str(failed.value)
        assert "secret-subject-5521" not in str(failed.value)
    finally:
        store.close()
