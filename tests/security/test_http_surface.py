"""The helper's and the server's HTTP surface (findings 7, 8, 10, 12, 13 of issue #10)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import SAMPLE_POLICY, make_message, run_cli

from sendguard import audit

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def live(runner: Any, write_policy: Any) -> Any:
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = TOKEN
    return r


# ---------------------------------------------------------------------- finding 7
def test_oversize_chunked_body_is_refused_not_cut(live: Any) -> None:
    """A card number past the size limit was cut off and the rest checked as allow."""
    live.app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    raw = make_message(to="colleague@example.co.jp",
                       body="x" * (2 * 1024 * 1024) + "\n4111 1111 1111 1111\n").as_bytes()

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(raw), 65536):
            yield raw[i:i + 65536]

    r = requests.post(f"{live.base_url}/api/v1/checks", data=chunks(), timeout=60,
                      headers={**AUTH, "Content-Type": "message/rfc822"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    small = make_message(to="colleague@example.co.jp", body="4111 1111 1111 1111").as_bytes()
    ok = requests.post(f"{live.base_url}/api/v1/checks", data=iter([small]), timeout=60,
                       headers={**AUTH, "Content-Type": "message/rfc822"})
    assert ok.status_code == 200 and ok.json()["verdict"]["action"] == "approve"


# ---------------------------------------------------------------------- finding 8
def test_anonymous_garbage_links_cannot_grow_the_audit_log(live: Any) -> None:
    before = len(audit.records(live.helper.store))
    for i in range(60):
        r = requests.get(f"{live.base_url}/approve/fake{i}?t=garbage", timeout=10)
        assert r.status_code in (403, 404)
    for _ in range(20):
        requests.get(f"{live.base_url}/approvals/login?t=garbage", timeout=10)
    assert len(audit.records(live.helper.store)) - before <= 1


def test_overlong_ids_are_a_plain_404_not_a_database_error(live: Any) -> None:
    long_id = "a" * 200
    for path in (f"/approve/{long_id}?t=x", f"/confirm/{long_id}?t=x", f"/api/v1/outbox/{long_id}",
                 f"/api/v1/outbox/{'x%27%3B--'}"):
        r = requests.get(live.base_url + path, headers=AUTH, timeout=10)
        assert r.status_code == 404, (path, r.status_code)
        assert "SELECT" not in r.text and "sqlalchemy" not in r.text.lower()


def test_an_id_with_a_trailing_line_break_never_reaches_the_database(live: Any) -> None:
    """``$`` also matches before a final newline: ``abc\\n`` passed the id check and was looked up."""
    r = requests.get(live.base_url + "/api/v1/outbox/abcdef%0A", headers=AUTH, timeout=10)
    assert r.status_code == 404 and "ids are 1-32 letters" in r.text, r.text


# ---------------------------------------------------------------------- finding 10
def test_no_page_can_be_framed(live: Any, message_factory: Any) -> None:
    item = live.helper.outbox.submit(message_factory().as_bytes(), "taro@example.co.jp", ["a@partner.example"])
    link = live.helper.confirm_url(item.id)
    pages = [link.replace(link.split("/confirm/")[0], live.base_url), f"{live.base_url}/approve/x?t=garbage",
             f"{live.base_url}/approvals", f"{live.base_url}/approvals/login?t=x"]
    for url in pages:
        r = requests.get(url, timeout=10)
        assert "text/html" in r.headers["Content-Type"], url
        assert "frame-ancestors 'none'" in r.headers.get("Content-Security-Policy", ""), url
        assert r.headers.get("X-Frame-Options") == "DENY", url


# ---------------------------------------------------------------------- finding 12
@pytest.mark.parametrize("section", ["api", "smtp"])
def test_helper_refuses_to_listen_beyond_loopback(home: Any, section: str) -> None:
    (home / "config.toml").write_text(f'[{section}]\nhost = "0.0.0.0"\n', encoding="utf-8")
    out = run_cli("doctor")
    assert b"not a loopback address" in out.stdout + out.stderr
    served = run_cli("serve", "--no-window", "--smtp-port", "0", "--api-port", "0", timeout=60)
    assert served.returncode != 0 and b"not a loopback address" in served.stderr


# ---------------------------------------------------------------------- finding 13
def test_link_tokens_never_reach_the_log(live: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    secret = "SECRETLINKTOKEN0123456789"
    requests.get(f"{live.base_url}/confirm/abc?t={secret}", timeout=10)
    requests.get(f"{live.base_url}/approve/abc?t={secret}&x=1", timeout=10)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/confirm/abc?t=[redacted]" in logged and secret not in logged


def test_confirm_actor_comes_from_the_credential_not_the_body(live: Any, message_factory: Any) -> None:
    item = live.helper.outbox.submit(message_factory().as_bytes(), "taro@example.co.jp", ["a@partner.example"])
    r = requests.post(f"{live.base_url}/api/v1/outbox/{item.id}/confirm", headers=AUTH, timeout=10,
                      json={"actor": "boss@example.co.jp"})
    assert r.status_code == 200
    confirmed = [rec for rec in audit.records(live.helper.store, item.id) if rec["event"] == "confirmed"]
    assert confirmed and all(rec["actor"] == "window" for rec in confirmed)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/approvals?limit=-1", None),
    ("GET", "/api/v1/approvals?offset=99999999999999999999", None),
    ("POST", "/api/v1/checks", {"from": {"address": "taro@example.co.jp"}, "to": [{"address": "a@partner.example"}],
                                "attachments": [{"name": "a.pdf", "size": "abc"}]}),
    ("POST", "/api/v1/checks", {"from": {"address": "taro@example.co.jp"}, "to": [{"address": "a@partner.example"}],
                                "internetMessageId": {"x": 1}}),
])
def test_bad_values_are_400_json_not_500(live: Any, method: str, path: str, body: Any) -> None:
    r = requests.request(method, live.base_url + path, headers=AUTH, json=body, timeout=10)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert set(r.json()["error"]) == {"code", "message"}


def test_database_password_in_a_query_string_is_masked() -> None:
    from addin.server import _safe

    for url in ("postgresql://sg@db/sendguard?password=hunter2", "postgresql://sg:hunter2@db/sendguard",
                "postgresql://sg@db/sendguard?sslmode=require&sslpassword=hunter2"):
        assert "hunter2" not in _safe(url), url
    out = run_cli("server", "--database", "postgresql://sg@127.0.0.1:1/none?password=hunter2", "--bind",
                  "127.0.0.1:0", "--public-url", "http://127.0.0.1:1")
    assert out.returncode != 0 and b"hunter2" not in out.stdout + out.stderr
