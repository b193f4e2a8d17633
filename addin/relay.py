"""The central server's relay between the Outlook add-in and the user's helper.

Chrome/Edge 142+ and WebView2 143+ (Local Network Access) ask the user before a public site - Outlook
on the web, new Outlook, and every frame in them - reaches loopback. So where a central server
exists, Outlook loads the add-in from the server and the add-in talks only to the server:

    add-in --(/relay/api/v1/..., same paths as the helper's API)--> server --(row in addin_relay)-->
    the user's helper, over its own connection (GET /api/v1/central/relay/pending, helper token)
    helper: checks it in its outbox, the SendGuard window opens, reports each state back
    (POST /api/v1/central/relay/{id}/status) --> the add-in's long-poll answers

Who the user is: the add-in gets an Office single sign-on token (``Office.auth.getAccessToken``)
and exchanges it at ``/relay/api/v1/addin/session`` for an add-in token naming that user (the same
claims as the server's own add-in tokens: origin, sid, user). The server verifies the SSO token's
signature against the tenant's keys (``SENDGUARD_SERVER_SSO_JWKS_URL``), its audience (the add-in's
app registration) and issuer. A check is relayed only to its own user's helper, and only for mail
from that user by a helper token's rules (envelope sender, From and Sender headers, From display name:
``403 wrong_sender``, audited). Without SSO configured the relay refuses, so the add-in stops the send
(fail closed).

Every request that waits (the add-in's check until a helper takes it, the add-in's long-poll, the
helper's long-poll for new checks) holds one of the server's threads, so each is counted: at most 2
at a time per add-in token (``LONG_POLLS_PER_CREDENTIAL``), 4 per signed-in user whatever the number of
tokens (``RELAY_LONG_POLLS_PER_USER``; an SSO token mints add-in tokens at will), the helper's poll
together with its decisions poll 2 per helper token, and all of them together with the server's other
long polls at most ``LONG_POLLS_TOTAL`` per server process (sized from its threads). More are answered
429 / 503 at once, before anything is stored - except a helper's poll beyond the helpers' share
(``LONG_POLLS_BACKGROUND``): it is answered at once with what there is and an ``X-SendGuard-Poll-After``
hint, and the helper short-polls (a fleet of hundreds of helpers is served). Relay ids are checked (32
lower-case hex digits) before the database.

The add-in's check waits for a helper to take it (``PICKUP_SECONDS``: else ``503 helper_offline``), then for
the helper's first report (``ANSWER_SECONDS`` from the take: else ``504 helper_no_answer`` and the row is
withdrawn as a cancelled one, so a late report is answered ``cancel``). Both stop the send (fail closed).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from sqlalchemy import delete, insert, select, update

from sendguard.errors import PermissionDenied
from sendguard.outbox import AWAITING_OUTCOME
from sendguard.store import addin_relay

from .security import ApiError, LongPolls, addin_signer, background_poll, json_body, principal, require

bp = Blueprint("addin_relay", __name__)

API_PATH = "/relay"  # the add-in's API base on the server (the helper's paths below it)
ADDIN_TOKEN_MAX_AGE = 12 * 3600
PICKUP_SECONDS = 10.0  # a check no helper takes within this is refused: the helper is not connected
# a check the helper took but has not reported on within this is given up (its build crashed, or it died):
# the add-in's request ends (PICKUP_SECONDS + this stay under the add-in's 60 s submitTimeoutMs)
ANSWER_SECONDS = 30.0
ADDIN_WAITING_SECONDS = 5.0
MAX_WAIT = 30.0
TICK = 0.1  # how often a waiting request looks at the database (waiting requests are bounded: see above)
SEEN_EVERY = 1.0  # how often a waiting add-in poll records that the add-in is still there
KEEP_SECONDS = 24 * 3600
POLLS_PER_USER = 4  # waiting requests of one signed-in user's add-ins together
RELAY_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, as relay_check makes them


class SsoVerifier:
    """Office SSO access tokens (Microsoft identity platform JWTs) for the add-in's app registration."""

    def __init__(self, jwks_url: str, audience: str, issuer: str | None = None):
        import jwt

        self._jwt = jwt
        self.keys = jwt.PyJWKClient(jwks_url, cache_keys=True)
        self.audience = audience
        self.issuer = issuer

    def user(self, token: str) -> str:
        jwt = self._jwt
        try:
            key = self.keys.get_signing_key_from_jwt(token).key
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "aud"]})
        except jwt.PyJWTError as exc:
            raise PermissionDenied(f"the Office sign-in token was refused ({exc})") from None
        user = str(claims.get("preferred_username") or claims.get("upn") or claims.get("email") or "").lower()
        if "@" not in user:
            raise PermissionDenied("the Office sign-in token names no user (no preferred_username or upn)")
        return user


