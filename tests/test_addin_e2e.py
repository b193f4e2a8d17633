"""End to end: Chromium loads the add-in's runtime page from the helper over HTTPS (local CA), the
Smart Alerts handler runs against a mocked Office object, the helper holds the message, the user
confirms it (removing one recipient), and the handler completes with allowEvent true after removing
that recipient from the Outlook item.

office.js cannot come from Microsoft's CDN here, so the browser is answered with a stand-in for it.
Chromium is told to accept exactly the helper's certificate key (SPKI pin); the Python client trusts
only the install's CA.
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


POLICY = """
[organization]
internal_domains = ["example.co.jp"]

[confirm]
when = "external"
"""

# Stands in for https://appsforoffice.microsoft.com/lib/1/hosted/office.js: a compose item whose
# recipients and attachments live in window.__sg.state.
FAKE_OFFICE_JS = r"""
(function () {
  var state = {
    to: [{emailAddress: "x@partner.example", displayName: "X Partner"},
         {emailAddress: "y@other.example", displayName: "Y Other"}],
    cc: [{emailAddress: "hanako@example.co.jp", displayName: "Hanako"}],
    bcc: [],
    attachments: [{id: "att-1", name: "quote.txt", size: 11, isInline: false, attachmentType: "file",
                   contentType: "text/plain"}],
    calls: []
  };
  function ok(v) { return {status: "succeeded", value: v}; }
  function later(name, cb, value) { state.calls.push(name); setTimeout(function () { cb(ok(value)); }, 0); }
  function field(name) {
    return {
      getAsync: function (cb) { later(name + ".getAsync", cb, state[name].slice()); },
      setAsync: function (list, cb) { state[name] = list.slice(); later(name + ".setAsync", cb); },
      addAsync: function (list, cb) { state[name] = state[name].concat(list); later(name + ".addAsync", cb); }
    };
  }
  window.__sg = {state: state, handlers: {}, completed: null};
  window.Office = {
    AsyncResultStatus: {Succeeded: "succeeded", Failed: "failed"},
    CoercionType: {Text: "text"},
    actions: {associate: function (name, fn) { window.__sg.handlers[name] = fn; }},
    context: {
      displayLanguage: "en-US",
      mailbox: {
        userProfile: {emailAddress: "taro@example.co.jp", displayName: "Taro Yamada"},
        item: {
          from: {getAsync: function (cb) { later("from.getAsync", cb, {emailAddress: "taro@example.co.jp", displayName: "Taro Yamada"}); }},
          to: field("to"), cc: field("cc"), bcc: field("bcc"),
          subject: {getAsync: function (cb) { later("subject.getAsync", cb, "E2E quote for Partner"); }},
          body: {getAsync: function (type, cb) { later("body.getAsync", cb, "Hello, the quote is attached."); }},
          getAttachmentsAsync: function (cb) { later("getAttachmentsAsync", cb, state.attachments.slice()); },
          getAttachmentContentAsync: function (id, cb) { later("getAttachmentContentAsync", cb, {format: "base64", content: btoa("quote: 100")}); },
          removeAttachmentAsync: function (id, cb) {
            state.attachments = state.attachments.filter(function (a) { return a.id !== id; });
            later("removeAttachmentAsync", cb);
          },
          getItemIdAsync: function (cb) { later("getItemIdAsync", cb, "AAMkE2E="); }
        }
      }
    }
  };
})();
"""


def _spki_pin(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def helper(request, tmp_path, monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from desktop.runner import Runner

    home = tmp_path / "helper-home"
    home.mkdir()
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    (home / "policy.toml").write_text(getattr(request, "param", POLICY), encoding="utf-8")
    certs.ensure_certificates(home)
    runner = Runner(home, smtp_port=0, api_port=0).start()
    try:
        assert runner.scheme == "https", "the helper did not pick up the local CA's certificate"
        yield runner
    finally:
        runner.stop()


class Api:
    """The helper's API as the desktop window uses it: bearer token, TLS trusting only the local CA."""

    def __init__(self, base: str, home: Path):
        from sendguard.links import api_token

        self.base = base
        self.token = api_token()
        self.context = certs.client_context(home)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:
            return json.loads(resp.read())

    def wait_for_held(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.call("GET", "/api/v1/outbox")
            held = [i for i in items if i.get("state") == "awaiting_confirmation"]
            if held:
                return held[0]
            time.sleep(0.1)
        raise AssertionError("the add-in's message never reached the helper")


@pytest.fixture
def outlook_page(helper):
    """Chromium showing the add-in's runtime page from the helper, with the stand-in office.js."""
    from playwright.sync_api import sync_playwright

    pin = _spki_pin(certs.CertPaths.under(helper.home).server_cert)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"])
        try:
            page = browser.new_page()
            page.route("https://appsforoffice.microsoft.com/**",
                       lambda route: route.fulfill(status=200, content_type="text/javascript", body=FAKE_OFFICE_JS))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(f"{helper.base_url}/addin/commands.html")
            assert response is not None and response.ok
            page.wait_for_function(
                "() => window.__sg && typeof window.__sg.handlers.onMessageSendHandler === 'function'")
            yield page
            assert errors == []
        finally:
            browser.close()


def _press_send(page) -> None:
    page.evaluate("""() => window.__sg.handlers.onMessageSendHandler({
        completed: (options) => { window.__sg.completed = options; }
    })""")


def _completed(page) -> dict:
    page.wait_for_function("() => window.__sg.completed !== null", timeout=30_000)
    return page.evaluate("() => window.__sg.completed")


def test_outlook_send_confirmed_in_sendguard(helper, outlook_page):
    page = outlook_page
    api = Api(helper.base_url, helper.home)
    _press_send(page)

    # The helper holds the message for confirmation, as the window and web page show it.
    summary = api.wait_for_held()
    item = api.call("GET", f"/api/v1/outbox/{summary['id']}")
    assert item["source"] == "outlook"
    assert item["subject"] == "E2E quote for Partner"
    addresses = {r["address"] for r in item["check"]["recipients"]}
    assert {"x@partner.example", "y@other.example", "hanako@example.co.jp"} <= addresses
    assert [a["filename"] for a in item["check"]["attachments"]] == ["quote.txt"]
    assert page.evaluate("() => window.__sg.completed") is None, "completed before the user decided"

    # The user removes one recipient and confirms (what the window's Send button does).
    api.call("POST", f"/api/v1/outbox/{summary['id']}/confirm",
             {"removed_recipients": ["y@other.example"], "actor": "window"})

    assert _completed(page) == {"allowEvent": True}
    state = page.evaluate("() => window.__sg.state")
    assert [r["emailAddress"] for r in state["to"]] == ["x@partner.example"]
    assert [r["emailAddress"] for r in state["cc"]] == ["hanako@example.co.jp"]
    assert api.call("GET", f"/api/v1/outbox/{summary['id']}")["state"] == "sent"


AUTO_CC_POLICY = POLICY + """
[[rules.auto_cc]]
when_recipient = ["*@partner.example"]
cc = ["boss@example.co.jp"]
bcc = ["archive@example.co.jp"]
"""


@pytest.mark.parametrize("helper", [AUTO_CC_POLICY], indirect=True)
def test_outlook_send_gets_the_recipients_the_policy_adds(helper, outlook_page):
    """[[rules.auto_cc]] on mail Outlook sends itself: the helper's decision names the added Cc/Bcc and
    the add-in puts them on the Outlook item (Recipients.addAsync), so what Outlook sends is what the
    window showed."""
    page = outlook_page
    api = Api(helper.base_url, helper.home)
    _press_send(page)
    summary = api.wait_for_held()
    item = api.call("GET", f"/api/v1/outbox/{summary['id']}")
    added = {r["address"]: r for r in item["check"]["recipients"] if "auto_added" in r["flags"]}
    assert {a: r["field"] for a, r in added.items()} == {"boss@example.co.jp": "cc", "archive@example.co.jp": "bcc"}

    api.call("POST", f"/api/v1/outbox/{summary['id']}/confirm", {"actor": "window"})

    assert _completed(page) == {"allowEvent": True}
    state = page.evaluate("() => window.__sg.state")
    assert [r["emailAddress"] for r in state["cc"]] == ["hanako@example.co.jp", "boss@example.co.jp"]
    assert [r["emailAddress"] for r in state["bcc"]] == ["archive@example.co.jp"]
    assert "cc.addAsync" in state["calls"] and "bcc.addAsync" in state["calls"]
    done = api.call("GET", f"/api/v1/outbox/{summary['id']}")
    assert done["state"] == "sent"
    assert done["decision"]["added_cc"] == ["boss@example.co.jp"]
    assert done["decision"]["added_bcc"] == ["archive@example.co.jp"]


def test_outlook_send_cancelled_in_sendguard(helper, outlook_page):
    page = outlook_page
    api = Api(helper.base_url, helper.home)
    _press_send(page)
    summary = api.wait_for_held()
    api.call("POST", f"/api/v1/outbox/{summary['id']}/cancel", {})

    completed = _completed(page)
    assert completed["allowEvent"] is False
    assert "not sent" in completed["errorMessage"]
    assert page.evaluate("() => window.__sg.state.to.length") == 2, "the message is left as it was"


def test_runtime_page_csp_allows_office_js_and_reports_the_rest(helper, caplog):
    """The enforced policy lets Office.js load its host script from its CDN; what the report-only
    policy would block (here: a request to an unlisted host) reaches the helper's log, not the user."""
    from playwright.sync_api import sync_playwright

    loader = FAKE_OFFICE_JS + r"""
    (function () {
      var s = document.createElement("script");
      s.src = "https://appsforoffice.microsoft.com/lib/1/hosted/outlook-web-16.01.js";
      document.head.appendChild(s);
      fetch("https://unlisted.example/collect", {method: "POST", body: "x"}).catch(function () {});
    })();
    """

    def office(route):
        if route.request.url.endswith("/outlook-web-16.01.js"):
            return route.fulfill(status=200, content_type="text/javascript", body="window.__hostScript = true;")
        return route.fulfill(status=200, content_type="text/javascript", body=loader)

    pin = _spki_pin(certs.CertPaths.under(helper.home).server_cert)
    console: list[str] = []
    with sync_playwright() as p, caplog.at_level("WARNING", logger="addin.outlook"):
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"])
        try:
            page = browser.new_page()
            page.on("console", lambda msg: console.append(msg.text))
            page.route("https://appsforoffice.microsoft.com/**", office)
            page.route("https://unlisted.example/**", lambda route: route.fulfill(status=204))
            assert page.goto(f"{helper.base_url}/addin/commands.html").ok
            page.wait_for_function("() => window.__hostScript === true && typeof window.SendGuardAddin === 'object'")
            deadline = time.monotonic() + 10
            while "unlisted.example" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            browser.close()
    assert "unlisted.example" in caplog.text and "connect-src" in caplog.text
    enforced = [line for line in console if "Refused" in line and "[Report Only]" not in line]
    assert enforced == [], enforced
