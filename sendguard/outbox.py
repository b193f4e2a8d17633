"""The durable outbox and its state machine (DESIGN §2).

received -> awaiting_confirmation -> confirmed -> (awaiting_approval -> approved | rejected)
-> releasing -> sent; any held state -> cancelled; awaiting_approval -> expired;
releasing -> failed (retried) | needs_attention.

Each transition and its audit record are one transaction. ``releasing`` is committed before a
transport is called and ``sent`` after, so a crash can never send twice: ``reconcile`` asks the
transport what happened to anything found in ``releasing``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update

from . import checks, faults, message
from .errors import MessageError, NotFound, PermissionDenied, StateError
from .mailboxes.base import AuthError, Mailbox, MailboxError, PermanentError, ReleaseItem, TransientError
from .policy import Policy
from .rewrite import Decision, apply
from .store import Store, domains, now_iso, outbox

log = logging.getLogger(__name__)

STATES = ("received", "awaiting_confirmation", "confirmed", "awaiting_approval", "approved", "rejected",
          "releasing", "sent", "cancelled", "expired", "failed", "needs_attention")
HELD_STATES = ("received", "awaiting_confirmation", "confirmed", "awaiting_approval", "approved", "failed",
               "needs_attention")
FINAL_STATES = ("sent", "cancelled", "rejected", "expired")
CANCELLABLE = ("received", "awaiting_confirmation", "confirmed", "awaiting_approval", "approved", "failed",
               "needs_attention")
MAX_BACKOFF = 1800.0


_INSERT_ITEM = insert(outbox)


@dataclass
class Incoming:
    """A message handed to the outbox by a submission adapter."""

    raw: bytes
    envelope_from: str
    recipients: list[str]
    source: str = "smtp"
    source_ref: str | None = None
    account: str | None = None
    actor: str | None = None


@dataclass
class Item:
    """One outbox item as stored (bodies left out unless asked for)."""

    id: str
    state: str
    source: str
    source_ref: str | None
    account: str | None
    owner: str
    envelope_from: str
    envelope_to: list[str]
    message_id: str
    sender: str
    subject: str
    check: dict[str, Any] | None
    decision: dict[str, Any] | None
    approvers: list[str]
    approval: dict[str, Any] | None
    release_after: float
    expires_at: float | None
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    purged: bool
    raw: bytes | None = None
    final_raw: bytes | None = None

    @classmethod
    def from_row(cls, row: Any, with_bodies: bool = False) -> Item:
        m = row._mapping
        return cls(
            id=m["id"], state=m["state"], source=m["source"], source_ref=m["source_ref"], account=m["account"],
            owner=m["owner"] or "", envelope_from=m["envelope_from"] or "", envelope_to=list(m["envelope_to"] or []),
            message_id=m["message_id"] or "", sender=m["sender"] or "", subject=m["subject"] or "",
            check=m["check_result"], decision=m["decision"], approvers=list(m["approvers"] or []),
            approval=m["approval"], release_after=m["release_after"] or 0.0, expires_at=m["expires_at"],
            attempts=m["attempts"] or 0, last_error=m["last_error"], created_at=m["created_at"],
            updated_at=m["updated_at"], purged=bool(m["purged"]),
            raw=m["raw"] if with_bodies else None, final_raw=m["final_raw"] if with_bodies else None,
        )

    @property
    def verdict(self) -> dict[str, Any]:
        return (self.check or {}).get("verdict") or {"action": "allow", "approvers": [], "reasons": []}

    def summary(self) -> dict[str, Any]:
        """The ``queue list --json`` shape."""
        check = self.check or {}
        return {
            "id": self.id,
            "state": self.state,
            "source": self.source,
            "from": self.sender,
            "subject": self.subject,
            "recipients": check.get("recipients", [{"address": a} for a in self.envelope_to]),
            "attachments": check.get("attachments", []),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "verdict": self.verdict.get("action", "allow"),
            "last_error": self.last_error,
        }


def _iso(ts: float) -> str:
    return now_iso(ts)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Outbox:
    """Intake, decisions and release of held mail. Thread-safe; several processes may share the store."""

    store: Store
    policy: Callable[[], Policy]
    mailbox_for: Callable[[Item], Mailbox] | None = None
    clock: Callable[[], float] = time.time
    gettext: Callable[[str], str] = str
    listeners: list[Callable[[Item], None]] = field(default_factory=list)
    # checks an approved message before release (central server: the server's signed decision)
    release_guard: Callable[[Item], None] | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _release_lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ reading
    def get(self, item_id: str, with_bodies: bool = False) -> Item:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == item_id)).first()
        if row is None:
            raise NotFound(f"no message {item_id!r} in the outbox (see `sendguard queue list`)")
        return Item.from_row(row, with_bodies)

    def list(self, states: Iterable[str] | None = None, owner: str | None = None, limit: int = 1000) -> list[Item]:
        cols = [c for c in outbox.c if c.name not in ("raw", "final_raw")]
        query = select(*cols).order_by(outbox.c.created_at.desc()).limit(limit)
        if states:
            query = query.where(outbox.c.state.in_(list(states)))
        if owner:
            query = query.where(outbox.c.owner == owner.lower())
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Item.from_row(r) for r in rows]

    def by_source_ref(self, source: str, ref: str) -> Item | None:
        """The item already taken in from a connector's hold folder (so a re-fetch is not doubled)."""
        query = select(*[c for c in outbox.c if c.name not in ("raw", "final_raw")]).where(
            outbox.c.source == source, outbox.c.source_ref == ref)
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        return Item.from_row(row) if row else None

    def counts(self) -> dict[str, int]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state)).all()
        return {state: n for state, n in rows}

    def known_domains(self, candidates: Iterable[str]) -> set[str]:
        wanted = list(set(candidates))
        if not wanted:
            return set()
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(domains.c.domain).where(domains.c.domain.in_(wanted))).all()
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ transitions
    def _notify(self, item_id: str) -> None:
        with self._changed:
            self._changed.notify_all()
        if self.listeners:
            try:
                item = self.get(item_id)
            except NotFound:
                return
            for listener in list(self.listeners):
                try:
                    listener(item)
                except Exception:  # a UI listener must never break the outbox
                    log.exception("outbox listener failed")

    def transition(self, item_id: str, allowed: Iterable[str], to: str, event: str, actor: str,
                   data: dict[str, Any] | None = None, **values: Any) -> Item:
        """Move one item from one of ``allowed`` states to ``to``, with its audit record, atomically."""
        allowed = tuple(allowed)
        with self.store.transaction() as conn:
            query = select(outbox.c.state).where(outbox.c.id == item_id)
            if not self.store.is_sqlite:
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise NotFound(f"no message {item_id!r} in the outbox (see `sendguard queue list`)")
            if row.state not in allowed:
                raise StateError(f"message {item_id} is {row.state}: cannot {event.replace('_', ' ')} it now")
            conn.execute(update(outbox).where(outbox.c.id == item_id)
                         .values(state=to, updated_at=self.clock(), **values))
            self.store.append_audit(conn, event, actor, item_id, {"from": row.state, "to": to, **(data or {})},
                                    ts=self.clock())
            faults.point(f"transition.{event}.uncommitted")
        faults.point(f"transition.{event}.committed")
        self._notify(item_id)
        return self.get(item_id)

    def wait(self, item_id: str, while_in: Iterable[str], timeout: float) -> Item:
        """Block until the item leaves ``while_in`` (or timeout); sees changes from other processes too."""
        while_in = tuple(while_in)
        deadline = time.monotonic() + timeout
        while True:
            item = self.get(item_id)
            left = deadline - time.monotonic()
            if item.state not in while_in or left <= 0:
                return item
            with self._changed:
                self._changed.wait(min(left, 0.5))

    # ------------------------------------------------------------------ intake
    def receive(self, raw: bytes, envelope_from: str, recipients: Iterable[str], source: str = "smtp",
                source_ref: str | None = None, account: str | None = None, actor: str | None = None) -> str:
        """Commit the message as received (raw MIME + envelope) and return its id. Durable on return."""
        return self.receive_many([Incoming(raw, envelope_from, list(recipients), source, source_ref, account,
                                           actor)])[0]

    def receive_many(self, incoming: list[Incoming]) -> list[str]:
        """Commit several received messages in one transaction (group commit: one fsync for all)."""
        now = self.clock()
        ids = []
        rows = []
        for msg in incoming:
            item_id = new_id()
            envelope = [r.strip() for r in msg.recipients]
            msg_id = _header_message_id(msg.raw) or f"<{item_id}.sendguard@{_hostname()}>"
            sender = (msg.envelope_from or "").lower()
            rows.append((item_id, msg, envelope, msg_id, {
                "id": item_id, "state": "received", "source": msg.source, "source_ref": msg.source_ref,
                "account": msg.account, "owner": sender, "envelope_from": msg.envelope_from or "",
                "envelope_to": envelope, "message_id": msg_id, "sender": sender, "subject": "", "raw": msg.raw,
                "release_after": 0.0, "attempts": 0, "created_at": now, "updated_at": now, "purged": 0}))
            ids.append(item_id)
        records = [("received", msg.actor or msg.envelope_from or msg.source, item_id, {
            "source": msg.source, "size": len(msg.raw), "envelope_from": msg.envelope_from,
            "envelope_to": envelope, "message_id": msg_id, "sha256": _sha256(msg.raw)})
            for item_id, msg, envelope, msg_id, _values in rows]
        with self.store.transaction() as conn:
            conn.execute(_INSERT_ITEM, [values for *_rest, values in rows])
            self.store.append_audit_many(conn, records, ts=now)
        for item_id in ids:
            self._notify(item_id)
        return ids

    def submit(self, raw: bytes, envelope_from: str, recipients: Iterable[str], source: str = "smtp",
               source_ref: str | None = None, account: str | None = None, actor: str | None = None) -> Item:
        item_id = self.receive(raw, envelope_from, recipients, source, source_ref, account, actor)
        return self.process(item_id)

    def evaluate(self, raw: bytes, envelope_from: str = "", recipients: Iterable[str] = (),
                 policy: Policy | None = None) -> checks.CheckResult:
        parsed = message.parse(raw, envelope_from, recipients)
        known = self.known_domains(r.domain for r in parsed.recipients)
        return checks.evaluate(parsed, policy or self.policy(), known, self.gettext)

    def process(self, item_id: str) -> Item:
        """Check a received message and hold it for the window, or pass it on when the policy allows."""
        item = self.get(item_id, with_bodies=True)
        if item.state != "received":
            return item
        policy = self.policy()
        try:
            result = self.evaluate(item.raw or b"", item.envelope_from, item.envelope_to, policy)
        except MessageError as exc:
            # fail closed: keep it for the user to look at and cancel
            return self.transition(item_id, ["received"], "awaiting_confirmation", "verdict", "policy",
                                   {"action": "confirm", "error": str(exc)}, last_error=str(exc),
                                   check={"verdict": {"action": "confirm", "approvers": [], "reasons": []},
                                          "problems": [str(exc)], "recipients": [], "attachments": []})
        except Exception as exc:  # a bug in a rule must hold the message, never release it
            log.exception("policy evaluation failed for %s", item_id)
            return self.transition(item_id, ["received"], "awaiting_confirmation", "verdict", "policy",
                                   {"action": "confirm", "error": f"policy error: {exc}"},
                                   last_error=f"policy error: {exc}")
        data = result.to_json()
        action = result.action
        values = dict(check_result=data, sender=result.message.sender, owner=result.message.sender,
                      subject=result.message.subject)
        needs_window = (
            policy.confirm_when == "always"
            or bool(result.message.problems)
            or action in ("confirm", "block")
            or (action == "approve" and policy.confirm_when != "never")
        )
        audit = {"action": action, "reasons": [r.rule for r in result.reasons], "approvers": result.approvers,
                 "force_bcc": result.force_bcc}
        if needs_window:
            return self.transition(item_id, ["received"], "awaiting_confirmation", "verdict", "policy", audit,
                                   **values)
        with self.store.transaction() as conn:
            conn.execute(update(outbox).where(outbox.c.id == item_id).values(**values))
        decision = Decision(bcc=result.force_bcc and policy.auto_bcc)
        return self._confirm(item_id, ("received",), decision, "policy", checked=None, verdict=audit)

    # ------------------------------------------------------------------ decisions
    def confirm(self, item_id: str, removed_recipients: Iterable[str] = (), removed_attachments: Iterable[str] = (),
                bcc: bool = False, actor: str = "user", checked: dict[str, list[str]] | None = None) -> Item:
        """The user's Send: apply removals and Bcc, re-check, then hold for approval or release."""
        item = self.get(item_id)
        check = item.check or {}
        known_ids = {a["id"] for a in check.get("attachments", [])}
        by_name = {a["filename"]: a["id"] for a in check.get("attachments", [])}
        att_ids = []
        for ref in removed_attachments:
            if ref in known_ids:
                att_ids.append(ref)
            elif ref in by_name:
                att_ids.append(by_name[ref])
            else:
                raise MessageError(f"message {item_id} has no attachment {ref!r} "
                                   f"(attachments: {', '.join(sorted(by_name)) or 'none'})")
        addresses = {r["address"] for r in check.get("recipients", [])}
        removed = []
        for addr in removed_recipients:
            rcpt = message.make_recipient(addr, "", "to")
            key = rcpt.address if rcpt else addr.lower()
            if key not in addresses:
                raise MessageError(f"message {item_id} has no recipient {addr!r}")
            removed.append(key)
        policy = self.policy()
        decision = Decision(removed, att_ids, bcc or bool(check.get("force_bcc") and policy.auto_bcc))
        return self._confirm(item_id, ("awaiting_confirmation",), decision, actor, checked=checked)

    def _confirm(self, item_id: str, allowed: tuple[str, ...], decision: Decision, actor: str,
                 checked: dict[str, list[str]] | None, verdict: dict[str, Any] | None = None) -> Item:
        item = self.get(item_id, with_bodies=True)
        if item.state not in allowed:
            raise StateError(f"message {item_id} is {item.state}: cannot confirm it now")
        external = {r["address"] for r in (item.check or {}).get("recipients", []) if r.get("external")}
        final, envelope, bcc = apply(item.raw or b"", decision, item.envelope_to, external, item.message_id)
        decision.bcc_addresses = bcc if decision.bcc else []
        policy = self.policy()
        result = self.evaluate(final, item.envelope_from, envelope, policy)
        if result.action == "block":
            blocked = ", ".join(r.target for r in result.reasons if r.action == "block")
            raise StateError(f"message {item_id} cannot be sent: {blocked} is blocked by policy; "
                             "remove it or cancel the message")
        needs_approval = result.action == "approve"
        now = self.clock()
        data = {"removed_recipients": decision.removed_recipients,
                "removed_attachments": decision.removed_attachments, "bcc": decision.bcc,
                "bcc_addresses": decision.bcc_addresses, "final_recipients": envelope,
                "final_sha256": _sha256(final), "action": result.action}
        if checked is not None:
            data["checked"] = checked
        if verdict is not None:
            data["verdict"] = verdict
        record = decision.to_json() | {"needs_approval": needs_approval, "final_action": result.action,
                                       "final_recipients": envelope, "confirmed_by": actor}
        item = self.transition(
            item_id, allowed, "confirmed", "confirmed", actor, data, final_raw=final, decision=record,
            envelope_to=envelope, release_after=now + (0 if needs_approval else policy.hold_seconds),
        )
        if needs_approval:
            approvers = list(policy.approvers_for(item.sender))
            item = self.transition(
                item_id, ["confirmed"], "awaiting_approval", "approval_requested", "policy",
                {"approvers": approvers, "reasons": [r.rule for r in result.reasons if r.action == "approve"]},
                approvers=approvers, expires_at=now + policy.expire_hours * 3600,
            )
        return item

    def cancel(self, item_id: str, actor: str = "user", reason: str = "") -> Item:
        return self.transition(item_id, CANCELLABLE, "cancelled", "cancelled", actor, {"reason": reason})

    def resolve(self, item_id: str, sent: bool, actor: str = "user") -> Item:
        """For ``needs_attention``: the user says it went out, or asks to send it again."""
        if sent:
            return self.transition(item_id, ["needs_attention"], "sent", "released", actor, {"resolved_by_user": True})
        return self.transition(item_id, ["needs_attention", "failed"], "failed", "retry_requested", actor, {},
                               release_after=0.0)

    # ------------------------------------------------------------------ release
    def due(self) -> list[Item]:
        """Items ready to go now: confirmed (no approval needed, undo window over), approved, failed to retry."""
        now = self.clock()
        query = select(*[c for c in outbox.c if c.name not in ("raw", "final_raw")]).where(
            outbox.c.state.in_(["confirmed", "approved", "failed"]), outbox.c.release_after <= now)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.order_by(outbox.c.created_at)).all()
        items = [Item.from_row(r) for r in rows]
        return [i for i in items if not (i.state == "confirmed" and (i.decision or {}).get("needs_approval"))]

    def release_due(self) -> list[Item]:
        released = []
        for item in self.due():
            try:
                released.append(self.release(item.id))
            except StateError:  # taken meanwhile (another thread or process released or cancelled it)
                continue
        return released

    def release(self, item_id: str) -> Item:
        """releasing (committed) -> transport -> sent | failed | needs_attention."""
        with self._release_lock:
            item = self.get(item_id, with_bodies=True)
            if item.state == "confirmed" and (item.decision or {}).get("needs_approval"):
                raise StateError(f"message {item_id} waits for approval")
            if self.release_guard is not None and (item.approvers or item.approval):
                try:
                    self.release_guard(item)
                except PermissionDenied as exc:
                    return self.transition(item_id, ["confirmed", "approved", "failed"], "needs_attention",
                                           "release_refused", "sendguard", {"error": str(exc)},
                                           last_error=str(exc))
            item = self.transition(item_id, ["confirmed", "approved", "failed"], "releasing", "releasing",
                                   "sendguard", {"attempt": item.attempts + 1}, attempts=item.attempts + 1)
            item = self.get(item_id, with_bodies=True)
            if item.source == "outlook" and not item.approval:
                # Outlook sends it itself once the add-in sees the decision.
                return self._sent(item, {"transport": "outlook"})
            try:
                if self.mailbox_for is None:
                    raise PermanentError("no release transport is configured")
                mailbox = self.mailbox_for(item)
                receipt = mailbox.release(self._release_item(item))
                faults.point("release.after_transport")
            except TransientError as exc:
                return self._failed(item, str(exc), exc.retry_after)
            except AuthError as exc:
                return self._failed(item, str(exc), 600.0)
            except PermanentError as exc:
                return self.transition(item_id, ["releasing"], "needs_attention", "failed", "sendguard",
                                       {"error": str(exc), "permanent": True}, last_error=str(exc))
            except MailboxError as exc:
                return self._failed(item, str(exc), None)
            except Exception as exc:  # unknown: the transport may or may not have sent it
                log.exception("release of %s failed unexpectedly", item_id)
                return self.transition(item_id, ["releasing"], "needs_attention", "failed", "sendguard",
                                       {"error": repr(exc)}, last_error=f"unexpected error: {exc}")
            return self._sent(item, {"transport": receipt.transport, **receipt.detail})

    def _release_item(self, item: Item) -> ReleaseItem:
        decision = item.decision or {}
        return ReleaseItem(
            outbox_id=item.id, message_id=item.message_id, raw=item.final_raw or item.raw or b"",
            envelope_from=item.envelope_from or item.sender, recipients=tuple(item.envelope_to),
            bcc=tuple(decision.get("bcc_addresses") or ()), source=item.source, source_ref=item.source_ref,
        )

    def _sent(self, item: Item, detail: dict[str, Any]) -> Item:
        with self.store.transaction() as conn:
            self.store.record_sent_domains(conn, item.envelope_to, self.clock())
        return self.transition(item.id, ["releasing"], "sent", "released", "sendguard", detail, last_error=None)

    def _failed(self, item: Item, error: str, retry_after: float | None) -> Item:
        backoff = retry_after if retry_after is not None else min(MAX_BACKOFF, 5.0 * (2 ** (item.attempts - 1)))
        return self.transition(item.id, ["releasing"], "failed", "failed", "sendguard",
                               {"error": error, "retry_in": backoff}, last_error=error,
                               release_after=self.clock() + backoff)

    def reconcile(self) -> list[Item]:
        """After a restart: settle everything left in ``releasing`` (and re-check ``received``)."""
        settled = []
        for item in self.list(["releasing"]):
            if item.source == "outlook" and not item.approval:
                settled.append(self.transition(item.id, ["releasing"], "needs_attention", "reconciled", "sendguard",
                                               {"found": None}, last_error="interrupted while handing back to Outlook"))
                continue
            found: bool | None
            try:
                found = self.mailbox_for(item).find_sent(item.message_id) if self.mailbox_for else None
            except MailboxError as exc:
                log.warning("cannot reconcile %s yet: %s", item.id, exc)
                continue
            if found is True:
                settled.append(self._sent(item, {"reconciled": True}))
            elif found is False:
                settled.append(self.transition(item.id, ["releasing"], "failed", "reconciled", "sendguard",
                                               {"found": False}, release_after=self.clock(),
                                               last_error="interrupted before it was sent; sending again"))
            else:
                settled.append(self.transition(
                    item.id, ["releasing"], "needs_attention", "reconciled", "sendguard", {"found": None},
                    last_error="interrupted while sending; the transport cannot tell whether it went out. "
                               "Check your Sent mail, then `sendguard queue resolve ID --sent` or `--resend`"))
        for item in self.list(["received"]):
            settled.append(self.process(item.id))
        return settled

    # ------------------------------------------------------------------ housekeeping
    def expire_due(self) -> list[Item]:
        now = self.clock()
        with self.store.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(select(outbox.c.id).where(
                outbox.c.state == "awaiting_approval", outbox.c.expires_at < now)).all()]
        out = []
        for item_id in ids:
            try:
                out.append(self.transition(item_id, ["awaiting_approval"], "expired", "expired", "sendguard", {}))
            except StateError:
                continue
        return out

    def purge(self, retention_days: float) -> int:
        """Drop message bodies of finished items older than ``retention_days``; audit records stay."""
        cutoff = self.clock() - retention_days * 86400
        with self.store.transaction() as conn:
            result = conn.execute(update(outbox).where(
                outbox.c.state.in_(FINAL_STATES), outbox.c.updated_at < cutoff, outbox.c.purged == 0,
            ).values(raw=None, final_raw=None, purged=1))
            if result.rowcount:
                self.store.append_audit(conn, "purged", "sendguard", None,
                                        {"count": result.rowcount, "retention_days": retention_days})
        return result.rowcount or 0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hostname() -> str:
    name = socket.gethostname() or "localhost"
    return name if "." in name else f"{name}.local"


_HEADER_SCAN_LIMIT = 1024 * 1024


def _header_message_id(raw: bytes) -> str:
    """The Message-ID from the header block, read without parsing the whole message."""
    limit = min(len(raw), _HEADER_SCAN_LIMIT)  # never scan a large body for the blank line
    cut = min(x for x in (raw.find(b"\r\n\r\n", 0, limit), raw.find(b"\n\n", 0, limit), limit) if x >= 0)
    head = raw[:cut].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines):
        if line.lower().startswith("message-id:"):
            value = line.split(":", 1)[1]
            for cont in lines[index + 1 :]:
                if cont[:1] in (" ", "\t"):
                    value += cont
                else:
                    break
            value = value.strip()
            return value if value.startswith("<") and value.endswith(">") and "@" in value else ""
    return ""
