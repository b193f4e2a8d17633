"""``sendguard server``: the central approval server (add-in API + approvals) on PostgreSQL.

- ``sendguard server --database postgresql://... [--bind HOST:PORT] [--public-url URL]`` migrates the
  database (Alembic, ``addin/migrations``) and serves ``addin.create_app`` under gunicorn (POSIX) or
  waitress (Windows).
- ``sendguard server token issue --user ADDR`` issues a helper's per-user token (only its SHA-256 is
  stored); ``token list`` / ``token revoke``.
- ``sendguard server connect URL --token T`` (run by the user) points their helper at the server and
  keeps the token in the keyring.

Helpers submit approval requests and learn decisions through ``/api/v1/central/*`` (see
``sendguard.central``); approvers use the emailed links (``addin.approval_pages``) or their own
helper, whose token names them. All state lives in the database, so more server processes scale out
and a restart loses nothing.

Here: the service behind the app, the ``/api/v1/central`` routes and the ``sendguard server`` commands.
Apart: the database and its migrations (``addin.server_db``), helper tokens (``addin.server_tokens``),
the WSGI runner (``addin.wsgi``) and what ``server connect`` does on the user's machine
(``sendguard.server_connect``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from flask import Blueprint, Flask, current_app, jsonify, request
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from sendguard import notify, paths
from sendguard.central import decision_payload, sign_decision
from sendguard.checks import RULE_IDS, StoredCheck, addresses_in_name
from sendguard.cli_help import Group
from sendguard.config import Config
from sendguard.errors import ConfigError, NotFound, SendGuardError, StateError
from sendguard.i18n import _, translator
from sendguard.links import LinkSigner
from sendguard.outbox import DECIDED_STATES, Item, Outbox, State
from sendguard.policy import PolicyHolder
from sendguard.store import Store, helper_tokens, notices, outbox, server_settings

from . import create_app, relay
from .api import refuse_unstorable, text_problem
from .security import ApiError, background_poll, json_body, principal, require
from .server_db import database_url, migrate, setting
from .server_tokens import TokenVerifier, issue_token, revoke_tokens
from .service import AppService
from .wsgi import serve

log = logging.getLogger(__name__)

MAX_WAIT = 30.0
# links the server mails itself; links of older versions (handed to the sender's helper) no longer work
LINK_PURPOSE = "approve-mailed"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


# ---------------------------------------------------------------------- the service behind the app
class ServerOutbox(Outbox):
    """The server's outbox: the domain history is read through a short cache (every check asks for it)."""

    DOMAIN_CACHE_SECONDS = 30.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._domains: dict[str, tuple[float, bool]] = {}
        self._domains_lock = threading.Lock()

    def known_domains(self, candidates: Any) -> set[str]:
        wanted = set(candidates)
        now = time.monotonic()
        with self._domains_lock:
            cached = {d: self._domains.get(d) for d in wanted}
        fresh = {d for d, hit in cached.items() if hit and now - hit[0] < self.DOMAIN_CACHE_SECONDS}
        missing = wanted - fresh
        found = super().known_domains(missing) if missing else set()
        with self._domains_lock:
            if len(self._domains) > 50_000:
                self._domains.clear()
            for d in missing:
                self._domains[d] = (now, d in found)
            return {d for d in wanted if self._domains.get(d, (0, False))[1]}

    def record_sent_domains(self, addresses: list[str]) -> None:
        """The helper released a message: its domains are no longer new to the organization."""
        with self.store.transaction() as conn:
            self.store.record_sent_domains(conn, addresses, time.time())


def notice_transport(url: str | None) -> Any:
    """The server's own way to mail approvers: ``smtp://[user@]host:port`` (STARTTLS; ``?security=none``
    for a relay that has none), ``smtps://...`` (implicit TLS) or ``maildir:/path`` (a folder, for trials).
    The relay's password comes from ``$SENDGUARD_SERVER_MAIL_PASSWORD``. None: no approval emails."""
    if not url:
        return None
    from urllib.parse import parse_qs

    from sendguard.mailboxes.maildir import MaildirMailbox
    from sendguard.mailboxes.smtp import SmtpRelay

    parts = urlsplit(url)
    if parts.scheme == "maildir":
        folder = Path(parts.path or parts.netloc).expanduser()
        folder.parent.mkdir(parents=True, exist_ok=True)
        return MaildirMailbox(folder, "server-notices")
    if parts.scheme in ("smtp", "smtps") and parts.hostname:
        security = "ssl" if parts.scheme == "smtps" else parse_qs(parts.query).get("security", ["starttls"])[0]
        if security not in ("starttls", "ssl", "none"):
            raise SendGuardError(f"--mail-relay {_safe(url)}: security must be starttls, ssl or none")
        return SmtpRelay("server-notices", parts.hostname, parts.port or (465 if security == "ssl" else 587),
                         security, parts.username or None, os.environ.get("SENDGUARD_SERVER_MAIL_PASSWORD"))
    raise SendGuardError(f"--mail-relay {_safe(url)}: write smtp://host:port, smtps://host:port or maildir:/path")


class _Rounds:
    """A background thread that runs ``round()`` when woken and every ``interval`` seconds, logging (never
    raising) what fails, until ``stop``; started by the first ``wake``."""

    interval = 5.0
    thread_name = "sendguard-server-rounds"
    failure = "background round failed; retrying"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> object:
        raise NotImplementedError

    def wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception:
                log.exception("%s", self.failure)
            self._wake.wait(self.interval)
            self._wake.clear()


