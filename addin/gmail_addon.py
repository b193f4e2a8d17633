"""The Gmail add-on's endpoints (Google Workspace add-on, HTTP runtime): "Check and send with SendGuard".

A Workspace add-on cannot stop a send made with Gmail's own Send button; what it can do is offer a
button in the compose window that hands the draft to SendGuard. The draft is then an outbox item like
any other (source ``gmail``, ref ``draft:<id>``): checked, confirmed in the SendGuard window or page,
approved if the policy says so, and only then sent with ``drafts.send``. If the user cancels, the draft
stays in Gmail as it was.

Google calls these endpoints (POST, JSON event object) with its signed OpenID Connect ID token as the
bearer token. Nothing is done before that token is verified: signature against Google's certificates
(``GOOGLE_CERTS_URL``), issuer, expiry and audience (``GMAIL_ADDON_AUDIENCE``: the endpoint URL(s) set in
the deployment), and, when ``GMAIL_ADDON_SERVICE_ACCOUNT`` is set, the add-on's service account as
signer. The user is known from ``authorizationEventObject.userIdToken`` (verified the same way, audience
``GMAIL_ADDON_CLIENT_ID`` or else ``GMAIL_ADDON_AUDIENCE``), and must have a Gmail account with the
drafts feature in this SendGuard's config.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from flask import Blueprint, current_app, jsonify, request
from google.auth import exceptions as google_auth_errors
from google.auth import jwt as google_jwt

from sendguard import config as sg_config
from sendguard import paths
from sendguard.errors import SendGuardError
from sendguard.mailboxes import gmail

from .security import error_response

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CERTS_TTL = 300.0
CLOCK_SKEW = 10

bp = Blueprint("gmail_addon", __name__, url_prefix="/gmail/addon")

_certs_lock = threading.Lock()
_certs_cache: dict[str, tuple[float, dict[str, Any]]] = {}


class Refused(Exception):
    """The request is not a verified call from Google for this add-on."""


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


def _audience(key: str) -> list[str]:
    value = current_app.config.get(key)
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _verified_request() -> tuple[dict[str, Any], dict[str, Any]]:
    """(event, bearer claims) for a verified request; raises Refused."""
    audience = _audience("GMAIL_ADDON_AUDIENCE")
    if not audience:
        raise LookupError("GMAIL_ADDON_AUDIENCE is not configured")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise Refused("no Google ID token (Authorization: Bearer) on the request")
    claims = verify_google_token(header[7:].strip(), audience)
    expected = (current_app.config.get("GMAIL_ADDON_SERVICE_ACCOUNT") or "").lower()
    if expected and str(claims.get("email", "")).lower() != expected:
        raise Refused(f"ID token signed for {claims.get('email')!r}, not this add-on's service account")
    event = request.get_json(silent=True)
    if not isinstance(event, dict):
        raise Refused("the request body is not a Workspace add-on event object")
    return event, claims


def _user_email(event: dict[str, Any], bearer: dict[str, Any]) -> str:
    """The Gmail user who pressed the button, from a verified ID token."""
    user_token = (event.get("authorizationEventObject") or {}).get("userIdToken")
    if user_token:
        audience = _audience("GMAIL_ADDON_CLIENT_ID") or _audience("GMAIL_ADDON_AUDIENCE")
        claims = verify_google_token(user_token, audience)
    else:
        claims = bearer  # deployments that send the user's own ID token as the bearer
    email = str(claims.get("email", "")).lower()
    if not email or claims.get("email_verified") is False or email.endswith(".gserviceaccount.com"):
        raise Refused("the event carries no verified user identity (userIdToken)")
    return email


def guarded(view: Any) -> Any:
    def wrapper() -> Any:
        try:
            event, claims = _verified_request()
        except LookupError as exc:
            return error_response(503, "not_configured", f"Gmail add-on endpoint not configured: {exc}")
        except Refused as exc:
            current_app.logger.warning("gmail add-on request refused: %s", exc)
            return error_response(401, "unauthorized", str(exc))
        try:
            return jsonify(view(event, claims))
        except Refused as exc:
            current_app.logger.warning("gmail add-on request refused: %s", exc)
            return error_response(401, "unauthorized", str(exc))

    wrapper.__name__ = view.__name__
    return wrapper


# -- cards ------------------------------------------------------------------------------------------


def _endpoint(name: str) -> str:
    base = current_app.config.get("GMAIL_ADDON_BASE_URL") or request.host_url
    return base.rstrip("/") + bp.url_prefix + "/" + name


def _card(title: str, text: str, buttons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    widgets: list[dict[str, Any]] = [{"textParagraph": {"text": text}}]
    if buttons:
        widgets.append({"buttonList": {"buttons": buttons}})
    return {"action": {"navigations": [{"pushCard": {
        "header": {"title": "SendGuard", "subtitle": title},
        "sections": [{"widgets": widgets}],
    }}]}}


def _check_button() -> dict[str, Any]:
    return {"text": "Check and send with SendGuard",
            "onClick": {"action": {"function": _endpoint("check-and-send")}}}


@bp.post("/homepage")
@guarded
def homepage(event: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    return _card("Send with a second look",
                 "Write your message, then choose <b>Check and send with SendGuard</b> in the compose "
                 "window instead of Send: SendGuard shows you the recipients and attachments and sends it "
                 "once you confirm (and a supervisor approves, where your policy asks).")


@bp.post("/compose")
@guarded
def compose(event: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    gm = event.get("gmail") or {}
    to = ", ".join(gm.get("toRecipients") or []) or "no recipients yet"
    text = (f"To: {to}<br>SendGuard checks the saved draft, asks you to confirm, then sends it. "
            "Gmail's own Send button is not checked.")
    return _card("Check and send", text, [_check_button()])


@bp.post("/check-and-send")
@guarded
def check_and_send(event: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    email = _user_email(event, claims)
    service = current_app.config.get("SENDGUARD_SERVICE")
    cfg = getattr(service, "config", None) or sg_config.load()
    account = cfg.account_for(email)
    if account is None or account.kind != "gmail":
        return _card("Not set up", f"SendGuard has no Gmail account for {email}. Ask your administrator to "
                                   "add it with the drafts feature (sendguard accounts add gmail --drafts).")
    home = getattr(service, "home", None) or paths.home()
    mailbox = gmail.GmailMailbox.from_account(account, home)
    gm = event.get("gmail") or {}
    try:
        draft_id = gm.get("draftId") or (mailbox.draft_id_for_message(gm["messageId"]) if gm.get("messageId")
                                         else None)
        if not draft_id:
            return _card("Draft not saved yet", "Gmail has not saved this draft yet. Wait a moment (or close "
                                                "and reopen it), then try again.", [_check_button()])
        item = gmail.submit_draft(service.outbox, mailbox, draft_id)
    except SendGuardError as exc:
        return _card("Could not check this draft", str(exc))
    item_id = getattr(item, "id", item)
    state = getattr(item, "state", "")
    buttons = []
    confirm_url = getattr(service, "confirm_url", None)
    if callable(confirm_url) and state == "awaiting_confirmation":
        buttons.append({"text": "Open the confirmation",
                        "onClick": {"openLink": {"url": confirm_url(item_id)}}})
    text = {
        "awaiting_confirmation": "Confirm the recipients and attachments in the SendGuard window; the draft "
                                 "is sent only then. Cancel there to keep it as a draft.",
        "awaiting_approval": "This message needs approval; it is sent once approved.",
        "confirmed": "Checked: SendGuard sends it now.",
    }.get(state, f"SendGuard holds it as {item_id} ({state}).")
    return _card("Handed to SendGuard", text, buttons)
