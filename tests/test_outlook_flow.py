"""Outlook's send under check is an outbox item like any other (source outlook)."""

from __future__ import annotations

import base64
import email
import email.policy

import requests
from conftest import SAMPLE_POLICY, wait_for

from sendguard.mailboxes.maildir import MaildirMailbox

PDF = b"%PDF-1.4 quote for the customer"


def outlook_payload(**extra):
    payload = {
        "source": "outlook", "item_id": "AAMkAD-item-1",
        "from": {"address": "taro@example.co.jp", "name": "Taro"},
        "to": [{"address": "hanako@partner.example", "name": "Hanako"}],
        "cc": [{"address": "boss@example.co.jp", "name": "Boss"}], "bcc": [],
        "subject": "見積書", "body": "よろしくお願いします。",
        "attachments": [{"id": "att-1", "name": "見積書.pdf", "size": len(PDF), "contentType": "application/pdf",
                         "isInline": False, "content": base64.b64encode(PDF).decode()}],
    }
    payload.update(extra)
    return payload


def api(r, method, path, **kw):
    headers = {"Authorization": f"Bearer {r.app.config['API_TOKEN']}"}
    return requests.request(method, f"{r.base_url}{path}", headers=headers, timeout=30, **kw)


def test_outlook_confirm_hands_back_to_outlook_with_the_decision(runner, write_policy):
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    created = api(r, "POST", "/api/v1/checks", json=outlook_payload()).json()
    assert created["state"] == "awaiting_confirmation"
    assert created["attachments"][0]["ref"] == "att-1"
    assert api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm",
               json={"removed_attachments": ["1"], "bcc": True}).status_code == 200
    done = api(r, "GET", f"/api/v1/outbox/{created['id']}?wait=10").json()
    assert done["state"] == "sent"
    assert done["decision"]["removed_attachments"] == ["att-1"]  # in Outlook's own attachment ids
    assert done["decision"]["bcc_addresses"] == ["hanako@partner.example"]
    assert not MaildirMailbox(r.home / "sent").messages()  # Outlook sends it, not the helper


def test_outlook_message_needing_approval_is_held_then_released_by_the_helper(runner, write_policy):
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    created = api(r, "POST", "/api/v1/checks", json=outlook_payload(subject="【社外秘】見積書")).json()
    assert created["verdict"]["action"] == "approve"
    api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm", json={})
    held = api(r, "GET", f"/api/v1/outbox/{created['id']}?wait=10").json()
    assert held["state"] == "awaiting_approval"
    assert "boss@example.co.jp" in held["user_message"]
    wrong = api(r, "POST", f"/api/v1/approvals/{created['id']}/approve", json={"as": "someone@example.co.jp"})
    assert wrong.status_code == 403
    ok = api(r, "POST", f"/api/v1/approvals/{created['id']}/approve", json={"as": "boss@example.co.jp"})
    assert ok.status_code == 200
    wait_for(lambda: api(r, "GET", f"/api/v1/outbox/{created['id']}").json()["state"] == "sent")
    delivered = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                 for p in MaildirMailbox(r.home / "sent").messages()]
    # besides the message itself, the approver was sent a request with a link
    [sent] = [m for m in delivered if m["Subject"] == "【社外秘】見積書"]
    assert any(m["To"] == "boss@example.co.jp" and m is not sent for m in delivered)
    [att] = list(sent.iter_attachments())
    assert att.get_filename() == "見積書.pdf" and att.get_content() == PDF


def _addin_token(r) -> str:
    # What the add-in's page does first: a session for its own Origin (the helper's).
    answer = requests.post(f"{r.base_url}/api/v1/addin/session", json={}, timeout=30,
                           headers={"Origin": r.base_url}).json()
    assert "token" in answer, answer
    return answer["token"]


def _final_state(r, item_id):
    return wait_for(lambda: (lambda i: i if i["state"] in ("sent", "needs_attention", "failed") else None)(
        api(r, "GET", f"/api/v1/outbox/{item_id}").json()))


def test_confirmed_after_outlook_stopped_waiting_is_never_recorded_as_sent(runner, write_policy):
    """The user left the message in Outlook (the handler ended), then confirmed in the window: nobody
    will send it, so it must not show as sent; without an Exchange/Graph account the user is told
    to send it again from Drafts."""
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    r.helper.addin_presence.grace = 0.0  # the add-in's last contact is already too long ago
    created = api(r, "POST", "/api/v1/checks", json=outlook_payload()).json()
    assert created["state"] == "awaiting_confirmation"
    assert api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm", json={}).status_code == 200
    done = _final_state(r, created["id"])
    assert done["state"] == "needs_attention"
    assert "Open it from Drafts in Outlook and press Send again" in done["user_message"] + str(done.get("last_error"))
    assert not MaildirMailbox(r.home / "sent").messages()


