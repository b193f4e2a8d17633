"""``sendguard accounts add smtp``: an SMTP relay that releases mail (its password goes to the keyring)."""

from __future__ import annotations

import sys

import click

from .. import config as configmod
from .. import secrets
from ..cli_help import Command
from ..config import Account
from ..mailboxes.smtp import SECURITY


@click.command("smtp", cls=Command)
@click.option("--name", default="smtp", show_default=True, help="A name for this account.")
@click.option("--address", default="", help="Release mail from this sender through this relay (default: all).")
@click.option("--host", required=True, help="SMTP relay host name.")
@click.option("--port", type=click.IntRange(1, 65535), default=587, show_default=True)
@click.option("--security", type=click.Choice(SECURITY), default="starttls", show_default=True)
@click.option("--username", default=None, help="Login name, if the relay needs AUTH.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (stored in keyring).")
def add_command(name: str, address: str, host: str, port: int, security: str, username: str | None,
                password_stdin: bool) -> None:
    """Release mail through an SMTP relay."""
    account = Account(name, "smtp", address.lower(), {"host": host, "port": port, "security": security})
    if username:
        account.settings["username"] = username
        if not password_stdin:
            raise click.ClickException("--username needs --password-stdin (the password goes to the keyring)")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on standard input")
        secrets.put(account.secret_key("password"), password)
    configmod.save_account(account)
    click.echo(f"added SMTP relay {name} ({host}:{port}, {security})")
