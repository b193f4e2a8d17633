"""A per-install local certificate authority for the helper's HTTPS endpoint.

Outlook loads add-ins only over HTTPS, and the helper serves the add-in itself on
``https://localhost:8765``. Rather than a throw-away development certificate, each install makes its
own CA (ten years) and signs a short-lived server certificate for ``localhost``/``127.0.0.1``/``::1``
with it. The CA carries name constraints limiting it to those loopback names, so trusting it cannot
let anyone impersonate another site even if its key leaked. The server certificate is renewed
automatically well before it expires; only the CA has to be trusted once (see :func:`install_trust`).

Uses ``cryptography`` only; no web framework (this is core).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_COMMON_NAME = "SendGuard Local CA"
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=397)  # the longest validity browsers accept for a TLS leaf
RENEW_SERVER_BEFORE = dt.timedelta(days=30)
RENEW_CA_BEFORE = dt.timedelta(days=90)
SERVER_DNS_NAMES = ("localhost",)
SERVER_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
# What the CA may sign for: loopback only.
PERMITTED_SUBTREES = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
    x509.IPAddress(ipaddress.ip_network("::1/128")),
)


@dataclass(frozen=True)
class CertPaths:
    """Where the local CA and the server certificate live (``$SENDGUARD_HOME/certs``)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def under(cls, home: Path) -> CertPaths:
        directory = Path(home) / "certs"
        return cls(
            directory=directory,
            ca_cert=directory / "sendguard-local-ca.pem",
            ca_key=directory / "sendguard-local-ca.key",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
        )


