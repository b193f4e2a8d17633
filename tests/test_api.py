"""The local API: JSON errors everywhere, token, Origin, Host (DNS rebinding), body size, OpenAPI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import SAMPLE_POLICY, make_message

from addin import create_app
from sendguard.service import Helper

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(home, **config):
    (home / "policy.toml").write_text(SAMPLE_POLICY, encoding="utf-8")
    helper = Helper(home)
    return create_app(helper, {"API_TOKEN": TOKEN, "SECRET_KEY": "k" * 32, "TESTING": True, **config})


@pytest.fixture
def client(home):
    return make_app(home).test_client()


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return body["error"]["code"]


def test_health_and_openapi_are_open(client):
    assert client.get("/healthz").get_json()["status"] == "ok"
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")


def test_every_api_endpoint_needs_a_token_and_answers_json(client):
    app = client.application
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule in ("/api/v1/openapi.json", "/api/v1/addin/session"):
            continue
        url = rule.rule.replace("<item_id>", "abc")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(url, method=method)
            assert response.status_code == 401, (method, url)
            assert error_of(response) == "unauthorized"


def test_wrong_token_refused(client):
    response = client.get("/api/v1/outbox", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and error_of(response) == "invalid_token"


def test_token_gives_access(client):
    assert client.get("/api/v1/outbox", headers=AUTH).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_foreign_host_refused(client, host):
    response = client.get("/api/v1/outbox", headers={**AUTH, "Host": host})
    assert response.status_code == 421 and error_of(response) == "host_not_allowed"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost.evil.example",
                                    "http://localhost:9999",
                                    # no port at all (urlsplit cannot read one): refused, not a 500
                                    "http://localhost:8765.evil.example", "http://localhost:99999"])
def test_foreign_origin_refused(client, origin):
    response = client.get("/api/v1/outbox", headers={**AUTH, "Origin": origin, "Host": "localhost:8765"})
    assert response.status_code == 403 and error_of(response) == "origin_not_allowed"


def test_own_origin_allowed(client):
    response = client.get("/api/v1/outbox", headers={**AUTH, "Origin": "http://localhost:8765",
                                                     "Host": "localhost:8765"})
    assert response.status_code == 200


def test_oversized_body_refused_as_json(home):
    client = make_app(home, MAX_CONTENT_LENGTH=1024).test_client()
    response = client.post("/api/v1/checks", data=b"x" * 5000, headers={**AUTH, "Content-Type": "message/rfc822"})
    assert response.status_code == 413 and error_of(response) == "too_large"


def test_raw_check_is_the_same_json_as_the_cli(client):
    raw = make_message(to="x@partner.example").as_bytes()
    response = client.post("/api/v1/checks", data=raw, headers={**AUTH, "Content-Type": "message/rfc822"})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"message_id", "from", "subject", "recipients", "attachments", "verdict", "force_bcc"}
    assert body["verdict"]["action"] == "confirm"


def test_bad_inputs_are_json_errors(client):
    r = client.post("/api/v1/checks", data="{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r) == "bad_json"
    r = client.post("/api/v1/checks", json={"to": []}, headers=AUTH)
    assert r.status_code == 422 and "no recipients" in r.get_json()["error"]["message"]
    r = client.get("/api/v1/outbox/doesnotexist", headers=AUTH)
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = client.get("/api/v1/outbox?state=bogus", headers=AUTH)
    assert r.status_code == 400 and error_of(r) == "bad_state"
    r = client.get("/api/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and error_of(r) == "not_found"


def test_addin_session_token_is_origin_bound(client):
    own = {"Origin": "https://localhost:8765", "Host": "localhost:8765"}
    assert client.post("/api/v1/addin/session", headers={**own, "Origin": "https://evil.example"}).status_code == 403
    token = client.post("/api/v1/addin/session", headers=own).get_json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    payload = {"source": "outlook", "from": {"address": "taro@example.co.jp"},
               "to": [{"address": "x@partner.example", "name": "X"}], "subject": "見積", "body": "本文",
               "attachments": [{"id": "AAMk1", "name": "見積.pdf", "size": 2048, "contentType": "application/pdf",
                                "isInline": False, "content": base64.b64encode(b"%PDF-1.4").decode()}]}
    r = client.post("/api/v1/checks", json=payload, headers={**own, **bearer})
    assert r.status_code == 201, r.get_json()
    created = r.get_json()
    assert created["state"] == "awaiting_confirmation" and created["verdict"]["action"] == "confirm"
    assert created["attachments"][0]["ref"] == "AAMk1"
    # the same token from another localhost port (another origin) is refused
    other = {"Origin": "https://localhost:8765", "Host": "localhost:8765"}
    assert client.get(f"/api/v1/outbox/{created['id']}", headers={**other, **bearer}).status_code == 200
    bad = client.get(f"/api/v1/outbox/{created['id']}",
                     headers={"Host": "localhost:8765", "Origin": "http://localhost:8765", **bearer})
    assert bad.status_code == 403


def test_live_server_binds_loopback_only(runner):
    r = runner()
    assert r.server.server_address[0] == "127.0.0.1"
    assert r.helper.smtp.host == "127.0.0.1"
    assert requests.get(f"{r.base_url}/healthz", timeout=10).json()["status"] == "ok"
    refused = requests.get(f"{r.base_url}/api/v1/outbox", headers={"Host": "attacker.example"}, timeout=10)
    assert refused.status_code == 421 and json.loads(refused.text)["error"]["code"] == "host_not_allowed"


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(runner, write_policy):
    """Schemathesis fuzzes every documented endpoint of a live helper: no 5xx anywhere."""
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = TOKEN
    st = Path(sys.executable).with_name("st")
    out = subprocess.run(
        [str(st), "run", f"{r.base_url}/api/v1/openapi.json", "--header", f"Authorization: Bearer {TOKEN}",
         "--checks", "not_a_server_error", "--max-examples", "25", "--phases", "examples,fuzzing",
         "--request-timeout", "30", "--generation-deterministic"],
        capture_output=True, text=True, timeout=600, cwd=r.home)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_openapi_describes_every_api_endpoint(client):
    from addin.openapi import SPEC

    documented = {(path, method) for path, ops in SPEC["paths"].items() for method in ops}
    for rule in client.application.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule == "/healthz"):
            continue
        path = rule.rule.replace("<item_id>", "{item_id}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {path} is not in the OpenAPI document"


def test_openapi_names_every_verdict_the_check_can_give():
    """A client generated from the document must accept `reconfirm` (DESIGN §4 ranks it between
    `confirm` and `approve`); the document left it out."""
    from addin.openapi import SPEC
    from sendguard.policy import ACTIONS

    verdict = SPEC["components"]["schemas"]["CheckResult"]["properties"]["verdict"]["properties"]["action"]
    assert verdict["enum"] == list(ACTIONS)


def test_the_confirmation_page_gets_errors_in_its_language(client):
    """Issue #11 item 19: the page names its language; other clients keep the English text."""

    for lang, expected in (("ja", "送信トレイにメッセージ"), ("zh", "发件箱中没有邮件")):
        response = client.post("/api/v1/outbox/0123456789abcdef/cancel", json={},
                               headers={**AUTH, "X-SendGuard-Language": lang})
        assert response.status_code == 404 and error_of(response) == "not_found"
        assert expected in response.get_json()["error"]["message"]
    english = client.post("/api/v1/outbox/0123456789abcdef/cancel", json={}, headers=AUTH)
    assert english.get_json()["error"]["message"].startswith("no message '0123456789abcdef' in the outbox")


