"""An Outlook message held for approval is sent by the helper through Microsoft Graph.

The add-in gives the draft's id in EWS format (getItemIdAsync) and, converted with
``convertToRestId``, in REST format; Graph takes only the REST one. A draft saved by Outlook in
Cached Exchange Mode is not on the server until Outlook syncs it.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
import requests
from conftest import wait_for

from sendguard import config as config_mod
from sendguard.config import Account
from sendguard.mailboxes import _retry
from sendguard.mailboxes import graph as graph_mod
from sendguard.mailboxes.graph import MsalTokenSource
from tests.fakes.graph_server import FakeGraph

ADDRESS = "taro@contoso.example"
REST_ID = "AAMkADraft-0001_x9="  # a REST id with both URL-safe characters
POLICY = """
[organization]
internal_domains = ["contoso.example"]

[confirm]
when = "external"

[approval]
approvers = ["boss@contoso.example"]

[[rules.keywords]]
pattern = "社外秘"
action = "approve"
"""


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(_retry, "sleep", lambda seconds: None)
    yield


@pytest.fixture
def fake():
    with FakeGraph(address=ADDRESS) as server:
        yield server


@pytest.fixture
def helper_with_graph(fake, home, runner, write_policy):
    write_policy(POLICY)
    account = Account("m365", "graph", ADDRESS, {
        "tenant": fake.tenant, "client_id": fake.client_id, "authority": fake.base,
        "graph_endpoint": fake.graph_endpoint, "ca_bundle": str(fake.ca_file), "hold": False})
    config_mod.save_account(account, home / "config.toml")
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    return r


def draft() -> bytes:
    m = EmailMessage()
    m["From"] = ADDRESS
    m["To"] = "hanako@partner.example"
    m["Subject"] = "【社外秘】見積書"
    m.set_content("よろしくお願いします。")
    return bytes(m)


def api(r, method, path, **kw):
    return requests.request(method, f"{r.base_url}{path}", headers={"Authorization": "Bearer tok"}, timeout=30, **kw)


def submit_from_addin(r, **ids):
    payload = {"source": "outlook", "from": {"address": ADDRESS, "name": "Taro"},
               "to": [{"address": "hanako@partner.example", "name": "Hanako"}], "cc": [], "bcc": [],
               "subject": "【社外秘】見積書", "body": "よろしくお願いします。", "attachments": [], **ids}
    created = api(r, "POST", "/api/v1/checks", json=payload).json()
    assert created["verdict"]["action"] == "approve", created
    assert api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm", json={}).status_code == 200
    wait_for(lambda: api(r, "GET", f"/api/v1/outbox/{created['id']}").json()["state"] == "awaiting_approval")
    ok = api(r, "POST", f"/api/v1/approvals/{created['id']}/approve", json={"as": "boss@contoso.example"})
    assert ok.status_code == 200, ok.text
    return created["id"]


def sent_drafts(fake):
    return [s for s in fake.sends if s.route == "send" and s.subject == "【社外秘】見積書"]


def test_approved_outlook_message_is_sent_through_graph_by_its_rest_id(helper_with_graph, fake):
    r = helper_with_graph
    fake.put_item(draft(), folder="drafts", msg_id=REST_ID)
    item_id = submit_from_addin(r, item_id=FakeGraph.ews_id(REST_ID), rest_item_id=REST_ID)
    assert r.helper.outbox.get(item_id).source_ref == REST_ID
    done = wait_for(lambda: (lambda i: i if i.state in ("sent", "needs_attention", "failed") else None)(
        r.helper.outbox.get(item_id)))
    assert done.state == "sent", done.last_error
    [sent] = sent_drafts(fake)
    assert sent.to == ["hanako@partner.example"]
    assert REST_ID not in fake.messages or not fake.messages[REST_ID].is_draft


def test_ews_id_only_is_translated_when_graph_allows_it(helper_with_graph, fake):
    r = helper_with_graph
    fake.translate_allowed = True
    fake.put_item(draft(), folder="drafts", msg_id=REST_ID)
    item_id = submit_from_addin(r, item_id=FakeGraph.ews_id(REST_ID))  # an add-in without convertToRestId
    done = wait_for(lambda: (lambda i: i if i.state in ("sent", "needs_attention", "failed") else None)(
        r.helper.outbox.get(item_id)))
    assert done.state == "sent", done.last_error
    assert len(sent_drafts(fake)) == 1
    assert any("translateExchangeIds" in line for line in fake.requests)


def test_ews_id_that_graph_will_not_translate_says_so_and_sends_nothing(helper_with_graph, fake):
    r = helper_with_graph
    fake.put_item(draft(), folder="drafts", msg_id=REST_ID)
    item_id = submit_from_addin(r, item_id=FakeGraph.ews_id(REST_ID))
    done = wait_for(lambda: (lambda i: i if i.state in ("sent", "needs_attention", "failed") else None)(
        r.helper.outbox.get(item_id)))
    assert done.state == "needs_attention"
    assert "Exchange (EWS) id" in done.last_error and "User.ReadBasic.All" in done.last_error
    assert "deleted" not in done.last_error
    assert sent_drafts(fake) == []


def test_cached_exchange_mode_draft_is_sent_once_outlook_has_synced_it(helper_with_graph, fake):
    r = helper_with_graph
    r.helper.paused = True  # the test drives the releases
    fake.put_item(draft(), folder="drafts", msg_id=REST_ID, unsynced=True)
    item_id = submit_from_addin(r, item_id=FakeGraph.ews_id(REST_ID), rest_item_id=REST_ID)
    first = r.helper.outbox.release(item_id)
    assert first.state == "failed", first.last_error
    assert "Cached Exchange Mode" in first.last_error and "deleted" not in first.last_error
    assert sent_drafts(fake) == []
    fake.sync(REST_ID)
    second = r.helper.outbox.release(item_id)
    assert second.state == "sent", second.last_error
    assert len(sent_drafts(fake)) == 1
    raw = fake._mime(fake.messages[REST_ID]) if REST_ID in fake.messages else b""
    assert not raw or email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == "【社外秘】見積書"


def test_a_draft_still_missing_after_the_grace_period_is_reported_deleted(helper_with_graph, fake, monkeypatch):
    r = helper_with_graph
    r.helper.paused = True
    fake.put_item(draft(), folder="drafts", msg_id=REST_ID, unsynced=True)
    item_id = submit_from_addin(r, item_id=FakeGraph.ews_id(REST_ID), rest_item_id=REST_ID)
    monkeypatch.setattr(graph_mod, "OUTLOOK_SYNC_GRACE", 0)
    done = r.helper.outbox.release(item_id)
    assert done.state == "needs_attention"
    assert "deleted from the mailbox" in done.last_error
    assert sent_drafts(fake) == []


def test_confirmed_after_outlook_stopped_waiting_is_sent_from_the_saved_draft(helper_with_graph, fake):
    """Outlook on the web saved the draft and ended the handler when the user left the message; the
    user then confirms in the SendGuard window: the helper sends the draft itself."""
    r = helper_with_graph
    r.helper.addin_presence.grace = 0.0
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = ADDRESS, "hanako@partner.example", "見積書"
    m.set_content("よろしくお願いします。")
    fake.put_item(bytes(m), folder="drafts", msg_id=REST_ID)
    payload = {"source": "outlook", "item_id": FakeGraph.ews_id(REST_ID), "rest_item_id": REST_ID,
               "from": {"address": ADDRESS, "name": "Taro"}, "to": [{"address": "hanako@partner.example"}],
               "subject": "見積書", "body": "よろしくお願いします。", "attachments": []}
    created = api(r, "POST", "/api/v1/checks", json=payload).json()
    assert created["state"] == "awaiting_confirmation", created
    assert api(r, "POST", f"/api/v1/outbox/{created['id']}/confirm", json={}).status_code == 200
    done = wait_for(lambda: (lambda i: i if i.state in ("sent", "needs_attention", "failed") else None)(
        r.helper.outbox.get(created["id"])))
    assert done.state == "sent", done.last_error
    [sent] = [s for s in fake.sends if s.route == "send" and s.subject == "見積書"]
    assert sent.to == ["hanako@partner.example"]
