"""``sendguard addin``: write the Outlook add-in manifests and manage the helper's local CA."""

from __future__ import annotations

import json
from pathlib import Path

import click

from addin import manifests
from sendguard import certs, paths
from sendguard.cli_help import Group


@click.group("addin", cls=Group)
def addin_group() -> None:
    """The Outlook add-in: manifests for deployment and the HTTPS certificate it is served with."""


@addin_group.command("manifest")
@click.option("--host", default=manifests.DEFAULT_HOST, show_default=True,
              help="Host name Outlook loads the add-in from (the helper on each PC: localhost).")
@click.option("--port", default=None, type=int,
              help="HTTPS port of that host (443 is left out of the URLs). Default: [api] port in config.toml "
                   f"({manifests.DEFAULT_PORT} unless set).")
@click.option("--send-mode", type=click.Choice(manifests.SEND_MODES), default="SoftBlock", show_default=True,
              help="SoftBlock: Outlook offers 'Send anyway' only when the add-in itself cannot load. "
                   "Block: nothing is sent while the add-in is unavailable.")
@click.option("--id", "addin_id", default=manifests.DEFAULT_ADDIN_ID, show_default=True,
              help="The add-in's GUID (keep it when re-deploying so the add-in is replaced, not duplicated).")
@click.option("--version", "version", default=manifests.DEFAULT_VERSION, show_default=True,
              help="Manifest version; raise it when you re-deploy a changed manifest.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory to write outlook.xml, manifest.json and the zip package to.")
@click.option("--sso-client-id", default=None,
              help="Central server only: the Entra ID app (client) id the add-in signs in with (Office SSO).")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def manifest_command(host, port, send_mode, addin_id, version, out_dir, sso_client_id, as_json) -> None:
    """Write the XML manifest and the unified manifest (with its zip package) for HOST:PORT.

    Upload outlook.xml (or sendguard-outlook-addin.zip) in the Microsoft 365 admin center under
    Settings > Integrated apps, or in the Exchange admin center on-premises.
    """
    if port is None:
        from sendguard import config as configmod
        from sendguard.errors import SendGuardError

        try:
            port = configmod.load().api_port  # the port this helper really serves the add-in on
        except SendGuardError as exc:
            raise click.ClickException(str(exc)) from None
    if not out_dir.is_dir():
        raise click.ClickException(f"--out {out_dir}: no such folder; create it first (nothing was written)")
    try:
        settings = manifests.AddinSettings(
            host=host, port=port, send_mode=send_mode, addin_id=addin_id, version=version,
            sso_client_id=sso_client_id,
        )
    except manifests.ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        written = manifests.write_manifests(settings, out_dir)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({"origin": settings.origin, "send_mode": settings.send_mode,
                               "id": settings.addin_id, "unified_id": settings.unified_id,
                               "files": [str(p) for p in written]}, indent=2))
        return
    click.echo(f"Outlook add-in manifests for {settings.origin} (SendMode {settings.send_mode}):")
    for path in written:
        click.echo(f"  {path}")
    if settings.host in ("localhost", "127.0.0.1"):
        click.echo("Each PC needs the helper running and its local CA trusted: sendguard addin certs install --trust")
        click.echo(f"Classic Outlook on Windows also needs, once per PC and elevated: {manifests.LOOPBACK_SCRIPT}")
    click.echo("Outlook on Mac and Exchange on-premises take outlook.xml (they do not support the unified manifest).")


@addin_group.group("certs")
def certs_group() -> None:
    """The per-install certificate authority the helper serves HTTPS with."""


def _home() -> Path:
    return paths.home()


@certs_group.command("install")
@click.option("--trust/--no-trust", default=False, show_default=True,
              help="Also add the CA to this user's trusted roots (certutil / security / update-ca-certificates).")
def certs_install(trust: bool) -> None:
    """Create the local CA and the localhost certificate (if needed) and show how to trust the CA."""
    cert_paths = certs.ensure_certificates(_home())
    info = certs.describe(cert_paths.ca_cert)
    click.echo(f"SendGuard local CA: {cert_paths.ca_cert}")
    click.echo(f"  SHA-256 {info.sha256}")
    click.echo(f"  valid until {info.not_after:%Y-%m-%d}")
    if not trust:
        click.echo("")
        click.echo(certs.trust_instructions(cert_paths.ca_cert))
        click.echo("")
        click.echo("Or let SendGuard do it: sendguard addin certs install --trust")
        return
    ok, message = certs.install_trust(cert_paths.ca_cert)
    if not ok:
        raise click.ClickException(message)
    click.echo(message)


@certs_group.command("machine")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
              help="Where the installer keeps the machine's CA (the install marker's ca_dir).")
def certs_machine(directory: Path) -> None:
    """(Installers, as root/SYSTEM) Create or renew the per-machine CA every user's helper serves with.

    Trust it machine-wide afterwards: certutil -addstore Root (Windows), security add-trusted-cert -d
    (macOS), update-ca-certificates (Linux). The installers do both.
    """
    try:
        found = certs.ensure_machine_certificates(directory)
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the machine CA in {directory}: {exc} (run as root/Administrator)") from None
    info = certs.describe(found.ca_cert)
    click.echo(f"SendGuard machine CA: {found.ca_cert}")
    click.echo(f"  SHA-256 {info.sha256}")
    click.echo(f"  valid until {info.not_after:%Y-%m-%d}")


@certs_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def certs_show(as_json: bool) -> None:
    """Show the CA and server certificate: paths, fingerprints and expiry dates."""
    cert_paths = certs.CertPaths.under(_home())
    if not cert_paths.ca_cert.exists() or not cert_paths.server_cert.exists():
        raise click.ClickException("no certificates yet: run `sendguard addin certs install`")
    ca, server = certs.describe(cert_paths.ca_cert), certs.describe(cert_paths.server_cert)
    if as_json:
        click.echo(json.dumps({"ca": ca.as_dict(), "server": server.as_dict()}, indent=2))
        return
    for label, info in (("CA", ca), ("server", server)):
        click.echo(f"{label}: {info.path}")
        click.echo(f"  subject  {info.subject}")
        click.echo(f"  valid    {info.not_before:%Y-%m-%d} .. {info.not_after:%Y-%m-%d}")
        click.echo(f"  SHA-256  {info.sha256}")