def test_confirmed_while_the_addin_waits_is_handed_back_to_outlook(runner, write_policy):
    import threading

    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    r.helper.addin_presence.grace = 0.0  # only an open long-poll counts
    token = _addin_token(r)
    created = requests.post(f"{r.base_url}/api/v1/checks", json=outlook_payload(), timeout=30,
                            headers={"Authorization": f"Bearer {token}", "Origin": r.base_url}).json()
    polled: dict = {}

    def long_poll():
        polled.update(requests.get(f"{r.base_url}/api/v1/outbox/{created['id']}?wait=20", timeout=30,
                                   headers={"Authorization": f"Bearer {token}", "Origin": r.base_url}).json())

    poller = threading.Thread(target=long_poll)
    poller.start()
    wait_for(lambda: r.helper.addin_presence.waiting(created["id"]))
    assert api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm", json={}).status_code == 200
    poller.join(30)
    assert polled["state"] == "sent"
    trail = api(r, "GET", f"/api/v1/outbox/{created['id']}").json()["audit"]
    assert any(a["event"] == "released" and a["data"].get("transport") == "outlook" for a in trail), trail


def test_send_pressed_again_for_the_same_draft_withdraws_the_earlier_check(runner, write_policy):
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    first = api(r, "POST", "/api/v1/checks", json=outlook_payload()).json()
    other = api(r, "POST", "/api/v1/checks", json=outlook_payload(item_id="AAMkAD-other")).json()
    second = api(r, "POST", "/api/v1/checks", json=outlook_payload()).json()
    assert api(r, "GET", f"/api/v1/outbox/{first['id']}").json()["state"] == "cancelled"
    assert api(r, "GET", f"/api/v1/outbox/{other['id']}").json()["state"] == "awaiting_confirmation"
    assert api(r, "GET", f"/api/v1/outbox/{second['id']}").json()["state"] == "awaiting_confirmation"


def test_addin_stopping_a_send_it_was_cleared_for_ends_not_sent(runner, write_policy, message_factory):
    """The helper said "sent" (Outlook may send it) and the add-in then stopped the send (it could not apply
    a removal or an added Cc/Bcc): the add-in says so, and the record ends cancelled with an audit record.
    Only the add-in session that created the item may say it, and only of an item Outlook was to send."""
    write_policy(SAMPLE_POLICY)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    mine, other = _addin_token(r), _addin_token(r)

    def as_addin(token, method, path, **kw):
        return requests.request(method, f"{r.base_url}{path}", timeout=30, **kw,
                                headers={"Authorization": f"Bearer {token}", "Origin": r.base_url})

    created = as_addin(mine, "POST", "/api/v1/checks", json=outlook_payload()).json()
    assert api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm", json={}).status_code == 200
    assert _final_state(r, created["id"])["state"] == "sent"
    stop = {"stopped_send": True, "reason": "Outlook did not add boss@example.co.jp (cc)"}
    cancel = f"/api/v1/outbox/{created['id']}/cancel"
    assert as_addin(other, "POST", cancel, json=stop).status_code == 404  # not that session's item
    plain = as_addin(mine, "POST", cancel, json={"reason": "x"})
    assert plain.status_code == 409  # a sent message is not cancelled by a plain cancel
    done = as_addin(mine, "POST", cancel, json=stop)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "cancelled"
    trail = api(r, "GET", f"/api/v1/outbox/{created['id']}").json()["audit"]
    stopped = [a for a in trail if a["event"] == "send_stopped"]
    assert len(stopped) == 1 and stopped[0]["data"]["reason"] == stop["reason"], trail
    assert as_addin(mine, "POST", cancel, json=stop).status_code == 409  # said once
    assert not MaildirMailbox(r.home / "sent").messages()

    # a message SendGuard sent itself cannot be reported as stopped by anyone
    raw = message_factory(to="a@partner.example").as_bytes()
    item = r.helper.outbox.submit(raw, "taro@example.co.jp", ["a@partner.example"])
    r.helper.outbox.confirm(item.id)
    wait_for(lambda: r.helper.outbox.get(item.id).state == "sent", timeout=20)
    refused = api(r, "POST", f"/api/v1/outbox/{item.id}/cancel", json=stop)
    assert refused.status_code == 409 and "reported as stopped" in refused.json()["error"]["message"]
    assert r.helper.outbox.get(item.id).state == "sent"
