"""The per-install local CA: certificates, renewal, and a real HTTPS server verified against the CA."""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import stat
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from sendguard import certs


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_creates_ca_and_server_certificate(home):
    paths = certs.ensure_certificates(home)
    ca, server = _cert(paths.ca_cert), _cert(paths.server_cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= dt.timedelta(days=3650)
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical and x509.DNSName("localhost") in constraints.value.permitted_subtrees

    server.verify_directly_issued_by(ca)
    assert server.not_valid_after_utc - server.not_valid_before_utc <= dt.timedelta(days=398)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid"), reason="POSIX permissions")
def test_private_keys_are_owner_only(home):
    paths = certs.ensure_certificates(home)
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_second_call_keeps_certificates(home):
    first = certs.ensure_certificates(home)
    ca_bytes, server_bytes = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    second = certs.ensure_certificates(home)
    assert second.ca_cert.read_bytes() == ca_bytes
    assert second.server_cert.read_bytes() == server_bytes


def test_server_certificate_renewed_near_expiry_ca_kept(home):
    paths = certs.ensure_certificates(home)
    ca_bytes, old_server = paths.ca_cert.read_bytes(), _cert(paths.server_cert)

    later = old_server.not_valid_after_utc - dt.timedelta(days=10)
    certs.ensure_certificates(home, now=later)

    assert paths.ca_cert.read_bytes() == ca_bytes
    renewed = _cert(paths.server_cert)
    assert renewed.serial_number != old_server.serial_number
    assert renewed.not_valid_after_utc > old_server.not_valid_after_utc
    renewed.verify_directly_issued_by(_cert(paths.ca_cert))


def test_server_certificate_reissued_when_ca_replaced(home):
    paths = certs.ensure_certificates(home)
    paths.ca_key.unlink()  # an unreadable CA is re-made, and the server certificate with it
    certs.ensure_certificates(home)
    _cert(paths.server_cert).verify_directly_issued_by(_cert(paths.ca_cert))


@pytest.fixture
def https_server(home):
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = b"hello over tls"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.socket = certs.ssl_context(home).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_client_trusting_only_the_ca_connects(home, https_server, host):
    context = ssl.create_default_context(cafile=str(certs.CertPaths.under(home).ca_cert))
    with urllib.request.urlopen(f"https://{host}:{https_server}/", context=context, timeout=10) as resp:
        assert resp.read() == b"hello over tls"


def test_default_client_refuses_the_certificate(home, https_server):
    context = ssl.create_default_context()  # system roots only: our CA is not among them
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"https://127.0.0.1:{https_server}/", context=context, timeout=10)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


def test_client_trusting_another_install_refuses(tmp_path, https_server):
    other = certs.ensure_certificates(tmp_path / "other-install")
    context = ssl.create_default_context(cafile=str(other.ca_cert))
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"https://localhost:{https_server}/", context=context, timeout=10)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("win32", "certutil -user -addstore Root"),
        ("darwin", "security add-trusted-cert"),
        ("linux", "update-ca-certificates"),
    ],
)
def test_trust_instructions_name_the_os_tool(platform, expected, tmp_path):
    ca = tmp_path / "ca.pem"
    text = certs.trust_instructions(ca, platform=platform)
    assert expected in text and str(ca) in text


def test_install_trust_runs_the_platform_command(tmp_path):
    calls = []

    def runner(cmd):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, stdout="CertUtil: -addstore command completed.", stderr="")

    ok, message = certs.install_trust(tmp_path / "ca.pem", platform="win32", runner=runner)
    assert ok, message
    assert calls == [["certutil", "-user", "-addstore", "Root", str(tmp_path / "ca.pem")]]


def test_install_trust_failure_explains_manual_step(tmp_path):
    def runner(cmd):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="access denied")

    ok, message = certs.install_trust(tmp_path / "ca.pem", platform="darwin", runner=runner)
    assert not ok
    assert "access denied" in message and "Keychain Access" in message


def test_install_trust_missing_tool(tmp_path):
    def runner(cmd):
        raise FileNotFoundError(cmd[0])

    ok, message = certs.install_trust(tmp_path / "ca.pem", platform="win32", runner=runner)
    assert not ok and "could not run certutil" in message


# --- sendguard addin certs ----------------------------------------------------------------------

def test_cli_certs_install_prints_trust_step_without_touching_the_os(home, monkeypatch):
    from click.testing import CliRunner

    from addin.cli import addin_group

    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    monkeypatch.setattr(certs, "install_trust", lambda *a, **k: pytest.fail("trust step run without --trust"))
    result = CliRunner().invoke(addin_group, ["certs", "install"])
    assert result.exit_code == 0, result.output
    ca = certs.CertPaths.under(home).ca_cert
    assert str(ca) in result.output and "SHA-256" in result.output
    assert "--trust" in result.output


def test_cli_certs_install_trust_reports_failure_in_one_message(home, monkeypatch):
    from click.testing import CliRunner

    from addin.cli import addin_group

    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    monkeypatch.setattr(certs, "install_trust", lambda ca, **k: (False, "certutil failed: denied"))
    result = CliRunner().invoke(addin_group, ["certs", "install", "--trust"])
    assert result.exit_code == 1
    assert "certutil failed: denied" in result.output and "Traceback" not in result.output


def test_cli_certs_show(home, monkeypatch):
    import json

    from click.testing import CliRunner

    from addin.cli import addin_group

    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    runner = CliRunner()
    missing = runner.invoke(addin_group, ["certs", "show"])
    assert missing.exit_code == 1 and "certs install" in missing.output

    certs.ensure_certificates(home)
    result = runner.invoke(addin_group, ["certs", "show", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert "CN=SendGuard Local CA" in shown["ca"]["subject"]
    assert shown["server"]["sha256"].count(":") == 31