class ServerNotices(_Rounds):
    """The server mails each approver (and active deputy) their own signed link, through the
    organization's relay: links never pass through, or are stored by, the sender's helper.

    One thread per server process, woken by new requests and every few seconds; on PostgreSQL an
    advisory lock lets one process at a time send, and the ``notices`` table keeps every email single.
    """

    LOCK_ID = 7253613
    thread_name = "sendguard-server-notices"
    failure = "approval emails failed; retrying"

    def __init__(self, svc: CentralService, transport: Any, mail_from: str):
        super().__init__()
        self.svc = svc
        self.transport = transport
        self.mail_from = mail_from

    def wake(self) -> None:
        if self.transport is not None:  # without a relay approvers decide in their Approvals window
            super().wake()

    def round(self) -> int:
        """Send every approval email not sent yet; returns how many went."""
        from sqlalchemy import text

        from sendguard import notify

        svc = self.svc
        svc.follow_policy()  # approvers removed from the policy are not emailed, new ones are
        with svc.store.engine.connect() as lock:
            postgres = lock.dialect.name == "postgresql"
            if postgres and not lock.execute(text(f"SELECT pg_try_advisory_lock({self.LOCK_ID})")).scalar():
                return 0  # another server process is sending right now
            try:
                return notify.notify_approvers(
                    svc.outbox, lambda item: notify.approvers_and_deputies(item, svc.approvals),
                    lambda _item: self.transport, svc.approval_link, svc.gettext, mail_from=self.mail_from)
            finally:
                if postgres:
                    lock.execute(text(f"SELECT pg_advisory_unlock({self.LOCK_ID})"))
                    lock.commit()


def server_releases(item: Item) -> bool:
    """Does the server itself send this message once approved (``[approval] release = "server"`` in the
    server's policy when it was handed over)? The mark is the server's own: a helper cannot set it."""
    return (item.decision or {}).get("release") == "server"


class ServerReleaser(_Rounds):
    """Sends approved messages whose policy says ``release = "server"``, through the organization's relay.

    The helper handed the message over and never sends it: the server keeps it and, once an approver
    said yes, sends exactly the content that approver saw. It uses the outbox's own release step
    (``approved`` -> ``releasing`` -> ``sent``, each committed with its audit record), so a relay that is
    down leaves the message ``failed`` and retried with back-off, and a message is never sent twice.
    One thread per server process; on PostgreSQL an advisory lock lets one process at a time send.
    """

    LOCK_ID = 7253614
    interval = 2.0
    thread_name = "sendguard-server-release"
    failure = "server-side release failed; retrying"

    def __init__(self, svc: CentralService, transport: Any):
        super().__init__()
        self.svc = svc
        self.transport = transport
        self.outbox = Outbox(svc.store, svc.policy.get, (lambda _item: transport) if transport else None,
                             gettext=svc.gettext, local_approvers=False)

    def round(self) -> int:
        """Send every approved server-released message that is due; returns how many went out."""
        from sqlalchemy import text

        with self.svc.store.engine.connect() as lock:
            postgres = lock.dialect.name == "postgresql"
            if postgres and not lock.execute(text(f"SELECT pg_try_advisory_lock({self.LOCK_ID})")).scalar():
                return 0  # another server process is sending right now
            try:
                # a send interrupted by a crash: ask the transport (an SMTP relay cannot tell: the
                # message goes to needs_attention for the administrator, never out a second time)
                self.outbox.reconcile_due()
                sent = 0
                for item in self.outbox.due():
                    if not server_releases(item):
                        continue  # the sender's helper releases this one
                    try:
                        sent += self.outbox.release(item.id).state == State.SENT
                    except (StateError, NotFound):
                        continue
                    except Exception:
                        log.exception("releasing %s from the server failed", item.id)
                return sent
            finally:
                if postgres:
                    lock.execute(text(f"SELECT pg_advisory_unlock({self.LOCK_ID})"))
                    lock.commit()


class CentralService:
    """What ``create_app`` needs (``addin.service.AppService``), on PostgreSQL.

    The sender's helper releases approved mail, once the decision reaches it, unless the server's policy
    says ``[approval] release = "server"``: then the server keeps the message and sends it itself
    (``ServerReleaser``). It mails approvers itself (``ServerNotices``).
    """

    def __init__(self, url: str, public_url: str, policy_path: Path | None = None, language: str | None = None,
                 mail_url: str | None = None, mail_from: str | None = None):
        from sendguard.approvals import Approvals

        self.store = Store(database_url(url))
        self.home = paths.home()
        self.addin_presence = None  # no Outlook add-in sends mail through the server on its own
        self.public_url = public_url.rstrip("/")
        self.config = Config(language=language)
        self.policy = PolicyHolder(policy_path or (paths.home() / "policy.toml"), paths.admin_policy_file())
        self.policy.reload()
        self.gettext = translator(language)
        self.outbox = ServerOutbox(self.store, self.policy.get, None, gettext=self.gettext)
        self.approvals = Approvals(self.outbox, self.policy.get, remote=None)
        self.secret_key = setting(self.store, "secret_key", lambda: secrets.token_urlsafe(48))
        self._housekeeping = 0.0
        self._decision_key: Any = None
        host = urlsplit(self.public_url).hostname or "localhost"
        self.notices = ServerNotices(self, notice_transport(mail_url), mail_from or f"sendguard@{host}")
        self.releaser = ServerReleaser(self, self.notices.transport)
        if self.notices.transport is None:
            log.warning("no --mail-relay: approvers get no approval emails (they use the Approvals window)")
            if self.policy.get().release == "server":
                log.error('[approval] release = "server" but no --mail-relay: approved messages stay held '
                          "(needs_attention) until the server is given a relay")

    def decision_key(self) -> Any:
        """The Ed25519 key that signs approvals (made once, kept by the server, never given to helpers)."""
        if self._decision_key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            seed = setting(self.store, "decision_signing_key",
                           lambda: base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
            self._decision_key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed))
        return self._decision_key

    def wake(self) -> None:
        """A decision was just recorded: approval emails and server-side releases go now, not next tick."""
        self.notices.wake()
        self.releaser.wake()

    def confirm_url(self, item_id: str) -> None:
        """The server has no confirmation window: the sender confirms in his own helper."""
        return None

    def close(self) -> None:
        self.notices.stop()
        self.releaser.stop()
        self.store.close()

    def housekeeping(self) -> None:
        """Expire overdue requests (every process does it now and then; row locks keep it single)."""
        if time.monotonic() - self._housekeeping < 5.0:
            return
        self._housekeeping = time.monotonic()
        try:
            self.outbox.expire_due()
        except Exception:
            log.exception("expiring overdue approval requests failed")
        self.follow_policy()
        self.notices.wake()
        self.releaser.wake()

    def follow_policy(self) -> None:
        """The server's policy.toml changed: each waiting request goes to the approvers it names now
        (audited ``approval_rerouted``; the new approvers are emailed, the removed ones decide nothing)."""
        try:
            moved = self.approvals.follow_policy()
        except Exception:
            log.exception("re-routing waiting approval requests after a policy change failed; retrying")
            return
        if moved:
            log.info("policy changed: %d waiting request(s) handed to their new approvers", len(moved))

    def approval_link(self, item: Item, address: str) -> str:
        """A signed, single-use link for one approver (or deputy); it only ever goes into their email."""
        token = LinkSigner(self.secret_key, LINK_PURPOSE).sign(item.id, approver=address.lower())
        return f"{self.public_url}/approve/{item.id}?t={token}"


