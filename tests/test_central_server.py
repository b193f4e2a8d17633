"""The central approval server on PostgreSQL: helper tokens, the helper protocol, approvals made from
the approver's side releasing mail on the sender's side, and kill -9 of the server losing nothing."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import KEYWORD_APPROVAL_POLICY, ROOT, make_message, smtp_send, stop_central_rounds, wait_for
from sqlalchemy import create_engine, select, text

from sendguard import audit
from sendguard.central import CentralClient
from sendguard.errors import PermissionDenied
from sendguard.store import Store, outbox

pytestmark = pytest.mark.postgres

SERVER_POLICY = """
[approval]
approvers = ["boss@example.co.jp"]
expire_hours = 24
"""

HELPER_POLICY = KEYWORD_APPROVAL_POLICY  # the helpers' own policy


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database of its own on the throwaway cluster (tests run in parallel)."""
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


class ThreadServer:
    """The server app under werkzeug in a thread (fast to start; the process test uses gunicorn)."""

    def __init__(self, url: str, policy: Path, **config: Any):
        from werkzeug.serving import make_server

        from addin.server import create_server_app, migrate

        migrate(url)
        self.mail = policy.parent / "server-mail"  # the organization's relay, as a Maildir in mail/sent
        self.app = create_server_app(url, "http://127.0.0.1", policy, mail_url=f"maildir:{self.mail / 'sent'}",
                                     mail_from="sendguard@example.co.jp", test_config=config or None)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.service = self.app.config["SENDGUARD_SERVICE"]
        self.service.public_url = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str) -> str:
        from addin.server import issue_token

        return issue_token(self.service.store, user)

    def stop(self) -> None:
        self.server.shutdown()
        self.service.close()


@pytest.fixture
def server(pg_url: str, tmp_path: Path) -> Iterator[ThreadServer]:
    policy = tmp_path / "server-policy.toml"
    policy.write_text(SERVER_POLICY, encoding="utf-8")
    s = ThreadServer(pg_url, policy)
    yield s
    s.stop()


def connect_helper(home: Path, url: str, token: str) -> None:
    from sendguard import central, secrets

    (home / "config.toml").write_text(f'[server]\nurl = "{url}"\n', encoding="utf-8")
    (home / "policy.toml").write_text(HELPER_POLICY, encoding="utf-8")
    secrets.put(central.TOKEN_KEY, token)


@pytest.fixture
def sender_helper(home: Path, server: ThreadServer) -> Iterator[Any]:
    from sendguard.service import Helper

    connect_helper(home, server.url, server.token("taro@example.co.jp"))
    helper = Helper(home)
    assert helper.sync is not None
    helper.sync.long_poll = 2.0
    helper.notices = []
    helper.notifier = lambda title, body: helper.notices.append((title, body))
    helper.start(smtp=True, smtp_port=0)
    yield helper
    helper.stop()


def held_for_approval(helper: Any, subject: str = "社外秘 見積") -> str:
    msg = make_message(subject=subject, body="社外秘の資料です。")
    item = helper.outbox.submit(msg.as_bytes(), "taro@example.co.jp", ["a@partner.example"])
    item = helper.outbox.confirm(item.id)
    assert item.state == "awaiting_approval"
    return str(item.id)


def maildir(home: Path) -> list[Path]:
    folder = home / "sent" / "new"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def approval_link_in(home: Path, item_id: str, to: str | None = None) -> str | None:
    """The link in the approval email about ``item_id`` in the Maildir ``home/sent`` (optionally: to ``to``)."""
    for path in maildir(home):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if msg.get("X-SendGuard-Notice") == f"approval-request; item={item_id}" and (to is None or msg["To"] == to):
            found = re.search(r"(https?://\S+/approve/\S+)", msg.get_content())
            return found.group(1) if found else None
    return None


