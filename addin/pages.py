"""The confirmation page (``/confirm/{id}``): the same HTML/JS the desktop window shows.

A one-time link (``sendguard queue show ID`` prints it) turns into a session cookie for that one
message, then redirects to the bare URL so a reload does not spend the link again. The page reads
``/confirm/{id}/data`` and acts through the REST API (``/api/v1/outbox/{id}/confirm|cancel``).
The desktop window loads ``/confirm/_window`` (no data in it) and gets each message pushed in by
the helper, so the page never needs a credential there.

The UI only shows the check result and sends the user's decision: no policy decision is made here.
"""

from __future__ import annotations

import base64
import secrets
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request, url_for

from sendguard import i18n
from sendguard import message as msgmod
from sendguard.checks import StoredAttachment
from sendguard.errors import NotFound, PermissionDenied
from sendguard.i18n import _
from sendguard.links import LinkSigner, signing_key, use_once

from .api import item_json, service
from .security import ApiError, grant_item, principal, require
from .service import current_service

bp = Blueprint("pages", __name__, template_folder="templates")

BODY_EXCERPT_CHARS = 2000
PREVIEW_TEXT_BYTES = 64 * 1024
PREVIEW_IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp")  # never SVG (it can hold script)

NEED_LINK = _("Open this page with the link from `sendguard queue show ID`: the link works once.")

# Strings the page's script needs at run time, marked here for extraction (English is the msgid).
UI_STRINGS = (
    _("External"), _("Internal"), _("To"), _("Cc"), _("Bcc"), _("Remove"), _("Undo"), _("Open"),
    _("Close"), _("Send"), _("Cancel"), _("Sending…"), _("Cancelling…"),
    _("{checked} of {total} checked"), _("Send in {seconds} s"), _("{index} of {total}"),
    _("No attachments"), _("No recipients left: nothing to send."), _("Removed"),
    _("Converted to Bcc"), _("Convert external To/Cc to Bcc"), _("Keep To/Cc as written"),
    _("Recipients ({count})"), _("Attachments ({count})"),
    _("Sent."), _("Confirmed. SendGuard releases it shortly."), _("The message was cancelled and not sent."),
    _("Save as .eml"), _("This message is no longer waiting for confirmation ({state})."),
    _("Something went wrong on this page, so Send is disabled. Cancel, or confirm with `sendguard queue`."),
    _("Could not reach SendGuard: {error}"), _("No preview for this type. Save it and open it yourself."),
    _("Preview of {name}"), _("Hidden direction or invisible characters are shown as ⟨…⟩"),
    _("Direction trick"), _("Contains right-to-left or invisible characters that can disguise the real name"),
    _("… and {count} more"), _("Loading…"), _("Waiting for messages…"), _("Next message"), _("Enter does not send: use the Send button."),
    # outcomes, undo and blocked messages (issue #11)
    _("Remove (Delete key)"),
    _("Preview (P key)"),
    _("Blocked: this message cannot be sent. Cancel it, or save it as .eml to fix it in your mail program."),
    _("Blocked by policy: this message cannot be sent."),
    _("This message needs approval, but your policy names no approver for it, so nobody can approve it. Ask your administrator to set [approval] approvers; until then it stays held (you can cancel it with `sendguard queue cancel {id}`)."),
    _("Held for approval by {approvers}."),
    _("They have been asked by email. SendGuard sends the message as soon as one of them approves, and tells you if it is rejected."),
    _("If nobody decides by {when}, it expires unsent."),
    _("Follow it with `sendguard queue show {id}`."),
    _("This page updates when it is decided."),
    _("Decided elsewhere (command line, browser page, approver or expiry):"),
    _("Sending in {seconds} s. Undo keeps it from being sent."),
    _("Undone: the message was not sent."),
    _("Save it as .eml to send it again later."),
    _("Too late to undo: {error}"),
    _("This message needs approval, but no approver is configured for it, so Send will be refused until your "
      "administrator sets [approval] approvers. You can cancel it or keep it open until then."),
    _("Resume guard"), _("Pause guard"), _("Quit SendGuard"), _("Your administrator does not allow pausing SendGuard"),
    # flag names and what they mean (tooltips)
    _("external"), _("trusted"), _("new_domain"), _("lookalike"), _("display_name_mismatch"), _("blocked"),
    _("idn"), _("personal_data"), _("keyword"), _("executable"), _("archive"), _("encrypted"),
    _("type_mismatch"), _("inline"), _("new domain"), _("name mismatch"), _("IDN"), _("personal data"),
    _("type mismatch"),
    _("Outside your organization"),
    _("A trusted partner domain (configured by your administrator)"),
    _("You have never sent mail to this domain before"),
    _("This domain looks like a known domain but is different: check every letter"),
    _("The display name shows a different email address than the real one"),
    _("Blocked by policy: this message cannot be sent there"),
    _("Internationalized domain (non-ASCII letters) that may imitate another domain"),
    _("Personal data (card number or My Number) found inside"),
    _("A keyword from your organization's list was found"),
    _("A program that runs when opened"),
    _("An archive: its contents were not all checked"),
    _("Encrypted or password-protected: its contents could not be checked"),
    _("The file name's extension does not match its content"),
    _("Embedded in the message body"),
    # actions in the reasons list
    _("allow"), _("confirm"), _("approve"), _("block"),
    # list members, added and opted-out recipients, the second confirmation
    _("reconfirm"), _("auto_added"), _("list_member"), _("suppressed"), _("via {list}"),
    _("Added automatically by your organization's policy"), _("A member of the distribution list shown with it"),
    _("On the opt-out list: removed from this message"),
    _("On the opt-out list, but gets the message through its list: SendGuard cannot remove it"),
)


