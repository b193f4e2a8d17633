"""Gmail accounts: ``sendguard accounts add gmail``, ``sendguard gmail ...`` and the Google sign-in.

Sign-in is Google's installed-app OAuth flow in the browser (or an admin's authorized-user file, no
browser). What was granted and who signed in are checked before anything is stored: the refresh
token and client secret go to the keyring, the rest of the account to ``config.toml``.
``sendguard gmail check-and-send`` (and the Gmail add-on) hand a draft to the outbox with
``submit_draft``; the helper then releases it through ``sendguard.mailboxes.gmail``.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Iterable
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import click
from google.auth import exceptions as google_auth_errors
from google.auth import jwt as google_jwt
from google.oauth2.credentials import Credentials

from .. import config as configmod
from .. import paths, secrets
from ..cli_help import Command, Group
from ..config import Account
from ..errors import SendGuardError
from ..mailboxes.base import MailboxError
from ..mailboxes.gmail import (
    DRAFT_SCOPES,
    GOOGLE_AUTH_URI,
    GOOGLE_TOKEN_URI,
    RELEASE_SCOPES,
    GmailMailbox,
    reconcile_mode,
    requested_scopes,
)
from ..outbox import FINAL_STATES, Item, Outbox, State

# Sign-in: installed-app OAuth, or an admin's authorized-user file.


def _client_config(client_secrets: Path | None) -> dict[str, Any]:
    """The OAuth client, in Google's client-file shape: the file given, the admin's file, or env."""
    from_env = os.environ.get("SENDGUARD_GMAIL_CLIENT_SECRETS")
    sources = [client_secrets, from_env, paths.home() / "gmail-client.json"]
    for source in sources:
        if source is None:
            continue
        path = Path(source)
        if not path.is_file():
            if source is client_secrets or source == from_env:
                raise click.ClickException(f"OAuth client file {path}: no such file.")
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"OAuth client file {path}: not readable JSON ({exc}).") from None
        client = data.get("installed") or data.get("web") if isinstance(data, dict) else None
        if not isinstance(client, dict) or not client.get("client_id"):
            raise click.ClickException(f"OAuth client file {path}: expected a Google 'installed' "
                                       "(Desktop app) client with client_id and client_secret.")
        client.setdefault("auth_uri", GOOGLE_AUTH_URI)
        client.setdefault("token_uri", GOOGLE_TOKEN_URI)
        return {"installed": client}
    client_id = os.environ.get("SENDGUARD_GMAIL_CLIENT_ID")
    if client_id:
        return {"installed": {"client_id": client_id,
                              "client_secret": os.environ.get("SENDGUARD_GMAIL_CLIENT_SECRET", ""),
                              "auth_uri": GOOGLE_AUTH_URI, "token_uri": GOOGLE_TOKEN_URI}}
    raise click.ClickException("No OAuth client for Gmail: pass --client-secrets FILE (a Desktop-app client "
                               "from Google Cloud console), or have your admin install gmail-client.json.")


def _signed_in_email(creds: Credentials) -> str:
    """The Google account that signed in, from the ID token the token endpoint returned."""
    token = getattr(creds, "id_token", None)
    if not token:
        return ""
    try:
        # Received straight from the token endpoint over TLS: OIDC lets a client trust it without
        # checking the signature.
        claims = google_jwt.decode(token, verify=False)
    except ValueError:
        return ""
    return str(claims.get("email", "")).lower()


def _granted(creds: Credentials, asked: Iterable[str]) -> list[str]:
    granted = getattr(creds, "granted_scopes", None) or getattr(creds, "scopes", None) or list(asked)
    if isinstance(granted, str):
        granted = granted.split()
    return sorted(set(granted))


def _consent(client: dict[str, Any], scopes: list[str], address: str, open_browser: bool) -> Credentials:
    from google_auth_oauthlib.flow import InstalledAppFlow, WSGITimeoutError
    from oauthlib.oauth2.rfc6749 import errors as oauth_errors

    flow = InstalledAppFlow.from_client_config(client, scopes=scopes)
    prompt = f"Sign in to Google as {address} to let SendGuard send its mail:\n{{url}}"
    relaxed = os.environ.get("OAUTHLIB_RELAX_TOKEN_SCOPE")
    os.environ["OAUTHLIB_RELAX_TOKEN_SCOPE"] = "1"  # we check the granted scopes ourselves
    try:
        return flow.run_local_server(host="localhost", port=0, open_browser=open_browser,
                                     authorization_prompt_message=prompt,
                                     success_message="SendGuard is signed in to Gmail. "
                                                     "You may close this window.",
                                     timeout_seconds=300, access_type="offline", prompt="consent",
                                     login_hint=address)
    except oauth_errors.AccessDeniedError:
        raise click.ClickException(f"Consent was denied in the browser: SendGuard cannot send mail as "
                                   f"{address} without it. Run the command again and choose Allow.") from None
    except WSGITimeoutError:
        raise click.ClickException("No answer from the browser within 5 minutes; "
                                   "run the command again.") from None
    except oauth_errors.OAuth2Error as exc:
        detail = exc.description or exc.error
        raise click.ClickException(f"Google refused the sign-in ({exc.error}: {detail}).") from None
    except OSError as exc:
        raise click.ClickException(f"Sign-in failed: {exc}.") from None
    finally:
        if relaxed is None:
            os.environ.pop("OAUTHLIB_RELAX_TOKEN_SCOPE", None)
        else:
            os.environ["OAUTHLIB_RELAX_TOKEN_SCOPE"] = relaxed


def _import_authorized_user(path: Path) -> Credentials:
    import google.auth.transport.requests

    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"--authorized-user {path}: not readable JSON ({exc}).") from None
    if not isinstance(info, dict):
        info = {}
    missing = [k for k in ("client_id", "client_secret", "refresh_token") if not info.get(k)]
    if missing:
        raise click.ClickException(f"--authorized-user {path}: missing {', '.join(missing)} (expected "
                                   "google-auth's authorized_user JSON).")
    token_uri = info.get("token_uri") or GOOGLE_TOKEN_URI
    parts = urllib.parse.urlsplit(token_uri)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise click.ClickException(f"--authorized-user {path}: token_uri {token_uri!r} must be https.")
    # google-auth's from_authorized_user_info always uses Google's endpoint; an admin's file may name
    # another (a proxy), so build the credentials from the fields themselves.
    creds = Credentials(None, refresh_token=info["refresh_token"], token_uri=token_uri,
                        client_id=info["client_id"], client_secret=info["client_secret"],
                        scopes=info.get("scopes"))
    try:
        creds.refresh(google.auth.transport.requests.Request())
    except google_auth_errors.RefreshError as exc:
        raise click.ClickException(f"--authorized-user {path}: Google refused its refresh token "
                                   f"({str(exc).split(',')[0]}); issue a new one.") from None
    except google_auth_errors.TransportError as exc:
        raise click.ClickException(f"Cannot reach Google's token endpoint {token_uri}: {exc}") from None
    return creds


def _valid_address(address: str) -> str:
    address = address.strip()
    parsed = [addr.strip().lower() for _name, addr in getaddresses([address]) if addr.strip()]
    if len(parsed) != 1 or parsed[0] != address.lower() or "@" not in address or address.startswith("@") \
            or address.endswith("@") or " " in address:
        raise click.ClickException(f"--address {address!r} is not an email address.")
    return address


def _valid_endpoint(url: str | None) -> str | None:
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.ClickException(f"--api-endpoint {url!r} is not an http(s) URL.")
    return url.rstrip("/") + "/"


def _sign_in_and_save(account: Account, client: dict[str, Any] | None, creds: Credentials | None, *,
                      scopes: list[str], open_browser: bool, assume_yes: bool) -> None:
    """Consent (unless creds are given), check what was granted and who signed in, store everything."""
    address = account.address
    if creds is None:
        assert client is not None
        creds = _consent(client, scopes, address, open_browser)
        if not creds.refresh_token:
            raise click.ClickException("Google returned no refresh token: remove SendGuard at "
                                       "https://myaccount.google.com/permissions and run the command again.")
    granted = _granted(creds, scopes)
    s = account.settings
    if not set(granted) & RELEASE_SCOPES:
        raise click.ClickException(f"SendGuard was not allowed to send email as {address}: run the command "
                                   "again and tick \"Send email on your behalf\".")
    if s.get("drafts") and not set(granted) & DRAFT_SCOPES:
        raise click.ClickException("SendGuard was not allowed to manage your drafts (needed by --drafts): "
                                   "run the command again and tick it, or leave out --drafts.")
    wanted = s.get("reconcile", "search")
    got = reconcile_mode(granted, wanted)
    if got != wanted:
        click.echo(f"Note: Gmail did not grant the permission to look in Sent mail ({wanted}); after a crash "
                   "SendGuard will ask you whether an unfinished message went out.", err=True)
    signed_in = _signed_in_email(creds)
    if signed_in and signed_in != address.lower() and not assume_yes:
        question = (f"You signed in to Google as {signed_in}, not {address}: mail from {address} would be "
                    f"sent by {signed_in}'s Gmail ({address} must be a send-as address there).")
        if not sys.stdin.isatty():
            raise click.ClickException(question + f" Sign in as {address}, or pass --yes to accept.")
        if not click.confirm(question + " Continue?", default=False):
            raise click.ClickException("Account not added.")
    s["scopes"] = granted
    s["gmail_account"] = signed_in
    s["client_id"] = creds.client_id
    s["token_uri"] = creds.token_uri or GOOGLE_TOKEN_URI
    if client:
        s["auth_uri"] = client["installed"].get("auth_uri", GOOGLE_AUTH_URI)
    try:
        secrets.put(account.secret_key("refresh_token"), creds.refresh_token)
        if creds.client_secret:
            secrets.put(account.secret_key("client_secret"), creds.client_secret)
    except Exception as exc:  # keyring backends raise their own types
        raise click.ClickException(f"Cannot store the Gmail token in {secrets.describe()}: {exc}") from None
    configmod.save_account(account)
    who = f" (signed in as {signed_in})" if signed_in and signed_in != address.lower() else ""
    click.echo(f"Gmail account {account.name} added: mail from {address} is released through Gmail{who}; "
               f"token stored in {secrets.describe()}.")


@click.command("gmail", cls=Command)
@click.option("--address", required=True, help="The sender address whose mail this Gmail account releases.")
@click.option("--name", default=None, help="Account name in config.toml (default: the address).")
@click.option("--client-secrets", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Google OAuth client file (Desktop app) for the browser sign-in.")
@click.option("--authorized-user", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Import google-auth authorized-user JSON (client_id, client_secret, refresh_token, "
                   "token_uri); no browser.")
@click.option("--api-endpoint", default=None, help="Gmail API base URL (a proxy; tests).")
@click.option("--drafts/--no-drafts", default=False,
              help="Let SendGuard send Gmail drafts (asks for gmail.compose).")
@click.option("--drafts-label", default="SendGuard", show_default=True,
              help="Label that marks drafts for SendGuard.")
@click.option("--reconcile", type=click.Choice(["search", "headers", "off"]), default="search",
              show_default=True,
              help="How to tell after a crash whether a message went out: search Sent (gmail.readonly), "
                   "read the newest Sent headers (gmail.metadata), or ask the user.")
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@click.option("--yes", "assume_yes", is_flag=True,
              help="Accept signing in as another Google account (send-as alias).")
def add_command(address: str, name: str | None, client_secrets: Path | None, authorized_user: Path | None,
                api_endpoint: str | None, drafts: bool, drafts_label: str, reconcile: str, no_browser: bool,
                assume_yes: bool) -> None:
    """Add a Gmail account: mail from ADDRESS is released with the Gmail API."""
    address = _valid_address(address)
    if client_secrets and authorized_user:
        raise click.ClickException("Give either --client-secrets (browser sign-in) or --authorized-user, "
                                   "not both.")
    endpoint = _valid_endpoint(api_endpoint)
    if drafts and reconcile == "headers":
        # gmail.metadata on the token makes Gmail refuse q= and RAW/FULL reads, which drafts need.
        raise click.ClickException("--drafts cannot be combined with --reconcile headers: a token with "
                                   "gmail.metadata cannot read drafts (Gmail refuses RAW and FULL formats "
                                   "and searches). Use --reconcile search or --reconcile off.")
    if not drafts_label.strip():
        raise click.ClickException("--drafts-label must not be empty.")
    settings: dict[str, Any] = {"drafts": drafts, "drafts_label": drafts_label.strip(),
                                "reconcile": reconcile}
    if endpoint:
        settings["api_endpoint"] = endpoint
    account = Account(name or address, "gmail", address, settings)
    scopes = requested_scopes(drafts, reconcile)
    if authorized_user:
        if not authorized_user.is_file():
            raise click.ClickException(f"--authorized-user {authorized_user}: no such file.")
        creds = _import_authorized_user(authorized_user)
        _sign_in_and_save(account, None, creds, scopes=scopes, open_browser=False, assume_yes=assume_yes)
    else:
        client = _client_config(client_secrets)
        _sign_in_and_save(account, client, None, scopes=scopes, open_browser=not no_browser,
                          assume_yes=assume_yes)


# ---------------------------------------------------------------------------------------------------
# `sendguard gmail ...`


def _gmail_account(name: str | None) -> Account:
    cfg = configmod.load()
    accounts = [a for a in cfg.accounts if a.kind == "gmail"]
    if name:
        chosen = next((a for a in accounts if a.name == name or a.address.lower() == name.lower()), None)
        if chosen is None:
            raise click.ClickException(f"No Gmail account {name!r}; see `sendguard accounts list`.")
        return chosen
    if not accounts:
        raise click.ClickException("No Gmail account yet: run `sendguard accounts add gmail --address ADDR`.")
    if len(accounts) > 1:
        raise click.ClickException("Several Gmail accounts: choose one with --account NAME.")
    return accounts[0]


def mailbox_for(account: Account) -> GmailMailbox:
    return GmailMailbox.from_account(account, paths.home())


def submit_draft(outbox: Outbox, mailbox: GmailMailbox, draft_id: str) -> Item:
    """Take a draft into the outbox (source ``gmail``, ref ``draft:<id>``, this account); returns the item.

    A draft already in the outbox and not finished is not taken twice: that item is returned.
    """
    ref = f"draft:{draft_id}"
    existing = outbox.by_source_ref("gmail", ref)
    if existing is not None and existing.state not in FINAL_STATES:
        return existing
    held = mailbox.take_draft(draft_id)
    return outbox.submit(held.raw, held.envelope_from, list(held.recipients), source="gmail",
                         source_ref=held.ref, account=mailbox.name)


@click.group("gmail", cls=Group)
def gmail_group() -> None:
    """Gmail drafts handed to SendGuard, and the Gmail sign-in."""


@gmail_group.command("drafts")
@click.option("--account", "account_name", default=None, help="Gmail account name or address.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def drafts_command(account_name: str | None, as_json: bool) -> None:
    """List drafts labelled for SendGuard."""
    mailbox = mailbox_for(_gmail_account(account_name))
    try:
        drafts = mailbox.list_drafts()
    except MailboxError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(drafts, ensure_ascii=False, indent=2))
        return
    if not drafts:
        click.echo(f"No drafts labelled {mailbox.drafts_label!r} in {mailbox.address}.")
    for d in drafts:
        click.echo(f"{d['id']}\t{d['to']}\t{d['subject']}")


@gmail_group.command("check-and-send")
@click.argument("draft_id")
@click.option("--account", "account_name", default=None, help="Gmail account name or address.")
def check_and_send_command(draft_id: str, account_name: str | None) -> None:
    """Take a Gmail draft into the outbox: it is checked, confirmed (and approved if needed), then sent."""
    mailbox = mailbox_for(_gmail_account(account_name))
    outbox = _open_outbox()
    try:
        result = submit_draft(outbox, mailbox, draft_id)
    except SendGuardError as exc:
        raise click.ClickException(str(exc)) from None
    item_id, state = result.id, result.state
    if state == State.AWAITING_CONFIRMATION:
        then = f"confirm it in the SendGuard window or with `sendguard queue confirm {item_id}`"
    elif state == State.AWAITING_APPROVAL:
        then = "it waits for approval"
    elif state in (State.CONFIRMED, State.APPROVED):
        then = "the SendGuard helper sends it"
    else:
        then = f"see `sendguard queue show {item_id}`"
    click.echo(f"Draft {draft_id} is in the SendGuard outbox as {item_id} ({state}): {then}; "
               "the draft stays untouched until it is sent.")


def _open_outbox() -> Outbox:
    """The outbox in SENDGUARD_HOME (shared with a running helper, which does the release)."""
    from ..service import Helper

    return Helper().outbox


@gmail_group.command("reconnect")
@click.argument("account_name", required=False)
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@click.option("--yes", "assume_yes", is_flag=True, help="Accept signing in as another Google account.")
def reconnect_command(account_name: str | None, no_browser: bool, assume_yes: bool) -> None:
    """Sign in to Gmail again (after access was revoked or expired), keeping the account's settings."""
    account = _gmail_account(account_name)
    s = account.settings
    if not s.get("client_id"):
        raise click.ClickException(f"Account {account.name} has no OAuth client recorded: add it again with "
                                   "`sendguard accounts add gmail`.")
    client = {"installed": {"client_id": s["client_id"],
                            "client_secret": secrets.get(account.secret_key("client_secret")) or "",
                            "auth_uri": s.get("auth_uri", GOOGLE_AUTH_URI),
                            "token_uri": s.get("token_uri", GOOGLE_TOKEN_URI)}}
    scopes = requested_scopes(bool(s.get("drafts")), s.get("reconcile", "search"))
    _sign_in_and_save(account, client, None, scopes=scopes, open_browser=not no_browser,
                      assume_yes=assume_yes)
