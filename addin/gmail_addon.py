"""The Gmail add-on's endpoints (Google Workspace add-on, HTTP runtime): "Check and send with SendGuard".

A Workspace add-on cannot stop a send made with Gmail's own Send button (the browser extension in
``extension/gmail`` does that); what the add-on offers is a compose action that hands the saved draft
to SendGuard. The draft is then an outbox item like any other (source ``gmail``, ref ``draft:<id>``):
checked, confirmed, approved if the policy says so, and only then sent with ``messages.send`` (the
confirmed MIME, in the draft's thread), after which the draft is deleted.

What Google sends, and what is checked before anything is read or queued (``manifest/gmail`` and
docs/gmail-addon.md):

- every request carries ``Authorization: Bearer <system ID token>``: signed by Google (certificates at
  ``GOOGLE_CERTS_URL``), issuer Google, not expired, audience the endpoint URL that was called
  (``GMAIL_ADDON_BASE_URL`` + path, or ``GMAIL_ADDON_AUDIENCE``), ``email`` the add-on's service account
  ``service-PROJECT_NUMBER@gcp-sa-gsuiteaddons.iam.gserviceaccount.com`` (``GMAIL_ADDON_SERVICE_ACCOUNT``)
  with ``email_verified``;
- the user is ``authorizationEventObject.userIdToken``, audience the add-on's OAuth client id
  (``GMAIL_ADDON_CLIENT_ID``, from ``gcloud workspace-add-ons get-authorization``), ``email_verified``;
- granular consent: ``authorizationEventObject.authorizedScopes`` must hold the scopes the endpoint
  needs, otherwise the answer is ``{"requesting_google_scopes": {"scopes": [...]}}`` and Gmail asks the
  user for exactly those.

A compose event carries no draft id (Google's compose samples have ``"gmail": {}``; with
``draftAccess: METADATA`` it has ``toRecipients``/``ccRecipients``/``bccRecipients``), and a draft's
message id changes on every autosave, so the draft is found by its recipients among the user's saved
drafts; when that is not one draft, the card lists the candidates (by draft id, which autosave keeps).

Every answer Gmail renders is a card, errors included, so the user reads what went wrong; only a request
that is not a verified call from Google gets a bare 401.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, current_app, jsonify, request
from google.auth import exceptions as google_auth_errors
from google.auth import jwt as google_jwt

from sendguard.accounts import gmail as gmail_accounts
from sendguard.errors import SendGuardError
from sendguard.mailboxes import _retry, gmail
from sendguard.mailboxes.base import TransientError

from .service import AppService, current_service

log = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
ADDON_SERVICE_ACCOUNT_DOMAIN = "@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"
CERTS_TTL = 300.0
CLOCK_SKEW = 10
MAX_CHOICES = 5
BACKGROUND_RETRIES = 6
BACKGROUND_BACKOFF = 5.0

_AUTH = "https://www.googleapis.com/auth/"
SCOPE_EXECUTE = _AUTH + "gmail.addons.execute"
SCOPE_ACTION_COMPOSE = _AUTH + "gmail.addons.current.action.compose"
SCOPE_MESSAGE_METADATA = _AUTH + "gmail.addons.current.message.metadata"
SCOPE_EMAIL = _AUTH + "userinfo.email"
# What each endpoint needs the user to have granted (granular consent).
NEEDED_SCOPES = {
    "homepage": (SCOPE_EXECUTE,),
    "compose": (SCOPE_EXECUTE, SCOPE_ACTION_COMPOSE, SCOPE_MESSAGE_METADATA),
    "check-and-send": (SCOPE_EXECUTE, SCOPE_ACTION_COMPOSE, SCOPE_MESSAGE_METADATA, SCOPE_EMAIL),
}
REQUIRED_SETTINGS = ("GMAIL_ADDON_BASE_URL", "GMAIL_ADDON_SERVICE_ACCOUNT", "GMAIL_ADDON_CLIENT_ID")

URL_PREFIX = "/gmail/addon"
bp = Blueprint("gmail_addon", __name__, url_prefix=URL_PREFIX)

_certs_lock = threading.Lock()
_certs_cache: dict[str, tuple[float, dict[str, Any]]] = {}


class Refused(Exception):
    """The request is not a verified call from Google for this add-on."""


class NotConfigured(Exception):
    """A required add-on setting is missing or wrong on this server."""


def _certs(url: str, refresh: bool = False) -> dict[str, Any]:
    with _certs_lock:
        cached = _certs_cache.get(url)
        if cached and not refresh and cached[0] > time.monotonic():
            return cached[1]
    try:
        response = requests.get(url, timeout=10)
        response.raise_for_status()
        certs = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise Refused(f"cannot fetch Google's certificates from {url}: {exc}") from None
    with _certs_lock:
        _certs_cache[url] = (time.monotonic() + CERTS_TTL, certs)
    return certs


def verify_google_token(token: str, audience: str | list[str]) -> dict[str, Any]:
    """Claims of a Google-signed ID token for ``audience``; raises Refused otherwise."""
    url = current_app.config.get("GOOGLE_CERTS_URL") or GOOGLE_CERTS_URL
    for attempt in (0, 1):  # a new signing key: fetch the certificates again once
        try:
            claims = google_jwt.decode(token, certs=_certs(url, refresh=attempt == 1), audience=audience,
                                       clock_skew_in_seconds=CLOCK_SKEW)
            break
        except (ValueError, google_auth_errors.MalformedError, google_auth_errors.InvalidValue) as exc:
            if attempt == 0 and "Certificate for key id" in str(exc):
                continue
            raise Refused(f"invalid Google ID token: {exc}") from None
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise Refused(f"ID token not issued by Google (iss={claims.get('iss')!r})")
    return claims


def _setting(key: str) -> str:
    value = str(current_app.config.get(key) or "").strip()
    if not value:
        raise NotConfigured(f"{key} is not set")
    return value


def _base_url() -> str:
    base = _setting("GMAIL_ADDON_BASE_URL").rstrip("/")
    if urlsplit(base).scheme != "https" or not urlsplit(base).netloc:
        raise NotConfigured(f"GMAIL_ADDON_BASE_URL {base!r} must be the public https:// URL of this server")
    return base


def _check_settings() -> None:
    for key in REQUIRED_SETTINGS:
        _setting(key)
    _base_url()
    account = _setting("GMAIL_ADDON_SERVICE_ACCOUNT").lower()
    if not account.startswith("service-") or not account.endswith(ADDON_SERVICE_ACCOUNT_DOMAIN):
        raise NotConfigured(f"GMAIL_ADDON_SERVICE_ACCOUNT {account!r} is not a Workspace add-ons service "
                            f"account (service-PROJECT_NUMBER{ADDON_SERVICE_ACCOUNT_DOMAIN})")


def _audience() -> list[str]:
    """The system ID token's audience: the URL Google called (as set in the deployment)."""
    value = current_app.config.get("GMAIL_ADDON_AUDIENCE")
    if value:
        return [value] if isinstance(value, str) else list(value)
    return [_base_url() + request.path]


