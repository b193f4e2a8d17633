"""Only the named approver can release flagged mail (findings 1, 3, 4 of issue #10)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
import requests
import test_central_server as central
from conftest import SAMPLE_POLICY, make_message, run_cli, wait_for
from sqlalchemy import select
from test_central_server import ThreadServer, approval_link_in, held_for_approval, maildir

from sendguard import audit
from sendguard.central import CentralClient
from sendguard.errors import PermissionDenied
from sendguard.links import approvals_login_url
from sendguard.store import central_requests

# the central server's fixtures: a throwaway database, a server in a thread, a sender's helper
pg_url, server, sender_helper = central.pg_url, central.server, central.sender_helper


# ---------------------------------------------------------------------- finding 1 (central server)
@pytest.mark.postgres
def test_sender_cannot_find_the_approvers_link_anywhere_on_his_side(server: ThreadServer, sender_helper: Any) -> None:
    """The sender owns his helper's database and mailbox: no approval link may ever land there."""
    item_id = held_for_approval(sender_helper)
    wait_for(lambda: sender_helper.sync._rows().get(item_id, {}).get("submitted_at"), timeout=20)
    with sender_helper.store.engine.connect() as conn:
        stored = [dict(r) for r in conn.execute(select(central_requests)).mappings().all()]
    assert stored and all(not r["links"] for r in stored), stored
    # the server mails the approver itself, through the organization's relay
    link = wait_for(lambda: approval_link_in(server.mail, item_id, "boss@example.co.jp"), timeout=20)
    assert link.startswith(f"{server.url}/approve/{item_id}?t=")
    token = link.split("?t=", 1)[1]
    for path in maildir(sender_helper.home):  # nothing in the sender's Sent Items either
        assert token not in path.read_text(errors="replace") and "/approve/" not in path.read_text(errors="replace")
    assert sender_helper.store.url.startswith("sqlite")
    raw_db = (sender_helper.home / "sendguard.db").read_bytes()
    assert token.encode() not in raw_db
    # and the submit answer (which the helper sees) carries none
    taro = CentralClient(server.url, server.token("taro@example.co.jp"))
    again = taro.submit(sender_helper.outbox.get(item_id), b"")
    assert "links" not in again and token not in str(again)


@pytest.mark.postgres
def test_sender_cannot_use_an_approval_link_kept_by_an_older_helper(server: ThreadServer) -> None:
    """Older versions stored the approvers' links in the sender's database: such a link opens nothing,
    decides nothing and signs nobody in as the approver."""
    from sendguard.links import LinkSigner

    taro = CentralClient(server.url, server.token("taro@example.co.jp"))
    hanako = CentralClient(server.url, server.token("hanako@example.co.jp"))
    for who, client, item_id in (("taro", taro, "t1"), ("hanako", hanako, "h1")):
        raw = base64.b64encode(make_message(sender=f"{who}@example.co.jp", subject=f"社外秘 {who}").as_bytes())
        client._call("POST", "/api/v1/central/requests", json={"id": item_id, "sender": f"{who}@example.co.jp",
                                                                "subject": f"社外秘 {who}", "raw": raw.decode()})
    # the link as the old server returned it to taro's helper (same key, the old purpose)
    old = LinkSigner(server.service.secret_key, "approve").sign("t1", approver="boss@example.co.jp")
    browser = requests.Session()
    page = browser.get(f"{server.url}/approve/t1?t={old}", timeout=10)
    assert page.status_code == 403 and "csrf" not in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    done = browser.post(f"{server.url}/approve/t1", data={"csrf": csrf.group(1) if csrf else "", "t": old,
                                                          "decision": "approve"},
                        headers={"Origin": server.url}, timeout=10)
    assert done.status_code in (401, 403)
    assert server.service.outbox.get("t1").state == "awaiting_approval"
    other = browser.get(f"{server.url}/approve/h1", timeout=10)  # not signed in as boss
    assert other.status_code == 401 and "社外秘 hanako" not in other.text


# ---------------------------------------------------------------------- finding 3
POLICY_WITH_ROUTE = SAMPLE_POLICY + """
[[approval.route]]
senders = ["hanako@example.co.jp"]
approvers = ["cfo@example.co.jp"]
"""


def test_approver_cannot_read_messages_he_does_not_approve(runner: Any, write_policy: Any) -> None:
    """Once a message left awaiting_approval, another approver's session still may not open it."""
    write_policy(POLICY_WITH_ROUTE)
    r = runner()
    msg = make_message(sender="hanako@example.co.jp", subject="社外秘 人事", body="給与の一覧です")
    item = r.helper.outbox.submit(msg.as_bytes(), "hanako@example.co.jp", ["a@partner.example"])
    item = r.helper.outbox.confirm(item.id)
    assert item.state == "awaiting_approval" and item.approvers == ["cfo@example.co.jp"]
    r.helper.approvals.approve(item.id, "cfo@example.co.jp", "OK", via="cli")
    client = r.app.test_client()
    login = approvals_login_url("http://127.0.0.1", "boss@example.co.jp", r.app.config["SECRET_KEY"])
    assert client.get(login.split("127.0.0.1", 1)[1]).status_code == 302
    for state_check in range(2):
        page = client.get(f"/approve/{item.id}")
        html = page.get_data(as_text=True)
        assert page.status_code == 403, html
        assert "社外秘 人事" not in html and "給与" not in html
        if state_check == 0:
            wait_for(lambda: r.helper.outbox.get(item.id).state == "sent", timeout=20)
    # cfo himself still sees it
    cfo = r.app.test_client()
    cfo.get(approvals_login_url("http://127.0.0.1", "cfo@example.co.jp",
                                r.app.config["SECRET_KEY"]).split("127.0.0.1", 1)[1])
    assert cfo.get(f"/approve/{item.id}").status_code == 200


