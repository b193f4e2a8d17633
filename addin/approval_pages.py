"""The approval page (``/approve/{id}``) and the approver's list (``/approvals``).

An approver arrives with the signed, single-use, expiring link from their email
(``/approve/{id}?t=...``): the link is checked (signature, age, message, approver), spent, and turns
into a session naming the approver, so the page and its Approve / Reject forms work without the
link afterwards. The desktop Approvals window opens ``/approvals/login?t=...`` (a link the helper or
the central server signs for its own user) and shows the same pages.

Every decision goes through ``sendguard.approvals.Approvals``: only a named approver or their
active deputy may decide, the first decision wins, and refusals are audited. No policy decision is
made here.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from sendguard import message as msgmod
from sendguard import notify
from sendguard.approvals import is_own
from sendguard.checks import StoredCheck
from sendguard.errors import NotFound, PermissionDenied, SendGuardError, StateError
from sendguard.i18n import _
from sendguard.links import LinkSigner, use_once, was_used
from sendguard.outbox import APPROVAL_OUTCOMES, Item, State

from .api import approvals, item_json, service
from .service import current_service

bp = Blueprint("approval_pages", __name__, template_folder="templates")
log = logging.getLogger(__name__)

LOGIN_LINK_MAX_AGE = 300

# page strings, marked for extraction (English is the msgid)
UI_STRINGS = (
    _("Approval requested"), _("Approve"), _("Reject"), _("Comment (optional)"),
    _("Comment (required: you are approving your own message)"), _("Reason for rejecting (required)"),
    _("Recipients"), _("Attachments"), _("Why it needs approval"), _("Preview"), _("From"), _("Subject"),
    _("Approvers"), _("Deadline"), _("Messages waiting for your approval"), _("No messages are waiting for you."),
    _("Your messages held for approval"), _("Approved by {who} at {when}."), _("Rejected by {who} at {when}: {reason}"),
    _("This message expired without a decision and was not sent."), _("Open"), _("removed"),
    _("You decide as the deputy of {approver}."), _("Signed in as {who}"), _("Not allowed"),
    _("This link cannot be used"), _("Open the link from your approval email again, or ask for a new one."),
    _("Open the approval link from your email first."), _("Continue in this browser"),
    _("Approved. The sender's SendGuard sends the message now."), _("Rejected. The sender has been told why."),
    _("Already decided"), _("No attachments"), _("Self-approval"),
)


def _(text: str) -> str:  # noqa: F811 - at run time, translate in the service's language
    svc = current_service()
    return svc.gettext(text) if svc is not None else text


def approve_signer() -> LinkSigner:
    return LinkSigner(current_app.config["SECRET_KEY"], current_app.config.get("APPROVAL_LINK_PURPOSE", "approve"))


def login_signer() -> LinkSigner:
    return LinkSigner(current_app.config["SECRET_KEY"], "approvals-login")


def link_max_age() -> float:
    configured = current_app.config.get("APPROVAL_LINK_MAX_AGE")
    if configured:
        return float(configured)
    return float(service().policy.get().expire_hours) * 3600


def _page(template: str, status: int = 200, **context: Any) -> Any:
    context.setdefault("approver", session.get("approver"))
    context.setdefault("csrf", _csrf())
    response = make_response(render_template(template, _=_, **context), status)
    # the forms post to this same origin: with "no-referrer" a browser would send "Origin: null",
    # which the Origin allow-list refuses; "same-origin" still never leaks a link to another site
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _notice(title: str, message: str, status: int, item_id: str | None = None) -> Any:
    continue_url = url_for("approval_pages.show", item_id=item_id) if item_id and session.get("approver") else None
    return _page("approve_notice.html", status, title=title, message=message, continue_url=continue_url)


def _csrf() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return str(token)


class RefusalLog:
    """Which refusals of unauthenticated requests reach the audit log: only about a message that exists,
    once per (message, reason) every ``quiet`` seconds and ``per_minute`` a minute in all. Anyone can
    send a bad link; nobody may grow the log at will. The rest are counted in the helper's log."""

    def __init__(self, quiet: float = 600.0, per_minute: int = 30):
        self.quiet = quiet
        self.per_minute = per_minute
        self._seen: dict[tuple[str | None, str], float] = {}
        self._recent: list[float] = []
        self._dropped = 0
        self._lock = threading.Lock()

    def allow(self, item_id: str | None, why: str) -> bool:
        now = time.monotonic()
        with self._lock:
            self._recent = [t for t in self._recent if now - t < 60.0]
            key = (item_id, why[:80])
            if now - self._seen.get(key, -1e9) < self.quiet or len(self._recent) >= self.per_minute:
                self._dropped += 1
                if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                    log.warning("%d refused link request(s) not written to the audit log (repeats)", self._dropped)
                return False
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = now
            self._recent.append(now)
            return True