def test_approval_on_the_server_releases_on_the_sender_side(server: ThreadServer, sender_helper: Any) -> None:
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    item_id = held_for_approval(sender_helper)
    wait_for(lambda: [i.id for i in boss.pending()] == [item_id], timeout=20)
    # the server mailed the approver through the organization's relay; the sender's helper mailed nothing
    link = wait_for(lambda: approval_link_in(server.mail, item_id), timeout=20)
    assert link.startswith(server.url + f"/approve/{item_id}?t=")
    assert approval_link_in(sender_helper.home, item_id) is None
    item = boss.decide(item_id, "approve", "boss@example.co.jp", "OK")
    assert item.state == "approved"
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "sent", timeout=20)
    assert [p.name for p in maildir(sender_helper.home)].count(f"sendguard-{item_id}") == 1
    wait_for(lambda: any("boss@example.co.jp" in t for t, _b in sender_helper.notices), timeout=10)
    # the server's record follows: decided, delivered to the helper, then sent
    wait_for(lambda: server.service.outbox.get(item_id).state == "sent", timeout=20)
    events = [r["event"] for r in audit.records(server.service.store, item_id)]
    assert events.count("approved") == 1 and "decision_delivered" in events
    assert audit.verify(server.service.store) == []
    local = [r["event"] for r in audit.records(sender_helper.store, item_id)]
    assert local.count("released") == 1 and "approval_submitted" in local


def test_reject_through_the_emailed_link_on_the_server(server: ThreadServer, sender_helper: Any) -> None:
    item_id = held_for_approval(sender_helper)
    link = wait_for(lambda: approval_link_in(server.mail, item_id), timeout=20)
    browser = requests.Session()
    page = browser.get(link, timeout=10)
    assert page.status_code == 200 and "社外秘 見積" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = browser.post(f"{server.url}/approve/{item_id}", data={"csrf": csrf, "decision": "reject",
                                                                 "reason": "宛先が違います"},
                        headers={"Origin": server.url}, timeout=10)
    assert done.status_code == 200, done.text
    wait_for(lambda: sender_helper.outbox.get(item_id).state == "rejected", timeout=20)
    assert sender_helper.outbox.get(item_id).approval["reason"] == "宛先が違います"
    wait_for(lambda: any("宛先が違います" in b for _t, b in sender_helper.notices), timeout=10)
    assert browser.get(link, timeout=10).status_code == 403  # single use
    assert not any(p.name == f"sendguard-{item_id}" for p in maildir(sender_helper.home))


def test_tokens_bind_helpers_to_their_user(server: ThreadServer) -> None:
    from addin.server import revoke_tokens

    taro = CentralClient(server.url, server.token("taro@example.co.jp"))
    msg = make_message(subject="社外秘")
    payload = {"id": "abc123", "sender": "taro@example.co.jp", "subject": "社外秘", "recipients": ["a@partner.example"],
               "raw": __import__("base64").b64encode(msg.as_bytes()).decode()}
    first = taro._call("POST", "/api/v1/central/requests", json=payload)
    again = taro._call("POST", "/api/v1/central/requests", json=payload)  # a retry changes nothing
    assert first["state"] == again["state"] == "awaiting_approval"
    assert first["approvers"] == ["boss@example.co.jp"] and "links" not in first
    with pytest.raises(PermissionDenied, match="cannot submit mail from hanako"):
        taro._call("POST", "/api/v1/central/requests", json={**payload, "id": "x2", "sender": "hanako@example.co.jp"})
    with pytest.raises(PermissionDenied, match="cannot decide as boss"):
        taro.decide("abc123", "approve", "boss@example.co.jp")
    with pytest.raises(PermissionDenied, match="approving your own message is not allowed"):
        taro.decide("abc123", "approve", "taro@example.co.jp")
    refusals = [r for r in audit.records(server.service.store, "abc123") if r["event"] == "approval_refused"]
    assert len(refusals) == 2 and {r["actor"] for r in refusals} == {"taro@example.co.jp"}
    boss_token = server.token("boss@example.co.jp")
    boss = CentralClient(server.url, boss_token)
    assert [i.id for i in boss.pending()] == ["abc123"]
    with pytest.raises(PermissionDenied):
        boss.pending("cfo@example.co.jp")
    bad = requests.get(f"{server.url}/api/v1/approvals", headers={"Authorization": "Bearer sgh_nope"}, timeout=5)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    revoke_tokens(server.service.store, "boss@example.co.jp")
    server.app.config["HELPER_TOKEN_VERIFIER"].ttl = 0  # no cache for this check
    with pytest.raises(PermissionDenied):
        boss.pending()


