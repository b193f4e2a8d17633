"""``sendguard accounts add exchange``: an on-premises Exchange account over EWS.

Checks the options, signs in (a password read from standard input, or OAuth 2.0 through msal for
hybrid modern auth), proves the sign-in by creating the hold folder, then stores the secret in the
keyring and the settings in ``config.toml``. Nothing is saved when any step fails.
"""

from __future__ import annotations

import sys
from urllib.parse import urlparse

import click

from .. import config as configmod
from .. import paths, secrets
from ..cli_help import Command
from ..config import Account as AccountConfig
from ..mailboxes.base import HOLD_FOLDER, MailboxError
from ..mailboxes.exchange import ExchangeMailbox
from ..mailboxes.graph import MsalTokenSource


def _read_password() -> str:
    data = sys.stdin.readline()
    return data.rstrip("\r\n")


@click.command("exchange", cls=Command)
@click.option("--address", required=True, help="The mailbox address; mail from it is released through it.")
@click.option("--server", help="EWS URL, e.g. https://mail.example.co.jp/EWS/Exchange.asmx")
@click.option("--autodiscover", is_flag=True, help="Find the EWS URL by Exchange autodiscover.")
@click.option("--username", help="Sign-in name (DOMAIN\\user or UPN); default: the address.")
@click.option("--password-stdin", "password_stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--auth", "auth", type=click.Choice(["auto", "ntlm", "basic"]), default="auto", show_default=True,
              help="Password sign-in method (auto asks the server).")
@click.option("--oauth", is_flag=True, help="Sign in with OAuth 2.0 (Microsoft Entra hybrid modern auth).")
@click.option("--tenant", default="organizations", show_default=True, help="Entra tenant for --oauth.")
@click.option("--client-id", help="Application (client) id for --oauth.")
@click.option("--authority", help="Sign-in authority URL for --oauth (national clouds, AD FS).")
@click.option("--device-code/--interactive", "device_code", default=True, help="OAuth sign-in flow.")
@click.option("--name", help="Account name in config.toml; default: the address.")
@click.option("--hold-folder", default=HOLD_FOLDER, show_default=True, help="Name of the hold folder.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Sign in now and create the hold folder.")
@click.option("--expand-lists", is_flag=True,
              help="Ask Exchange (ExpandDL) who is on a distribution list before checking a message to it.")
def add_command(address: str, server: str | None, autodiscover: bool, username: str | None, password_stdin: bool,
                auth: str, oauth: bool, tenant: str, client_id: str | None, authority: str | None,
                device_code: bool, name: str | None, hold_folder: str, verify: bool, expand_lists: bool) -> None:
    """Add an on-premises Exchange account (EWS)."""
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise click.ClickException(f"--address {address!r} is not an email address.")
    if bool(server) == bool(autodiscover):
        raise click.ClickException("Give exactly one of --server URL or --autodiscover.")
    if server:
        parsed = urlparse(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise click.ClickException(f"--server {server!r} is not an http(s) URL.")
    if oauth and password_stdin:
        raise click.ClickException("Use either --password-stdin or --oauth, not both.")
    if not oauth and not password_stdin:
        raise click.ClickException("Give --password-stdin (the password is read from standard input) or --oauth.")
    if oauth and not client_id:
        raise click.ClickException("--oauth needs --client-id (the application registered for SendGuard).")
    name = name or address
    settings: dict = {"server": server, "autodiscover": bool(autodiscover) or None, "username": username,
                      "auth": "oauth" if oauth else auth, "hold_folder": hold_folder,
                      "expand_lists": True if expand_lists else None}
    account = AccountConfig(name, "exchange", address, {k: v for k, v in settings.items() if v is not None})
    token_source = None
    password = None
    if oauth:
        account.settings.update({"tenant": tenant, "client_id": client_id})
        if authority:
            account.settings["authority"] = authority
        token_source = MsalTokenSource.for_ews(account)
        try:
            token_source.sign_in(device_code=device_code, echo=lambda line: click.echo(line, err=True))
        except MailboxError as e:
            raise click.ClickException(str(e)) from None
    else:
        password = _read_password()
        if not password:
            raise click.ClickException("No password on standard input.")
    if verify:
        box = ExchangeMailbox(name, address, server=server, autodiscover=autodiscover, username=username,
                              password=password, auth=account.settings["auth"], token_source=token_source,
                              hold_folder=hold_folder)
        try:
            box.ensure_hold_folder()
        except MailboxError as e:
            raise click.ClickException(str(e)) from None
        finally:
            box.close()
    if password is not None:
        secrets.put(account.secret_key("password"), password)
    configmod.save_account(account, paths.config_file())
    click.echo(f"Added Exchange account {name} ({address}); secrets are in {secrets.describe()}.")