def _db() -> Any:
    return current_app.config["SENDGUARD_SERVICE"].store


@bp.url_value_preprocessor
def _valid_relay_id(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A malformed relay id never reaches the database (over-long ids, NUL bytes, other people's formats)."""
    relay_id = (values or {}).get("relay_id")
    if relay_id is not None and not RELAY_ID.match(str(relay_id)):
        raise ApiError(404, "not_found", f"no check {str(relay_id)[:40]!r}: relay ids are 32 lower-case "
                                         "hexadecimal digits, as the server gave them")


def _wait_seconds() -> float:
    """The ``wait`` of a long-poll: 0 to MAX_WAIT seconds (more is cut to MAX_WAIT; NaN or less than 0 is
    refused: a NaN deadline never comes, and the request would hold a thread for good)."""
    raw = request.args.get("wait") or "0"
    try:
        wait = min(float(raw), MAX_WAIT)
    except ValueError:
        raise ApiError(400, "bad_wait", f"wait must be a number of seconds, not {raw[:20]!r}") from None
    if math.isnan(wait) or wait < 0:
        raise ApiError(400, "bad_wait", f"wait must be 0 to {MAX_WAIT:g} seconds, not {raw[:20]!r}")
    return wait


@contextmanager
def _waiting(key: str, user: str) -> Iterator[None]:
    """One waiting request of an add-in: counted per token, per user and in the server's long polls."""
    per_user: LongPolls = current_app.extensions["sendguard_relay_user_polls"]
    polls: LongPolls = current_app.extensions["sendguard_long_polls"]
    with per_user.hold(user), polls.hold(key):
        yield


def _relay_caller() -> tuple[str, str]:
    """The user of the add-in token on this request (issued by ``relay_session``), and the key its
    waiting requests are counted under (one per token: its session id)."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    try:
        claims = addin_signer().load(token, "addin", ADDIN_TOKEN_MAX_AGE)
    except PermissionDenied:
        raise ApiError(401, "invalid_token", "the add-in token is missing, invalid or expired: "
                                             f"ask for a new one (POST {API_PATH}/api/v1/addin/session)") from None
    origin = request.headers.get("Origin")
    if origin and claims.get("origin") and origin != claims["origin"]:
        raise ApiError(403, "token_origin", "this add-in token was issued to another origin")
    user = str(claims.get("user") or "")
    if not claims.get("relay") or "@" not in user or not claims.get("sid"):
        raise ApiError(401, "invalid_token", "this add-in token does not name a signed-in user")
    return user, f"relay:{claims['sid']}"


def _row(relay_id: str, user: str) -> dict[str, Any]:
    with _db().engine.connect() as conn:
        row = conn.execute(select(addin_relay).where(addin_relay.c.id == relay_id)).mappings().first()
    if row is None or row["user"] != user:
        raise ApiError(404, "not_found", f"no check {relay_id!r} of yours")
    return dict(row)


def _answer(row: dict[str, Any]) -> dict[str, Any]:
    status = dict(row["status"] or {})
    # the add-in withdrew the check (relay row cancelled) before the helper said anything final
    if row["state"] == "cancelled" and status.get("state") in (None, *AWAITING_OUTCOME):
        status = {**status, "state": "cancelled"}
    return {"id": row["id"], "state": "received", "user_message": "", "approvers": [], "decision": None, **status}


# ---------------------------------------------------------------------- the add-in's side
@bp.post(f"{API_PATH}/api/v1/addin/session")
def relay_session() -> Any:
    """An add-in token for the user an Office SSO token proves."""
    verifier: SsoVerifier | None = current_app.config.get("RELAY_SSO_VERIFIER")
    if verifier is None:
        raise ApiError(503, "sso_not_configured", "this SendGuard server has no Office sign-in configured "
                                                  "(SENDGUARD_SERVER_SSO_JWKS_URL / _AUDIENCE): the add-in cannot "
                                                  "prove who you are, so nothing can be checked or sent")
    header = request.headers.get("Authorization", "")
    sso = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not sso:
        raise ApiError(401, "unauthorized", "send the Office sign-in token: Authorization: Bearer <token>")
    try:
        user = verifier.user(sso)
    except PermissionDenied as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    token = addin_signer().sign("addin", origin=request.headers.get("Origin", ""), sid=secrets.token_urlsafe(16),
                                user=user, relay=True)
    return jsonify({"token": token, "expires_in": ADDIN_TOKEN_MAX_AGE})


@bp.post(f"{API_PATH}/api/v1/checks")
def relay_check() -> Any:
    """Hand the add-in's check to the user's helper; answers with the helper's first view of it."""
    user, key = _relay_caller()
    data = json_body('{"from": {"address": "..."}, "to": [{"address": "..."}], "subject": "...", "body": "..."}')
    _users_own_mail(user, data)
    with _waiting(key, user):  # refused before anything is stored: no helper ever sees a refused check
        return _hand_over(user, data)


def _users_own_mail(user: str, data: dict[str, Any]) -> None:
    """Relay only the signed-in user's own mail, by a helper token's rules: the message is built here as the
    user's helper will build it, and its envelope sender, From and Sender headers and From display name must
    all be the user's (else ``403 wrong_sender``, audited). The helper would check a From of any of its user's
    addresses, and the approval pages would show it as that sender's mail."""
    from sendguard import compose

    from .server import own_mail_only

    try:
        raw, envelope_from, _recipients = compose.from_fields(data)  # MessageError: 422 bad_message
    except ValueError as exc:  # a header value the email package refuses (a line break in it)
        raise ApiError(422, "bad_message", f"SendGuard cannot read this message ({exc}); nothing was checked or "
                                           "sent") from None
    own_mail_only(current_app.config["SENDGUARD_SERVICE"], None, user, raw, envelope_from, holder="relay")


def _hand_over(user: str, data: dict[str, Any]) -> Any:
    now = time.time()
    relay_id = uuid.uuid4().hex
    with _db().transaction() as conn:
        conn.execute(delete(addin_relay).where(addin_relay.c.updated_at < now - KEEP_SECONDS))
        conn.execute(insert(addin_relay).values(id=relay_id, user=user, state="pending", request=data, status=None,
                                                version=0, addin_seen=now, created_at=now, updated_at=now))
    deadline = time.monotonic() + float(current_app.config.get("RELAY_PICKUP_SECONDS", PICKUP_SECONDS))
    answer_seconds = float(current_app.config.get("RELAY_ANSWER_SECONDS", ANSWER_SECONDS))
    answer_deadline: float | None = None  # set once a helper took it
    while True:
        row = _row(relay_id, user)
        if row["status"] is not None:
            status = row["status"]
            if status.get("state") == "error":
                raise ApiError(422, "refused", str(status.get("error") or "the helper could not check it"))
            return jsonify(_answer(row)), 201
        if row["state"] not in ("pending", "taken"):  # withdrawn meanwhile (cancelled): nothing will answer it
            raise ApiError(409, "withdrawn", "this check was withdrawn before SendGuard answered; nothing was sent: "
                                             "press Send again")
        if row["state"] == "taken" and answer_deadline is None:
            answer_deadline = time.monotonic() + answer_seconds
        if answer_deadline is not None and time.monotonic() > answer_deadline:
            _give_up(relay_id, user, answer_seconds)  # raises, unless the helper's first report just came
        elif answer_deadline is None and time.monotonic() > deadline:
            with _db().transaction() as conn:
                conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id,
                                                       addin_relay.c.state == "pending")
                             .values(state="expired", request=None, updated_at=time.time()))
            if _row(relay_id, user)["state"] == "expired":
                raise ApiError(503, "helper_offline", f"SendGuard on {user}'s computer is not connected to the "
                                                      "server: start SendGuard (it connects by itself), then press "
                                                      "Send again")
        time.sleep(TICK)