def test_decisions_repeat_until_acknowledged(server: ThreadServer) -> None:
    taro = CentralClient(server.url, server.token("taro@example.co.jp"))
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    raw = make_message(subject="社外秘").as_bytes()
    taro._call("POST", "/api/v1/central/requests", json={
        "id": "r1", "sender": "taro@example.co.jp", "raw": __import__("base64").b64encode(raw).decode()})
    started = time.monotonic()
    assert taro.decisions(wait=1.0) == []  # long poll: nothing decided yet
    assert time.monotonic() - started >= 0.9
    boss.decide("r1", "approve", "boss@example.co.jp")
    first = taro.decisions(wait=5)
    assert [d["id"] for d in first] == ["r1"] and first[0]["approval"]["by"] == "boss@example.co.jp"
    assert [d["id"] for d in taro.decisions(wait=0)] == ["r1"]  # not acknowledged: told again
    assert boss.decisions(wait=0) == []  # only the owner's helper hears of it
    taro.ack(["r1"])
    assert taro.decisions(wait=0) == []


# ---------------------------------------------------------------------- separate processes, kill -9
class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "sendguard", *self.args], env=self.env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the gunicorn arbiter and its workers
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def env_for(tmp_path: Path, name: str) -> dict[str, str]:
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(SENDGUARD_HOME=str(home), XDG_DATA_HOME=str(tmp_path / f"{name}-xdg"),
               PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring", LANG="en_US.UTF-8",
               SENDGUARD_ADMIN_POLICY=str(tmp_path / "no-admin-policy.toml"))
    return env


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "sendguard", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


AUDIT_KEY = "server-audit-key-for-this-test"


