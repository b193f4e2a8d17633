"""The per-machine add-in CA (issue #15.4): made once by the installer, served by every user's helper."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from sendguard import certs, paths
from sendguard.cli import main as cli


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An install marker naming a machine CA folder, as the .deb/MSI/.pkg write it."""
    env = tmp_path / "venv"
    env.mkdir()
    monkeypatch.setattr(sys, "prefix", str(env))
    ca_dir = tmp_path / "machine-ca"
    (env / paths.INSTALL_MARKER).write_text(f'ca_dir = "{ca_dir.as_posix()}"\n', encoding="utf-8")
    return ca_dir


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    a, b = socket.socketpair()
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except Exception as exc:  # noqa: BLE001 - reported by the client side
            result["error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b, server_hostname="localhost") as c:
        data = c.recv(2)
        subject = c.getpeercert()["subject"]
    t.join()
    assert data == b"ok" and "error" not in result
    return str(subject)


def test_installer_makes_one_ca_for_the_machine(tmp_path: Path) -> None:
    found = certs.ensure_machine_certificates(tmp_path / "ca")
    ca = x509.load_pem_x509_certificate(found.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(found.server_cert.read_bytes())
    assert ca.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "SendGuard Machine CA"
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert x509.DNSName("localhost") in constraints.permitted_subtrees  # loopback only, as the per-user CA
    server.verify_directly_issued_by(ca)
    assert found.ca_key.stat().st_mode & 0o777 == 0o600  # the CA key: root only
    assert found.server_key.stat().st_mode & 0o777 == 0o644  # every user's helper serves this pair
    again = certs.ensure_machine_certificates(tmp_path / "ca")
    assert again.ca_cert.read_bytes() == found.ca_cert.read_bytes()  # a re-run (upgrade) keeps the CA


def test_every_users_helper_serves_the_machine_certificate(installed: Path, tmp_path: Path) -> None:
    certs.ensure_machine_certificates(installed)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    for home in (alice, bob):
        home.mkdir()
        assert certs.helper_certificates(home).server_cert == installed / "server.pem"
        assert not (home / "certs").exists()  # no per-user CA, so no per-user trust prompt
        trusted_machine_ca = ssl.create_default_context(cafile=str(installed / "ca.pem"))
        assert "localhost" in handshake(certs.ssl_context(home), trusted_machine_ca)
        assert "localhost" in handshake(certs.ssl_context(home), certs.client_context(home))


def test_expired_machine_certificate_falls_back_to_the_users_own(installed: Path, tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=800)
    certs.ensure_machine_certificates(installed, now=long_ago)
    home = tmp_path / "carol"
    home.mkdir()
    assert certs.machine_certificates() is None
    assert certs.helper_certificates(home).server_cert == home / "certs" / "server.pem"


def test_without_an_install_the_user_keeps_a_ca_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "plain-venv"))
    home = tmp_path / "dave"
    home.mkdir()
    assert certs.helper_certificates(home).ca_cert == home / "certs" / "sendguard-local-ca.pem"


def test_certs_machine_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["addin", "certs", "machine", "--dir", str(tmp_path / "ca")])
    assert result.exit_code == 0, result.output
    assert "SendGuard machine CA:" in result.output and (tmp_path / "ca" / "server.key").exists()