@dataclass(frozen=True)
class CertInfo:
    """A summary of one certificate for ``sendguard addin certs show``."""

    path: Path
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "subject": self.subject,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key file readable by its owner only (created with that mode, never widened)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(paths_cert: Path, paths_key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(paths_cert.read_bytes())
        key = serialization.load_pem_private_key(paths_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return None
    return cert, key


def _make_ca(now: dt.datetime, common_name: str = CA_COMMON_NAME) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            # Each install's CA is distinct; the host name helps a user recognise it in a trust store.
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, (socket.gethostname() or "local")[:64]),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.NameConstraints(permitted_subtrees=list(PERMITTED_SUBTREES), excluded_subtrees=None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    not_after = min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in SERVER_DNS_NAMES] + [x509.IPAddress(ip) for ip in SERVER_IPS]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _server_is_current(
    server: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime
) -> bool:
    if server.issuer != ca_cert.subject or server.not_valid_after_utc - now < RENEW_SERVER_BEFORE:
        return False
    try:
        server.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def ensure_certificates(home: Path, *, now: dt.datetime | None = None) -> CertPaths:
    """Create the local CA and the server certificate under ``home/certs`` when missing or due.

    The CA is kept for its ten years (re-made only when unreadable or within 90 days of expiry,
    which means trusting it again); the server certificate is re-issued when it is missing, not
    signed by the current CA, or within 30 days of expiry. Safe to call at every helper start.
    """
    paths = CertPaths.under(home)
    paths.directory.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(paths.directory, 0o700)
    _renew_due(paths, now or _now())
    return paths


def _renew_due(paths: CertPaths, now: dt.datetime, ca_common_name: str = CA_COMMON_NAME) -> None:
    """Re-make the CA when unreadable or near expiry, and the server certificate when missing, not signed
    by the current CA or near expiry; keep what is still good."""
    loaded_ca = _load(paths.ca_cert, paths.ca_key)
    if loaded_ca is None or loaded_ca[0].not_valid_after_utc - now < RENEW_CA_BEFORE:
        ca_cert, ca_key = _make_ca(now, ca_common_name)
        _write_private(paths.ca_key, _key_pem(ca_key))
        _write_public(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_cert, ca_key = loaded_ca
    loaded_server = _load(paths.server_cert, paths.server_key)
    if loaded_server is None or not _server_is_current(loaded_server[0], ca_cert, now):
        server_cert, server_key = _make_server(ca_cert, ca_key, now)
        _write_private(paths.server_key, _key_pem(server_key))
        _write_public(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))


MACHINE_CA_COMMON_NAME = "SendGuard Machine CA"


def machine_paths(directory: Path) -> CertPaths:
    """The per-machine CA an installer made (``ca_dir`` in the install marker)."""
    directory = Path(directory)
    return CertPaths(directory=directory, ca_cert=directory / "ca.pem", ca_key=directory / "ca.key",
                     server_cert=directory / "server.pem", server_key=directory / "server.key")


def ensure_machine_certificates(directory: Path, *, now: dt.datetime | None = None) -> CertPaths:
    """Run by the installer as root/SYSTEM: one CA for the whole machine and the loopback certificate
    that every user's helper serves, so the CA is trusted once, machine-wide, with no prompt per user.

    The CA key is readable by its owner (root/Administrators) only; the server key is readable by
    every local user, who all need it, and is good for nothing but ``localhost``/``127.0.0.1``/``::1``
    (the CA is name-constrained to those). Re-running (an upgrade, a repair) renews what is due.
    """
    found = machine_paths(directory)
    found.directory.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(found.directory, 0o755)
    _renew_due(found, now or _now(), MACHINE_CA_COMMON_NAME)
    if os.name == "posix":
        os.chmod(found.server_key, 0o644)
        os.chmod(found.ca_cert, 0o644)
        os.chmod(found.server_cert, 0o644)
    return found


def machine_certificates(*, now: dt.datetime | None = None) -> CertPaths | None:
    """The installer's per-machine certificates when this install has usable ones, else None."""
    from . import paths as sg_paths

    install = sg_paths.machine_install()
    if install is None or install.ca_dir is None:
        return None
    found = machine_paths(install.ca_dir)
    loaded_ca = _load_cert(found.ca_cert)
    loaded_server = _load(found.server_cert, found.server_key)
    if loaded_ca is None or loaded_server is None:
        return None
    if loaded_server[0].not_valid_after_utc <= (now or _now()) or not _server_is_current(
            loaded_server[0], loaded_ca, loaded_server[0].not_valid_before_utc):
        return None  # expired or not from this CA: the per-user CA takes over until the installer renews
    return found


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def helper_certificates(home: Path) -> CertPaths:
    """What the helper serves: the machine's certificates when installed so, else this user's own CA."""
    return machine_certificates() or ensure_certificates(home)


def ssl_context(home: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) with the current server certificate for the helper."""
    paths = helper_certificates(home)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(paths.server_cert), keyfile=str(paths.server_key))
    return context


def client_context(home: Path) -> ssl.SSLContext:
    """A client context that trusts only this install's CA (for the CLI and tests)."""
    machine = machine_certificates()
    if machine is not None:
        return ssl.create_default_context(cafile=str(machine.ca_cert))
    paths = CertPaths.under(home)
    if not paths.ca_cert.exists():
        paths = ensure_certificates(home)
    return ssl.create_default_context(cafile=str(paths.ca_cert))


def describe(path: Path) -> CertInfo:
    """Subject, validity and SHA-256 fingerprint of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return CertInfo(
        path=Path(path),
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    )


def _platform_key(platform: str | None) -> str:
    platform = platform or sys.platform
    if platform.startswith("win"):
        return "windows"
    if platform == "darwin":
        return "macos"
    return "linux"


def trust_commands(ca_path: Path, platform: str | None = None) -> list[list[str]]:
    """The commands that make the current user's system trust the CA (no elevation needed where
    the platform allows it)."""
    ca = str(ca_path)
    kind = _platform_key(platform)
    if kind == "windows":
        # The current user's Root store: Outlook (classic and new) and Edge WebView2 read it.
        # Windows itself shows a confirmation dialog for this.
        return [["certutil", "-user", "-addstore", "Root", ca]]
    if kind == "macos":
        keychain = str(Path.home() / "Library" / "Keychains" / "login.keychain-db")
        return [["security", "add-trusted-cert", "-r", "trustRoot", "-p", "ssl", "-k", keychain, ca]]
    if shutil.which("trust"):
        return [["trust", "anchor", "--store", ca]]
    return [
        ["cp", ca, "/usr/local/share/ca-certificates/sendguard-local-ca.crt"],
        ["update-ca-certificates"],
    ]


def trust_instructions(ca_path: Path, platform: str | None = None) -> str:
    """What to run (or click) to trust the CA on this kind of system, as text for the user."""
    ca = str(ca_path)
    kind = _platform_key(platform)
    if kind == "windows":
        return (
            "Windows: trust the SendGuard local CA for your user account (Windows asks you to confirm):\n"
            f'  certutil -user -addstore Root "{ca}"\n'
            "For every user of the machine, as administrator:\n"
            f'  certutil -addstore -f Root "{ca}"\n'
            "Or deploy the certificate to 'Trusted Root Certification Authorities' by Group Policy / Intune.\n"
            "Restart Outlook afterwards."
        )
    if kind == "macos":
        return (
            "macOS: add the SendGuard local CA to your login keychain as trusted for SSL:\n"
            f'  security add-trusted-cert -r trustRoot -p ssl -k ~/Library/Keychains/login.keychain-db "{ca}"\n'
            "(or open it in Keychain Access and set 'When using this certificate' to 'Always Trust').\n"
            "Restart Outlook afterwards."
        )
    return (
        "Linux: add the SendGuard local CA to the system trust store (as root):\n"
        f'  cp "{ca}" /usr/local/share/ca-certificates/sendguard-local-ca.crt && update-ca-certificates\n'
        f'  (Fedora/Arch: trust anchor --store "{ca}")\n'
        "Chromium and Firefox keep their own store for Outlook on the web; for Chromium:\n"
        f'  certutil -d sql:$HOME/.pki/nssdb -A -t "C,," -n "SendGuard Local CA" -i "{ca}"'
    )


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, check=False)


def install_trust(
    ca_path: Path, *, platform: str | None = None, runner: Runner | None = None
) -> tuple[bool, str]:
    """Perform the OS trust step for the CA. Only call this when the user asked for it.

    Returns ``(ok, message)``; on failure the message carries the tool's own words and the manual
    instructions, never a traceback.
    """
    runner = runner or _run
    outputs = []
    for cmd in trust_commands(ca_path, platform):
        try:
            result = runner(cmd)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"could not run {cmd[0]}: {exc}\n\n{trust_instructions(ca_path, platform)}"
        text = ((result.stdout or "") + (result.stderr or "")).strip()
        if result.returncode != 0:
            return False, (
                f"{' '.join(cmd)} failed (exit {result.returncode}): {text}\n\n"
                f"{trust_instructions(ca_path, platform)}"
            )
        if text:
            outputs.append(text)
    return True, "The SendGuard local CA is now trusted." + ("\n" + "\n".join(outputs) if outputs else "")
