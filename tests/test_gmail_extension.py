"""The SendGuard for Gmail browser extension, end to end in Debian's Chromium.

Chromium loads the unpacked extension (extension/gmail); https://mail.google.com is answered with a
page that reproduces Gmail's compose window (tests/fixtures/gmail_web/compose.html); the extension talks
to a real helper (desktop.runner.Runner: HTTPS on loopback with the install's local CA, pinned for
Chromium). The user presses Send in "Gmail"; the message waits in the helper; the test decides as the
SendGuard window does (the helper's API with the desktop token); the extension then lets "Gmail" send,
after removing what the user removed, or leaves it unsent with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sendguard import certs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "extension/gmail"
PAGE = (ROOT / "tests/fixtures/gmail_web/compose.html").read_text(encoding="utf-8")
POLICY = """
[organization]
internal_domains = ["example.com"]

[confirm]
when = "external"
"""


def _spki_pin(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def home(tmp_path, monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    home = tmp_path / "helper-home"
    home.mkdir()
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    certs.ensure_certificates(home)
    return home


@pytest.fixture
def chromium(home, tmp_path):
    """Chromium with the unpacked extension; yields (context, extension id)."""
    from playwright.sync_api import sync_playwright

    pin = _spki_pin(certs.CertPaths.under(home).server_cert)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=False,
            args=[*CHROMIUM_ARGS, "--headless=new", f"--ignore-certificate-errors-spki-list={pin}",
                  f"--disable-extensions-except={EXTENSION}", f"--load-extension={EXTENSION}"])
        try:
            worker = context.service_workers[0] if context.service_workers else \
                context.wait_for_event("serviceworker", timeout=30_000)
            extension_id = worker.url.split("/")[2]
            yield context, worker, extension_id
        finally:
            context.close()


def start_helper(home: Path, extension_id: str, allow: bool = True):
    from desktop.runner import Runner

    origins = f'extension_origins = ["chrome-extension://{extension_id}"]\n' if allow else ""
    (home / "config.toml").write_text(f"[api]\n{origins}", encoding="utf-8")
    runner = Runner(home, smtp_port=0, api_port=0).start()
    assert runner.scheme == "https"
    return runner


class Api:
    """The helper's API as the SendGuard window uses it (desktop token, TLS trusting the local CA)."""

    def __init__(self, base: str, home: Path):
        from sendguard.links import api_token

        self.base, self.token, self.context = base, api_token(), certs.client_context(home)

    def call(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:
            return json.loads(resp.read())

    def wait_for(self, state: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [i for i in self.call("GET", "/api/v1/outbox") if i.get("state") == state]
            if found:
                return self.call("GET", f"/api/v1/outbox/{found[0]['id']}")
            time.sleep(0.1)
        raise AssertionError(f"no message reached {state!r} in the helper")


def open_gmail(context, worker, helper_url: str):
    worker.evaluate("url => chrome.storage.local.set({helperUrl: url})", helper_url)
    page = context.new_page()
    page.route("https://mail.google.com/**",
               lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE))
    page.goto("https://mail.google.com/mail/u/0/#inbox?compose=new")
    page.wait_for_function("() => window.__gmail && window.SendGuardGmail === undefined")  # isolated world
    return page


def sent(page) -> list:
    return page.evaluate("() => window.__gmail.sent")


def banner(page) -> str:
    page.wait_for_selector("[data-sendguard-banner][data-kind=error]", timeout=30_000)
    return page.inner_text("[data-sendguard-banner]")


def test_send_waits_for_the_decision_and_applies_removals(home, chromium):
    context, worker, extension_id = chromium
    runner = start_helper(home, extension_id)
    try:
        page = open_gmail(context, worker, runner.base_url)
        api = Api(runner.base_url, home)
        page.click("#send")

        item = api.wait_for("awaiting_confirmation")
        assert item["source"] == "gmail_web" and item["subject"] == "見積書のご送付"
        check = item["check"]
        assert {(r["address"], r["field"]) for r in check["recipients"]} == {
            ("bob@partner.example", "to"), ("eve@rival.example", "to"), ("hanako@example.com", "cc")}
        assert [(a["filename"], a["size"]) for a in check["attachments"]] == [
            ("quote.pdf", 12 * 1024), ("customers.csv", 1536 * 1024)]
        assert check["from"] == "alice@example.com"
        time.sleep(0.5)
        assert sent(page) == [], "Gmail sent before the user decided"

        csv = next(a["id"] for a in check["attachments"] if a["filename"] == "customers.csv")
        api.call("POST", f"/api/v1/outbox/{item['id']}/confirm",
                 {"removed_recipients": ["eve@rival.example"], "removed_attachments": [csv], "actor": "window"})

        page.wait_for_function("() => window.__gmail.sent.length === 1", timeout=30_000)
        assert sent(page) == [{"to": ["bob@partner.example"], "cc": ["hanako@example.com"], "bcc": [],
                               "subject": "見積書のご送付", "attachments": ["quote.pdf"]}]
        assert api.call("GET", f"/api/v1/outbox/{item['id']}")["state"] == "sent"
    finally:
        runner.stop()


def test_cancel_in_sendguard_leaves_the_message_unsent_with_the_reason(home, chromium):
    context, worker, extension_id = chromium
    runner = start_helper(home, extension_id)
    try:
        page = open_gmail(context, worker, runner.base_url)
        api = Api(runner.base_url, home)
        page.click("div[contenteditable=true]")
        page.keyboard.press("Control+Enter")  # Gmail's keyboard shortcut for Send
        item = api.wait_for("awaiting_confirmation")
        api.call("POST", f"/api/v1/outbox/{item['id']}/cancel", {})
        assert "not sent" in banner(page)
        assert sent(page) == [] and page.is_visible("#compose")
        assert page.eval_on_selector_all("[data-hovercard-id]", "els => els.length") == 3  # left as it was
    finally:
        runner.stop()


def test_helper_not_running_fails_closed(home, chromium):
    context, worker, _extension_id = chromium
    page = open_gmail(context, worker, "https://localhost:9")  # nothing listens there
    page.click("#send")
    assert "not running" in banner(page)
    assert sent(page) == []


def test_extension_not_allowed_by_the_helper_fails_closed(home, chromium):
    context, worker, extension_id = chromium
    runner = start_helper(home, extension_id, allow=False)
    try:
        page = open_gmail(context, worker, runner.base_url)
        page.click("#send")
        assert "extension_origins" in banner(page)
        assert sent(page) == [] and Api(runner.base_url, home).call("GET", "/api/v1/outbox") == []
    finally:
        runner.stop()


def test_more_send_options_and_other_buttons_are_left_to_gmail(home, chromium):
    context, worker, extension_id = chromium
    page = open_gmail(context, worker, "https://localhost:9")
    page.click(".afX[aria-label='Remove Eve']")  # an ordinary button in the compose window still works
    assert page.eval_on_selector_all("[data-hovercard-id]", "els => els.length") == 2
    page.click("[aria-label='More send options']")
    assert page.query_selector("[data-sendguard-banner]") is None


def test_a_message_that_needs_approval_is_not_sent_from_the_browser(home, chromium):
    context, worker, extension_id = chromium
    (home / "policy.toml").write_text(POLICY + '\n[approval]\napprovers = ["boss@example.com"]\n\n'
                                      '[[rules.keywords]]\npattern = "社外秘"\naction = "approve"\n', encoding="utf-8")
    runner = start_helper(home, extension_id)
    try:
        page = open_gmail(context, worker, runner.base_url)
        page.evaluate("() => { document.querySelector('[role=textbox]').innerText = '社外秘: the price list'; }")
        page.click("#send")
        api = Api(runner.base_url, home)
        item = api.wait_for("awaiting_confirmation")
        api.call("POST", f"/api/v1/outbox/{item['id']}/confirm", {"actor": "window"})
        text = banner(page)
        assert "needs approval" in text and "boss@example.com" in text and "Check and send" in text
        assert sent(page) == []
        # the browser's copy (attachments without content) is withdrawn, so nothing half is ever sent
        deadline = time.monotonic() + 30
        while api.call("GET", f"/api/v1/outbox/{item['id']}")["state"] != "cancelled":
            assert time.monotonic() < deadline, "the browser's copy was not withdrawn"
            time.sleep(0.1)
    finally:
        runner.stop()


def test_the_browsers_copy_is_never_sent_by_the_helper(tmp_path, monkeypatch):
    """Even approved, a copy taken from Gmail's page (attachments without content) is not released."""
    from sendguard.service import Helper

    home = tmp_path / "h"
    home.mkdir()
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    helper = Helper(home)
    try:
        raw = (b"From: alice@example.com\r\nTo: bob@partner.example\r\nSubject: s\r\n"
               b"Message-ID: <w@x>\r\n\r\nbody\r\n")
        item = helper.outbox.submit(raw, "alice@example.com", ["bob@partner.example"], source="gmail_web")
        helper.outbox.confirm(item.id, [], [], False)
        from sendguard.store import outbox as table
        with helper.store.transaction() as conn:  # as if an approver had approved it
            conn.execute(table.update().where(table.c.id == item.id).values(approval='{"by": "boss"}'))
        assert helper.outbox.release(item.id).state == "needs_attention"
        sink = home / "sent"
        assert not (sink.exists() and [p for p in sink.rglob("*") if p.is_file()])
    finally:
        helper.stop()
