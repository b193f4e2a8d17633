"""Who holds an approval link does not become the approver for anything else, and a sign-in ends when
its token is revoked (findings of the central-server audit of 2026-12-03).

- The emailed link decides its one message. It never signs its holder in: a link that reached the
  sender (quoted in a reply, forwarded) approves nothing else, and a link for a message no longer
  waiting (cancelled, decided) signs nobody in either.
- The approval request is not set up to be answered to the sender with its link quoted (no Reply-To).
- A sign-in made with a helper token (the desktop Approvals window's login link) ends when that token
  is revoked, and every web session ends after ``SESSION_HOURS`` at the latest.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import test_central_server as central
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from test_approval_pages import approval_link, csrf_of, path_of, started, submit_flagged
from test_central_server import ThreadServer

from addin import security
from sendguard.notify import approval_email

__all__ = ["started"]  # the fixture, used by name
pg_url = central.pg_url
server = central.server


def test_a_link_decides_its_message_and_signs_nobody_in(started: Any, message_factory: Any) -> None:
    r = started
    first = submit_flagged(r, message_factory, subject="社外秘 一件目")
    second = submit_flagged(r, message_factory, subject="社外秘 二件目")
    client = r.app.test_client()  # whoever holds the first link (the sender, say)
    html = client.get(path_of(approval_link(r, first))).get_data(as_text=True)
    done = client.post(f"/approve/{first}", data={"csrf": csrf_of(html), "decision": "approve", "comment": "OK"})
    assert done.status_code == 200 and r.helper.outbox.get(first).state in ("approved", "releasing", "sent")
    assert client.get("/approvals").status_code == 401
    assert client.get("/api/v1/approvals").status_code == 401
    other = client.post(f"/approve/{second}", data={"csrf": csrf_of(html), "decision": "approve", "comment": "x"})
    assert other.status_code == 401
    assert client.post(f"/api/v1/approvals/{second}/approve", json={"comment": "x"}).status_code == 401
    assert r.helper.outbox.get(second).state == "awaiting_approval"


def test_a_link_for_a_cancelled_message_signs_nobody_in(started: Any, message_factory: Any) -> None:
    r = started
    gone = submit_flagged(r, message_factory, subject="社外秘 取消")
    waiting = submit_flagged(r, message_factory, subject="社外秘 保留中")
    link = approval_link(r, gone)
    r.helper.outbox.cancel(gone, actor="taro@example.co.jp")
    client = r.app.test_client()
    client.get(path_of(link))
    with client.session_transaction() as sess:  # the form token is readable in the signed cookie
        csrf = sess.get("csrf") or ""
    token = link.split("t=", 1)[1]
    client.post(f"/approve/{gone}", data={"csrf": csrf, "decision": "approve", "t": token})
    with client.session_transaction() as sess:
        assert "approver" not in sess
    assert client.get("/approvals").status_code == 401
    assert r.helper.outbox.get(waiting).state == "awaiting_approval"


def test_the_approval_request_is_not_answered_to_the_sender_with_its_link(started: Any,
                                                                           message_factory: Any) -> None:
    r = started
    item = r.helper.outbox.get(submit_flagged(r, message_factory))
    msg = approval_email(item, "boss@example.co.jp", "https://sg.example.co.jp/approve/x?t=secret",
                         mail_from="sendguard@example.co.jp")
    assert msg["Reply-To"] is None and msg["From"] == "sendguard@example.co.jp"
    body = msg.get_content()
    assert "do not forward" in body and "taro@example.co.jp" in body


def test_a_session_older_than_its_lifetime_is_refused(started: Any, message_factory: Any) -> None:
    r = started
    app = r.app
    key = app.config["SECRET_KEY"]
    hours = security.SESSION_HOURS

    class LongAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - int((hours + 1) * 3600)

    interface = app.session_interface
    serializer = interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    old = URLSafeTimedSerializer(key, salt=serializer.salt, serializer=serializer.serializer,
                                 signer=LongAgo, signer_kwargs=serializer.signer_kwargs)
    client = app.test_client()
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], old.dumps({"approver": "boss@example.co.jp"}),
                      domain="localhost")
    assert client.get("/approvals").status_code == 401


@pytest.mark.postgres
def test_a_sign_in_made_with_a_token_ends_when_the_token_is_revoked(server: ThreadServer) -> None:
    from addin.server_tokens import revoke_tokens

    server.app.config["HELPER_TOKEN_VERIFIER"].ttl = 0.05
    token = server.token("boss@example.co.jp")
    url = requests.post(f"{server.url}/api/v1/central/login-link",
                        headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["url"]
    browser = requests.Session()
    assert browser.get(url, timeout=10).status_code == 200  # redirected to the list, signed in
    assert browser.get(f"{server.url}/approvals", timeout=10).status_code == 200
    assert browser.get(f"{server.url}/api/v1/approvals", timeout=10).status_code == 200
    revoke_tokens(server.service.store, "boss@example.co.jp")
    time.sleep(0.2)
    assert browser.get(f"{server.url}/approvals", timeout=10).status_code == 401
    assert browser.get(f"{server.url}/api/v1/approvals", timeout=10).status_code == 401
