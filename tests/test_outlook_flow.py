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
