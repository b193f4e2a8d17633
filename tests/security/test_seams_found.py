"""Seams in who may do what on the helper's web side, found by probing it as an attacker would.

1. **Another local user replays the confirmation page's cookie.** A browser keeps cookies per host, not
   per port (RFC 6265, section 8.5), and a top-level visit or any request from another ``localhost``
   page is same-site, so ``SameSite=Strict`` does not hold the cookie back: the ``sendguard_session``
   cookie made by ``http://localhost:8765/confirm/...`` is also sent to ``http://localhost:3000``, where
   another user of a shared machine may listen. Replayed from that user's program, it read the held
   message (body, recipients, attachments) and could send or cancel it. On Linux the helper knows who
   owns a loopback connection, as it does for SMTP and the add-in session: it now refuses such a cookie.
2. **A page on another loopback port, with an IPv6 Host.** The Origin check compares the Origin's port
   with the port of the Host header, but read no port in ``[::1]:8765`` (it counted the colons), so a
   page on ``http://[::1]:9999`` (or ``http://localhost:9999``) was let in as if it were the helper's
   own page: the browser sends it the helper's ``[::1]`` cookies, since they do not depend on the port.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import SAMPLE_POLICY, make_message
from test_api import AUTH, make_app
from test_other_local_user import as_nobody

from sendguard import peers

REPLAY_COOKIE = """
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Cookie": "sendguard_session=" + sys.argv[2]})
try:
    answer = urllib.request.urlopen(req, timeout=20)
    print(answer.status, answer.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""

SECRET = "見積の金額は 1,234,000 円です"


def _held(helper: Any) -> str:
    item = helper.outbox.submit(make_message(body=SECRET).as_bytes(), "taro@example.co.jp", ["a@partner.example"])
    return str(item.id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the owner of a loopback connection is read "
                    "from /proc/net/tcp (Linux)")
def test_another_local_user_cannot_replay_the_confirmation_pages_cookie(runner: Any, write_policy: Any) -> None:
    write_policy(SAMPLE_POLICY)
    r = runner()
    item_id = _held(r.helper)
    browser = requests.Session()  # the user opens the link from `sendguard queue show`
    assert browser.get(r.helper.confirm_url(item_id), timeout=10).status_code == 200
    cookie = browser.cookies.get("sendguard_session")
    assert cookie and SECRET in browser.get(f"{r.base_url}/confirm/{item_id}/data", timeout=10).text
    # the browser also hands the cookie to another user's listener on localhost: replayed from there
    answer = as_nobody(REPLAY_COOKIE, f"{r.base_url}/confirm/{item_id}/data", cookie)
    assert answer.startswith("403 ") and "another local user" in answer, answer
    assert SECRET not in answer
    eml = as_nobody(REPLAY_COOKIE, f"{r.base_url}/confirm/{item_id}/eml", cookie)
    assert eml.startswith("403 ") and SECRET not in eml
    # the user's own browser goes on as before
    assert SECRET in browser.get(f"{r.base_url}/confirm/{item_id}/data", timeout=10).text


def test_a_web_session_from_another_local_user_opens_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of web session (a confirmation page's, an approver's) is refused from another local user's
    connection, before any page or endpoint reads it; a request without a cookie is not even looked up."""
    app = make_app(home)
    helper = app.config["SENDGUARD_SERVICE"]
    item_id = _held(helper)
    client = app.test_client()
    token = helper.confirm_url(item_id).split("?t=", 1)[1]
    assert client.get(f"/confirm/{item_id}?t={token}").status_code == 303
    assert SECRET in client.get(f"/confirm/{item_id}/data").get_data(as_text=True)
    asked: list[tuple[str, int]] = []

    def another_user(host: str, port: int) -> int:
        asked.append((host, port))
        return 4242

    monkeypatch.setattr(peers, "foreign_user", another_user)
    for method, path in (("GET", f"/confirm/{item_id}/data"), ("GET", f"/confirm/{item_id}/eml"),
                         ("GET", f"/confirm/{item_id}"), ("GET", "/api/v1/outbox"),
                         ("POST", f"/api/v1/outbox/{item_id}/cancel")):
        response = client.open(path, method=method)
        assert response.status_code == 403, (path, response.status_code)
        assert "another local user" in response.get_json()["error"]["message"]
    with client.session_transaction() as sess:  # an approver's sign-in, as the Approvals window makes it
        sess["approver"] = "boss@example.co.jp"
    assert client.get("/approvals").status_code == 403
    assert helper.outbox.get(item_id).state == "awaiting_confirmation"
    asked.clear()
    fresh = app.test_client()  # no cookie: nothing to refuse, nothing looked up
    assert fresh.get("/api/v1/outbox", headers=AUTH).status_code == 200 and not asked
    helper.store.close()


@pytest.mark.parametrize("host", ["[::1]:8765", "localhost:8765", "127.0.0.1:8765"])
@pytest.mark.parametrize("origin", ["http://[::1]:9999", "http://localhost:9999", "http://127.0.0.1:9999",
                                    "https://[::1]"])
def test_a_page_on_another_loopback_port_is_refused_with_any_host(home: Path, host: str, origin: str) -> None:
    client = make_app(home).test_client()
    response = client.get("/api/v1/outbox", headers={**AUTH, "Host": host, "Origin": origin})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "origin_not_allowed", \
        (host, origin, response.status_code)
    client.application.config["SENDGUARD_SERVICE"].store.close()


@pytest.mark.parametrize("host", ["[::1]:8765", "localhost:8765"])
def test_the_helpers_own_page_on_ipv6_loopback_is_still_allowed(home: Path, host: str) -> None:
    client = make_app(home).test_client()
    for origin in (f"http://{host}", "http://[::1]:8765", "https://localhost:8765"):
        response = client.get("/api/v1/outbox", headers={**AUTH, "Host": host, "Origin": origin})
        assert response.status_code == 200, (host, origin, response.get_json())
    client.application.config["SENDGUARD_SERVICE"].store.close()


@pytest.mark.parametrize("tls", [True, False])
def test_the_page_session_cookie_is_secure_when_the_helper_serves_https(runner: Any, write_policy: Any, home: Path,
                                                                        tls: bool) -> None:
    """A helper that serves HTTPS marks its page session cookie Secure (never sent over plain HTTP); one that
    serves plain loopback HTTP cannot."""
    from sendguard import certs

    write_policy(SAMPLE_POLICY)
    verify: bool | str = True
    if tls:
        verify = str(certs.ensure_certificates(home).ca_cert)
    r = runner()
    assert r.scheme == ("https" if tls else "http")
    item_id = _held(r.helper)
    answer = requests.get(r.helper.confirm_url(item_id), timeout=10, verify=verify, allow_redirects=False)
    cookie = next(v for k, v in answer.raw.headers.items() if k.lower() == "set-cookie" and "sendguard_session" in v)
    assert ("Secure" in cookie) is tls, cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_log_file_begun_at_rotation_is_private(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """logs/sendguard.log is 0600, and so is the new one begun when it is rotated, whatever the umask."""
    import logging
    import os
    import stat

    from desktop import cli as desktop_cli

    monkeypatch.setattr(desktop_cli, "LOG_FILE_BYTES", 300)
    old_umask = os.umask(0o022)
    handler = desktop_cli.file_log("started")
    try:
        assert handler is not None
        for n in range(20):  # several rotations
            handler.handle(logging.makeLogRecord({"name": "t", "levelno": logging.INFO, "levelname": "INFO",
                                                  "msg": f"line {n} " + "x" * 60}))
    finally:
        os.umask(old_umask)
        logging.getLogger().removeHandler(handler)
        if handler is not None:
            handler.close()
    logs = sorted((home / "logs").iterdir())
    assert len(logs) >= 2, logs
    for log_file in logs:
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o600, (log_file, oct(log_file.stat().st_mode))