def status_json(item: Item) -> dict[str, Any]:
    return signed(_status(item.id, item.state, item.approvers, item.expires_at, item.approval, item.owner,
                          item.decision, item.last_error))


_STATUS_COLUMNS = ("id", "state", "approvers", "expires_at", "approval", "owner", "decision", "last_error")


def _status(item_id: str, state: str, approvers: Any, expires_at: Any, approval: Any, owner: str,
            decision: Any, last_error: Any) -> dict[str, Any]:
    """What a helper hears about one of its requests. ``release`` says who sends it once approved: the
    helper, or the server itself (then ``last_error`` says why the server could not send it yet)."""
    by_server = isinstance(decision, dict) and decision.get("release") == "server"
    status = {"id": item_id, "state": state, "approvers": approvers, "expires_at": expires_at,
              "approval": approval, "owner": owner, "release": "server" if by_server else "helper"}
    if by_server:
        status["last_error"] = last_error
    return status


def _status_row(row: Any) -> dict[str, Any]:
    return _status(*(row[c] for c in _STATUS_COLUMNS))


def signed(status: dict[str, Any]) -> dict[str, Any]:
    """An approval goes to the helper with the server's signature over the message's content hash: the
    helper releases nothing the server did not approve for exactly that content."""
    approval = status.get("approval") or {}
    if status.get("state") not in (State.APPROVED, State.SENT) or approval.get("decision") != "approved":
        return status
    if status.get("release") == "server":
        return status  # the server sends it itself: the helper gets nothing it could release with
    svc = central()
    with svc.store.engine.connect() as conn:
        raw = conn.execute(select(outbox.c.final_raw, outbox.c.raw, outbox.c.envelope_to)
                           .where(outbox.c.id == status["id"])).first()
    content = (raw[0] or raw[1] or b"") if raw else b""
    payload = decision_payload(str(status["id"]), hashlib.sha256(content).hexdigest(), approval,
                               list((raw[2] if raw else None) or []))
    return {**status, "signed": payload, "signature": sign_decision(svc.decision_key(), payload)}


# ---------------------------------------------------------------------- helper <-> server protocol
bp = Blueprint("central", __name__)


def central() -> CentralService:
    svc = current_app.config["SENDGUARD_SERVICE"]
    svc.housekeeping()
    return svc  # type: ignore[no-any-return]


def _user() -> str:
    who = principal()
    assert who is not None
    return who.who


def _is_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))  # fullmatch: "$" alone lets a trailing newline through


def _request_ids(values: list[str], field: str) -> list[str]:
    """Request ids a helper names (in the query or the body): each one as ids are made, checked before the
    database sees any (a NUL byte in one was a 500, with the statement and its values in the log)."""
    for value in values:
        if not _is_id(value):
            raise ApiError(400, f"bad_{field}", f"{field}: {value[:40]!r} is not a request id "
                                                "(1-32 letters, digits, - or _)")
    return values