def test_a_raw_check_gives_what_sendguard_check_gives_with_the_users_history(home, tmp_path):
    """`POST /api/v1/checks` with a raw message and `sendguard check --json` give the same JSON (§4): both
    know the domains sent to (a look-alike of one), the thread a reply answers and the user's accounts."""
    import time as _time

    from conftest import run_cli

    app = make_app(home)
    store = Helper(home).store
    with store.transaction() as conn:
        store.record_sent_domains(conn, ["someone@hidden.example"], _time.time())
    store.close()
    raw = make_message(to="b@hiddem.example", subject="lookalike").as_bytes()
    path = tmp_path / "look.eml"
    path.write_bytes(raw)
    cli = run_cli("check", str(path), "--json")
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert "lookalike_domain" in [r["rule"] for r in expected["verdict"]["reasons"]]
    response = app.test_client().post("/api/v1/checks", data=raw,
                                      headers={**AUTH, "Content-Type": "message/rfc822"})
    assert response.status_code == 200
    assert response.get_json() == expected


def test_an_attachment_preview_shows_the_part_the_check_listed_under_that_id(home):
    """The window lists attachments as the check numbered them; the preview must open the same part, also
    when a header reads differently to another parser (a comment before the parameters)."""
    (home / "policy.toml").write_text(SAMPLE_POLICY, encoding="utf-8")
    helper = Helper(home)
    app = create_app(helper, {"API_TOKEN": TOKEN, "SECRET_KEY": "k" * 32, "TESTING": True})
    raw = (b"From: taro@example.co.jp\r\nTo: x@partner.example\r\nSubject: lists\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee the files\r\n"
           b"--b\r\nContent-Type: text/csv; (v2) name=\"a.csv\"\r\n\r\nFIRST\r\n"
           b"--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=\"b.csv\"\r\n\r\nSECOND\r\n"
           b"--b--\r\n")
    item = helper.outbox.submit(raw, "taro@example.co.jp", ["x@partner.example"])
    assert [(a.id, a.filename) for a in item.check.attachments] == [("1", "a.csv"), ("2", "b.csv")]
    client = app.test_client()
    for att_id, text in (("1", "FIRST"), ("2", "SECOND")):
        response = client.get(f"/confirm/{item.id}/attachments/{att_id}/preview", headers=AUTH)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["text"].strip() == text
    helper.store.close()