@pytest.mark.slow
def test_two_helpers_and_a_server_killed_twice(pg_url: str, tmp_path: Path) -> None:
    server_env = env_for(tmp_path, "server")
    server_env["SENDGUARD_AUDIT_KEY"] = AUDIT_KEY  # every process writing the server's database shares it
    (tmp_path / "server" / "policy.toml").write_text(SERVER_POLICY, encoding="utf-8")
    ready = tmp_path / "ready.json"
    procs: list[Proc] = []

    def start_server(bind: str) -> str:
        ready.unlink(missing_ok=True)
        p = Proc(["server", "--database", pg_url, "--bind", bind, "--ready-file", str(ready), "--workers", "2",
                  "--threads", "8", "--mail-relay", f"maildir:{tmp_path / 'server' / 'sent'}"], server_env,
                 tmp_path / "server.log").start()
        procs.append(p)
        url = wait_for(lambda: ready.exists() and json.loads(ready.read_text())["url"], timeout=30)
        wait_for(lambda: _healthy(url), timeout=30)
        return str(url)

    sender_env, approver_env = env_for(tmp_path, "sender"), env_for(tmp_path, "approver")
    try:
        url = start_server("127.0.0.1:0")
        port = url.rsplit(":", 1)[1]
        sender_token = cli(server_env, "server", "token", "issue", "--database", pg_url,
                           "--user", "taro@example.co.jp").stdout.strip()
        boss_token = cli(server_env, "server", "token", "issue", "--database", pg_url,
                         "--user", "boss@example.co.jp", "--label", "boss-pc").stdout.strip()
        for env, token in ((sender_env, sender_token), (approver_env, boss_token)):
            (Path(env["SENDGUARD_HOME"]) / "policy.toml").write_text(HELPER_POLICY, encoding="utf-8")
            cli(env, "server", "connect", url, "--token", token)
        helpers = {}
        for name, env in (("sender", sender_env), ("approver", approver_env)):
            helpers[name] = Proc(["serve", "--no-window", "--smtp-port", "0", "--api-port", "0"], env,
                                 tmp_path / f"{name}.log").start()
            procs.append(helpers[name])
        sender_home = Path(sender_env["SENDGUARD_HOME"])
        runtime = wait_for(lambda: _runtime(sender_home), timeout=30)
        wait_for(lambda: _runtime(Path(approver_env["SENDGUARD_HOME"])), timeout=30)

        smtp_send(runtime["smtp_port"], make_message(subject="社外秘 見積", body="社外秘の資料です。"))
        item_id = wait_for(lambda: _held_id(sender_env), timeout=20)
        cli(sender_env, "queue", "confirm", item_id)
        listed = wait_for(lambda: _pending(approver_env), timeout=30)
        assert [i["id"] for i in listed] == [item_id] and listed[0]["approvers"] == ["boss@example.co.jp"]
        assert wait_for(lambda: approval_link_in(tmp_path / "server", item_id), timeout=20).startswith(url)
        assert approval_link_in(sender_home, item_id) is None  # never through the sender's mailbox

        # kill -9 the server: the approver is told plainly; nothing is decided
        procs[0].kill9()
        down = cli(approver_env, "approvals", "approve", item_id, "--as", "boss@example.co.jp", check=False)
        assert down.returncode != 0 and "cannot reach the central server" in down.stderr
        start_server(f"127.0.0.1:{port}")
        done = cli(approver_env, "approvals", "approve", item_id, "--as", "boss@example.co.jp", "--comment", "OK")
        assert "approved" in done.stdout
        # kill -9 again right after the decision, before the sender's helper may have heard of it
        procs[-1].kill9()
        time.sleep(1.0)
        start_server(f"127.0.0.1:{port}")
        wait_for(lambda: _state(sender_env, item_id) == "sent", timeout=60)
        time.sleep(2.0)  # time enough for a duplicate to show up, if there were one
        assert [p.name for p in maildir(sender_home)].count(f"sendguard-{item_id}") == 1
        second = cli(approver_env, "approvals", "reject", item_id, "--as", "boss@example.co.jp", "--reason", "no",
                     check=False)
        assert second.returncode != 0 and "already approved by boss@example.co.jp" in second.stderr
    finally:
        for p in reversed(procs):
            p.stop()
    store = Store(pg_url.replace("postgresql://", "postgresql+psycopg://"), audit_key=AUDIT_KEY.encode())
    try:
        events = [r["event"] for r in audit.records(store, item_id)]
        assert events.count("approval_requested") == 1 and events.count("approved") == 1
        assert audit.verify(store) == []
        with store.engine.connect() as conn:
            assert conn.execute(select(outbox.c.id)).all() == [(item_id,)]
    finally:
        store.close()
    sender_log = [json.loads(line) for line in cli(sender_env, "audit", "export").stdout.splitlines()]
    assert [r["event"] for r in sender_log if r["item_id"] == item_id].count("released") == 1
    assert cli(sender_env, "audit", "verify").returncode == 0


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _runtime(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((home / "runtime.json").read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("smtp_port") else None


def _held_id(env: dict[str, str]) -> str | None:
    rows = json.loads(cli(env, "queue", "list", "--json").stdout)
    return next((r["id"] for r in rows if r["state"] == "awaiting_confirmation"), None)


def _pending(env: dict[str, str]) -> list[dict[str, Any]] | None:
    done = cli(env, "approvals", "list", "--json", check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout) or None


def _state(env: dict[str, str], item_id: str) -> str:
    return str(json.loads(cli(env, "queue", "show", item_id, "--json").stdout)["state"])


def test_a_hand_over_the_server_refuses_does_not_hold_up_the_others(server: ThreadServer, sender_helper: Any) -> None:
    """A message the server refuses (here: from another address than the token's user) stays held with the
    server's reason; the helper's other messages are handed over all the same, not stuck behind it."""
    sender_helper.sync.stop()  # rounds run by hand below
    mine = held_for_approval(sender_helper)
    msg = make_message(sender="hanako@example.co.jp", subject="社外秘 見積", body="社外秘の資料です。")
    other = sender_helper.outbox.confirm(sender_helper.outbox.submit(msg.as_bytes(), "hanako@example.co.jp",
                                                                     ["a@partner.example"]).id)
    assert other.state == "awaiting_approval"
    with pytest.raises(PermissionDenied, match="hanako@example.co.jp"):
        sender_helper.sync.submit_new()  # the refusal is still reported (the helper shows it)
    assert server.service.outbox.get(mine).state == "awaiting_approval"  # handed over although refused first
    assert sender_helper.outbox.get(other.id).state == "awaiting_approval"


def test_a_refused_hand_over_is_not_sent_again_every_round_and_does_not_slow_the_next(
        server: ThreadServer, sender_helper: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's refusal stands until something changes: the helper keeps the reason on the message
    (the user sees why it waits), does not post it again each round (it did, every 15 s, for ever, with an
    error in the log each time), and a message for approval that comes next is handed over at once (the
    refusal used to pause the hand-over loop for 15 s)."""
    from sendguard import central

    posted: list[str] = []
    real_submit = sender_helper.sync.client.submit
    monkeypatch.setattr(sender_helper.sync.client, "submit",
                        lambda item, raw: posted.append(item.id) or real_submit(item, raw))
    msg = make_message(sender="hanako@example.co.jp", subject="社外秘 見積", body="社外秘の資料です。")
    refused = sender_helper.outbox.confirm(sender_helper.outbox.submit(msg.as_bytes(), "hanako@example.co.jp",
                                                                       ["a@partner.example"]).id)
    sender_helper.sync.kick()
    wait_for(lambda: refused.id in posted and "hanako@example.co.jp" in (
        sender_helper.outbox.get(refused.id).last_error or ""))
    shown = sender_helper.outbox.get(refused.id)
    assert shown.state == "awaiting_approval" and "central server" in (shown.last_error or "")
    from addin import create_app
    from addin.api import user_message

    with create_app(sender_helper).app_context():  # what the Outlook add-in and the window tell the sender
        said = user_message(shown)
    assert "not yet with your approvers" in said and "hanako@example.co.jp" in said
    time.sleep(3)  # rounds go on (each kick, the idle wait of 2 s)
    sender_helper.sync.kick()
    mine = held_for_approval(sender_helper)
    sender_helper.sync.kick()
    wait_for(lambda: _server_has(server, mine), timeout=6)  # not after a pause of 15 s
    assert posted.count(refused.id) == 1
    # once the time to ask again has come it is asked again (the server's answer may have changed)
    monkeypatch.setattr(central, "REFUSED_RETRY_SECONDS", 0.0)
    sender_helper.sync.kick()
    wait_for(lambda: posted.count(refused.id) >= 2)


def _server_has(server: ThreadServer, item_id: str) -> bool:
    try:
        server.service.outbox.get(item_id)
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return True


def test_the_approver_sees_why_the_senders_helper_asked_when_the_servers_policy_has_no_such_rule(
        server: ThreadServer, sender_helper: Any) -> None:
    """The server checks the bytes with its own policy; when that policy lacks the rule that made the
    sender's helper ask for approval (here: the keyword 社外秘), the approver was shown no reason at all.
    Now the helper's reasons are shown too, each marked as the sender's SendGuard's report (the server
    did not find it itself), in the approvals list, the emailed request and the approval page."""
    item_id = held_for_approval(sender_helper)
    headers = {"Authorization": f"Bearer {server.token('boss@example.co.jp')}"}

    def listed() -> list[dict[str, Any]] | None:
        rows = requests.get(f"{server.url}/api/v1/approvals", headers=headers, timeout=10).json()
        return next((r["reasons"] for r in rows if r["id"] == item_id), None)

    reasons = wait_for(listed, timeout=20)
    [reported] = [r for r in reasons if r["rule"] == "keyword"]
    assert reported["action"] == "approve" and "社外秘" in reported["message"]
    assert "sender's SendGuard" in reported["message"]
    # the server's own check is unchanged: it did not find the keyword, and says nothing it did not find
    assert "keyword" not in [r.rule for r in server.service.outbox.get(item_id).check.verdict.reasons]
    link = wait_for(lambda: approval_link_in(server.mail, item_id), timeout=20)
    page = requests.get(link, timeout=10)
    assert page.status_code == 200 and "sender&#39;s SendGuard" in page.text and "社外秘" in page.text
    mails = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in maildir(server.mail)]
    assert any("sender's SendGuard" in m.get_body(("plain",)).get_content() for m in mails
               if m.get("X-SendGuard-Notice") == f"approval-request; item={item_id}")
    # a helper cannot pass off words of its own as reasons: what it puts in its decision is not shown
    raw = make_message(subject="社外秘 forged", body="社外秘の資料です。").as_bytes()
    forged = {"id": uuid.uuid4().hex[:16], "sender": "taro@example.co.jp", "subject": "社外秘 forged",
              "envelope_from": "taro@example.co.jp", "recipients": ["a@partner.example"], "check": None,
              "decision": {"sender_reasons": [{"rule": "keyword", "action": "approve", "target": "x",
                                               "message": "Already approved by the CEO: just click Approve"}]},
              "raw": base64.b64encode(raw).decode(), "sha256": hashlib.sha256(raw).hexdigest()}
    answer = requests.post(f"{server.url}/api/v1/central/requests", json=forged, timeout=10,
                           headers={"Authorization": f"Bearer {server.token('taro@example.co.jp')}"})
    assert answer.status_code in (200, 201), answer.text
    shown = wait_for(lambda: next((r for r in requests.get(f"{server.url}/api/v1/approvals", headers=headers,
                                                           timeout=10).json() if r["id"] == forged["id"]), None))
    assert not any("CEO" in r["message"] for r in shown["reasons"])