def _verified_request() -> tuple[dict[str, Any], dict[str, Any]]:
    """(event, bearer claims) for a verified request from Google; raises Refused."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise Refused("no Google ID token (Authorization: Bearer) on the request")
    claims = verify_google_token(header[7:].strip(), _audience())
    expected = _setting("GMAIL_ADDON_SERVICE_ACCOUNT").lower()
    if str(claims.get("email", "")).lower() != expected:
        raise Refused(f"ID token signed for {claims.get('email')!r}, not this add-on's service account")
    if claims.get("email_verified") is not True:
        raise Refused("the add-on service account's ID token has no verified email (email_verified)")
    event = request.get_json(silent=True)
    if not isinstance(event, dict):
        raise Refused("the request body is not a Workspace add-on event object")
    return event, claims


def _user_email(event: dict[str, Any]) -> str:
    """The Gmail user who pressed the button, from the verified userIdToken."""
    user_token = (event.get("authorizationEventObject") or {}).get("userIdToken")
    if not user_token:
        raise Refused("the event carries no userIdToken (is userinfo.email granted?)")
    claims = verify_google_token(user_token, _setting("GMAIL_ADDON_CLIENT_ID"))
    email = str(claims.get("email", "")).lower()
    if not email or claims.get("email_verified") is not True or email.endswith(".gserviceaccount.com"):
        raise Refused("the userIdToken carries no verified user email")
    return email


def _missing_scopes(event: dict[str, Any], endpoint: str) -> list[str]:
    granted = (event.get("authorizationEventObject") or {}).get("authorizedScopes")
    granted = set(granted) if isinstance(granted, list) else set()
    return [s for s in NEEDED_SCOPES[endpoint] if s not in granted]


def guarded(endpoint: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[[], Any]]:
    """Verify, check consent, run the view; every answer Gmail renders is a card."""

    def decorate(view: Callable[..., dict[str, Any]]) -> Callable[[], Any]:
        def wrapper() -> Any:
            try:
                _check_settings()
            except NotConfigured as exc:
                log.error("gmail add-on not configured: %s", exc)
                return jsonify(_card("Not set up", "SendGuard's Gmail add-on is not set up on this server "
                                     f"({exc}). Ask your administrator; nothing was sent."))
            try:
                event, _claims = _verified_request()
            except Refused as exc:
                log.warning("gmail add-on request refused: %s", exc)
                response = jsonify(_card("Refused", "SendGuard could not verify that this request came from "
                                         "Google for this add-on; nothing was read or sent."))
                response.status_code = 401
                return response
            missing = _missing_scopes(event, endpoint)
            if missing:
                return jsonify({"requesting_google_scopes": {"scopes": missing}})
            try:
                return jsonify(view(event))
            except Refused as exc:
                log.warning("gmail add-on user refused: %s", exc)
                return jsonify(_card("Who are you?", "SendGuard could not confirm which Google account "
                                     f"pressed the button ({exc}); nothing was read or sent."))
            except NotConfigured as exc:
                log.error("gmail add-on not configured: %s", exc)
                return jsonify(_card("Not set up", f"SendGuard cannot check drafts here: {exc}. Ask your "
                                     "administrator; nothing was sent."))

        wrapper.__name__ = view.__name__
        return wrapper

    return decorate


# -- cards ------------------------------------------------------------------------------------------


def _endpoint(name: str) -> str:
    return _base_url() + URL_PREFIX + "/" + name


def _card(title: str, text: str, buttons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    widgets: list[dict[str, Any]] = [{"textParagraph": {"text": _escape(text)}}]
    if buttons:
        widgets.append({"buttonList": {"buttons": buttons}})
    return {"action": {"navigations": [{"pushCard": {
        "header": {"title": "SendGuard", "subtitle": title},
        "sections": [{"widgets": widgets}],
    }}]}}


def _escape(text: str) -> str:
    # textParagraph renders a small HTML subset: keep user data (subjects, addresses) literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _check_button(label: str = "Check and send with SendGuard", draft_id: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"function": _endpoint("check-and-send")}
    if draft_id:
        action["parameters"] = [{"key": "draftId", "value": draft_id}]
    return {"text": label, "onClick": {"action": action}}


def public_link(url: str) -> str:
    """A helper's loopback page link as the user's browser reaches it: through the public base URL.

    The gateway helper listens on loopback behind the organisation's TLS proxy, so its own links
    (``https://localhost:PORT/confirm/ID?t=...``) would not open from Google's card.
    """
    parts = urlsplit(url)
    if parts.hostname in ("localhost", "127.0.0.1", "::1"):
        return _base_url() + parts.path + (f"?{parts.query}" if parts.query else "")
    return url


def open_link_allowed(url: str) -> bool:
    """Whether a card may open ``url``: https under the public base URL (the deployment's allow-list)."""
    base = _base_url() + "/"
    return url.startswith(base) and urlsplit(url).scheme == "https"


@bp.post("/homepage")
@guarded("homepage")
def homepage(event: dict[str, Any]) -> dict[str, Any]:
    return _card("Send with a second look",
                 "Write your message, then open SendGuard in the compose window and choose Check and send "
                 "with SendGuard: SendGuard shows you the recipients and attachments and sends it once you "
                 "confirm (and a supervisor approves, where your policy asks).")


def _event_recipients(gm: dict[str, Any]) -> dict[str, list[str]]:
    return {field: gmail._addresses(gm.get(f"{field}Recipients") or []) for field in ("to", "cc", "bcc")}


@bp.post("/compose")
@guarded("compose")
def compose(event: dict[str, Any]) -> dict[str, Any]:
    heads = _event_recipients(event.get("gmail") or {})
    shown = ", ".join(heads["to"] + heads["cc"] + heads["bcc"]) or "no recipients yet"
    text = (f"To: {shown}\nSendGuard checks the saved draft, asks you to confirm, then sends it and deletes "
            "the draft. Gmail's own Send button is checked only by the SendGuard browser extension.")
    return _card("Check and send", text, [_check_button()])


def _mailbox_for(email: str) -> tuple[AppService, gmail.GmailMailbox | None]:
    service = current_service()
    if service is None:
        raise NotConfigured("this server holds no outbox to take drafts into")
    if service.outbox.mailbox_for is None:
        raise NotConfigured("this server never sends mail (the central approval server): host the add-on on "
                            "a SendGuard Gmail gateway, see docs/gmail-addon.md")
    account = service.config.account_for(email)
    if account is None or account.kind != "gmail" or not account.settings.get("drafts"):
        return service, None
    # a connector of its own, not the helper's: Google waits for the card, so it never waits inside a call
    mailbox = gmail.GmailMailbox.from_account(account, service.home)
    mailbox.retries = 0  # Google waits for the card: retries happen in the background instead
    return service, mailbox


def _choice_card(title: str, text: str, drafts: list[dict[str, Any]]) -> dict[str, Any]:
    buttons = []
    for d in drafts[:MAX_CHOICES]:
        who = ", ".join(d["to"] + d["cc"] + d["bcc"]) or "no recipients"
        buttons.append(_check_button(f"{d['subject'] or '(no subject)'} — {who}", d["id"]))
    buttons.append(_check_button("Look again"))
    return _card(title, text, buttons)


@bp.post("/check-and-send")
@guarded("check-and-send")
def check_and_send(event: dict[str, Any]) -> dict[str, Any]:
    email = _user_email(event)
    service, mailbox = _mailbox_for(email)
    if mailbox is None:
        return _card("Not set up", f"SendGuard has no Gmail account with drafts for {email}. Ask your "
                                   "administrator to add it (sendguard accounts add gmail --drafts).")
    params = (event.get("commonEventObject") or {}).get("parameters") or {}
    draft_id = str(params.get("draftId") or "")
    try:
        if not draft_id:
            wanted = _event_recipients(event.get("gmail") or {})
            drafts = mailbox.find_drafts(wanted["to"], wanted["cc"], wanted["bcc"])
            exact = [d for d in drafts if d["exact"]]
            if len(exact) == 1:
                draft_id = exact[0]["id"]
            elif exact:
                return _choice_card("Which draft?", "Several saved drafts go to these recipients: choose the "
                                    "one you are writing.", exact)
            elif any(wanted.values()):
                return _choice_card("Draft not saved yet", "Gmail has not saved this draft with its current "
                                    "recipients yet. Wait a few seconds and choose Look again, or pick it "
                                    "below.", drafts)
            else:
                return _choice_card("Which draft?", "Gmail did not tell SendGuard this draft's recipients: "
                                    "choose it among your newest saved drafts.", drafts)
        return _hand_over(service, mailbox, draft_id)
    except TransientError as exc:
        wanted = _event_recipients(event.get("gmail") or {})
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        _retry_in_background(app, service, mailbox, draft_id, wanted, exc)
        return _card("Gmail is busy", "Gmail did not answer in time. SendGuard keeps trying in the background "
                     "and shows the confirmation when it has your draft; do not send it from Gmail meanwhile.")
    except SendGuardError as exc:
        return _card("Could not check this draft", str(exc))


def _hand_over(service: AppService, mailbox: gmail.GmailMailbox, draft_id: str) -> dict[str, Any]:
    item = gmail_accounts.submit_draft(service.outbox, mailbox, draft_id)
    item_id, state = item.id, item.state
    buttons = []
    confirm_url = service.confirm_url(item_id) if state == "awaiting_confirmation" else None
    if confirm_url:
        url = public_link(confirm_url)
        if open_link_allowed(url):
            buttons.append({"text": "Open the confirmation", "onClick": {"openLink": {"url": url}}})
    close = " Close this compose window now without sending (Discard is not needed: SendGuard deletes the " \
            "draft once it is sent), so that Gmail does not save a new copy."
    text = {
        "awaiting_confirmation": "Confirm the recipients and attachments in the SendGuard window; the message is "
                                 "sent only then. Cancel there to keep it as a draft.",
        "awaiting_approval": "This message needs approval; SendGuard sends it once approved.",
        "confirmed": "Checked: SendGuard sends it now.",
    }.get(state, f"SendGuard holds it as {item_id} ({state}).")
    return _card("Handed to SendGuard", text + close, buttons)


def _retry_in_background(app: Any, service: AppService, mailbox: gmail.GmailMailbox, draft_id: str,
                         wanted: dict[str, list[str]], first: TransientError) -> None:
    """Keep trying to take the draft after the card was answered (Gmail waits for no one)."""

    def run() -> None:
        delay = first.retry_after or BACKGROUND_BACKOFF
        for attempt in range(1, BACKGROUND_RETRIES + 1):
            time.sleep(min(delay, 300.0))
            try:
                target = draft_id
                if not target:  # the lookup itself failed: hand over only an unambiguous match
                    exact = [d for d in mailbox.find_drafts(wanted["to"], wanted["cc"], wanted["bcc"]) if d["exact"]]
                    if len(exact) != 1:
                        log.warning("gmail add-on: no single saved draft for %s; the user presses again", wanted)
                        return
                    target = exact[0]["id"]
                with app.app_context():
                    _hand_over(service, mailbox, target)
                log.info("gmail add-on: draft %s taken after %d background retries", target, attempt)
                return
            except TransientError as exc:
                delay = exc.retry_after or _retry.delay(attempt + 1, base=BACKGROUND_BACKOFF)
            except SendGuardError as exc:
                log.warning("gmail add-on: draft %s not taken: %s", draft_id, exc)
                return
        log.warning("gmail add-on: gave up taking draft %s after %d retries", draft_id, BACKGROUND_RETRIES)

    threading.Thread(target=run, name="gmail-addon-retry", daemon=True).start()


ENV_SETTINGS = {
    "GMAIL_ADDON_BASE_URL": "SENDGUARD_GMAIL_ADDON_BASE_URL",
    "GMAIL_ADDON_SERVICE_ACCOUNT": "SENDGUARD_GMAIL_ADDON_SERVICE_ACCOUNT",
    "GMAIL_ADDON_CLIENT_ID": "SENDGUARD_GMAIL_ADDON_CLIENT_ID",
}


def init_app(app: Any) -> None:
    """Register the endpoints; settings not given to the app come from SENDGUARD_GMAIL_ADDON_* variables.

    The public host of ``GMAIL_ADDON_BASE_URL`` is added to the hosts the app serves (the reverse proxy
    in front of a gateway helper forwards Google's calls and the users' confirmation pages with it).
    """
    for key, variable in ENV_SETTINGS.items():
        if not app.config.get(key) and os.environ.get(variable):
            app.config[key] = os.environ[variable].strip()
    host = urlsplit(str(app.config.get("GMAIL_ADDON_BASE_URL") or "")).hostname
    if host and host.lower() not in [h.lower() for h in app.config.get("ALLOWED_HOSTS", [])]:
        app.config["ALLOWED_HOSTS"] = [*app.config.get("ALLOWED_HOSTS", []), host.lower()]
    app.register_blueprint(bp)