# ---------------------------------------------------------------------- finding 4
BOSS_SENDS = SAMPLE_POLICY.replace('approvers = ["boss@example.co.jp"]',
                                   'approvers = ["boss@example.co.jp", "cfo@example.co.jp"]')


def test_approver_cannot_approve_his_own_message_from_the_cli(home: Any, write_policy: Any) -> None:
    """boss is an approver and the sender: allow_self_approval = false refuses him, comment or not."""
    from sendguard.service import Helper

    write_policy(BOSS_SENDS)
    helper = Helper(home)
    try:
        msg = make_message(sender="boss@example.co.jp", subject="社外秘 自分の")
        item = helper.outbox.submit(msg.as_bytes(), "boss@example.co.jp", ["a@partner.example"])
        item = helper.outbox.confirm(item.id)
        assert item.state == "awaiting_approval" and "boss@example.co.jp" in item.approvers
    finally:
        helper.stop()
    for extra in ([], ["--comment", "急ぎ"]):
        done = run_cli("approvals", "approve", item.id, "--as", "boss@example.co.jp", *extra)
        assert done.returncode != 0, done.stdout
        assert b"approving your own message is not allowed" in done.stderr
    helper = Helper(home)
    try:
        assert helper.outbox.get(item.id).state == "awaiting_approval"
        refused = [r for r in audit.records(helper.store, item.id) if r["event"] == "approval_refused"]
        assert len(refused) == 2 and {r["actor"] for r in refused} == {"boss@example.co.jp"}
        # the other approver decides as usual
        assert helper.approvals.approve(item.id, "cfo@example.co.jp").state == "approved"
    finally:
        helper.stop()


@pytest.mark.postgres
def test_approver_cannot_approve_his_own_message_on_the_server(server: ThreadServer) -> None:
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    raw = base64.b64encode(make_message(sender="boss@example.co.jp", subject="社外秘").as_bytes()).decode()
    boss._call("POST", "/api/v1/central/requests", json={"id": "b1", "sender": "boss@example.co.jp", "raw": raw})
    assert server.service.outbox.get("b1").approvers == ["boss@example.co.jp"]
    with pytest.raises(PermissionDenied, match="approving your own message is not allowed"):
        boss._call("POST", "/api/v1/approvals/b1/approve", json={})
    assert server.service.outbox.get("b1").state == "awaiting_approval"
    assert [i.id for i in boss.pending()] == []  # not offered to him either


@pytest.mark.postgres
def test_an_approver_removed_from_the_servers_policy_can_no_longer_approve(server: ThreadServer, tmp_path: Any) -> None:
    """The administrator moves taro's approvals from boss to cfo while a request waits: boss's emailed link
    and his helper decide nothing any more, cfo is told and may decide, and the move is audited."""
    taro = CentralClient(server.url, server.token("taro@example.co.jp"))
    raw = base64.b64encode(make_message(subject="社外秘 見積").as_bytes()).decode()
    taro._call("POST", "/api/v1/central/requests", json={"id": "p1", "sender": "taro@example.co.jp",
                                                          "recipients": ["a@partner.example"], "raw": raw})
    old_link = wait_for(lambda: approval_link_in(server.mail, "p1", "boss@example.co.jp"), timeout=20)
    (tmp_path / "server-policy.toml").write_text('[approval]\napprovers = ["cfo@example.co.jp"]\nexpire_hours = 24\n',
                                                 encoding="utf-8")
    assert server.service.policy.get().approvers_for("taro@example.co.jp") == ("cfo@example.co.jp",)
    boss = CentralClient(server.url, server.token("boss@example.co.jp"))
    cfo = CentralClient(server.url, server.token("cfo@example.co.jp"))
    # at once, before any background round: the decision follows the policy in force
    with pytest.raises(PermissionDenied, match="its approvers are: cfo@example.co.jp"):
        boss.decide("p1", "approve", "boss@example.co.jp", "OK")
    browser = requests.Session()
    page = browser.get(old_link, timeout=10)
    assert page.status_code == 403 and "cfo@example.co.jp" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    done = browser.post(f"{server.url}/approve/p1", data={"csrf": csrf.group(1) if csrf else "",
                                                          "t": old_link.split("?t=", 1)[1], "decision": "approve"},
                        headers={"Origin": server.url}, timeout=10)
    assert done.status_code in (401, 403)
    assert boss.pending() == []
    item = server.service.outbox.get("p1")
    assert item.state == "awaiting_approval" and item.approvers == ["cfo@example.co.jp"]
    # the new approver is emailed a link of his own, and his decision counts
    assert [i.id for i in cfo.pending()] == ["p1"]
    wait_for(lambda: approval_link_in(server.mail, "p1", "cfo@example.co.jp"), timeout=20)
    assert cfo.decide("p1", "approve", "cfo@example.co.jp", "OK").state == "approved"
    item = server.service.outbox.get("p1")
    assert item.approval["by"] == "cfo@example.co.jp"
    moved = [r for r in audit.records(server.service.store, "p1") if r["event"] == "approval_rerouted"]
    assert len(moved) == 1 and moved[0]["actor"] == "policy"
    assert moved[0]["data"]["previous_approvers"] == ["boss@example.co.jp"]
    assert moved[0]["data"]["approvers"] == ["cfo@example.co.jp"]
    assert audit.verify(server.service.store) == []
