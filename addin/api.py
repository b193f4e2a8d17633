"""REST API v1: checks, the outbox, approvals, health and the OpenAPI document."""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from sendguard import audit, compose, notify, outlook_items
from sendguard import message as msgmod
from sendguard.approvals import Approvals
from sendguard.checks import StoredCheck
from sendguard.errors import MessageError, StateError
from sendguard.outbox import AWAITING_OUTCOME, HELD_STATES, STATES, Item, State
from sendguard.waiting import REFUSED_NOTE, SERVER_SENDS

from .openapi import SPEC
from .security import (
    ApiError,
    addin_signer,
    json_body,
    long_poll,
    other_local_user,
    other_user_refused,
    principal,
    require,
)
from .service import AppService, current_service

bp = Blueprint("api", __name__)
MAX_WAIT = 60.0


def service() -> AppService:
    svc = current_service()
    if svc is None:
        raise ApiError(503, "no_service", "the SendGuard service is not running")
    return svc


def _(text: str) -> str:
    return service().gettext(text)


def user_message(item: Item) -> str:
    """One sentence for the person who pressed Send, in their language."""
    state = item.state
    by_server = (item.decision or {}).get("release") == "server"
    if state == State.AWAITING_APPROVAL and by_server and \
            (item.last_error or "").startswith(SERVER_SENDS):
        return _("Approved; the SendGuard server sends it itself: {status}").format(status=item.last_error)
    if state == State.AWAITING_APPROVAL and by_server:
        return _("Held for approval by {approvers}. The SendGuard server sends it itself once it is "
                 "approved.").format(approvers=", ".join(item.approvers) or "?")
    if state == State.AWAITING_APPROVAL and (item.last_error or "").startswith(REFUSED_NOTE):
        return _("Held, but not yet with your approvers: {status}").format(status=item.last_error)
    if state == State.AWAITING_APPROVAL:
        return _("Held for approval by {approvers}. SendGuard sends it once it is approved.").format(
            approvers=", ".join(item.approvers) or "?")
    if state == State.SENT and (item.approval or {}).get("released_by") == "server":
        return _("Approved and sent by the SendGuard server.")
    if state == State.REJECTED:
        a = item.approval or {}
        return _("Rejected by {who}: {reason}").format(who=a.get("by", "?"), reason=a.get("reason", ""))
    if state == State.EXPIRED:
        return _("Nobody approved this message in time; it was not sent.")
    if state == State.CANCELLED:
        if item.verdict.action == "block":
            blocked = [r.message for r in item.verdict.reasons_at("block")]
            return _("Blocked by policy: {reasons}").format(reasons="; ".join(blocked))
        return _("Cancelled in SendGuard: the message was not sent.")
    if state in (State.SENT, State.RELEASING):
        return _("Confirmed in SendGuard.")
    if state in (State.FAILED, State.NEEDS_ATTENTION):
        return _("SendGuard could not send it yet: {error}").format(error=item.last_error or "")
    return _("Waiting for you to confirm the recipients and attachments in the SendGuard window.")


def item_json(item: Item, full: bool = False) -> dict[str, Any]:
    data = item.summary()
    data["user_message"] = user_message(item)
    data["approvers"] = item.approvers
    data["decision"] = outlook_items.decision_for_addin(item)
    if item.state == State.CONFIRMED and not (item.decision or {}).get("needs_approval"):
        # the undo window (confirm.hold_seconds) still open, in seconds from now
        data["release_in"] = max(0.0, round(item.release_after - time.time(), 3))
    if full:
        data["check"] = item.check.to_json() if item.check else None
        data["reasons"] = [r.to_json() for r in item.verdict.reasons]
        data["approval"] = item.approval
        data["expires_at"] = item.expires_at
        data["audit"] = [{k: r[k] for k in ("seq", "ts", "event", "actor", "data")}
                         for r in audit.records(service().store, item.id)]
    return data


@bp.get("/healthz")
def healthz() -> Any:
    svc = current_app.config.get("SENDGUARD_SERVICE")
    counts = svc.outbox.counts() if svc is not None else {}
    problem = svc.store.write_problem if svc is not None else None
    body = {"status": "ok" if svc is not None else "starting",
            "held": sum(n for s, n in counts.items() if s in HELD_STATES)}
    if problem is not None:  # mail is not taken in until the store can be written again: the window says so
        body.update(status="store_unavailable", store={"reason": problem.reason, "message": str(problem)})
        return jsonify(body), 503
    return jsonify(body)


