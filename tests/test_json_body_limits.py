"""A JSON integer longer than Python converts (``sys.get_int_max_str_digits``, 4300 digits by default) is a
400 ``bad_json`` that says so; it was reported as "the request body is not UTF-8 text", which sent the
caller looking for an encoding problem. Every other unreadable body keeps its own message."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api import AUTH, error_of, make_app
from test_api_bad_bodies import UNREADABLE, assert_untouched, events, held, post

LIMIT = sys.get_int_max_str_digits() or 4300
LONG = "1" * (LIMIT + 700)


@pytest.fixture
def app(home: Path) -> Iterator[Any]:
    app = make_app(home)
    yield app
    app.config["SENDGUARD_SERVICE"].stop()


@pytest.mark.parametrize("body", [
    '{"removed_recipients": ["wrong@other.example"], "n": ' + LONG + "}",
    '{"removed_recipients": ["wrong@other.example"], "n": [1, 2, -' + LONG + "]}",
])
def test_a_number_too_long_is_bad_json_that_says_so(app: Any, body: str, caplog: Any) -> None:
    client = app.test_client()
    item_id = held(app)
    before = events(app, item_id)
    with caplog.at_level(logging.ERROR):
        r = post(client, f"/api/v1/outbox/{item_id}/confirm", body.encode(), "application/json")
    assert r.status_code == 400, (r.status_code, r.get_data()[:300])
    assert error_of(r) == "bad_json"
    message = r.get_json()["error"]["message"]
    assert "number too long" in message and f"{len(LONG)} digits" in message and f"at most {LIMIT}" in message, \
        message
    assert "UTF-8" not in message, message
    assert "nothing was done" in message and "application/json" in message, message
    assert_untouched(app, item_id, before)
    assert "unexpected error" not in caplog.text


def test_a_check_with_a_number_too_long_is_refused_and_nothing_is_held(app: Any) -> None:
    body = '{"from": {"address": "taro@example.co.jp"}, "to": [{"address": "x@partner.example"}], "size": ' + LONG + "}"
    r = post(app.test_client(), "/api/v1/checks", body.encode(), "application/json")
    assert r.status_code == 400 and error_of(r) == "bad_json", r.get_json()
    assert "number too long" in r.get_json()["error"]["message"]
    assert app.config["SENDGUARD_SERVICE"].outbox.list() == []


def test_numbers_within_the_limit_and_long_decimals_still_read(app: Any) -> None:
    with app.app_context():
        nines = "9" * LIMIT
        assert app.json.loads('{"n": ' + nines + "}")["n"] == int(nines)
        assert app.json.loads('{"n": -' + nines + "}")["n"] == -int(nines)
        assert app.json.loads('{"n": 1.' + LONG + "}")["n"] > 1  # floats have no digit limit
        assert app.json.loads('{"n": 12}')["n"] == 12 and isinstance(app.json.loads("12"), int)


def test_other_bad_bodies_keep_their_messages(app: Any) -> None:
    client = app.test_client()
    item_id = held(app)
    path = f"/api/v1/outbox/{item_id}/confirm"
    not_utf8 = post(client, path, *UNREADABLE["not_utf8"]).get_json()["error"]["message"]
    assert "not UTF-8 text" in not_utf8, not_utf8
    cut = post(client, path, *UNREADABLE["cut_short"]).get_json()["error"]["message"]
    assert "not valid JSON" in cut, cut
    deep = post(client, path, *UNREADABLE["deep"]).get_json()["error"]["message"]
    assert "nested too deeply" in deep, deep
    r = client.post(path, data=b'{"removed_recipients": ["wrong@other.example"]}', headers={**AUTH,
                    "Content-Type": "application/json"})
    assert r.status_code == 200, r.get_json()