def _language() -> str:
    """?lang= for tests and links; else the service's configured language; else the OS language."""
    asked = request.args.get("lang")
    if asked:
        return i18n.normalize(asked)
    svc = current_service()
    configured = svc.config.language if svc is not None else None
    return i18n.normalize(configured) if configured else i18n.system_language()


@lru_cache(maxsize=4)
def _strings(lang: str) -> dict[str, str]:
    if lang == "en":
        return {}
    return {k: v for k, v in i18n.catalog_messages(lang).items() if v}


def _nonce() -> str:
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return str(g.csp_nonce)


def _page(item_id: str | None, mode: str) -> Response:
    lang = _language()
    gettext = i18n.translator(lang)
    html = render_template("confirm.html", item_id=item_id, mode=mode, lang=lang, _=gettext,
                           strings=_strings(lang), nonce=_nonce())
    response = Response(html, mimetype="text/html")
    nonce = _nonce()
    # pywebview's evaluate_js runs through eval(): allowed in the window's page only, which is
    # loaded empty and gets its data from the helper (inserted as text, never as markup).
    evaluate = " 'unsafe-eval'" if mode == "window" else ""
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'{evaluate}; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _error_page(status: int, message: str) -> Response:
    lang = _language()
    gettext = i18n.translator(lang)
    html = render_template("confirm_error.html", lang=lang, _=gettext, message=message)
    return Response(html, status=status, mimetype="text/html")


@bp.get("/confirm/<item_id>")
def confirm_page(item_id: str) -> Any:
    token = request.args.get("t")
    if token:
        svc = service()
        try:
            claims = LinkSigner(signing_key(), "confirm").load(token, item_id, current_app.config[
                "CONFIRM_LINK_MAX_AGE"])
            use_once(svc.store, str(claims.get("jti") or ""))
            svc.outbox.get(item_id)
        except (PermissionDenied, NotFound) as exc:
            return _error_page(403 if isinstance(exc, PermissionDenied) else 404, str(exc))
        grant_item(item_id)
        keep: dict[str, Any] = {"lang": request.args["lang"]} if request.args.get("lang") else {}
        return redirect(url_for("pages.confirm_page", item_id=item_id, **keep), code=303)
    who = principal()
    if who is None or not who.may_see(item_id):
        return _error_page(403, i18n.translator(_language())(NEED_LINK))
    return _page(item_id, "browser")