def _give_up(relay_id: str, user: str, answer_seconds: float) -> None:
    """The helper took the check and said nothing within ``answer_seconds`` (it crashed building it, or died):
    the add-in's request ends and the send stops (fail closed: the mail is not sent unchecked). The row is
    withdrawn as the add-in withdraws it: a late report from the helper is answered ``cancel``, and the helper
    cancels its item, so the SendGuard window does not ask about a send Outlook already stopped."""
    with _db().transaction() as conn:
        gave_up = conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id,
                                                         addin_relay.c.state == "taken",
                                                         addin_relay.c.version == 0)  # no report yet
                               .values(state="cancelled", request=None, updated_at=time.time())).rowcount
    if gave_up == 1:
        raise ApiError(504, "helper_no_answer", f"SendGuard on {user}'s computer took this message but did not "
                                                f"answer within {answer_seconds:g} seconds; nothing was sent: check "
                                                "that SendGuard is running (restart it if needed), then press Send "
                                                "again")


@bp.get(f"{API_PATH}/api/v1/outbox/<relay_id>")
def relay_poll(relay_id: str) -> Any:
    """Long-poll: answers at once with an outcome (a state the add-in does not wait in, as the helper's
    own ``GET /api/v1/outbox/{id}?wait=`` does), else when the helper reports news, or after ``wait``."""
    user, key = _relay_caller()
    wait = _wait_seconds()
    row = _row(relay_id, user)
    seen_version = row["version"]
    deadline = time.monotonic() + wait
    seen_at = 0.0
    with _waiting(key, user) if wait else nullcontext():
        while True:
            if time.monotonic() - seen_at >= SEEN_EVERY:  # the add-in is still there: the helper hands it back
                seen_at = time.monotonic()
                with _db().transaction() as conn:
                    conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id)
                                 .values(addin_seen=time.time()))
            answer = _answer(row)
            # news, or an outcome the add-in acts on (it may have come before this poll), or time is up
            if row["version"] != seen_version or answer["state"] not in AWAITING_OUTCOME or \
                    row["state"] in ("cancelled", "expired") or time.monotonic() >= deadline:
                return jsonify(answer)
            time.sleep(min(TICK, max(0.0, deadline - time.monotonic())))
            row = _row(relay_id, user)