def _refusals() -> RefusalLog:
    return current_app.extensions.setdefault("sendguard_refusals", RefusalLog())  # type: ignore[no-any-return]


def _refuse(item_id: str | None, actor: str, why: str, status: int = 403, anonymous: bool = False) -> Any:
    """Audit a refused link or decision (an anonymous one only within ``RefusalLog``'s bounds), then
    say plainly why."""
    try:
        if not anonymous or ((item_id is None or _exists(item_id)) and _refusals().allow(item_id, why)):
            approvals().audit_refusal(item_id, actor, why, "web")
    except SendGuardError:
        pass
    return _notice(_("This link cannot be used"), why, status, item_id)


def _exists(item_id: str | None) -> bool:
    if not item_id:
        return False
    try:
        service().outbox.get(item_id)
    except NotFound:
        return False
    return True


def _view(item: Item, approver: str) -> dict[str, Any]:
    """What the page shows of one message."""
    data = item_json(item, full=True)
    full = service().outbox.get(item.id, with_bodies=True)
    decision = item.decision or {}
    final = {a.lower() for a in item.envelope_to}
    removed_att = item.removed()[1]
    check = item.check or StoredCheck()
    recipients = [{**r.to_json(), "removed": bool(final) and r.address.lower() not in final} for r in check.recipients]
    # an address the message goes to that the check does not list (a helper that sent a changed check)
    # is shown all the same: the approver sees every address
    checked = {r.address.lower() for r in check.recipients}
    added_bcc = {a.lower() for a in decision.get("added_bcc") or [] if isinstance(a, str)}
    for address in item.envelope_to:
        if address.lower() not in checked:
            recipients.append({"address": address, "display_name": "", "removed": False, "flags": ["added"],
                               "field": "bcc" if address.lower() in added_bcc else "cc"})
    attachments = [a.to_json() for a in check.attachments if a.id not in removed_att]
    acting = approvals().acting_for(item, approver)
    sender, preview = _as_sent(full)
    data["from"] = sender or data.get("from")
    return {
        "item": data, "recipients": recipients, "attachments": attachments,
        "reasons": notify.notice_reasons(item), "preview": preview,
        "deputy_of": acting if acting and acting != approver.lower() else None,
        "self_approval": is_own(item, approver),
        "deadline": (data.get("expires_at") and _deadline(item)), "approval": item.approval or {},
    }


def _as_sent(item: Item) -> tuple[str, str]:
    """(From, body preview) of the content that will be sent, read from its bytes: the From header as written
    (display name and address; the envelope sender too when it differs) and the body even of a message
    whose recipients are only in its envelope (no To/Cc)."""
    raw = item.final_raw or item.raw
    if not raw:
        return "", ""
    try:
        parsed = msgmod.parse(raw, item.envelope_from, item.envelope_to, require_recipients=False)
    except Exception:  # the page must still open: the approver sees the rest and may reject
        log.exception("cannot read message %s for its approval page", item.id)
        return "", ""
    envelope = (item.envelope_from or "").strip()
    if "the message has no From address" in parsed.problems:  # (the address below is the envelope's)
        sender = f"(no From header; envelope sender {envelope or '-'})"
    else:
        sender = f"{parsed.from_name} <{parsed.from_address}>" if parsed.from_name else parsed.from_address
        if envelope and envelope.lower() != parsed.from_address:
            sender = f"{sender} (envelope sender {envelope})"
    text = (parsed.body_text or "").strip()
    limit = notify.PREVIEW_CHARS
    return sender, (text if len(text) <= limit else text[:limit] + "…")


