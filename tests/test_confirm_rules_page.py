"""The wrong-customer rules in the confirmation page: the reconfirm question, list members, opted-out recipients."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
import test_confirm_page as page_tests
from test_confirm_page import open_page, released, submit, wait_state

browser = page_tests.browser  # the Chromium fixtures of the page tests
page = page_tests.page

pytestmark = pytest.mark.browser

POLICY = """
[organization]
internal_domains = ["example.co.jp"]
lists = ["lists.csv"]

[[rules.address]]
match = ["*@careful.example"]
action = "reconfirm"
message = "careful.example: double-check the contract number"

[rules.suppression]
files = ["optout.csv"]
"""


@pytest.fixture(autouse=True)
def rules_policy(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("LC_ALL", "LC_MESSAGES", "LANGUAGE"):
        monkeypatch.delenv(var, raising=False)
    (home / "lists.csv").write_text("list,member\nsales-ml@client.example,a@client.example\n"
                                    "sales-ml@client.example,b@elsewhere.example\n", encoding="utf-8")
    (home / "optout.csv").write_text("gone@client.example\n", encoding="utf-8")
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    return home


def message(to: list[str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "me@example.co.jp"
    msg["To"] = ", ".join(to)
    msg["Subject"] = "Contract"
    msg.set_content("Hello,\nhere is the contract number.\n")
    return msg.as_bytes()


def test_reconfirm_asks_once_more_naming_the_reason(runner, page, home):
    r = runner()
    item_id = submit(r, message(["x@careful.example"]), "me@example.co.jp", ["x@careful.example"])
    open_page(page, r, item_id)
    assert page.locator("#reasons li[data-rule=address_rule]").count() == 1
    page.locator("input.check").first.check()
    send = page.locator("#send")
    assert send.is_enabled()
    send.click()
    dialog = page.locator("#reconfirm")
    dialog.wait_for(state="visible")
    assert "double-check the contract number" in dialog.text_content()
    assert r.helper.outbox.get(item_id).state == "awaiting_confirmation"  # nothing sent yet
    page.locator("#reconfirm-back").click()
    assert not dialog.is_visible()
    assert r.helper.outbox.get(item_id).state == "awaiting_confirmation"
    send.click()
    page.locator("#reconfirm-send").click()
    page.wait_for_selector("body[data-done]")
    item = wait_state(r, item_id, ("sent",))
    assert item.state == "sent"
    assert page.errors == []


def test_reconfirm_is_enforced_by_the_api_too(runner, home):
    import requests
    import urllib3

    from sendguard.links import api_token

    urllib3.disable_warnings()
    r = runner()
    item_id = submit(r, message(["x@careful.example"]), "me@example.co.jp", ["x@careful.example"])
    url = f"{r.base_url}/api/v1/outbox/{item_id}/confirm"

    def post(body: dict) -> tuple[int, dict]:
        resp = requests.post(url, json=body, headers={"Authorization": f"Bearer {api_token()}"}, verify=False,
                             timeout=10)
        return resp.status_code, resp.json()

    status, body = post({})
    assert status == 409 and body["error"]["code"] == "needs_reconfirmation"
    assert "double-check" in body["error"]["message"]
    status, body = post({"reconfirmed": True})
    assert status == 200, body
    wait_state(r, item_id, ("sent",))


def test_list_members_under_the_list_and_opted_out_recipient_removed(runner, page, home):
    r = runner()
    rcpts = ["sales-ml@client.example", "gone@client.example"]
    item_id = submit(r, message(rcpts), "me@example.co.jp", rcpts)
    open_page(page, r, item_id)
    rows = page.locator("[data-kind=recipient]")
    order = [rows.nth(i).get_attribute("data-address") for i in range(rows.count())]
    at = order.index("sales-ml@client.example")
    assert order[at + 1 : at + 3] == ["a@client.example", "b@elsewhere.example"]
    assert "via sales-ml@client.example" in page.locator("[data-kind=recipient][data-address='b@elsewhere.example']").text_content()
    assert page.locator("[data-kind=recipient][data-address='a@client.example'] button.remove").count() == 0
    gone = page.locator("[data-kind=recipient][data-address='gone@client.example']")
    assert "removed" in gone.get_attribute("class")
    assert "opt-out" in page.locator("#reasons li[data-rule=suppressed]").text_content()
    for box in page.locator("input.check:not([disabled])").all():
        box.check()
    page.locator("#send").click()
    page.wait_for_selector("body[data-done]")
    wait_state(r, item_id, ("sent",))
    [sent] = released(home)
    assert sent["To"] == "sales-ml@client.example"
    assert sorted(sent.get_all("X-SendGuard-Envelope-To")) == ["sales-ml@client.example"]
    assert page.errors == []


def test_uninspectable_attachment_is_said_so_in_the_page(runner, page, home):
    r = runner()
    msg = EmailMessage()
    msg["From"] = "me@example.co.jp"
    msg["To"] = "a@example.co.jp"
    msg["Subject"] = "old sheet"
    msg.set_content("see the sheet")
    msg.add_attachment(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, maintype="application",
                       subtype="vnd.ms-excel", filename="old.xls")
    import email.policy

    item_id = submit(r, msg.as_bytes(policy=email.policy.SMTP), "me@example.co.jp", ["a@example.co.jp"])
    open_page(page, r, item_id)
    text = page.locator("#reasons li[data-rule=problem]").text_content()
    assert "old.xls" in text and "could not be inspected" in text