@bp.post(f"{API_PATH}/api/v1/outbox/<relay_id>/cancel")
def relay_cancel(relay_id: str) -> Any:
    user, _key = _relay_caller()
    _row(relay_id, user)
    data = json_body('{"reason": "..."}', optional=True)  # unread, a stopped send would pass for a cancel
    if data.get("stopped_send") is True:
        # the add-in stopped a send its helper had cleared: the helper (still listening) records it not sent
        with _db().transaction() as conn:
            conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id, addin_relay.c.state == "taken")
                         .values(state="stopped", request={"reason": str(data.get("reason") or "")[:500]},
                                 updated_at=time.time()))
        return jsonify(_answer(_row(relay_id, user)))
    with _db().transaction() as conn:
        conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id,
                                               addin_relay.c.state.in_(["pending", "taken"]))
                     .values(state="cancelled", request=None, updated_at=time.time()))
    return jsonify(_answer(_row(relay_id, user)))


# ---------------------------------------------------------------------- the helper's side
def _helper_user() -> str:
    who = principal()
    assert who is not None and who.kind == "helper"
    return who.who


@bp.get("/api/v1/central/relay/pending")
@require("helper")
def relay_pending() -> Any:
    """Long-poll: this user's add-in checks no helper has taken yet; each is taken by one helper only."""
    user = _helper_user()
    wait = _wait_seconds()
    # counted with the same helper token's decisions poll (2 per token) and the server's other long polls;
    # beyond the server's budget for helpers it is answered at once (the helper short-polls)
    with background_poll(principal(), wait) as may_wait:
        deadline = time.monotonic() + may_wait
        while True:
            with _db().engine.connect() as conn:
                rows = conn.execute(select(addin_relay.c.id, addin_relay.c.request).where(
                    addin_relay.c.user == user, addin_relay.c.state == "pending")).all()
            taken = []
            for relay_id, payload in rows:
                with _db().transaction() as conn:
                    claimed = conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id,
                                                                     addin_relay.c.state == "pending")
                                           .values(state="taken", request=None, updated_at=time.time())).rowcount
                if claimed == 1:
                    taken.append({"id": relay_id, "request": payload})
            if taken or time.monotonic() >= deadline:
                return jsonify(taken)
            time.sleep(TICK)


