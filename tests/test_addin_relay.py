"""Outlook add-in served by the central server: no browser calls loopback (Local Network Access).

The real launchevent.js (node, stand-in Outlook) talks only to the server's relay, signed in with an
Office SSO token the server verifies against a JWKS; the user's helper takes the check over its own
connection, the user decides in SendGuard, and the add-in completes. On PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import ROOT, stop_central_rounds, wait_for
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.postgres

JS_DIR = ROOT / "tests" / "js"
AUDIENCE = "api://sendguard.example.co.jp/5d1a8c3e"
ISSUER = "https://login.microsoftonline.com/tenant-id/v2.0"
USER = "taro@example.co.jp"
HELPER_POLICY = """
[organization]
internal_domains = ["example.co.jp"]

[confirm]
when = "external"
"""

DRIVER = r"""
const { fakeOutlook, loadAddin, pressSend } = require(process.env.SG_HARNESS);
(async () => {
  const outlook = fakeOutlook({
    ssoToken: process.env.SG_SSO || null,
    from: { emailAddress: process.env.SG_FROM, displayName: "Taro" },
    to: [{ emailAddress: "x@partner.example", displayName: "X" }, { emailAddress: "y@other.example", displayName: "Y" }],
    cc: [],
  });
  loadAddin(outlook.office, { apiBase: process.env.SG_API, sso: true, settings: { pollWaitSeconds: 2, retryDelayMs: 50 } });
  const completed = await pressSend(outlook.state, { timeoutMs: 60000 });
  process.stdout.write(JSON.stringify({ completed, to: outlook.state.to.map((r) => r.emailAddress),
                                        overLimit: outlook.state.overLimit }));
})().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = os.environ.get("SENDGUARD_TEST_DATABASE_URL")
    if not base:
        pytest.skip("SENDGUARD_TEST_DATABASE_URL is not set: run through tools/with-postgres.sh (make test)")
    name = "sg_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + "/" + name
    stop_central_rounds()  # before the database goes: they would fail (and log) every round after
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Tenant:
    """The Microsoft identity platform as far as SSO goes: a signing key and its JWKS document."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/discovery/v2.0/keys"

    def token(self, user: str = USER, audience: str = AUDIENCE, key: Any = None) -> str:
        now = int(time.time())
        claims = {"aud": audience, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600,
                  "preferred_username": user, "scp": "access_as_user"}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "k1"})

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def tenant() -> Iterator[Tenant]:
    t = Tenant()
    yield t
    t.close()


@contextlib.contextmanager
def running_server(pg_url: str, tmp_path: Path, tenant: Tenant, **config: Any) -> Iterator[Any]:
    """The central server on PostgreSQL in a thread, its relay signing in with ``tenant``'s SSO tokens
    (``config``: more of its settings, e.g. RELAY_PICKUP_SECONDS). The other relay tests use it too."""
    from werkzeug.serving import make_server

    from addin.server import create_server_app, issue_token, migrate

    migrate(pg_url)
    policy = tmp_path / "server-policy.toml"
    policy.write_text('[approval]\napprovers = ["boss@example.co.jp"]\n', encoding="utf-8")
    app = create_server_app(pg_url, "http://127.0.0.1", policy, test_config={
        "RELAY_SSO_JWKS_URL": tenant.jwks_url, "RELAY_SSO_AUDIENCE": AUDIENCE, "RELAY_SSO_ISSUER": ISSUER,
        **config})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    svc = app.config["SENDGUARD_SERVICE"]
    server = type("S", (), {})()
    server.url = f"http://127.0.0.1:{httpd.server_port}"
    server.app = app
    server.store = svc.store
    server.polls = app.extensions["sendguard_long_polls"]
    server.user_polls = app.extensions["sendguard_relay_user_polls"]
    server.token = lambda user: issue_token(svc.store, user)
    server.helper = lambda user: {"Authorization": f"Bearer {server.token(user)}"}  # a helper token's headers
    try:
        yield server
    finally:
        httpd.shutdown()
        svc.store.close()


@pytest.fixture
def server(pg_url: str, tmp_path: Path, tenant: Tenant) -> Iterator[Any]:
    with running_server(pg_url, tmp_path, tenant, RELAY_PICKUP_SECONDS=3.0) as s:
        yield s


@pytest.fixture
def helper(home: Path, server: Any) -> Iterator[Any]:
    from sendguard import central, secrets
    from sendguard.service import Helper

    (home / "config.toml").write_text(f'[server]\nurl = "{server.url}"\n', encoding="utf-8")
    (home / "policy.toml").write_text(HELPER_POLICY, encoding="utf-8")
    secrets.put(central.TOKEN_KEY, server.token(USER))
    h = Helper(home)
    assert h.addin_relay is not None
    h.start(smtp=False)
    yield h
    h.stop()


def press_send(server: Any, sso: str | None, sender: str = USER) -> subprocess.Popen:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules").exists():
        pytest.skip("node or tests/js/node_modules missing (make setup installs them)")
    env = dict(os.environ, SG_HARNESS=str(JS_DIR / "harness.js"), SG_API=f"{server.url}/relay",
               SG_SSO=sso or "", SG_FROM=sender)
    return subprocess.Popen([node, "-e", DRIVER], cwd=JS_DIR, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def outcome(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_addin_served_by_the_server_reaches_the_helper_through_it(server, helper, tenant):
    # The script the server serves points the add-in at the relay and turns on sign-in.
    client = server.app.test_client()
    script = client.get("/addin/launchevent.js", base_url="http://127.0.0.1").get_data(as_text=True)
    assert script.startswith('var SENDGUARD_API_BASE = "https://127.0.0.1/relay";\nvar SENDGUARD_SSO = true;\n')

    proc = press_send(server, tenant.token())
    item = wait_for(lambda: next(iter(helper.outbox.list(["awaiting_confirmation"])), None), timeout=30)
    assert item.source == "outlook" and item.sender == USER
    helper.outbox.confirm(item.id, removed_recipients=["y@other.example"])  # the user, in the SendGuard window
    result = outcome(proc)
    assert result["completed"] == {"allowEvent": True}
    assert result["to"] == ["x@partner.example"]
    assert result["overLimit"] == []
    assert helper.outbox.get(item.id).state == "sent"


def test_cancelled_in_sendguard_blocks_the_send(server, helper, tenant):
    proc = press_send(server, tenant.token())
    item = wait_for(lambda: next(iter(helper.outbox.list(["awaiting_confirmation"])), None), timeout=30)
    helper.outbox.cancel(item.id, actor="window")
    result = outcome(proc)
    assert result["completed"]["allowEvent"] is False
    assert result["to"] == ["x@partner.example", "y@other.example"]


def test_sso_token_for_another_user_cannot_check_this_users_mail(server, helper, tenant):
    proc = press_send(server, tenant.token(user="hanako@example.co.jp"))
    result = outcome(proc)
    assert result["completed"]["allowEvent"] is False
    assert "signed in as hanako@example.co.jp" in result["completed"]["errorMessage"]
    assert helper.outbox.list() == []


def test_forged_sso_token_is_refused(server, helper, tenant):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    proc = press_send(server, tenant.token(key=other))
    result = outcome(proc)
    assert result["completed"]["allowEvent"] is False
    assert "sign-in token was refused" in result["completed"]["errorMessage"]
    assert helper.outbox.list() == []


def test_helper_not_connected_blocks_with_a_clear_message(server, tenant):
    proc = press_send(server, tenant.token())
    result = outcome(proc)
    assert result["completed"]["allowEvent"] is False
    assert "not connected to the server" in result["completed"]["errorMessage"]


def test_no_sso_configured_fails_closed(pg_url, tmp_path):
    from addin.server import create_server_app, migrate

    migrate(pg_url)
    app = create_server_app(pg_url, "http://127.0.0.1", None)
    resp = app.test_client().post("/relay/api/v1/addin/session", headers={"Authorization": "Bearer x"},
                                  base_url="http://127.0.0.1")
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "sso_not_configured"
    app.config["SENDGUARD_SERVICE"].store.close()


def test_helper_poll_takes_each_check_once(server):
    """Two helpers of the same user polling at once: a relayed check is taken by one of them only."""
    from sqlalchemy import insert

    from sendguard.central import CentralClient
    from sendguard.store import addin_relay

    store = server.app.config["SENDGUARD_SERVICE"].store
    now = time.time()
    with store.transaction() as conn:
        conn.execute(insert(addin_relay).values(id="r1", user=USER, state="pending", request={"subject": "s"},
                                                status=None, version=0, addin_seen=now, created_at=now,
                                                updated_at=now))
    token = server.token(USER)
    clients = [CentralClient(server.url, token) for _ in range(4)]
    got: list[list] = []
    threads = [threading.Thread(target=lambda c=c: got.append(c._call("GET", "/api/v1/central/relay/pending",
                                                                      params={"wait": 0}))) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(g) for g in got) == [0, 0, 0, 1]
    [taken] = [g for g in got if g]
    assert taken == [{"id": "r1", "request": {"subject": "s"}}]
    other = CentralClient(server.url, server.token("hanako@example.co.jp"))
    assert other._call("GET", "/api/v1/central/relay/pending", params={"wait": 0}) == []


def test_addin_gone_before_the_user_confirms_is_not_recorded_as_sent(server, helper, tenant, monkeypatch):
    """Through the relay too: once the add-in stops polling (the user left the message), a late
    confirmation is not handed back to an Outlook that no longer waits."""
    from addin import relay

    monkeypatch.setattr(relay, "ADDIN_WAITING_SECONDS", 1.0)
    helper.addin_presence.grace = 1.0
    proc = press_send(server, tenant.token())
    item = wait_for(lambda: next(iter(helper.outbox.list(["awaiting_confirmation"])), None), timeout=30)
    proc.kill()  # Outlook on the web ends the handler when the user leaves the message
    proc.communicate(timeout=30)
    wait_for(lambda: not helper.addin_presence.waiting(item.id), timeout=20)
    helper.outbox.confirm(item.id)
    done = wait_for(lambda: (lambda i: i if i.state in ("sent", "needs_attention", "failed") else None)(
        helper.outbox.get(item.id)), timeout=30)
    assert done.state == "needs_attention"
    assert "Open it from Drafts" in (done.last_error or "")


def test_poll_answers_at_once_when_the_helper_already_reported_the_outcome(server, tenant):
    """The helper's outcome can reach the server between the check's answer and the add-in's first
    poll: the poll must answer with it at once, like the helper's own API, not wait for a further
    change (the send waited a whole long poll, past Outlook's 5 s notice, for a message already allowed)."""
    import requests

    session = requests.post(f"{server.url}/relay/api/v1/addin/session", timeout=10,
                            headers={"Authorization": f"Bearer {tenant.token()}", "Origin": server.url}).json()
    addin = {"Authorization": f"Bearer {session['token']}", "Origin": server.url}
    helper = {"Authorization": f"Bearer {server.token(USER)}"}
    answer: dict = {}
    check = {"source": "outlook", "from": {"address": USER}, "to": [{"address": "x@partner.example"}],
             "subject": "s", "body": "b"}
    submit = threading.Thread(target=lambda: answer.update(r=requests.post(
        f"{server.url}/relay/api/v1/checks", json=check, headers=addin, timeout=30)))
    submit.start()
    taken = wait_for(lambda: requests.get(f"{server.url}/api/v1/central/relay/pending?wait=1", headers=helper,
                                          timeout=10).json())
    relay_id = taken[0]["id"]

    def report(state: str) -> None:
        r = requests.post(f"{server.url}/api/v1/central/relay/{relay_id}/status", json={"state": state},
                          headers=helper, timeout=10)
        assert r.status_code == 200, r.text

    report("awaiting_confirmation")
    submit.join(30)
    assert answer["r"].status_code == 201 and answer["r"].json()["state"] == "awaiting_confirmation"
    report("sent")  # the user confirmed at once, before the add-in asked again
    for _ in range(2):  # and asking again is answered at once too
        started = time.monotonic()
        polled = requests.get(f"{server.url}/relay/api/v1/outbox/{relay_id}?wait=10", headers=addin, timeout=30)
        assert polled.status_code == 200 and polled.json()["state"] == "sent", polled.text
        assert time.monotonic() - started < 3, f"the poll waited {time.monotonic() - started:.1f} s for news"
    # while the item still waits for the user, a poll does wait (for news or until `wait`)
    report("awaiting_confirmation")
    started = time.monotonic()
    polled = requests.get(f"{server.url}/relay/api/v1/outbox/{relay_id}?wait=2", headers=addin, timeout=30)
    assert polled.json()["state"] == "awaiting_confirmation" and time.monotonic() - started >= 1.5


def test_addin_that_stops_a_cleared_send_through_the_relay_leaves_it_not_sent(server, helper, tenant):
    """The helper hands the message back to Outlook ("sent") with a removal, Outlook cannot apply it, and
    the add-in stops the send: through the server it tells the helper, whose record ends cancelled."""
    from sendguard import audit

    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules").exists():
        pytest.skip("node or tests/js/node_modules missing (make setup installs them)")
    driver = DRIVER.replace("cc: [],", 'cc: [], failures: { "to.setAsync": "ItemNotFound" },', 1)
    assert driver != DRIVER
    env = dict(os.environ, SG_HARNESS=str(JS_DIR / "harness.js"), SG_API=f"{server.url}/relay",
               SG_SSO=tenant.token(), SG_FROM=USER)
    proc = subprocess.Popen([node, "-e", driver], cwd=JS_DIR, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    item = wait_for(lambda: next(iter(helper.outbox.list(["awaiting_confirmation"])), None), timeout=30)
    helper.outbox.confirm(item.id, removed_recipients=["y@other.example"])
    result = outcome(proc)
    assert result["completed"]["allowEvent"] is False and "ItemNotFound" in result["completed"]["errorMessage"]
    assert result["to"] == ["x@partner.example", "y@other.example"]  # Outlook changed nothing, sent nothing
    done = wait_for(lambda: (lambda i: i if i.state == "cancelled" else None)(helper.outbox.get(item.id)),
                    timeout=30)
    assert "stopped by the mail program" in (done.last_error or "")
    events = [r["event"] for r in audit.records(helper.store, item.id)]
    assert events[-1] == "send_stopped" and events.count("released") == 1, events