@bp.get("/api/v1/openapi.json")
def openapi() -> Any:
    return jsonify(SPEC)


@bp.post("/api/v1/addin/session")
def addin_session() -> Any:
    """A token for the Outlook add-in: it may create checks and read, poll or cancel what it created.

    On the helper it is bound to the add-in's own Origin (the guard already checked it). On the central
    server it is bound to a user too: the caller proves who they are with that user's helper token.
    """
    origin = request.headers.get("Origin", "")
    if not current_app.config.get("ADDIN_NEEDS_USER"):  # the helper: its own user's Outlook only
        foreign = other_local_user()
        if foreign is not None:
            raise ApiError(403, "forbidden", other_user_refused(foreign))
    claims: dict[str, Any] = {"origin": origin, "sid": secrets.token_urlsafe(16)}
    if current_app.config.get("ADDIN_NEEDS_USER"):
        who = principal()
        if who is None or who.kind != "helper":
            raise ApiError(401, "unauthorized", "an add-in session on the central server belongs to a user: send "
                                                "that user's helper token ('Authorization: Bearer sgh_...')")
        claims["user"] = who.who
    # On the helper an origin-less session is allowed (classic Outlook's JavaScript-only runtime sends no
    # Origin): any local program may get one, and it gets nothing but its own checks.
    token = addin_signer().sign("addin", **claims)
    return jsonify({"token": token, "expires_in": 12 * 3600})


def addin_actor(sid: str) -> str:
    return f"addin:{sid}"


def own_item(item_id: str) -> None:
    """An add-in token acts only on the items it created (others answer 404, as if absent)."""
    who = principal()
    if who is None or who.kind != "addin":
        return
    if audit.created_by(service().store, item_id) != addin_actor(who.sid):
        raise ApiError(404, "not_found", f"no message {item_id!r} of this add-in session")


def _supersede(svc: Any, ref: str) -> None:
    """Send pressed again in Outlook for the same draft (after leaving it, from Drafts): the earlier
    check, still waiting in the window, is withdrawn so the draft can never be sent twice."""
    for old in svc.outbox.list([State.AWAITING_CONFIRMATION]):
        if old.source == "outlook" and old.source_ref == ref:
            try:
                svc.outbox.cancel(old.id, actor="outlook", reason="Send was pressed again in Outlook; "
                                                                  "the new check replaces this one")
            except StateError:
                pass  # decided meanwhile


def text_problem(value: str) -> str | None:
    """Why a store cannot hold this text (None: it can): PostgreSQL refuses a NUL byte in text (and no
    mail field has one), and a lone surrogate (JSON ``"\\ud800"``) is not text at all."""
    if "\x00" in value:
        return "holds a NUL byte"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid text (a lone surrogate)"
    return None


def refuse_unstorable(data: Any) -> None:
    """A request's JSON whose text a store cannot hold is refused before anything is stored: 400
    ``bad_field`` naming the field (the database refused it with a 500, the statement's values in the log)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:  # no recursion: a deeply nested document is no RecursionError
        path, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise ApiError(400, "bad_field", f"{path[:200] or 'the request'}: {problem}; nothing was done")
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                problem = text_problem(key)
                if problem:
                    raise ApiError(400, "bad_field", f"{path[:200] or 'the request'}: the key {key[:40]!r} {problem}; "
                                                     "nothing was done")
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))


@bp.post("/api/v1/checks")
@require("api", "addin", "helper")
def create_check() -> Any:
    """Check a message: raw MIME (``message/rfc822``) or the add-in's JSON (held as an outbox item)."""
    svc = service()
    ctype = (request.mimetype or "").lower()
    if ctype in ("message/rfc822", "application/octet-stream", "text/plain"):
        raw = request.get_data(cache=False)
        if not raw.strip():
            raise ApiError(400, "empty", "the request body is empty: send the message as message/rfc822")
        # as the helper checks its own mail: sent-to history, the thread, the user's accounts, lists
        return jsonify(svc.outbox.evaluate_parsed(msgmod.parse(raw)).to_json())
    data = json_body('{"from": {"address": "..."}, "to": [{"address": "..."}], "subject": "...", "body": "..."}')
    refuse_unstorable(data)
    raw, envelope_from, recipients = compose.from_fields(data)
    source = str(data.get("source") or "outlook")
    if source not in ("outlook", "gmail", "gmail_web", "api"):
        raise MessageError(f"source: {source!r} is not one of outlook, gmail, gmail_web, api")
    if data.get("dry_run"):
        result = svc.outbox.evaluate(raw, envelope_from, recipients)
        return jsonify(result.to_json())
    who = principal()
    actor = None
    if who is not None and who.kind == "addin":
        if who.who:  # the central server: a session bound to a user files only that user's mail, as its helper
            from .server import own_mail_only

            own_mail_only(svc, None, who.who, raw, envelope_from, holder="addin")
        # (on the helper the session names no user: the helper is its user's, and so is every From it checks)
        actor = addin_actor(who.sid)
    elif who is not None and who.kind == "helper":
        # the central server: a helper token files only its own user's mail, as in a hand-over
        from .server import own_mail_only

        own_mail_only(svc, None, who.who, raw, envelope_from)
        actor = who.who
    ref = outlook_items.item_ref(svc.config, envelope_from, data)
    if source == "outlook" and ref:
        _supersede(svc, ref)
    item = svc.outbox.submit(raw, envelope_from, recipients, source=source, source_ref=ref, actor=actor)
    if source == "outlook" and svc.addin_presence is not None:
        svc.addin_presence.seen(item.id)
    check = item.check.to_json() if item.check else None
    body = dict(check or {})
    body.update(id=item.id, state=item.state, check=check, user_message=user_message(item),
                confirm_url=svc.confirm_url(item.id))
    return jsonify(body), 201