@bp.post("/api/v1/central/relay/<relay_id>/status")
@require("helper")
def relay_status(relay_id: str) -> Any:
    """The helper's view of a relayed check; answers whether the add-in still waits or withdrew it."""
    user = _helper_user()
    status = json_body('{"state": "..."}')
    if not isinstance(status.get("state"), str):
        raise ApiError(400, "bad_json", "expected a JSON object with the item's state")
    allowed = {k: status[k] for k in ("state", "user_message", "approvers", "decision", "error") if k in status}
    row = _row(relay_id, user)
    with _db().transaction() as conn:
        conn.execute(update(addin_relay).where(addin_relay.c.id == relay_id).values(
            status=allowed, version=addin_relay.c.version + 1, updated_at=time.time()))
    stopped = row["state"] == "stopped"
    return jsonify({"cancel": row["state"] == "cancelled",
                    "addin_waiting": time.time() - float(row["addin_seen"]) <= ADDIN_WAITING_SECONDS,
                    "stopped_send": stopped, "reason": str((row["request"] or {}).get("reason") or "") if stopped
                    else ""})


def init_app(app: Flask) -> None:
    """Serve the add-in from this server through the relay (called by ``create_server_app``)."""
    jwks = app.config.get("RELAY_SSO_JWKS_URL") or os.environ.get("SENDGUARD_SERVER_SSO_JWKS_URL")
    audience = app.config.get("RELAY_SSO_AUDIENCE") or os.environ.get("SENDGUARD_SERVER_SSO_AUDIENCE")
    issuer = app.config.get("RELAY_SSO_ISSUER") or os.environ.get("SENDGUARD_SERVER_SSO_ISSUER")
    if jwks and audience and "RELAY_SSO_VERIFIER" not in app.config:
        app.config["RELAY_SSO_VERIFIER"] = SsoVerifier(jwks, audience, issuer or None)
    app.config.setdefault("ADDIN_API_PATH", API_PATH)  # launchevent.js is served with this API base
    app.config.setdefault("ADDIN_SSO", True)
    app.extensions["sendguard_relay_user_polls"] = LongPolls(
        int(app.config.get("RELAY_LONG_POLLS_PER_USER", POLLS_PER_USER)), total=1 << 30, unit="signed-in user")
    app.register_blueprint(bp)