def _deadline(item: Item) -> str | None:
    from sendguard.store import now_iso

    return now_iso(item.expires_at)[:16].replace("T", " ") + " UTC" if item.expires_at else None


@bp.get("/approve/<item_id>")
def show(item_id: str) -> Any:
    """With ``?t=``: spend the emailed link and sign the approver in; without: the page for the session."""
    token = request.args.get("t")
    if token:
        return _open_link(item_id, token)
    approver = session.get("approver")
    link = session.get("link") or {}
    if not approver and link.get("item") == item_id:  # a reload of a link not decided yet
        return _open_link(item_id, str(link.get("t")))
    if not approver:
        return _notice(_("Not allowed"), _("Open the approval link from your email first."), 401)
    try:
        item = service().outbox.get(item_id)
    except NotFound as exc:
        return _notice(_("Not allowed"), str(exc), 404)
    if not approvals().may_view(item, approver):
        # whatever its state: an approver sees only the messages they approve (or stand in for)
        names = ", ".join(approvals().current_approvers(item)) or "-"
        return _refuse(item_id, approver, f"{approver} is not an approver for message {item_id}; "
                                          f"its approvers are: {names}")
    return _page("approve.html", **_view(item, approver))


def _open_link(item_id: str, token: str) -> Any:
    """Show the page for an emailed link without spending it.

    Mail scanners (e.g. Safe Links) open links before the approver does: merely opening must not
    use the link up. The link is spent by the decision it carries (the form posts it back), so it
    still decides exactly once and is refused afterwards.
    """
    try:
        claims = approve_signer().load(token, item_id, link_max_age())
    except PermissionDenied as exc:
        return _refuse(item_id, "(link)", str(exc), anonymous=True)
    approver = str(claims.get("approver") or "").lower()
    try:
        item = service().outbox.get(item_id)
    except NotFound as exc:
        return _notice(_("Not allowed"), str(exc), 404)
    # waiting: only who may decide it now; decided, expired or cancelled: only who may still see it (an
    # approver the policy moved it away from before that no longer reads it through an old link)
    allowed = approvals().may_decide if item.state == State.AWAITING_APPROVAL else approvals().may_view
    if not allowed(item, approver):
        return _refuse(item_id, approver, f"{approver} is not an approver for message {item_id}; "
                                          f"its approvers are: {', '.join(approvals().current_approvers(item)) or '-'}")
    if was_used(service().store, str(claims.get("jti"))):  # whoever fetches it again (a scanner, say)
        return _refuse(item_id, approver, "this link has already been used", anonymous=True)
    # what the form needs to decide this one message with the link (nobody is signed in by it)
    session["link"] = {"item": item_id, "t": token, "approver": approver}
    session.pop("csrf", None)  # a fresh form token for the new sign-in
    session.permanent = False
    # the page is rendered here, not after a redirect: a SameSite=Strict cookie set while arriving from
    # a mail client is only sent on the next request made from this site (the form post)
    return _page("approve.html", replace_url=url_for("approval_pages.show", item_id=item_id), link_token=token,
                 **_view(item, approver))


def _link_claims(item_id: str, token: str, approver: str) -> dict[str, Any]:
    """The decision carries the emailed link: check it is this message's and this approver's."""
    claims = approve_signer().load(token, item_id, link_max_age())
    if str(claims.get("approver") or "").lower() != approver:
        raise PermissionDenied("this link was sent to someone else")
    return claims