@bp.get("/api/v1/outbox")
@require("api", "page")
def list_outbox() -> Any:
    svc = service()
    states = request.args.getlist("state")
    bad = [s for s in states if s not in STATES]
    if bad:
        raise ApiError(400, "bad_state", f"unknown state {bad[0]!r}; one of {', '.join(STATES)}")
    wanted = states or (None if request.args.get("all") in ("1", "true") else HELD_STATES)
    items = svc.outbox.list(wanted)
    who = principal()
    if who is not None and who.kind == "page":
        items = [i for i in items if who.may_see(i.id)]
    return jsonify([item_json(i) for i in items])


@bp.get("/api/v1/outbox/<item_id>")
@require("api", "addin", "page")
def get_item(item_id: str) -> Any:
    svc = service()
    own_item(item_id)
    wait = request.args.get("wait")
    if wait:
        try:
            seconds = min(float(wait), MAX_WAIT)
        except ValueError:
            raise ApiError(400, "bad_wait", "wait must be a number of seconds") from None
        if not 0.0 <= seconds <= MAX_WAIT:  # also NaN
            raise ApiError(400, "bad_wait", f"wait must be 0 to {MAX_WAIT:g} seconds")
        who = principal()
        presence = svc.addin_presence
        if who is not None and who.kind == "api":  # the user's own windows and scripts
            item = svc.outbox.wait(item_id, AWAITING_OUTCOME, seconds)
        elif presence is not None and who is not None and who.kind == "addin":
            # The Outlook add-in is waiting on this item: Outlook will send it once it is confirmed.
            with long_poll(who), presence.polling(item_id):
                item = svc.outbox.wait(item_id, AWAITING_OUTCOME, seconds)
        else:
            with long_poll(who):
                item = svc.outbox.wait(item_id, AWAITING_OUTCOME, seconds)
    else:
        item = svc.outbox.get(item_id)
    return jsonify(item_json(item, full=True))


@bp.post("/api/v1/outbox/<item_id>/confirm")
@require("api", "page")
def confirm_item(item_id: str) -> Any:
    svc = service()
    # no body at all: confirm as shown; a body that cannot be read is refused (never "as shown")
    data = json_body('{"removed_recipients": ["..."], "removed_attachments": ["..."], "bcc": true}', optional=True)
    removed = _string_list(data, "removed_recipients")
    removed_att = _string_list(data, "removed_attachments")
    item = svc.outbox.get(item_id)
    who = principal()
    checked = data.get("checked")
    if who is not None and who.kind == "page":
        _require_all_checked(item, checked, removed, removed_att)
    reconfirmed = data.get("reconfirmed", False)
    if not isinstance(reconfirmed, bool):
        raise ApiError(400, "bad_field", "reconfirmed must be true or false")
    item = svc.outbox.confirm(item_id, removed, removed_att, bool(data.get("bcc")),
                              actor=_actor(who),
                              checked=checked if isinstance(checked, dict) else None, reconfirmed=reconfirmed)
    svc.wake()
    return jsonify(item_json(item, full=True))


def _actor(who: Any) -> str:
    """Who acted, from the credential (never from the request body): the user's window or token, a page."""
    if who is None:
        return "web"
    return {"api": "window", "page": "web", "addin": "outlook-addin"}.get(who.kind, who.kind)


