"""A field of an add-in's check that cannot go into a header or a MIME parameter is refused, named.

``POST /api/v1/checks`` with a JSON message whose ``internetMessageId`` held a control character (``\\x0b``),
or whose attachment name or id held a line break, made ``compose.from_fields`` raise the email package's
``ValueError`` ("Header values may not contain linefeed or carriage return characters"), answered 500
``internal``; a few other values failed the same way (an IndexError, a UnicodeEncodeError, ``int("²")``), and
some went into the message as they were (an address with a control character in To or Cc). Each is now a
``422 bad_message`` whose message starts with the field and says what to do; nothing is stored. The helper's
API and the central server's are both covered; the subject, whose line breaks were always cleaned, still is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
import test_central_input as central_input
from test_api import AUTH, error_of, make_app

from sendguard import compose
from sendguard.errors import MessageError

TARO = "taro@example.co.jp"
pg_url, server = central_input.pg_url, central_input.server


def check(**change: Any) -> dict[str, Any]:
    return {"source": "outlook", "from": {"address": TARO, "name": "Taro"}, "to": [{"address": "a@partner.example"}],
            "subject": "見積", "body": "本文", **change}


def attachment(**change: Any) -> list[dict[str, Any]]:
    return [{"name": "見積.pdf", "id": "AAMkAD1=", "contentType": "application/pdf", "size": 1234, **change}]


# (the fields of the check, the field the error must name); every one was a 500 or went in as it was
BAD = {
    "message-id-control": ({"internetMessageId": "<a\x0bb@example.co.jp>"}, "internetMessageId"),
    "message-id-non-ascii": ({"internetMessageId": "<見積@example.co.jp>"}, "internetMessageId"),
    "message-id-unreadable": ({"internetMessageId": "<"}, "internetMessageId"),
    "attachment-name": ({"attachments": attachment(name="見積\n.pdf")}, "attachments[0].name"),
    "attachment-id": ({"attachments": attachment(id="AAMk\r\nX-Injected: 1")}, "attachments[0].id"),
    "attachment-content-type": ({"attachments": attachment(contentType="application/pdf\nX-Injected: 1")},
                                "attachments[0].contentType"),
    "attachment-size": ({"attachments": attachment(size="²")}, "attachments[0]"),
    "from-address": ({"from": {"address": "ta\x0bro@example.co.jp"}}, "from"),
    "to-address": ({"to": [{"address": "a\x0b@partner.example"}]}, "to[0]"),
    "cc-address": ({"cc": [{"address": "c\x1c@partner.example"}]}, "cc[0]"),
    "bcc-address": ({"bcc": [{"address": "b\x0b@partner.example"}]}, "bcc[0]"),
    "to-name": ({"to": [{"address": "a@partner.example", "name": "A\u2028B"}]}, "to[0].name"),
}


def assert_refused(status: int, body: dict[str, Any], field: str) -> None:
    assert status == 422, body
    assert body["error"]["code"] == "bad_message", body
    message = body["error"]["message"]
    assert message.startswith(f"{field}:") or message.startswith(f"{field} ("), message
    assert "then send again" in message or "leave it out" in message, message  # what to do


@pytest.fixture
def app(home: Path) -> Any:
    app = make_app(home)
    yield app
    app.config["SENDGUARD_SERVICE"].stop()


@pytest.mark.parametrize("name", list(BAD))
def test_the_helpers_api_refuses_a_field_that_cannot_go_into_the_message(app: Any, name: str) -> None:
    change, field = BAD[name]
    r = app.test_client().post("/api/v1/checks", json=check(**change), headers=AUTH)
    assert error_of(r) == "bad_message"
    assert_refused(r.status_code, r.get_json(), field)
    assert app.config["SENDGUARD_SERVICE"].outbox.list() == []


@pytest.mark.postgres
@pytest.mark.parametrize("name", list(BAD))
def test_the_central_servers_api_refuses_a_field_that_cannot_go_into_the_message(server: Any, name: str,
                                                                                  caplog: Any) -> None:
    change, field = BAD[name]
    r = requests.post(f"{server.url}/api/v1/checks", json=check(**change), headers=central_input.helper(server),
                      timeout=30)
    assert central_input.error_of(r) == "bad_message"
    assert_refused(r.status_code, r.json(), field)
    assert central_input.rows(server) == []
    central_input.no_internal_error(caplog)


def test_a_subjects_line_breaks_are_still_cleaned(app: Any) -> None:
    r = app.test_client().post("/api/v1/checks", json=check(subject="見積\x0bの件\r\n再送", dry_run=True), headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["subject"] == "見積 の件 再送"


@pytest.mark.parametrize("change, field", [
    ({"subject": "a\ud800"}, "subject"),
    ({"body": "a\ud800"}, "body"),
    ({"to": [{"address": "a@partner.example", "name": "\ud800"}]}, "to[0].name"),
    ({"attachments": attachment(name="\udc00.pdf")}, "attachments[0].name"),
], ids=["subject", "body", "name", "attachment-name"])
def test_lone_surrogates_are_a_message_error_where_no_api_refused_them_first(change: dict[str, Any],
                                                                             field: str) -> None:
    """The API refuses them before (400 ``bad_field``); the helper's relay (sendguard/addin_relay.py) calls
    from_fields directly and reports only a SendGuardError back: anything else ended its thread silently."""
    with pytest.raises(MessageError, match=rf"^{re.escape(field)}:"):
        compose.from_fields(check(**change))