@bp.post("/approve/<item_id>")
def decide(item_id: str) -> Any:
    link = session.get("link") or {}
    token = request.form.get("t") or (link.get("t") if link.get("item") == item_id else None)
    approver = session.get("approver") or (link.get("approver") if token else None)
    if not approver:
        return _notice(_("Not allowed"), _("Open the approval link from your email first."), 401)
    if not secrets.compare_digest(str(request.form.get("csrf", "")), str(session.get("csrf", ""))):
        return _refuse(item_id, approver, "the form was not sent from the approval page (stale or forged); "
                                          "reload the page and try again")
    decision = request.form.get("decision")
    # A link decides its one message and signs nobody in: one that reached someone else (a reply quoting
    # it, a forward) approves nothing more, and one for a message no longer waiting leaves nothing behind.
    # It is spent by the decision it makes; a refused attempt (no reason given) can be made again.
    claims: dict[str, Any] | None = None
    if token:
        try:
            claims = _link_claims(item_id, token, approver)
            if was_used(service().store, str(claims.get("jti"))) and \
                    service().outbox.get(item_id).state == State.AWAITING_APPROVAL:
                raise PermissionDenied("this link has already been used")
        except PermissionDenied as exc:
            return _refuse(item_id, approver, str(exc))
        except NotFound as exc:
            return _notice(_("Not allowed"), str(exc), 404)
    try:
        if decision == "approve":
            item = approvals().approve(item_id, approver, request.form.get("comment", ""), via="web")
        elif decision == "reject":
            item = approvals().reject(item_id, approver, request.form.get("reason", ""), via="web")
        else:
            return _notice(_("Not allowed"), "choose Approve or Reject", 400, item_id)
    except PermissionDenied as exc:
        return _notice(_("Not allowed"), str(exc), 403, item_id)
    except StateError as exc:
        return _notice(_("Already decided"), str(exc), 409)
    except NotFound as exc:
        return _notice(_("Not allowed"), str(exc), 404)
    if claims is not None:
        try:
            use_once(service().store, str(claims.get("jti")))
        except PermissionDenied:  # spent by the same decision made twice at once: the second one failed
            pass
    service().wake()
    if item.state != State.APPROVED:
        done = _("Rejected. The sender has been told why.")
    elif (item.decision or {}).get("release") == "server":
        done = _("Approved. The SendGuard server sends the message now, exactly as you saw it.")
    else:
        done = _("Approved. The sender's SendGuard sends the message now.")
    signed_in = bool(session.get("approver"))  # (through the Approvals window's sign-in, not the link)
    return _page("approve_notice.html", title=done, message="",
                 continue_url=url_for("approval_pages.listing") if signed_in else None)


@bp.get("/approvals")
def listing() -> Any:
    """The approver's list (the desktop Approvals window shows this page)."""
    approver = session.get("approver")
    if not approver:
        return _notice(_("Not allowed"), _("Open the approval link from your email first."), 401)
    waiting = approvals().pending_for(approver, limit=500)
    own = [i for i in service().outbox.list(owner=approver, limit=50)
           if i.approvers and i.state in (State.AWAITING_APPROVAL, *APPROVAL_OUTCOMES)]
    return _page("approve_list.html", items=[_row(i) for i in waiting], own=[_row(i) for i in own])


def _row(item: Item) -> dict[str, Any]:
    return {"id": item.id, "from": item.sender, "subject": item.subject, "state": item.state,
            "reasons": notify.notice_reasons(item), "deadline": _deadline(item), "approval": item.approval or {},
            "recipients": len(item.check.recipients if item.check else ()) or len(item.envelope_to)}


@bp.get("/approvals/login")
def login() -> Any:
    """A single-use sign-in link for the approver's own desktop window (or a browser)."""
    token = request.args.get("t", "")
    try:
        claims = login_signer().load(token, "approvals", LOGIN_LINK_MAX_AGE)
        use_once(service().store, str(claims.get("jti")))
    except PermissionDenied as exc:
        return _refuse(None, "(login link)", str(exc), anonymous=True)
    session.clear()  # a sign-in starts afresh (never mixed with an earlier one's leftovers)
    session["approver"] = str(claims.get("who") or "").lower()
    if claims.get("via"):
        session["via"] = str(claims["via"])  # asked with a helper token: ends when the token is revoked
    session.permanent = False
    return redirect(url_for("approval_pages.listing"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
