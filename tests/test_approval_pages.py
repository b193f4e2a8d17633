"""End to end on one machine: SMTP submit a flagged message, confirm, the approver's email with its
link lands in the Maildir sink, the link opens the approval page, the decision releases (or not)."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, SAMPLE_POLICY, smtp_send, wait_for
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from sendguard import audit
from sendguard.links import LinkSigner


@pytest.fixture
def started(runner: Any, write_policy: Any) -> Any:
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.helper.notices = []
    r.helper.notifier = lambda title, body: r.helper.notices.append((title, body))
    return r


def submit_flagged(r: Any, message_factory: Any, subject: str = "社外秘 見積") -> str:
    """SMTP submit a message the policy sends for approval; confirm it as the sender would."""
    msg = message_factory(subject=subject, body="社外秘の資料です。",
                          attachments=[("見積.pdf", b"%PDF-1.4 quote", "application/pdf")])
    reply = smtp_send(r.helper.smtp.port, msg)
    assert reply == {}
    item = wait_for(lambda: next(iter(r.helper.outbox.list(["awaiting_confirmation"])), None))
    item = r.helper.outbox.confirm(item.id, actor="window")
    assert item.state == "awaiting_approval" and item.approvers == ["boss@example.co.jp"]
    return item.id


def sent_dir(r: Any) -> Path:
    return r.home / "sent" / "new"


def approval_link(r: Any, item_id: str, to: str = "boss@example.co.jp") -> str:
    """Wait for the approver's email in the Maildir sink and return the link in it."""
    def find() -> str | None:
        if not sent_dir(r).is_dir():
            return None
        for path in sent_dir(r).iterdir():
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg.get("X-SendGuard-Notice") == f"approval-request; item={item_id}" and msg["To"] == to:
                match = re.search(r"(https?://\S+/approve/\S+)", msg.get_content())
                return match.group(1) if match else None
        return None

    return str(wait_for(find, timeout=20))


def released(r: Any, item_id: str) -> list[Path]:
    return [p for p in sent_dir(r).iterdir() if p.name == f"sendguard-{item_id}"] if sent_dir(r).is_dir() else []