def _string_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "bad_field", f"{key} must be a list of strings")
    return value


def _require_all_checked(item: Item, checked: Any, removed: list[str], removed_att: list[str]) -> None:
    """A page must show every remaining recipient and attachment as checked before Send."""
    check = item.check or StoredCheck()
    if not isinstance(checked, dict):
        raise ApiError(400, "not_checked", "confirm needs 'checked': {recipients: [...], attachments: [...]}")
    need_r = {r.address for r in check.recipients} - {a.lower() for a in removed}
    need_a = {a.id for a in check.attachments} - set(removed_att)
    got_r = {str(a).lower() for a in checked.get("recipients", [])}
    got_a = {str(a) for a in checked.get("attachments", [])}
    missing = sorted(need_r - got_r) + sorted(need_a - got_a)
    if missing:
        raise ApiError(409, "not_checked", f"check every recipient and attachment first; unchecked: "
                                           f"{', '.join(missing[:5])}")


@bp.post("/api/v1/outbox/<item_id>/cancel")
@require("api", "addin", "page")
def cancel_item(item_id: str) -> Any:
    svc = service()
    own_item(item_id)
    data = json_body('{"reason": "..."}', optional=True)
    reason = str(data.get("reason") or "")[:500]
    if data.get("stopped_send") is True:
        # the add-in was told "sent" (Outlook may send it) and then stopped the send itself: not sent
        item = svc.outbox.client_stopped(item_id, actor=_actor(principal()), reason=reason)
    else:
        item = svc.outbox.cancel(item_id, actor=_actor(principal()), reason=reason)
    return jsonify(item_json(item, full=True))


# ---------------------------------------------------------------------- approvals
def approvals() -> Approvals:
    return service().approvals


@bp.get("/api/v1/approvals")
@require("api", "approver", "helper")
def list_approvals() -> Any:
    who = principal()
    approver = request.args.get("approver") or (who.who if who and who.kind in ("approver", "helper") else None)
    if who and who.kind in ("approver", "helper") and approver and approver.lower() != who.who:
        raise ApiError(403, "forbidden", f"you are signed in as {who.who}: you cannot list {approver}'s approvals")
    try:
        limit = int(request.args.get("limit", 100_000))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise ApiError(400, "bad_limit", "limit and offset must be whole numbers") from None
    if not 0 <= limit <= 100_000 or not 0 <= offset <= 1_000_000_000:
        raise ApiError(400, "bad_limit", "limit must be 0 to 100000 and offset 0 to 1000000000")
    items = approvals().pending_for(approver, limit=limit, offset=offset)
    out = []
    for item in items:
        data = item_json(item)
        data["reasons"] = [r.to_json() for r in notify.notice_reasons(item)]
        data["expires_at"] = item.expires_at
        out.append(data)
    return jsonify(out)


def _decide(item_id: str, decision: str) -> Any:
    data = json_body('{"as": "boss@example.co.jp", "comment": "..."}' if decision == "approve" else
                     '{"as": "boss@example.co.jp", "reason": "..."}')
    who = principal()
    actor = who.who if who and who.kind in ("approver", "helper") else data.get("as")
    claimed = data.get("as")
    if who and who.kind in ("approver", "helper") and isinstance(claimed, str) and claimed.strip() \
            and claimed.strip().lower() != who.who:
        why = f"you are signed in as {who.who}: you cannot decide as {claimed.strip().lower()}"
        approvals().audit_refusal(item_id, who.who, why, "api")
        raise ApiError(403, "forbidden", why)
    if not isinstance(actor, str) or "@" not in actor:
        raise ApiError(400, "no_actor", "say who decides: {\"as\": \"boss@example.co.jp\"}")
    if decision == "approve":
        item = approvals().approve(item_id, actor, str(data.get("comment") or ""), via="api")
    else:
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.strip():  # a field to add, not a refusal of who asks
            raise ApiError(400, "no_reason", "a rejection needs a reason the sender can act on: "
                                             "{\"as\": \"boss@example.co.jp\", \"reason\": \"...\"}")
        item = approvals().reject(item_id, actor, reason, via="api")
    service().wake()
    return jsonify(item_json(item, full=True))


@bp.post("/api/v1/approvals/<item_id>/approve")
@require("api", "approver", "helper")
def approve(item_id: str) -> Any:
    return _decide(item_id, "approve")


@bp.post("/api/v1/approvals/<item_id>/reject")
@require("api", "approver", "helper")
def reject(item_id: str) -> Any:
    return _decide(item_id, "reject")
