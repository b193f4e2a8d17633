"""Local Network Access on a standalone install (issue #19 item 2), in Debian's Chromium.

Outlook on the web is a public site; the add-in's page comes from the helper on loopback
(``https://localhost:PORT``). Chrome/Edge 142+ refuse (or ask the user before) a public page reaching
loopback, frames included, and an add-in page that cannot load lets SoftBlock offer "Send Anyway".
The admin deploys ``LocalNetworkAccessAllowedForUrls`` with the origins ``sendguard addin manifest``
writes into ``sendguard-local-network-access.reg``. Here a stand-in Outlook on the web
(``https://outlook.office.com``, resolved to a local server that Chromium is told to treat as a public
address) frames the real helper's add-in page and fetches from the helper: refused without the
policy, allowed with the same origins as a managed Chromium policy.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import ssl
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_addin_e2e import FAKE_OFFICE_JS, _spki_pin

from addin.manifests import AddinSettings, build_lna_reg
from sendguard import certs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

POLICY_DIR = Path("/etc/chromium/policies/managed")  # where Debian's Chromium reads machine policies
OUTLOOK = "outlook.office.com"
DENIED = "Permission was denied for this request to access the `loopback` address space"


def reg_origins(reg: str, vendor: str = "Google\\Chrome") -> list[str]:
    """The origins the .reg file sets for one browser's LocalNetworkAccessAllowedForUrls."""
    section = reg.split(f"[HKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\{vendor}\\LocalNetworkAccessAllowedForUrls]")[1]
    section = section.split("[", 1)[0]
    return re.findall(r'^"\d+"="([^"]+)"\r?$', section, re.MULTILINE)


class FakeOutlookWeb:
    """https://outlook.office.com as far as the browser goes: a page that frames the add-in from the
    helper (as Outlook on the web does) and calls the helper from the page itself."""

    def __init__(self, tmp: Path, addin_page: str, helper_base: str):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, OUTLOOK)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(OUTLOOK)]), critical=False)
                .sign(key, hashes.SHA256()))
        cert_file, key_file = tmp / "outlook.pem", tmp / "outlook.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.pin = _spki_pin(cert_file)
        page = f"""<!doctype html><html><head><title>Outlook</title></head><body>
<script>
window.fetched = null;
fetch({json.dumps(helper_base + "/healthz")}, {{mode: "no-cors"}})
  .then(function () {{ window.fetched = "reached"; }}, function (e) {{ window.fetched = "refused: " + e; }});
</script>
<iframe id="addin" src={json.dumps(addin_page)}></iframe>
</body></html>""".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    if not os.access(POLICY_DIR.parent.parent, os.W_OK):
        pytest.skip(f"cannot write Chromium's managed policies under {POLICY_DIR} (needs root, as make test runs)")
    from desktop.runner import Runner

    home = tmp_path / "helper-home"
    home.mkdir()
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    certs.ensure_certificates(home)
    runner = Runner(home, smtp_port=0, api_port=0).start()
    try:
        assert runner.scheme == "https", "the helper did not pick up the local CA's certificate"
        yield runner
    finally:
        runner.stop()