@bp.get("/confirm/_window")
def window_shell() -> Any:
    """The desktop window's page: empty until the helper pushes a message into it."""
    return _page(None, "window")


def excerpt(text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
    """The start of the body as written: line breaks kept, trailing blanks and runs of empty lines trimmed."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue  # one empty line keeps a paragraph break; more only push the text off screen
        out.append(line)
    return "\n".join(out).strip("\n")[:limit]


def page_data(item_id: str) -> dict[str, Any]:
    """Everything the page shows for one message (the window gets the same through the helper)."""
    svc = service()
    item = svc.outbox.get(item_id, with_bodies=True)
    data = item_json(item, full=True)
    data.pop("audit", None)
    body = ""
    if item.raw and not item.purged:
        parsed = msgmod.parse(item.raw, require_recipients=False)
        body = excerpt(parsed.body_text or "")
    policy = svc.policy.get()
    return {"item": data, "body_excerpt": body, "countdown_seconds": int(policy.countdown_seconds),
            "eml_url": url_for("pages.export_eml", item_id=item_id)}


@bp.get("/confirm/<item_id>/data")
@require("api", "page")
def confirm_data(item_id: str) -> Any:
    return page_data(item_id)


def _attachment(item_id: str, att_id: str) -> tuple[StoredAttachment, bytes]:
    svc = service()
    item = svc.outbox.get(item_id, with_bodies=True)
    if not item.raw or item.purged:
        raise ApiError(410, "purged", "the message body is no longer kept")
    meta = item.check.attachment(att_id) if item.check else None
    if meta is None:
        raise ApiError(404, "not_found", f"message {item_id} has no attachment {att_id!r}")
    msg = msgmod.check_tree(item.raw)  # the tree the check numbered the attachments of
    for found_id, _parent, part in msgmod.iter_attachments(msg):
        if found_id == att_id:
            if part.get_content_type() == "message/rfc822":
                payload = part.get_payload()
                inner = payload[0] if isinstance(payload, list) and payload else payload
                data = inner.as_bytes() if hasattr(inner, "as_bytes") else b""
            else:
                data = part.get_payload(decode=True) or b""
            return meta, data
    raise ApiError(404, "not_found", f"attachment {att_id!r} is not in the stored message")


@bp.get("/confirm/<item_id>/attachments/<att_id>/preview")
@require("api", "page")
def preview_attachment(item_id: str, att_id: str) -> Any:
    """A safe preview: text as text, common images as a data URL, anything else not at all."""
    meta, data = _attachment(item_id, att_id)
    ctype = meta.content_type.lower()
    out: dict[str, Any] = {"id": att_id, "filename": meta.filename, "content_type": ctype, "kind": "none"}
    if ctype.startswith("text/") or ctype in ("application/json", "message/rfc822", "application/xml"):
        out["kind"] = "text"
        out["text"] = msgmod.clean_text(data[:PREVIEW_TEXT_BYTES].decode("utf-8", "surrogateescape"))
        out["truncated"] = len(data) > PREVIEW_TEXT_BYTES
    elif ctype in PREVIEW_IMAGES and "executable" not in meta.flags and "type_mismatch" not in meta.flags:
        out["kind"] = "image"
        out["data_url"] = f"data:{ctype};base64,{base64.b64encode(data).decode()}"
    return out


@bp.get("/confirm/<item_id>/eml")
@require("api", "page")
def export_eml(item_id: str) -> Any:
    """The held (or cancelled) message as written, to keep or send later from the mail client."""
    svc = service()
    item = svc.outbox.get(item_id, with_bodies=True)
    if not item.raw or item.purged:
        raise ApiError(410, "purged", "the message body is no longer kept")
    name = f"sendguard-{item_id}.eml"
    response = Response(item.raw, mimetype="message/rfc822")
    response.headers["Content-Disposition"] = f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(name)}"
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
