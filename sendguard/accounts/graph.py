"""``sendguard accounts add graph``: an Exchange Online account over Microsoft Graph.

Checks the options, signs in with msal (device code or a browser window), proves the sign-in by
creating the hold folder, then keeps the token cache in the keyring and the settings in
``config.toml``. A failed sign-in leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from .. import config as configmod
from .. import paths, secrets
from ..cli_help import Command
from ..config import Account as AccountConfig
from ..mailboxes.base import HOLD_FOLDER, MailboxError
from ..mailboxes.graph import GRAPH_ENDPOINT, GraphMailbox, MsalTokenSource


@click.command("graph", cls=Command)
@click.option("--address", required=True, help="The mailbox address; mail from it is released through it.")
@click.option("--tenant", default="organizations", show_default=True,
              help="Entra tenant id or domain (organizations = any work account).")
@click.option("--client-id", required=True,
              help="Application (client) id of the public-client app your admin registered for SendGuard.")
@click.option("--graph-endpoint", default=GRAPH_ENDPOINT, show_default=True,
              help="Graph root for national clouds, e.g. https://graph.microsoft.us/v1.0")
@click.option("--authority", help="Sign-in authority host or URL, e.g. https://login.microsoftonline.us")
@click.option("--device-code/--interactive", "device_code", default=True, show_default=True,
              help="Sign in with a device code (any terminal) or a browser window.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), help="CA file for a TLS-inspecting proxy.")
@click.option("--name", help="Account name in config.toml; default: the address.")
@click.option("--hold-folder", default=HOLD_FOLDER, show_default=True, help="Name of the hold folder.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Create the hold folder now.")
@click.option("--expand-lists", is_flag=True,
              help="Read group members (GroupMember.Read.All, admin consent) to check mail to distribution lists.")
def add_command(address: str, tenant: str, client_id: str, graph_endpoint: str, authority: str | None,
                device_code: bool, ca_bundle: str | None, name: str | None, hold_folder: str, verify: bool,
                expand_lists: bool) -> None:
    """Add an Exchange Online account (Microsoft Graph)."""
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise click.ClickException(f"--address {address!r} is not an email address.")
    for option, url in (("--graph-endpoint", graph_endpoint), ("--authority", authority)):
        if url is not None:
            parsed = urlparse(url)
            if parsed.scheme != "https" or not parsed.netloc:
                raise click.ClickException(f"{option} {url!r} must be an https URL.")
    if not tenant or "/" in tenant:
        raise click.ClickException(f"--tenant {tenant!r} is not a tenant id or domain.")
    name = name or address
    settings: dict[str, Any] = {"tenant": tenant, "client_id": client_id, "hold_folder": hold_folder}
    if graph_endpoint.rstrip("/") != GRAPH_ENDPOINT:
        settings["graph_endpoint"] = graph_endpoint.rstrip("/")
    if authority:
        settings["authority"] = authority.rstrip("/")
    if ca_bundle:
        settings["ca_bundle"] = str(Path(ca_bundle).resolve())
    if expand_lists:
        settings["expand_lists"] = True
    account = AccountConfig(name, "graph", address, settings)
    tokens = MsalTokenSource.for_account(account)
    try:
        tokens.sign_in(device_code=device_code, echo=lambda line: click.echo(line, err=True))
        if verify:
            GraphMailbox(name, address, tokens, endpoint=settings.get("graph_endpoint", GRAPH_ENDPOINT),
                         hold_folder=hold_folder).ensure_hold_folder()
    except MailboxError as e:
        secrets.delete(account.secret_key("token_cache"))
        raise click.ClickException(str(e)) from None
    configmod.save_account(account, paths.config_file())
    click.echo(f"Added Microsoft 365 account {name} ({address}); the sign-in is kept in {secrets.describe()}.")