@pytest.fixture
def managed_policy() -> Iterator[Any]:
    """Writes a managed Chromium policy file for the next browser started; removed afterwards.

    The policy folder is the machine's: the tests that write it hold a lock on it for their whole run, so
    one that expects no policy never meets another's (pytest-xdist runs them side by side, and a second
    checkout's suite may run on the same machine)."""
    lock = open(Path(tempfile.gettempdir()) / "sendguard-test-chromium-policy.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    written: list[Path] = []
    made = [d for d in (POLICY_DIR.parent, POLICY_DIR) if not d.exists()]

    def write(policy: dict[str, Any]) -> Path:
        POLICY_DIR.mkdir(parents=True, exist_ok=True)
        path = POLICY_DIR / f"sendguard-test-lna-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(policy), encoding="utf-8")
        written.append(path)
        return path

    yield write
    for path in written:
        path.unlink(missing_ok=True)
    for folder in reversed(made):  # the folders this test made, if nothing else was put there meanwhile
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
    lock.close()  # releases the lock


def open_outlook(helper: Any, outlook: FakeOutlookWeb) -> dict[str, Any]:
    """Load the stand-in Outlook on the web in Chromium; what became of the add-in frame and the fetch."""
    from playwright.sync_api import sync_playwright

    helper_pin = _spki_pin(certs.CertPaths.under(helper.home).server_cert)
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {OUTLOOK} 127.0.0.1:{outlook.port}",
            # the stand-in runs on 127.0.0.1; Chromium is told to treat it as the public address it stands for
            f"--ip-address-space-overrides=127.0.0.1:{outlook.port}=public",
            f"--ignore-certificate-errors-spki-list={outlook.pin},{helper_pin}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            page.route("https://appsforoffice.microsoft.com/**",
                       lambda route: route.fulfill(status=200, content_type="text/javascript", body=FAKE_OFFICE_JS))
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            response = page.goto(f"https://{OUTLOOK}/mail/")
            assert response is not None and response.ok
            page.wait_for_function("() => window.fetched !== null", timeout=20_000)
            addin = None
            for candidate in page.frames:
                if candidate.url.startswith(helper.base_url):
                    addin = candidate
            handler = False
            if addin is not None:
                addin.wait_for_function(
                    "() => window.__sg && typeof window.__sg.handlers.onMessageSendHandler === 'function'",
                    timeout=20_000)
                handler = True
            return {"frames": [f.url for f in page.frames], "fetched": page.evaluate("window.fetched"),
                    "handler_loaded": handler, "console": console}
        finally:
            browser.close()


def test_outlook_on_the_web_reaches_the_helper_only_with_the_deployed_policy(helper: Any, tmp_path: Path,
                                                                           managed_policy: Any) -> None:
    settings = AddinSettings(port=helper.api_port)
    reg = build_lna_reg(settings)
    assert reg is not None
    origins = reg_origins(reg)
    assert reg_origins(reg, "Microsoft\\Edge") == origins
    assert f"https://{OUTLOOK}" in origins and settings.origin in origins
    outlook = FakeOutlookWeb(tmp_path, f"{helper.base_url}/addin/commands.html", helper.base_url)
    try:
        # without the policy: the add-in frame never loads and the page's call never reaches the helper
        refused = open_outlook(helper, outlook)
        assert not any(url.startswith(helper.base_url) for url in refused["frames"]), refused
        assert "chrome-error://chromewebdata/" in refused["frames"], refused
        assert refused["fetched"].startswith("refused"), refused
        assert any(DENIED in line for line in refused["console"]), refused["console"]
        assert not refused["handler_loaded"]

        # with the origins of the .reg file as Chromium's managed policy: both reach the helper
        managed_policy({"LocalNetworkAccessAllowedForUrls": origins})
        allowed = open_outlook(helper, outlook)
        assert f"{helper.base_url}/addin/commands.html" in allowed["frames"], allowed
        assert allowed["handler_loaded"], allowed  # the add-in's send handler is there for Outlook to call
        assert allowed["fetched"] == "reached", allowed
        assert not any(DENIED in line for line in allowed["console"]), allowed["console"]
    finally:
        outlook.close()


def test_policy_for_other_origins_does_not_open_loopback(helper: Any, tmp_path: Path, managed_policy: Any) -> None:
    """The policy names origins: one for another site leaves Outlook on the web refused."""
    managed_policy({"LocalNetworkAccessAllowedForUrls": ["https://intranet.example.co.jp"]})
    outlook = FakeOutlookWeb(tmp_path, f"{helper.base_url}/addin/commands.html", helper.base_url)
    try:
        refused = open_outlook(helper, outlook)
    finally:
        outlook.close()
    assert not any(url.startswith(helper.base_url) for url in refused["frames"]), refused
    assert refused["fetched"].startswith("refused"), refused


def test_outlook_origin_alone_is_what_chromium_checks(helper: Any, tmp_path: Path, managed_policy: Any) -> None:
    """The frame's navigation is the public page's request: Outlook's origin is the entry that matters
    (the .reg file also lists the add-in's own origin, which does no harm)."""
    managed_policy({"LocalNetworkAccessAllowedForUrls": [f"https://{OUTLOOK}"]})
    outlook = FakeOutlookWeb(tmp_path, f"{helper.base_url}/addin/commands.html", helper.base_url)
    try:
        allowed = open_outlook(helper, outlook)
    finally:
        outlook.close()
    assert f"{helper.base_url}/addin/commands.html" in allowed["frames"] and allowed["handler_loaded"], allowed
    assert allowed["fetched"] == "reached", allowed