@bp.post("/api/v1/central/requests")
@require("helper")
def submit_request() -> Any:
    """A helper hands over a message held for approval (idempotent on its id)."""
    svc = central()
    who = _user()
    data = json_body('{"id": "...", "sender": "...", "raw": "<the message in base64>", "sha256": "..."}')
    item_id = str(data.get("id") or "")
    if not _is_id(item_id):
        raise ApiError(400, "bad_id", "id must be 1-32 letters, digits, - or _")
    refuse_unstorable(data)  # a NUL byte in any field (sender, source, message_id, ...) never reaches SQL
    sender = str(data.get("sender") or "").strip().lower()
    if sender != who:
        why = f"this helper's token is for {who}: it cannot submit mail from {sender or '(no sender)'}"
        svc.approvals.audit_refusal(item_id, who, why, "central")
        raise ApiError(403, "forbidden", why)
    existing = _find(svc, item_id)
    if existing is not None:  # a retry (or a changed copy): the first content handed over is the one kept
        if existing.owner != who:
            raise ApiError(409, "id_taken", f"request {item_id} belongs to another user")
        return jsonify({**status_json(existing), "sha256": _stored_sha256(svc, item_id)})
    try:
        raw = base64.b64decode(str(data.get("raw") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_raw", "raw must be the message in base64") from None
    claimed = data.get("sha256")
    if claimed is not None and claimed != hashlib.sha256(raw).hexdigest():
        raise ApiError(400, "bad_hash", f"request {item_id}: the message does not match its SHA-256 (changed or cut "
                                        "on the way); nothing was stored, the helper keeps it held and sends it again")
    recipients = data.get("recipients") or []
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ApiError(400, "bad_recipients", "recipients must be a list of addresses")
    # what the sender's helper says it checked: kept for the audit, never for the decision or the release
    claimed_check = None if data.get("check") is None else StoredCheck.from_json(data["check"])  # else 400 bad_check
    envelope_from = str(data.get("envelope_from") or sender).strip()
    _own_headers_only(svc, item_id, who, raw, envelope_from)
    policy = svc.policy.get()
    # the server reads and checks the message itself, with its own policy: the approver is shown, and the
    # server sends, what is in these bytes, whatever the helper says about them
    result = _server_check(svc, item_id, who, raw, envelope_from, recipients, policy)
    if result.message.from_address and result.message.from_address != who:  # (the same check, as the rules read it)
        _own_mail_only(svc, item_id, who, "From header", [result.message.from_address])
    # nor may its display name show someone else's address (also in look-alike forms), as recipients see it
    _own_mail_only(svc, item_id, who, "display name in the From header", addresses_in_name(result.message.from_name))
    check = result.stored()
    decision = dict(data["decision"]) if isinstance(data.get("decision"), dict) else None
    if decision is not None:
        decision.pop("release", None)  # the server's policy says who sends it, never the helper
        # the server's check is of the content as it will be sent: attachments the sender removed are not
        # in it, and the helper's attachment ids must never hide one that is
        decision.pop("removed_attachments", None)
        decision.pop("sender_reasons", None)  # set below from the helper's check, labelled as its word
    if policy.release == "server":
        # the approver must see every address the server will send to (auto-Cc/Bcc are in the check too)
        listed = {r.address.lower() for r in claimed_check.recipients} if claimed_check else set()
        unlisted = sorted({r.lower() for r in recipients} - listed)
        if not recipients or unlisted:
            why = (f"request {item_id}: the check result does not list "
                   f"{', '.join(unlisted) if unlisted else 'any recipient'}; the server sends approved mail itself "
                   "and sends only to addresses the approver is shown")
            svc.approvals.audit_refusal(item_id, who, why, "central")
            raise ApiError(400, "unlisted_recipients", why)
        decision = {**(decision or {}), "release": "server"}
    reported = _reported_reasons(claimed_check, check, svc.outbox.gettext)
    if reported:  # shown to the approvers beside the server's own, marked as the helper's report
        decision = {**(decision or {}), "sender_reasons": reported}
    approvers = [a.lower() for a in policy.approvers_for(sender)]
    now = time.time()
    reasons = [r.rule for r in check.verdict.reasons_at("approve", "block")]
    helper_reasons = [r.rule for r in claimed_check.verdict.reasons_at("approve", "block")] if claimed_check else []
    subject = check.subject or ""
    message_id = check.message_id or str(data.get("message_id") or "")[:998]
    for header, value in (("Subject", subject), ("Message-ID", message_id)):
        if text_problem(value):  # the server's reading of the bytes: it goes into text columns too
            why = (f"request {item_id}: the message's {header} {text_problem(value)}, which no email may "
                   "carry; nothing was stored")
            svc.approvals.audit_refusal(item_id, who, why, "central")
            raise ApiError(400, "unreadable_message", why)
    try:
        item = svc.outbox.take_for_approval(
            item_id, raw, owner=who, sender=sender, envelope_from=envelope_from,
            recipients=recipients, message_id=message_id, subject=subject,
            source=str(data.get("source") or "central")[:16], check=check, decision=decision,
            approvers=approvers, expires_at=now + policy.expire_hours * 3600, actor=who,
            audit_data={"approvers": approvers, "reasons": reasons, "verdict": check.verdict.action,
                        "helper_reasons": helper_reasons, "sha256": hashlib.sha256(raw).hexdigest(),
                        "recipients": recipients, "subject": subject,
                        "attachments": [a.filename for a in check.attachments],
                        "release": "server" if policy.release == "server" else "helper"})
    except IntegrityError:
        existing = _find(svc, item_id)  # the same request raced in twice: answer as for a retry
        if existing is None or existing.owner != who:
            raise ApiError(409, "id_taken", f"request {item_id} belongs to another user") from None
        return jsonify({**status_json(existing), "sha256": _stored_sha256(svc, item_id)})
    svc.notices.wake()  # the server itself mails the approvers their links (never the sender's helper)
    return jsonify({**status_json(item), "sha256": hashlib.sha256(raw).hexdigest()}), 201


def _reported_reasons(claimed: StoredCheck | None, own: StoredCheck,
                      gettext: Callable[[str], str]) -> list[dict[str, str]]:
    """The reasons for approval the sender's helper gave that the server's own check did not find (its
    policy may lack the rule): the approver learns why the message was sent for approval at all. They are
    the sender's word, so each says so, and they decide nothing (the server's check, the approvers and
    what is sent come from the bytes and the server's policy)."""
    if claimed is None:
        return []
    found = {(r.rule, r.target) for r in own.verdict.reasons}
    label = gettext(_("As the sender's SendGuard reported it (the server's policy did not find this): {message}"))
    out = []
    for reason in claimed.verdict.reasons_at("approve", "block"):
        if (reason.rule, reason.target) in found or reason.rule not in _REPORTABLE:
            continue
        text = notify.header_text(reason.message or reason.rule, 300)
        out.append({"rule": reason.rule, "action": reason.action, "target": notify.header_text(reason.target, 200),
                    "message": label.format(message=text)})
    return out[:20]


_REPORTABLE = frozenset(RULE_IDS)  # rule ids a helper may report (others are not shown)


def _header_addresses(raw: bytes, *names: str) -> list[str]:
    """Every address in these headers of the message (all of them, however often the header is given)."""
    import email.parser
    import email.policy
    import email.utils

    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    values = [str(v) for name in names for v in headers.get_all(name) or []]
    return [addr for _name, addr in email.utils.getaddresses(values)]


# Whose mail a credential bound to a user may hand in, as a refusal says it (and the audit record's "via"):
# a helper token, an add-in token of the server's own (asked for with a helper token), the Outlook relay's.
_BOUND_TO = {
    "helper": ("this helper's token is for {who}; a helper hands over only its own user's mail", "central"),
    "addin": ("this add-in session is {who}'s; it files only {who}'s own mail", "addin"),
    "relay": ("you are signed in as {who}; SendGuard checks only your own mail for you", "relay"),
}


def _own_mail_only(svc: AppService, item_id: str | None, who: str, where: str, addresses: list[str],
                   holder: str = "helper") -> None:
    """A helper's (or add-in's) token names its user: refuse (403, audited) mail that says it comes from
    anyone else."""
    others = sorted({a.strip() for a in addresses if a.strip().lower() != who})
    if others:
        bound, via = _BOUND_TO[holder]
        why = (f"{f'request {item_id}: ' if item_id else ''}the {where} is {', '.join(others)}, but "
               f"{bound.format(who=who)}. Send it from {who}"
               + (f", or have {others[0]} send it with their own SendGuard" if "@" in others[0] else ""))
        svc.approvals.audit_refusal(item_id, who, why, via)
        raise ApiError(403, "wrong_sender", why)


def _own_headers_only(svc: AppService, item_id: str | None, who: str, raw: bytes, envelope_from: str,
                      holder: str = "helper") -> None:
    """The envelope sender and every address in the From and Sender headers are the token's user."""
    _own_mail_only(svc, item_id, who, "envelope sender", [envelope_from], holder)
    _own_mail_only(svc, item_id, who, "From header", _header_addresses(raw, "from", "sender"), holder)


def own_mail_only(svc: AppService, item_id: str | None, who: str, raw: bytes, envelope_from: str,
                  holder: str = "helper") -> None:
    """A check handed in with a credential bound to a user is that user's mail, so it is refused
    (``403 wrong_sender``, audited) unless it is the user's own by the rules of a hand-over: the envelope
    sender, the From and Sender headers, and the From address and display name as checks read them.

    ``holder`` names the credential, for the refusal's words: ``helper`` (``POST /api/v1/checks`` with a
    helper token), ``addin`` (with an add-in token bound to a user), ``relay`` (the Outlook relay, before it
    passes a check on to the user's helper)."""
    from sendguard import message as msgmod

    _own_headers_only(svc, item_id, who, raw, envelope_from or "(no sender)", holder)  # nobody's mail is not theirs
    parsed = msgmod.parse(raw, envelope_from)
    _own_mail_only(svc, item_id, who, "From header", [parsed.from_address] if parsed.from_address else [], holder)
    _own_mail_only(svc, item_id, who, "display name in the From header", addresses_in_name(parsed.from_name),
                   holder)


def _server_check(svc: CentralService, item_id: str, who: str, raw: bytes, envelope_from: str,
                  recipients: list[str], policy: Any) -> Any:
    """The server's own check of the bytes handed over (``sendguard.checks``, the server's policy)."""
    from sendguard.errors import MessageError

    try:
        return svc.outbox.evaluate(raw, envelope_from, recipients, policy)
    except MessageError as exc:
        why = f"request {item_id}: the server cannot read the message handed over ({exc}); nothing was stored"
        svc.approvals.audit_refusal(item_id, who, why, "central")
        raise ApiError(400, "unreadable_message", why) from None
    except Exception:  # a failing rule: nothing is kept unchecked; the helper keeps it held and tries again
        log.exception("checking request %s failed", item_id)
        raise ApiError(500, "check_failed", f"request {item_id}: the server could not check the message; nothing "
                                            "was stored, the helper keeps it held and hands it over again") from None


def _stored_sha256(svc: CentralService, item_id: str) -> str:
    """The SHA-256 of the content the server keeps for a request (what an approver sees and approves)."""
    with svc.store.engine.connect() as conn:
        row = conn.execute(select(outbox.c.final_raw, outbox.c.raw).where(outbox.c.id == item_id)).first()
    return hashlib.sha256((row[0] or row[1] or b"") if row else b"").hexdigest()


def _find(svc: CentralService, item_id: str) -> Item | None:
    cols = [c for c in outbox.c if c.name not in ("raw", "final_raw")]
    with svc.store.engine.connect() as conn:
        row = conn.execute(select(*cols).where(outbox.c.id == item_id)).first()
    return Item.from_row(row) if row else None


@bp.get("/api/v1/central/requests")
@require("helper")
def request_statuses() -> Any:
    svc = central()
    ids = _request_ids([i for i in request.args.get("ids", "").split(",") if i][:500], "ids")
    cols = [outbox.c[n] for n in _STATUS_COLUMNS]
    with svc.store.engine.connect() as conn:
        rows = conn.execute(select(*cols).where(outbox.c.id.in_(ids), outbox.c.owner == _user())).mappings().all()
    return jsonify([signed(_status_row(r)) for r in rows])


@bp.get("/api/v1/central/decisions")
@require("helper")
def decisions() -> Any:
    """Decided requests of this user not yet acknowledged; waits (long poll) up to ``wait`` s for one."""
    svc = central()
    who = _user()
    try:
        wait = float(request.args.get("wait", 0))
        if not 0.0 <= wait:  # NaN and negatives
            raise ValueError(wait)
        wait = min(wait, MAX_WAIT)
    except ValueError:
        raise ApiError(400, "bad_wait", "wait must be a number of seconds") from None
    skip = _request_ids([i for i in request.args.get("skip", "").split(",") if i][:500], "skip")
    acked = select(notices.c.item_id).where(notices.c.kind == "helper_ack", notices.c.recipient == who)
    cols = [outbox.c[n] for n in _STATUS_COLUMNS]
    query = select(*cols).where(outbox.c.owner == who, outbox.c.state.in_([s.value for s in DECIDED_STATES]),
                                outbox.c.id.not_in(acked))
    if skip:
        query = query.where(outbox.c.id.not_in(skip))
    query = query.order_by(outbox.c.updated_at).limit(200)
    # a helper's poll: waits while the server's budget for helpers allows, else is answered at once
    with background_poll(principal(), wait) as may_wait:
        deadline = time.monotonic() + may_wait
        while True:
            with svc.store.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
            if rows or time.monotonic() >= deadline:
                return jsonify([signed(_status_row(r)) for r in rows])
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            svc.housekeeping()


@bp.post("/api/v1/central/decisions/ack")
@require("helper")
def ack_decisions() -> Any:
    svc = central()
    who = _user()
    ids = json_body('{"ids": ["..."]}').get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "bad_ids", "expected {\"ids\": [...]}")
    done = 0
    for item_id in _request_ids(ids[:500], "ids"):
        item = _find(svc, item_id)
        if item is None or item.owner != who or item.state not in DECIDED_STATES:
            continue
        try:
            with svc.store.transaction() as conn:
                conn.execute(insert(notices).values(item_id=item_id, kind="helper_ack", recipient=who,
                                                    sent_at=time.time()))
                svc.store.append_audit(conn, "decision_delivered", who, item_id, {"state": item.state})
            done += 1
        except IntegrityError:
            continue
    return jsonify({"acknowledged": done})


def _own(svc: CentralService, item_id: str) -> Item:
    item = _find(svc, item_id)
    if item is None or item.owner != _user():
        raise ApiError(404, "not_found", f"no approval request {item_id} of yours on this server")
    return item


@bp.post("/api/v1/central/requests/<item_id>/cancel")
@require("helper")
def cancel_request(item_id: str) -> Any:
    """The sender cancelled the message in their helper: withdraw the request."""
    svc = central()
    # a message the server sends itself can be withdrawn until the server starts sending it
    only_from = [State.AWAITING_APPROVAL, State.APPROVED, State.FAILED] if server_releases(_own(svc, item_id)) \
        else [State.AWAITING_APPROVAL]
    item = svc.outbox.transition(item_id, "cancel", _user(), {"reason": "cancelled by the sender"},
                                 only_from=only_from)
    return jsonify(status_json(item))


@bp.post("/api/v1/central/requests/<item_id>/released")
@require("helper")
def released(item_id: str) -> Any:
    """The sender's helper sent the approved message: the server's record says so too."""
    svc = central()
    item = _own(svc, item_id)
    if server_releases(item):
        why = f"message {item_id} is sent by the central server itself: a helper cannot report it sent"
        svc.approvals.audit_refusal(item_id, _user(), why, "central")
        raise ApiError(409, "server_releases", why)
    if item.state == State.APPROVED:
        item = svc.outbox.transition(item_id, "helper_sent", _user(), {"by_helper": True})
        try:
            svc.outbox.record_sent_domains(item.envelope_to)
        except Exception:  # the domain history is a hint for checks; never fail the report for it
            log.exception("cannot record the domains of %s", item_id)
    return jsonify(status_json(item))


def _checkpoint_key(user: str, db: str) -> str:
    return "cp:" + hashlib.sha256(f"{user}\n{db}".encode()).hexdigest()[:40]


@bp.post("/api/v1/central/audit-checkpoint")
@require("helper")
def put_checkpoint() -> Any:
    """A helper's signed audit head: the server keeps the latest one, out of the helper's reach, so the
    helper's ``audit verify`` can tell whether its log was cut short or rewritten since."""
    svc = central()
    data = json_body('{"seq": 1, "hash": "...", "ts": "...", "sig": "...", "db": "..."}')
    fields = {"seq": int, "hash": str, "ts": str, "sig": str, "db": str}
    if not all(isinstance(data.get(k), t) and not isinstance(data.get(k), bool) for k, t in fields.items()):
        raise ApiError(400, "bad_checkpoint", "expected {seq, hash, ts, sig, db}")
    if len(str(data)) > 2000 or data["seq"] < 0:
        raise ApiError(400, "bad_checkpoint", "this is not a checkpoint")
    key = _checkpoint_key(_user(), data["db"])
    value = json.dumps({k: data[k] for k in fields})
    with svc.store.transaction() as conn:
        row = conn.execute(select(server_settings.c.value).where(server_settings.c.key == key)
                           .with_for_update()).first()
        if row is None:
            conn.execute(insert(server_settings).values(key=key, value=value))
        elif int(json.loads(row[0]).get("seq", 0)) <= data["seq"]:
            conn.execute(update(server_settings).where(server_settings.c.key == key).values(value=value))
        else:  # never backwards: a helper whose log went back is exactly what this is here to show
            return jsonify(json.loads(row[0]))
    return jsonify(json.loads(value))


@bp.get("/api/v1/central/audit-checkpoint")
@require("helper")
def get_checkpoint() -> Any:
    svc = central()
    db = request.args.get("db", "")
    with svc.store.engine.connect() as conn:
        row = conn.execute(select(server_settings.c.value)
                           .where(server_settings.c.key == _checkpoint_key(_user(), db))).first()
    return jsonify(json.loads(row[0]) if row else None)


@bp.get("/api/v1/central/decision-key")
@require("helper")
def decision_key() -> Any:
    """The public half of the key that signs approvals (helpers pin it at `sendguard server connect`)."""
    from cryptography.hazmat.primitives import serialization

    public = central().decision_key().public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw)
    return jsonify({"ed25519": base64.b64encode(public).decode("ascii")})