def path_of(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def test_approve_from_the_emailed_link_releases_once(started: Any, message_factory: Any) -> None:
    r = started
    item_id = submit_flagged(r, message_factory)
    link = approval_link(r, item_id)
    assert link.startswith(r.base_url)
    client = r.app.test_client()
    page = client.get(path_of(link))
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    for shown in ("社外秘 見積", "a@partner.example", "見積.pdf", "社外秘の資料です", "taro@example.co.jp"):
        assert shown in html
    done = client.post(f"/approve/{item_id}", data={"csrf": csrf_of(html), "decision": "approve", "comment": "OK"})
    assert done.status_code == 200, done.get_data(as_text=True)
    wait_for(lambda: r.helper.outbox.get(item_id).state == "sent", timeout=20)
    time.sleep(0.5)
    assert len(released(r, item_id)) == 1
    # the sender was told, with who approved
    wait_for(lambda: any("boss@example.co.jp" in t for t, _b in r.helper.notices))
    # reusing the link is refused, and so is a second decision from the same session
    again = client.get(path_of(link))
    assert again.status_code == 403 and "already been used" in again.get_data(as_text=True)
    second = client.post(f"/approve/{item_id}", data={"csrf": csrf_of(html), "decision": "reject", "reason": "x"})
    assert second.status_code == 409 and "already approved by boss@example.co.jp" in second.get_data(as_text=True)
    events = [(rec["event"], rec["actor"]) for rec in audit.records(r.helper.store, item_id)]
    assert ("approved", "boss@example.co.jp") in events
    assert [e for e, _a in events].count("released") == 1
    assert audit.verify(r.helper.store) == []


def test_reject_needs_a_reason_and_nothing_is_sent(started: Any, message_factory: Any) -> None:
    r = started
    item_id = submit_flagged(r, message_factory)
    client = r.app.test_client()
    html = client.get(path_of(approval_link(r, item_id))).get_data(as_text=True)
    empty = client.post(f"/approve/{item_id}", data={"csrf": csrf_of(html), "decision": "reject", "reason": ""})
    assert empty.status_code == 403 and "reason" in empty.get_data(as_text=True)
    done = client.post(f"/approve/{item_id}", data={"csrf": csrf_of(html), "decision": "reject",
                                                    "reason": "宛先を確認してください"})
    assert done.status_code == 200
    assert r.helper.outbox.get(item_id).state == "rejected"
    wait_for(lambda: any("宛先を確認してください" in b for _t, b in r.helper.notices))
    time.sleep(0.5)
    assert released(r, item_id) == []
    assert r.helper.outbox.get(item_id).state == "rejected"


def test_wrong_approver_is_refused_and_audited(started: Any, message_factory: Any, write_policy: Any) -> None:
    r = started
    # hanako's mail goes to cfo: the policy in force names a message's approvers
    write_policy(SAMPLE_POLICY + '\n[[approval.route]]\nsenders = ["hanako@example.co.jp"]\n'
                                 'approvers = ["cfo@example.co.jp"]\n')
    item_id = submit_flagged(r, message_factory)
    # a link signed for someone who is not an approver of this message
    token = LinkSigner(r.app.config["SECRET_KEY"], "approve").sign(item_id, approver="intruder@example.co.jp")
    client = r.app.test_client()
    page = client.get(f"/approve/{item_id}?t={token}")
    assert page.status_code == 403
    assert "intruder@example.co.jp is not an approver" in page.get_data(as_text=True)
    # an approver signed in for one message cannot decide another that names someone else
    # (not by editing the stored approvers: a decision follows the approvers the policy names now)
    smtp_send(r.helper.smtp.port, message_factory(sender="hanako@example.co.jp", subject="社外秘 other",
                                                  body="社外秘の資料です。"), sender="hanako@example.co.jp")
    held = wait_for(lambda: next(iter(r.helper.outbox.list(["awaiting_confirmation"])), None))
    other = r.helper.outbox.confirm(held.id, actor="window").id
    assert r.helper.outbox.get(other).approvers == ["cfo@example.co.jp"]
    html = client.get(path_of(approval_link(r, item_id))).get_data(as_text=True)
    # a link signs nobody in, neither when opened nor when it has decided the message it was sent for
    assert client.post(f"/approve/{other}", data={"csrf": csrf_of(html), "decision": "approve"}).status_code == 401
    assert client.post(f"/approve/{item_id}", data={"csrf": csrf_of(html), "decision": "approve"}).status_code == 200
    assert client.post(f"/approve/{other}", data={"csrf": csrf_of(html), "decision": "approve"}).status_code == 401
    # boss signed in (the Approvals window's sign-in) still decides only what names him
    from sendguard.links import approvals_login_url

    client.get(path_of(approvals_login_url(r.base_url, "boss@example.co.jp", r.app.config["SECRET_KEY"])))
    with client.session_transaction() as sess:  # the form token a page of his would hold
        sess["csrf"] = "form-token"
    refused = client.post(f"/approve/{other}", data={"csrf": "form-token", "decision": "approve"})
    assert refused.status_code == 403 and "boss@example.co.jp is not an approver" in refused.get_data(as_text=True)
    assert r.helper.outbox.get(other).state == "awaiting_approval"
    refusals = [rec for rec in audit.records(r.helper.store) if rec["event"] == "approval_refused"]
    assert {rec["actor"] for rec in refusals} >= {"intruder@example.co.jp", "boss@example.co.jp"}
    # the JSON API refuses the same way
    api = client.post(f"/api/v1/approvals/{other}/approve", json={})
    assert api.status_code == 403 and api.get_json()["error"]["code"] == "forbidden"


def test_expired_and_tampered_links_are_refused(started: Any, message_factory: Any) -> None:
    r = started
    item_id = submit_flagged(r, message_factory)
    key = r.app.config["SECRET_KEY"]

    class LongAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 4 * 24 * 3600  # older than expire_hours (72 h)

    old = LinkSigner(key, "approve")
    old.serializer = URLSafeTimedSerializer(key, salt="sendguard-approve", signer=LongAgo)
    client = r.app.test_client()
    expired = client.get(f"/approve/{item_id}?t={old.sign(item_id, approver='boss@example.co.jp')}")
    assert expired.status_code == 403 and "expired" in expired.get_data(as_text=True)

    link = approval_link(r, item_id)
    token = link.split("t=", 1)[1]
    payload, rest = token.split(".", 1)
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + rest
    tampered = client.get(f"/approve/{item_id}?t={forged}")
    assert tampered.status_code == 403 and "not valid" in tampered.get_data(as_text=True)
    moved = client.get(f"/approve/{item_id}x?t={token}")
    assert moved.status_code == 403
    # none of these spent the real link or decided anything
    assert client.get(path_of(link)).status_code == 200
    assert r.helper.outbox.get(item_id).state == "awaiting_approval"
    assert len([rec for rec in audit.records(r.helper.store, item_id) if rec["event"] == "approval_refused"]) >= 2


def test_page_without_a_link_asks_for_one(started: Any) -> None:
    client = started.app.test_client()
    assert client.get("/approve/abc").status_code == 401
    assert client.get("/approvals").status_code == 401


def test_approvals_list_and_login_link(started: Any, message_factory: Any) -> None:
    from sendguard.links import approvals_login_url as login_url

    r = started
    item_id = submit_flagged(r, message_factory)
    url = login_url(r.base_url, "boss@example.co.jp", r.app.config["SECRET_KEY"])
    client = r.app.test_client()
    first = client.get(path_of(url))
    assert first.status_code == 302
    listing = client.get("/approvals").get_data(as_text=True)
    assert item_id in listing and "社外秘 見積" in listing
    assert client.get(path_of(url)).status_code == 403  # single use
    api = client.get("/api/v1/approvals")
    assert [i["id"] for i in api.get_json()] == [item_id]


@pytest.mark.browser
def test_approve_in_a_real_browser(started: Any, message_factory: Any) -> None:
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    r = started
    item_id = submit_flagged(r, message_factory)
    link = approval_link(r, item_id)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(link)
            assert page.title().startswith("SendGuard")
            assert page.url.endswith(f"/approve/{item_id}")  # the link left the address bar
            page.fill("#comment", "確認しました")
            page.click("#approve")
            page.wait_for_selector("#message", state="attached")
            assert "Approved" in page.title()
            wait_for(lambda: r.helper.outbox.get(item_id).state == "sent", timeout=20)
            page.goto(link)
            assert "already been used" in page.content()
        finally:
            browser.close()
    assert len(released(r, item_id)) == 1
    assert r.helper.outbox.get(item_id).approval["comment"] == "確認しました"


def test_desktop_approvals_window_signs_in_as_this_helpers_user(started: Any, message_factory: Any) -> None:
    from desktop.approvals_window import approvals_url

    r = started
    item_id = submit_flagged(r, message_factory)
    url = approvals_url(r)  # no account configured: the policy's approver on this one machine
    client = r.app.test_client()
    assert client.get(path_of(url)).status_code == 302
    listing = client.get("/approvals").get_data(as_text=True)
    assert "Signed in as boss@example.co.jp" in listing and item_id in listing


@pytest.mark.window
def test_desktop_approvals_window_opens(started: Any, message_factory: Any, tmp_path: Path) -> None:
    """The real window under Xvfb: pywebview (Qt) shows the approvals list for the helper's user."""
    import os
    import subprocess
    import sys

    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display: run under xvfb-run (make test)")
    pytest.importorskip("webview")
    r = started
    item_id = submit_flagged(r, message_factory)
    script = tmp_path / "open_window.py"
    script.write_text(
        "import sys, threading, webview\n"
        "from desktop.approvals_window import open as open_window\n"
        "class R: pass\n"
        "r = R(); r.helper = type('H', (), {'central': None, 'gettext': str})(); r.base_url = sys.argv[1]\n"
        "def check():\n"
        "    import time\n"
        "    w = webview.windows[0]\n"
        "    for _ in range(200):\n"
        "        try:\n"
        "            text = w.evaluate_js('document.body ? document.body.innerText : \"\"') or ''\n"
        "        except Exception:\n"
        "            text = ''\n"
        "        if sys.argv[2] in text or 'waiting' in text:\n"
        "            print('TITLE', w.title); print('TEXT', text.replace(chr(10), ' ')); break\n"
        "        time.sleep(0.1)\n"
        "    w.destroy()\n"
        "import desktop.approvals_window as aw\n"
        "aw.approvals_url = lambda runner, approver=None: sys.argv[3]\n"
        "threading.Timer(1.0, check).start()\n"
        "open_window(r)\n")
    from sendguard.links import approvals_login_url as login_url

    url = login_url(r.base_url, "boss@example.co.jp", r.app.config["SECRET_KEY"])
    env = dict(os.environ, QTWEBENGINE_CHROMIUM_FLAGS="--no-sandbox", PYTHONPATH=str(Path(__file__).parent.parent))
    done = subprocess.run([sys.executable, str(script), r.base_url, item_id, url], capture_output=True, text=True,
                          timeout=90, env=env)
    assert "TITLE SendGuard" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "社外秘 見積" in done.stdout


def test_link_opened_by_a_mail_scanner_first_still_works_once(started: Any, message_factory: Any) -> None:
    """Safe Links and similar scanners fetch links before the approver: that must not use them up."""
    r = started
    item_id = submit_flagged(r, message_factory)
    link = path_of(approval_link(r, item_id))
    scanner = r.app.test_client()
    assert scanner.get(link).status_code == 200
    approver = r.app.test_client()
    html = approver.get(link).get_data(as_text=True)
    done = approver.post(f"/approve/{item_id}", data={"csrf": csrf_of(html), "decision": "approve"})
    assert done.status_code == 200
    # now the link is spent, for everyone
    for client in (scanner, approver, r.app.test_client()):
        again = client.get(link)
        assert again.status_code == 403 and "already been used" in again.get_data(as_text=True)


def test_reloading_the_page_before_deciding_keeps_working(started: Any, message_factory: Any) -> None:
    r = started
    item_id = submit_flagged(r, message_factory)
    client = r.app.test_client()
    assert client.get(path_of(approval_link(r, item_id))).status_code == 200
    reloaded = client.get(f"/approve/{item_id}")  # the address bar no longer holds ?t=
    assert reloaded.status_code == 200 and 'name="decision"' in reloaded.get_data(as_text=True)


def test_a_rejection_over_the_api_without_a_reason_is_a_bad_request_not_a_refusal(started: Any,
                                                                                   message_factory: Any) -> None:
    """No reason is a missing field the caller can add (400, saying which), not a refusal of who asks
    (403): the approver's program must not read it as "you may not decide this"."""
    import requests

    r = started
    item_id = submit_flagged(r, message_factory)
    r.app.config["API_TOKEN"] = "tok"
    url = f"{r.base_url}/api/v1/approvals/{item_id}/reject"
    headers = {"Authorization": "Bearer tok"}
    for body in ({"as": "boss@example.co.jp"}, {"as": "boss@example.co.jp", "reason": "  "}):
        answer = requests.post(url, json=body, headers=headers, timeout=30)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "no_reason" and '"reason"' in error["message"]
    assert r.helper.outbox.get(item_id).state == "awaiting_approval"
    # who may not decide is still refused as such, reason or not
    stranger = requests.post(url, json={"as": "intruder@example.co.jp", "reason": "no"}, headers=headers, timeout=30)
    assert stranger.status_code == 403
    done = requests.post(url, json={"as": "boss@example.co.jp", "reason": "宛先が違います"}, headers=headers, timeout=30)
    assert done.status_code == 200 and done.json()["state"] == "rejected"