@bp.post("/api/v1/central/login-link")
@require("helper")
def login_link() -> Any:
    """A single-use sign-in link to the approvals page, for the user's desktop Approvals window."""
    from sendguard.links import approvals_login_url as login_url

    from .server_tokens import _hash

    svc = central()
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return jsonify({"url": login_url(svc.public_url, _user(), current_app.config["SECRET_KEY"], via=_hash(given))})


# ---------------------------------------------------------------------- the app
DEFAULT_THREADS = 16  # per worker process (gunicorn gthread); waitress: workers x threads in one process


def wait_budget(threads: int, total: str | None = None, helpers: str | None = None) -> dict[str, int]:
    """How many requests of one server process may wait (long polls), from its thread count.

    A quarter of the threads (at least 2) stay free for ordinary requests and /healthz; of the rest, two
    thirds at most go to helpers' polls (a helper beyond that is answered at once and short-polls, so a
    fleet of any size is served), the remainder is kept for add-ins waiting on a check (503 beyond).
    ``SENDGUARD_SERVER_LONG_POLLS`` / ``SENDGUARD_SERVER_HELPER_POLLS`` set the two numbers instead."""
    def number(value: str | None, name: str, default: int) -> int:
        if value is None or not value.strip():
            return default
        try:
            n = int(value)
        except ValueError:
            raise ConfigError("environment", f"{name}={value!r}: write a whole number of waiting requests per "
                                             "server process, e.g. 12", key=name) from None
        if n < 0:
            raise ConfigError("environment", f"{name}={value!r}: write 0 or more waiting requests per server "
                                             "process", key=name)
        return n

    total_n = number(total, "SENDGUARD_SERVER_LONG_POLLS", max(1, threads - max(2, threads // 4)))
    helpers_n = number(helpers, "SENDGUARD_SERVER_HELPER_POLLS", max(1, total_n * 2 // 3) if total_n else 0)
    return {"LONG_POLLS_TOTAL": total_n, "LONG_POLLS_BACKGROUND": min(helpers_n, total_n)}


def create_server_app(url: str, public_url: str, policy_path: Path | None = None,
                      allowed_hosts: list[str] | None = None, language: str | None = None,
                      test_config: dict[str, Any] | None = None, mail_url: str | None = None,
                      mail_from: str | None = None) -> Flask:
    svc = CentralService(url, public_url, policy_path, language, mail_url, mail_from)
    public = urlsplit(svc.public_url)
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
    for host in [public.hostname or "", *(allowed_hosts or [])]:
        if host and host.lower() not in hosts:
            hosts.append(host.lower())
    origins = [f"{public.scheme}://{public.netloc}"] if public.netloc else []
    config = {
        "SECRET_KEY": svc.secret_key, "ALLOWED_HOSTS": hosts, "EXTRA_ORIGINS": origins,
        # nobody holds a full-access token on the server: helpers and approvers act as themselves
        "API_TOKEN": secrets.token_urlsafe(48),
        "HELPER_TOKEN_VERIFIER": TokenVerifier(svc.store),
        "APPROVAL_LINK_PURPOSE": LINK_PURPOSE,
        "ADDIN_NEEDS_USER": True,  # an add-in token names a user proven by their helper token
        "OWN_USER_ONLY": False,  # many users' sessions, maybe through a local reverse proxy run as another user
        **wait_budget(int(os.environ.get("SENDGUARD_SERVER_THREADS") or DEFAULT_THREADS),
                      os.environ.get("SENDGUARD_SERVER_LONG_POLLS"), os.environ.get("SENDGUARD_SERVER_HELPER_POLLS")),
        "SESSION_COOKIE_SECURE": public.scheme == "https",
        "SESSION_COOKIE_SAMESITE": "Lax",
        **(test_config or {}),
    }
    app = create_app(svc, config)
    app.register_blueprint(bp)
    relay.init_app(app)  # the Outlook add-in is served from here and reaches the user's helper through us
    return app


def _app_from_env() -> Flask:
    """WSGI entry for gunicorn workers: settings come from SENDGUARD_SERVER_* variables."""
    return create_server_app(
        os.environ["SENDGUARD_SERVER_DATABASE"], os.environ["SENDGUARD_SERVER_PUBLIC_URL"],
        Path(os.environ["SENDGUARD_SERVER_POLICY"]) if os.environ.get("SENDGUARD_SERVER_POLICY") else None,
        json.loads(os.environ.get("SENDGUARD_SERVER_HOSTS", "[]")), os.environ.get("SENDGUARD_SERVER_LANGUAGE"),
        mail_url=os.environ.get("SENDGUARD_SERVER_MAIL") or None,
        mail_from=os.environ.get("SENDGUARD_SERVER_MAIL_FROM") or None)


# ---------------------------------------------------------------------- command line
def _resolve_database(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """--database on the subcommand, else on `sendguard server`, else $SENDGUARD_DATABASE_URL (click reads
    it), else [server] database in config.toml: the admin types the URL once."""
    if value:
        return value
    parent = ctx.parent.params.get("database") if ctx.parent is not None else None
    found = str(parent) if parent else _configured_database()
    if found:
        return found
    raise click.UsageError("say which database: --database postgresql://user@host/db, or set "
                           "$SENDGUARD_DATABASE_URL, or [server] database in config.toml")


def _configured_database() -> str | None:
    from sendguard import config as configmod

    try:
        return configmod.load().server_database
    except SendGuardError as exc:
        raise click.ClickException(str(exc)) from None


def _database_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--database", envvar="SENDGUARD_DATABASE_URL", metavar="URL", callback=_resolve_database,
                        help="postgresql://user@host/db (default: $SENDGUARD_DATABASE_URL, then [server] "
                             "database in config.toml).")(func)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--database", envvar="SENDGUARD_DATABASE_URL", metavar="URL",
              help="postgresql://user@host/db (or $SENDGUARD_DATABASE_URL).")
@click.option("--bind", default="127.0.0.1:8800", show_default=True, metavar="HOST:PORT",
              help="Where to listen (port 0: any free port).")
@click.option("--public-url", default=None, metavar="URL",
              help="The address approvers and helpers use (for links); default http://BIND.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another Host name this server answers to (repeatable).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="policy.toml with [approval] (default: $SENDGUARD_HOME/policy.toml).")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=DEFAULT_THREADS, show_default=True,
              help="Threads per worker process. Helpers' polls wait on up to half of them; more helpers are "
                   "answered at once and ask again a few seconds later (see docs/central-server.md, sizing).")
@click.option("--language", default=None, help="Language of pages and emails (en, ja, zh).")
@click.option("--mail-relay", default=None, metavar="URL",
              help="How the server mails approvers their links: smtp://[user@]host:port (password in "
                   "$SENDGUARD_SERVER_MAIL_PASSWORD), smtps://host:port or maildir:/path.")
@click.option("--mail-from", default=None, metavar="ADDR", help="Sender of approval emails "
                                                                "(default sendguard@<public host>).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Once listening, write the server's URL here as JSON (for scripts and tests).")
@click.pass_context
def server_command(ctx: click.Context, database: str | None, bind: str, public_url: str | None,
                   allowed_hosts: tuple[str, ...], policy_path: Path | None, workers: int, threads: int,
                   language: str | None, mail_relay: str | None, mail_from: str | None,
                   ready_file: Path | None) -> None:
    """Run the central server: the add-in API and approvals on PostgreSQL (gunicorn/waitress)."""
    if ctx.invoked_subcommand is not None:
        return
    database = database or _configured_database()
    if not database:
        raise click.ClickException("say which database: --database postgresql://user@host/db, or set "
                                   "$SENDGUARD_DATABASE_URL, or [server] database in config.toml")
    host, _, port_text = bind.rpartition(":")
    if not host or not port_text.isdigit():
        raise click.ClickException(f"--bind {bind!r}: write it as HOST:PORT, e.g. 0.0.0.0:8800")
    port = int(port_text)
    try:
        migrate(database)
        Store(database_url(database)).close()  # the audit key exists before the workers start
    except Exception as exc:
        raise click.ClickException(f"cannot prepare the database {_safe(database)}: {exc}") from None
    if port == 0 and not public_url and not ready_file:
        raise click.ClickException("with port 0, give --public-url or --ready-file")
    env = {"SENDGUARD_SERVER_DATABASE": database, "SENDGUARD_SERVER_PUBLIC_URL": public_url or f"http://{bind}",
           "SENDGUARD_SERVER_HOSTS": json.dumps(list(allowed_hosts)), "SENDGUARD_SERVER_THREADS": str(threads)}
    try:
        wait_budget(threads, os.environ.get("SENDGUARD_SERVER_LONG_POLLS"),
                    os.environ.get("SENDGUARD_SERVER_HELPER_POLLS"))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if policy_path:
        env["SENDGUARD_SERVER_POLICY"] = str(policy_path.resolve())
    if language:
        env["SENDGUARD_SERVER_LANGUAGE"] = language
    if mail_relay:
        try:
            notice_transport(mail_relay)
        except SendGuardError as exc:
            raise click.ClickException(str(exc)) from None
        env["SENDGUARD_SERVER_MAIL"] = mail_relay
    if mail_from:
        env["SENDGUARD_SERVER_MAIL_FROM"] = mail_from
    if port == 0 and not public_url:
        env["SENDGUARD_SERVER_PUBLIC_URL"] = ""  # learned once listening (see _ReadyPublicUrl)
    os.environ.update(env)
    click.echo(f"SendGuard central server on {bind} (database {_safe(database)})", err=True)

    def factory() -> Flask:
        if not os.environ.get("SENDGUARD_SERVER_PUBLIC_URL") and ready_file:
            os.environ["SENDGUARD_SERVER_PUBLIC_URL"] = _wait_ready_url(ready_file)
        return _app_from_env()

    serve(factory, host, port, workers, threads, ready_file, longest_request=MAX_WAIT + 30)


def _wait_ready_url(ready_file: Path) -> str:
    for _attempt in range(200):
        try:
            return str(json.loads(ready_file.read_text())["url"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return "http://127.0.0.1"


def _safe(url: str) -> str:
    """The URL without its password (in the user part or as ``?password=``/``?sslpassword=``)."""
    from urllib.parse import parse_qsl, urlencode, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        query = [(k, "***" if "password" in k.lower() or k.lower() in ("passfile", "sslkey") else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*/"), parts.fragment))
    except ValueError:
        return "(a database URL that cannot be parsed)"


@server_command.command("migrate")
@_database_option
def migrate_command(database: str) -> None:
    """Create or upgrade the server's tables (Alembic) and exit."""
    try:
        migrate(database)
    except Exception as exc:
        raise click.ClickException(f"cannot migrate {_safe(database)}: {exc}") from None
    click.echo("database is up to date")


@server_command.group("token")
def token_group() -> None:
    """Per-user helper tokens (admin)."""


def _store(database: str) -> Store:
    try:
        migrate(database)
        return Store(database_url(database))
    except Exception as exc:
        raise click.ClickException(f"cannot open the database {_safe(database)}: {exc}") from None


@token_group.command("issue")
@_database_option
@click.option("--user", required=True, metavar="ADDR", help="The user's email address (their sender address).")
@click.option("--label", default="", help="A note, e.g. the machine's name.")
def token_issue(database: str, user: str, label: str) -> None:
    """Issue a token for USER's helper; it is printed once and never stored in clear."""
    store = _store(database)
    try:
        click.echo(issue_token(store, user, label))
    except SendGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@token_group.command("list")
@_database_option
@click.option("--json", "as_json", is_flag=True)
def token_list(database: str, as_json: bool) -> None:
    """List issued tokens (ids and users, never the tokens)."""
    store = _store(database)
    with store.engine.connect() as conn:
        rows = conn.execute(select(helper_tokens).order_by(helper_tokens.c.created_at)).mappings().all()
    store.close()
    out = [{"id": r["token_hash"][:12], "user": r["user"], "label": r["label"], "created_at": r["created_at"],
            "revoked": r["revoked_at"] is not None} for r in rows]
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for r in out:
        click.echo(f"{r['id']}  {r['user']}  {'revoked' if r['revoked'] else 'active'}  {r['label']}")


@token_group.command("revoke")
@_database_option
@click.option("--user", required=True, metavar="ADDR")
@click.option("--id", "token_id", default=None, help="Only this token (from `token list`); default: all of USER's.")
def token_revoke(database: str, user: str, token_id: str | None) -> None:
    """Revoke a user's helper token(s)."""
    store = _store(database)
    count = revoke_tokens(store, user, token_id)
    store.close()
    click.echo(f"revoked {count} token(s) of {user}")


@server_command.group("releases")
def releases_group() -> None:
    """Messages the server sends itself ([approval] release = "server") that have not gone out (admin)."""


def _server_outbox(store: Store) -> Outbox:
    from sendguard.policy import Policy

    return Outbox(store, lambda: Policy(), None, local_approvers=False)  # reads and settles; never sends


@releases_group.command("list")
@_database_option
@click.option("--json", "as_json", is_flag=True)
def releases_list(database: str, as_json: bool) -> None:
    """Approved messages the server still has to send, is sending, retries, or could not send."""
    store = _store(database)
    try:
        items = [i for i in _server_outbox(store).list([State.APPROVED, State.RELEASING, State.FAILED, State.NEEDS_ATTENTION],
                                                        limit=10_000) if server_releases(i)]
    finally:
        store.close()
    out = [{"id": i.id, "state": i.state, "from": i.sender, "subject": i.subject, "attempts": i.attempts,
            "last_error": i.last_error} for i in items]
    if as_json:
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if not out:
        click.echo("nothing waiting: every approved message the server sends has gone out")
    for r in out:
        click.echo(f"{r['id']}  {r['state']}  {r['from']}  {r['subject']}")
        if r["last_error"]:
            click.echo(f"  ! {r['last_error']}")


@releases_group.command("resolve")
@_database_option
@click.argument("item_id")
@click.option("--sent", "outcome", flag_value="sent", help="It did go out (you checked the relay's log).")
@click.option("--resend", "outcome", flag_value="resend", help="It did not go out: send it again.")
def releases_resolve(database: str, item_id: str, outcome: str | None) -> None:
    """Settle a message the server could not send (needs_attention): it went out, or send it again."""
    if outcome is None:
        raise click.UsageError("say what happened: --sent (it went out) or --resend (send it again)")
    if not _is_id(item_id):
        raise click.ClickException(f"{item_id!r} is not a message id (see `sendguard server releases list`)")
    store = _store(database)
    try:
        box = _server_outbox(store)
        item = box.get(item_id)
        if not server_releases(item):
            raise click.ClickException(f"message {item_id} is sent by its sender's helper, not by this server")
        item = box.resolve(item_id, outcome == "sent", actor="admin")
    except SendGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"message {item_id} is now {item.state}"
               + (" (the server sends it again within seconds)" if item.state == State.FAILED else ""))


@server_command.command("connect")
@click.argument("url")
@click.option("--token", prompt=True, hide_input=True, help="The token your administrator issued.")
def connect_command(url: str, token: str) -> None:
    """Point this helper at a central server (config.toml [server] url; the token goes to the keyring)."""
    from sendguard.server_connect import connect

    try:
        connect(url, token)
    except SendGuardError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"this helper now uses {url} for approvals (restart `sendguard serve`)")
