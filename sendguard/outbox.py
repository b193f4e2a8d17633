"""The durable outbox and its state machine.

Every state is a member of ``State``; every allowed move is one step of ``TRANSITIONS``: the states it may
start from, the state it ends in and the event written to the audit log. Both are defined in ``states.py``
(it imports nothing, so commands that only read start fast) and re-exported here; ``Outbox.transition``
refuses any move the table does not have. The states::

    received, awaiting_confirmation, confirmed, awaiting_approval, approved, rejected, releasing, sent,
    cancelled, expired, failed, needs_attention

The steps (``tests/test_states.py`` keeps this copy equal to the table)::

    hold                received -> awaiting_confirmation [verdict]
    confirm             received, awaiting_confirmation -> confirmed [confirmed]
    request_approval    confirmed -> awaiting_approval [approval_requested]
    reroute_approval    awaiting_approval -> awaiting_approval [approval_rerouted]
    approve             awaiting_approval -> approved [approved]
    reject              awaiting_approval -> rejected [rejected]
    expire              awaiting_approval -> expired [expired]
    cancel              received, awaiting_confirmation, confirmed, awaiting_approval, approved, failed,
                          needs_attention -> cancelled [cancelled]
    cancel_interrupted  releasing -> cancelled [cancelled]
    start_release       confirmed, approved, failed -> releasing [releasing]
    refuse_release      confirmed, approved, failed -> needs_attention [release_refused]
    sent                releasing -> sent [released]
    fail                releasing -> failed [failed]
    fail_for_user       releasing -> needs_attention [failed]
    reconcile_unsent    releasing -> failed [reconciled]
    reconcile_unknown   releasing -> needs_attention [reconciled]
    resolve_sent        releasing, needs_attention -> sent [released]
    resolve_resend      releasing, failed, needs_attention -> failed [retry_requested]
    helper_sent         approved -> sent [released]
    released_by_server  awaiting_approval, needs_attention -> sent [released_by_server]
    client_stopped      sent -> cancelled [send_stopped]

Each transition and its audit record are one transaction. ``releasing`` is committed before a
transport is called and ``sent`` after, so a crash can never send twice: ``reconcile`` asks the
transport what happened to anything found in ``releasing``.
"""

from __future__ import annotations

import builtins  # `Outbox.list` shadows the builtin inside the class: annotations there say builtins.list
import functools
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import OperationalError

from . import checks, directory, faults, message
from .checks import StoredCheck
from .directory import Directory, ListLookup
from .errors import (
    MessageError,
    NeedsReconfirmation,
    NotFound,
    PermissionDenied,
    SendGuardError,
    StateError,
    StoreUnavailable,
)
from .i18n import _
from .items import WAITING_PREFIX, Item, new_id  # noqa: F401 - re-exported
from .mailboxes import _retry
from .mailboxes.base import (
    AnswerLost,
    AuthError,
    HoldingMailbox,
    Mailbox,
    MailboxError,
    MissedItem,
    OutcomeUnknown,
    PermanentError,
    ReleaseItem,
    TransientError,
)
from .policy import Policy
from .rewrite import Decision, apply
from .states import (  # noqa: F401 - the state machine, re-exported for everyone who imports it from here
    APPROVAL_OUTCOMES,
    AWAITING_OUTCOME,
    CANCELLABLE,
    DECIDED_STATES,
    FINAL_STATES,
    HELD_STATES,
    NOT_SENT_STATES,
    RELEASABLE,
    STATES,
    TRANSITIONS,
    WAITING_STATES,
    State,
    Transition,
)
from .store import Store, audit, domains, outbox

log = logging.getLogger(__name__)

_HOLD = TRANSITIONS["hold"]


def _values(states: Iterable[str]) -> list[str]:
    """States as the plain strings stored in the database (a driver may adapt an enum by its name)."""
    return [State(s).value for s in states]


# Items taken from a server-side Outbox: when they end without being sent, the user gets them back as
# drafts (``returns_due`` / ``mark_returned``).
OUTBOX_SOURCES = ("exchange-outbox", "graph-outbox")
# Sources whose own client sends the message once SendGuard has decided (the Outlook add-in, the Gmail
# browser extension): releasing such an item tells the client to go ahead, it sends nothing itself.
CLIENT_SENDS = ("outlook", "gmail_web")
# Messages up to this size are checked at intake, before their commit; larger ones by the worker
# afterwards, so one big attachment never delays the 250 of the messages committed beside it.
INTAKE_CHECK_MAX_BYTES = 1024 * 1024
# what a refused transition tried to do, said as a verb ("cannot cancel it now")
_VERBS = {"cancelled": "cancel", "confirmed": "confirm", "released": "mark as sent", "releasing": "release",
          "retry_requested": "send again", "expired": "expire", "verdict": "check", "failed": "fail",
          "approval_requested": "hold for approval", "approval_rerouted": "re-route", "reconciled": "reconcile",
          "approved": "approve", "rejected": "reject"}
# How long a release may take before anyone else may ask the transport what became of it: longer than
# any connector's timeouts together, so an item still being sent by a live process is never re-sent.
RELEASE_LEASE = 900.0
# A connector's own back-off stops here (``_retry.Backoff``): a server's short Retry-After is raised to at
# most this, so a server that comes back is noticed soon.
CONNECTOR_BACKOFF_CAP = 300.0
# ``cap_waits``: what two processes' clocks (each anchored at its own start) may differ by, and how often
# the worker looks for waits set by a clock that was ahead
WAIT_SLACK = 5.0
CAP_WAITS_EVERY = 60.0
# A send that went out while the store could not be written (full, read-only): its ``sent`` is committed
# again from memory (``record_unrecorded``, every worker turn) after this back-off, doubled up to its cap.
# How its waiting text begins (a ``waiting_for``: never "Sending now", never "to say whether").
RECORD_RETRY_FIRST = 0.25
RECORD_RETRY_CAP = 2.0
RECORDING_PREFIX = f"{WAITING_PREFIX}SendGuard's store to record it as sent"


@dataclass
class _Unrecorded:
    """A transport's receipt whose ``sent`` the store could not take yet (kept in memory only: a crash
    falls back to ``reconcile``, which asks the transport)."""

    item: Item
    detail: dict[str, Any]
    by: str | None
    text: str
    failures: int = 1
    next_at: float = 0.0  # monotonic


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
class Intake:
    """Messages ready to be written by ``Outbox.commit_intake``: their rows and audit records."""

    now: float
    rows: builtins.list[dict[str, Any]] = field(default_factory=list)
    records: builtins.list[tuple[str, str, str | None, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Verdict:
    """Where a checked message goes: ``hold`` for the window, else passed on with ``decision``."""

    hold: bool
    audit: dict[str, Any]
    values: dict[str, Any]  # the item's columns the check fills in
    decision: Decision = field(default_factory=Decision)
    check: StoredCheck | None = None


def _answer_in_doubt(event: str, data: dict[str, Any]) -> bool:
    """A send record whose send may have gone out: a ``failed`` one whose answer was lost (``answer_lost``),
    or a later try within the Sent Items grace of that loss that sent nothing and found nothing yet."""
    return event == "failed" and bool(data.get("answer_lost") or data.get("may_have_been_sent"))


@dataclass
class Outbox:
    """Intake, decisions and release of held mail. Thread-safe; several processes may share the store."""

    store: Store
    policy: Callable[[], Policy]
    mailbox_for: Callable[[Item], Mailbox] | None = None
    clock: Callable[[], float] = time.time
    gettext: Callable[[str], str] = str
    accounts: Callable[[], Iterable[str]] = tuple  # the user's configured sending addresses
    # the mail server's directory (Exchange ExpandDL, Graph groups): which recipients are lists
    directory: Directory | None = None  # (the field shadows the module inside the class: names imported)
    listeners: builtins.list[Callable[[Item], None]] = field(default_factory=list)
    local_approvers: bool = True  # False when a central server names the approvers (its own policy)
    # checks an approved message before release (central server: the server's signed decision)
    release_guard: Callable[[Item], None] | None = None
    # Is the Outlook add-in still waiting to send this item itself? (outlook_presence; None: assume so)
    outlook_waiting: Callable[[str], bool] | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _release_lock: threading.Lock = field(default_factory=threading.Lock)
    # message id -> the policy its confirmation was checked under, in this process
    _confirmed_under: dict[str, Policy] = field(default_factory=dict, repr=False)
    _reconcile_failures: dict[str, int] = field(default_factory=dict)  # asks in a row, per item
    _sent_domains: tuple[float, tuple[str, ...]] = (0.0, ())  # (read at, domains): see history()
    _known: set[str] = field(default_factory=set)  # domains found in the sent-to history (see known_domains)
    _unknown: set[str] = field(default_factory=set)  # not found there at ``_unknown_at``
    _unknown_at: float = 0.0
    _domain_lock: threading.Lock = field(default_factory=threading.Lock)
    domains_epoch: int = 0  # counts ``forget_unknown_domains`` (a checking process follows it: checker.py)
    _waits_capped_at: float = field(default=-CAP_WAITS_EVERY, repr=False)  # monotonic: see cap_waits
    # item id -> a send that went out but whose ``sent`` the store could not take yet (see _sent_by_transport)
    _unrecorded: dict[str, _Unrecorded] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ reading
    def get(self, item_id: str, with_bodies: bool = False) -> Item:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == item_id)).first()
        if row is None:
            raise NotFound(f"no message {item_id!r} in the outbox (see `sendguard queue list`)")
        return self._as_known(Item.from_row(row, with_bodies))

    def list(self, states: Iterable[str] | None = None, owner: str | None = None,
             limit: int = 1000) -> builtins.list[Item]:
        cols = [c for c in outbox.c if c.name not in ("raw", "final_raw")]
        query = select(*cols).order_by(outbox.c.created_at.desc()).limit(limit)
        if states:
            query = query.where(outbox.c.state.in_(_values(states)))
        if owner:
            query = query.where(outbox.c.owner == owner.lower())
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._as_known(Item.from_row(r)) for r in rows]

    def _as_known(self, item: Item) -> Item:
        """The item as stored, with what this process knows and the store could not take yet: a send that
        went out while it could not be written says so (``record_unrecorded``), not "Sending now"."""
        pending = self._unrecorded.get(item.id) if self._unrecorded else None
        if pending is not None and item.state == State.RELEASING and item.attempts == pending.item.attempts:
            item.last_error = pending.text
        return item

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
        """Which of these domains were sent to before. A domain once sent to stays so (kept in memory);
        one not found is asked again after ``HISTORY_TTL`` (or at once after a release of ours), so a
        burst of intake does not query the table for every message."""
        wanted = set(candidates)
        if not wanted:
            return set()
        with self._domain_lock:
            if time.monotonic() - self._unknown_at > HISTORY_TTL:
                self._unknown.clear()
                self._unknown_at = time.monotonic()
            misses = wanted - self._known - self._unknown
        if misses:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(domains.c.domain).where(domains.c.domain.in_(list(misses)))).all()
            found = {r[0] for r in rows}
            with self._domain_lock:
                self._known |= found
                self._unknown |= misses - found
            return (wanted - misses) & self._known | found
        return wanted & self._known

    def forget_unknown_domains(self) -> None:
        """Domains were just sent to: nothing cached as new may be trusted any more."""
        with self._domain_lock:
            self._unknown.clear()
            self.domains_epoch += 1
        self._sent_domains = (0.0, ())

    def history(self, parsed: message.ParsedMessage) -> checks.History:
        """What the policy needs from past releases: sent-to domains, and the thread a reply answers."""
        read_at, sent = self._sent_domains
        refs = [m for m in parsed.in_reply_to if m != parsed.message_id]
        thread: frozenset[str] | None = None
        if time.monotonic() - read_at <= HISTORY_TTL and not refs:  # a burst of intake reads the table once
            return checks.History(sent, thread)
        with self.store.engine.connect() as conn:
            if time.monotonic() - read_at > HISTORY_TTL:
                sent = tuple(r[0] for r in conn.execute(select(domains.c.domain).order_by(
                    domains.c.last_sent.desc()).limit(HISTORY_DOMAINS)).all())
                self._sent_domains = (time.monotonic(), sent)
            if refs:
                rows = conn.execute(select(outbox.c.envelope_to, outbox.c.sender).where(
                    outbox.c.message_id.in_(refs), outbox.c.state == State.SENT.value)).all()
                if rows:
                    thread = frozenset(a.rpartition("@")[2].lower() for row in rows
                                       for a in [*(row.envelope_to or []), row.sender or ""] if "@" in a)
        return checks.History(sent, thread)

    # ------------------------------------------------------------------ transitions
    def _notify(self, item_id: str, item: Item | None = None) -> None:
        """Wake waiters and tell listeners; ``item`` when the caller has it as just written (no re-read)."""
        with self._changed:
            self._changed.notify_all()
        if self.listeners:
            if item is None:
                try:
                    item = self.get(item_id)
                except NotFound:
                    return
            for listener in list(self.listeners):
                try:
                    listener(item)
                except Exception:  # a UI listener must never break the outbox
                    log.exception("outbox listener failed")

    def transition(self, item_id: str, step: str, actor: str, data: dict[str, Any] | None = None, *,
                   only_from: Iterable[State] | None = None, also: Callable[[Any], None] | None = None,
                   **values: Any) -> Item:
        """Take one step of ``TRANSITIONS`` (with its audit record) atomically, or raise ``StateError``.

        ``only_from`` narrows the step's sources further for this call (e.g. ``releasing`` only when the
        caller has just seen that nobody is sending it); it can never widen them. ``also(conn)`` writes
        what belongs to the step beyond the item's row, in the same transaction.
        """
        if not isinstance(step, str) or step not in TRANSITIONS:
            raise ValueError(f"unknown outbox transition {step!r}: one of {', '.join(TRANSITIONS)} "
                             "(Outbox.transition(item_id, step, actor, data, **values))")
        move = TRANSITIONS[step]
        allowed = move.sources if only_from is None else move.sources & set(only_from)
        to, event = move.target, move.event
        with self.store.transaction() as conn:
            query = select(outbox.c.state).where(outbox.c.id == item_id)
            if not self.store.is_sqlite:
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise NotFound(f"no message {item_id!r} in the outbox (see `sendguard queue list`)")
            if row.state not in allowed:
                verb = _VERBS.get(event, event.replace("_", " "))
                raise StateError(f"message {item_id} is {row.state}: cannot {verb} it now")
            conn.execute(update(outbox).where(outbox.c.id == item_id)
                         .values(state=to.value, updated_at=self.clock(), **values))
            self.store.append_audit(conn, event, actor, item_id, {"from": row.state, "to": to.value, **(data or {})},
                                    ts=self.clock())
            if also is not None:
                also(conn)
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
                                           actor)])[0][0]

    def receive_many(self, incoming: builtins.list[Incoming], check: bool = False,
                     ids: Sequence[str] | None = None) -> builtins.list[tuple[str, str]]:
        """Commit several received messages in one transaction (group commit: one fsync for all).

        With ``check``, each message of at most ``INTAKE_CHECK_MAX_BYTES`` is checked before the commit
        and one that the window must show is stored already held, its verdict and audit records in the
        same transaction: the steady state costs one commit per batch, not one per message. Anything
        else (larger, or passed on by the policy) is stored ``received`` for ``process``. ``ids`` are the
        messages' ids given beforehand (a checking process may have stored some of them already: those
        are kept as they are, never stored twice; see checker.py).
        Returns (id, state) per message, in order.
        """
        intake = self.prepare_intake(incoming, check, ids)
        self.commit_intake([intake], may_exist=ids is not None)
        self.announce(intake.rows)
        return [(values["id"], values["state"]) for values in intake.rows]

    def prepare_intake(self, incoming: builtins.list[Incoming], check: bool, ids: Sequence[str] | None = None,
                       now: float | None = None) -> Intake:
        """The rows and audit records that taking these messages in writes (checked with ``check``)."""
        now = self.clock() if now is None else now
        policy = self.policy() if check else None
        intake = Intake(now)
        for n, msg in enumerate(incoming):
            item_id = ids[n] if ids is not None else new_id()
            envelope = [r.strip() for r in msg.recipients]
            msg_id = _header_message_id(msg.raw) or f"<{item_id}.sendguard@{_hostname()}>"
            sender = (msg.envelope_from or "").lower()
            values = _new_row(item_id, State.RECEIVED, now, source=msg.source, source_ref=msg.source_ref,
                              account=msg.account, owner=sender, envelope_from=msg.envelope_from or "",
                              envelope_to=envelope, message_id=msg_id, sender=sender, raw=msg.raw)
            intake.records.append(("received", msg.actor or msg.envelope_from or msg.source, item_id, {
                "source": msg.source, "size": len(msg.raw), "envelope_from": msg.envelope_from,
                "envelope_to": envelope, "message_id": msg_id, "sha256": _sha256(msg.raw)}))
            verdict = self.verdict_at_intake(msg.raw, msg.envelope_from, envelope, policy) if policy else None
            if verdict is not None and verdict.hold:
                # the step "hold", taken in the intake transaction itself
                values.update(verdict.values, state=_HOLD.target.value)
                intake.records.append((_HOLD.event, "policy", item_id,
                                       {"from": State.RECEIVED.value, "to": _HOLD.target.value, **verdict.audit}))
            intake.rows.append(values)
        return intake

    def commit_intake(self, intakes: Sequence[Intake], may_exist: bool = False) -> None:
        """Write prepared intakes in one transaction (one fsync). ``may_exist``: their ids were given
        beforehand and some may be stored already; those rows become ``{id, state, stored_before}``."""
        with self.store.intake_transaction() as conn:
            rows: builtins.list[dict[str, Any]] = []
            records: builtins.list[tuple[str, str, str | None, dict[str, Any]]] = []
            times: builtins.list[float] = []
            for intake in intakes:
                if may_exist:
                    stored = self.store.stored_items(conn, [values["id"] for values in intake.rows])
                    if stored:
                        intake.rows = [stored.get(values["id"], values) for values in intake.rows]
                        intake.records = [r for r in intake.records if r[2] not in stored]
                rows += [v for v in intake.rows if not v.get("stored_before")]
                records += intake.records
                times += [intake.now] * len(intake.records)
            # all of them in one statement each (a checking process commits many intakes of one message)
            self.store.insert_items(conn, rows)
            self.store.append_audit_many(conn, records, ts=times)
            faults.point("intake.uncommitted")

    def announce(self, rows: Iterable[dict[str, Any]]) -> None:
        """Tell waiters and listeners about messages just taken in (their rows as stored)."""
        for values in rows:  # (one stored before is read again by the listeners that need it)
            self._notify(values["id"], Item.from_mapping(values)
                         if self.listeners and not values.get("stored_before") else None)

    def verdict_at_intake(self, raw: bytes, envelope_from: str, envelope_to: builtins.list[str],
                          policy: Policy) -> Verdict | None:
        """The check made before the intake commit, or None where it waits for the worker: a message over
        ``INTAKE_CHECK_MAX_BYTES``, or one whose lists the directory has not answered yet (the directory
        is never asked before the ``250``)."""
        if len(raw) > INTAKE_CHECK_MAX_BYTES:
            return None
        try:
            return self._verdict(raw, envelope_from, envelope_to, policy, cached_only=True)
        except directory.NotCached:
            return None

    def submit(self, raw: bytes, envelope_from: str, recipients: Iterable[str], source: str = "smtp",
               source_ref: str | None = None, account: str | None = None, actor: str | None = None) -> Item:
        item_id = self.receive(raw, envelope_from, recipients, source, source_ref, account, actor)
        try:
            return self.process(item_id)
        except StateError:  # the worker checked it first (it takes every committed `received` item)
            return self.get(item_id)

    def evaluate(self, raw: bytes, envelope_from: str = "", recipients: Iterable[str] = (),
                 policy: Policy | None = None, cached_only: bool = False) -> checks.CheckResult:
        parsed = message.parse(raw, envelope_from, recipients)
        return self.evaluate_parsed(parsed, policy, cached_only)

    def evaluate_parsed(self, parsed: message.ParsedMessage, policy: Policy | None = None,
                        cached_only: bool = False) -> checks.CheckResult:
        """Check a parsed message with the sent-to history, the thread, the user's accounts and what the
        directory says about lists (``cached_only``: raise ``directory.NotCached`` rather than ask it)."""
        policy = policy or self.policy()
        known = self.known_domains(r.domain for r in parsed.recipients)
        return checks.evaluate(parsed, policy, known, self.gettext, history=self.history(parsed),
                               accounts=tuple(self.accounts()),
                               lists=self.directory_lists(parsed, policy, cached_only))

    def directory_lists(self, parsed: message.ParsedMessage, policy: Policy,
                        cached_only: bool = False) -> dict[str, ListLookup]:
        """The directory's answers for the recipients it can know (ours, not already in lists.csv)."""
        return directory.answers_for(self.directory, [r.address for r in parsed.recipients], policy, cached_only,
                                     marked=parsed.marked_lists)

    def _verdict(self, raw: bytes, envelope_from: str, envelope_to: builtins.list[str], policy: Policy,
                 cached_only: bool = False) -> Verdict:
        """Check a message and say where it goes: held for the window, or passed on (``hold`` False).

        Fails closed: an unreadable message or a failing rule holds the message for the user.
        """
        parsed: message.ParsedMessage | None = None
        try:
            parsed = message.parse(raw, envelope_from, envelope_to)
            result = self.evaluate_parsed(parsed, policy, cached_only)
        except directory.NotCached:
            raise
        except MessageError as exc:
            unreadable = StoredCheck.unreadable(str(exc))
            return Verdict(True, {"action": "confirm", "error": str(exc)},
                            {"last_error": str(exc), "check_result": unreadable.to_json()}, check=unreadable)
        except Exception as exc:  # a bug in a rule must hold the message, never release it
            log.exception("policy evaluation failed")
            return self._unfinished(parsed, policy, f"policy error: {exc}")
        action = result.action
        hold = (
            policy.confirm_when == "always"
            or bool(result.message.problems) or bool(result.problems)
            or action in ("confirm", "block")
            or (action == "approve" and policy.confirm_when != "never")
            or any(r.action == "reconfirm" for r in result.reasons)  # only a person can answer it
        )
        audit = {"action": action, "reasons": [r.rule for r in result.reasons], "approvers": result.approvers,
                 "force_bcc": result.force_bcc}
        check = result.stored()
        values: dict[str, Any] = {"check_result": check.to_json(), "sender": result.message.sender,
                  "owner": result.message.sender, "subject": result.message.subject}
        decision = Decision(bcc=result.force_bcc and policy.auto_bcc)
        _policy_changes(decision, check)  # auto Cc/Bcc added, opted-out removed
        return Verdict(hold, audit, values, decision, check)

    def _unfinished(self, parsed: message.ParsedMessage | None, policy: Policy, error: str) -> Verdict:
        """Held for the user, as a rule failed on it: with what it carries listed (the window's boxes to
        tick, its subject) when it could be read, the error as its reason."""
        values: dict[str, Any] = {"last_error": error}
        check = None
        if parsed is not None:
            try:
                check = checks.unfinished(parsed, policy, error, self.gettext).stored()
            except Exception:  # noqa: BLE001 - held all the same, with the error
                log.exception("could not list what the message carries")
            else:
                values.update(check_result=check.to_json(), sender=parsed.sender, owner=parsed.sender,
                              subject=parsed.subject)
        return Verdict(True, {"action": "confirm", "error": error}, values, check=check)

    def process(self, item_id: str) -> Item:
        """Check a received message and hold it for the window, or pass it on when the policy allows.

        The check's result is written by the step that follows it (hold or confirm), in that step's
        audited transaction. Checked meanwhile by another thread or process: that outcome stands.
        """
        item = self.get(item_id, with_bodies=True)
        if item.state != State.RECEIVED:
            return item
        policy = self.policy()
        verdict = self._verdict(item.raw or b"", item.envelope_from, item.envelope_to, policy)
        try:
            if verdict.hold:
                return self.transition(item_id, "hold", "policy", verdict.audit, **verdict.values)
            try:
                return self._confirm(item_id, (State.RECEIVED,), verdict.decision, "policy", checked=None,
                                     verdict=verdict)
            except StateError as exc:
                # the policy passed it on, but it cannot go (e.g. it needs approval and nobody can approve):
                # hold it where the user sees it and why, never leave it unseen in ``received``
                if self.get(item_id).state != State.RECEIVED:
                    raise
                return self.transition(item_id, "hold", "policy", {**verdict.audit, "error": str(exc)},
                                       last_error=str(exc), **verdict.values)
        except StateError:
            current = self.get(item_id)
            if current.state == State.RECEIVED:
                raise
            return current

    # ------------------------------------------------------------------ decisions
    def confirm(self, item_id: str, removed_recipients: Iterable[str] = (), removed_attachments: Iterable[str] = (),
                bcc: bool = False, actor: str = "user", checked: dict[str, builtins.list[str]] | None = None,
                reconfirmed: bool = False) -> Item:
        """The user's Send: apply removals and Bcc, re-check, then hold for approval or release.

        A message with a ``reconfirm`` reason needs ``reconfirmed=True``: the user has answered the
        second question that names the reason.
        """
        item = self.get(item_id)
        check = item.check or StoredCheck()
        by_name = {a.filename: a.id for a in check.attachments}
        att_ids = []
        for ref in removed_attachments:
            if check.attachment(ref) is not None:
                att_ids.append(ref)
            elif ref in by_name:
                att_ids.append(by_name[ref])
            else:
                raise MessageError(f"message {item_id} has no attachment {ref!r} "
                                   f"(attachments: {', '.join(sorted(by_name)) or 'none'})")
        by_address = check.by_address
        policy = self.policy()
        removed = []
        for addr in removed_recipients:
            rcpt = message.make_recipient(addr, "", "to")
            key = rcpt.address if rcpt else addr.lower()
            row = by_address.get(key)
            if row is None:
                raise MessageError(f"message {item_id} has no recipient {addr!r}")
            if row.list_address:
                raise MessageError(f"{key} gets this message through the list {row.list_address}: "
                                   f"remove {row.list_address} instead")
            if "auto_added" in row.flags and policy.is_locked("rules.auto_cc"):
                raise MessageError(f"{key} was added by your organization's policy and cannot be removed")
            removed.append(key)
        decision = Decision(removed, att_ids, bcc or (check.force_bcc and policy.auto_bcc))
        _policy_changes(decision, check)
        return self._confirm(item_id, (State.AWAITING_CONFIRMATION,), decision, actor, checked=checked,
                             reconfirmed=reconfirmed)

    def _confirm(self, item_id: str, allowed: Collection[State], decision: Decision, actor: str,
                 checked: dict[str, builtins.list[str]] | None, verdict: Verdict | None = None,
                 reconfirmed: bool = False) -> Item:
        """``verdict``: the policy passing a message on; what its check found (result, sender, subject)
        is written with the confirmation."""
        item = self.get(item_id, with_bodies=True)
        check, sender = item.check, item.sender
        if verdict is not None:
            check, sender = verdict.check, verdict.values.get("sender", item.sender)
        if item.state not in allowed:
            raise StateError(f"message {item_id} is {item.state}: cannot confirm it now")
        external = check.external_addresses if check else set()
        final, envelope, bcc = apply(item.raw or b"", decision, item.envelope_to, external, item.message_id)
        decision.bcc_addresses = bcc if decision.bcc else []
        policy = self.policy()
        try:
            result = self.evaluate(final, item.envelope_from, envelope, policy)
        except (SendGuardError, directory.NotCached):
            raise
        except Exception as exc:  # a rule failed on it: whether it is blocked or needs approval is unknown
            log.exception("policy evaluation of %s failed at its confirmation", item_id)
            raise StateError(f"message {item_id} cannot be sent now: SendGuard could not check it ({exc}); it "
                             "stays held. Cancel it, or send it again once SendGuard is fixed") from None
        if result.action == "block":
            blocked = ", ".join(r.target for r in result.reasons if r.action == "block")
            raise StateError(f"message {item_id} cannot be sent: {blocked} is blocked by policy; "
                             "remove it or cancel the message")
        second = [r for r in result.reasons if r.action == "reconfirm"]
        if second and not reconfirmed:
            raise NeedsReconfirmation(
                f"message {item_id} needs a second confirmation: {second[0].message}. "
                "Confirm again with --reconfirmed (the window asks it after the checkboxes)")
        needs_approval = result.action == "approve"
        if needs_approval and self.local_approvers and not policy.approvers_for(sender):
            # never a hold that waits for nobody: the sender hears it now and the message stays here
            raise StateError(self.gettext(_(
                "This message needs approval, but no approver is configured for {sender}: ask your "
                "administrator to set [approval] approvers in the policy, then press Send again, or cancel "
                "it.")).format(sender=sender or "?"))
        now = self.clock()
        data = {"removed_recipients": decision.removed_recipients,
                "removed_attachments": decision.removed_attachments, "bcc": decision.bcc,
                "bcc_addresses": decision.bcc_addresses, "final_recipients": envelope,
                "final_sha256": _sha256(final), "action": result.action}
        if checked is not None:
            data["checked"] = checked
        if second:
            data["reconfirmed"] = [r.rule for r in second]
        if decision.added_cc or decision.added_bcc:
            data["added_cc"], data["added_bcc"] = decision.added_cc, decision.added_bcc
        if verdict is not None:
            data["verdict"] = verdict.audit
        record = decision.to_json() | {"needs_approval": needs_approval, "final_action": result.action,
                                       "final_recipients": envelope, "confirmed_by": actor}
        item = self.transition(
            item_id, "confirm", actor, data, only_from=allowed, final_raw=final, decision=record,
            envelope_to=envelope, release_after=now + (0 if needs_approval else policy.hold_seconds),
            **(verdict.values if verdict is not None else {}),
        )
        if len(self._confirmed_under) > 10_000:  # (released ones are taken out; this bounds the rest)
            self._confirmed_under.clear()
        self._confirmed_under[item_id] = policy
        if needs_approval:
            item = self._request_approval(item, [r.rule for r in result.reasons if r.action == "approve"], now)
        return item

    def _request_approval(self, item: Item, reasons: builtins.list[str] | None = None,
                          now: float | None = None) -> Item:
        """confirmed -> awaiting_approval, to the policy's approvers for its sender (also at start, for a
        message whose confirmation was committed but not its request: a stop in between)."""
        policy = self.policy()
        now = self.clock() if now is None else now
        if reasons is None:
            reasons = [r.rule for r in (item.check.verdict.reasons if item.check else ()) if r.action == "approve"]
        approvers = list(policy.approvers_for(item.sender))
        return self.transition(item.id, "request_approval", "policy", {"approvers": approvers, "reasons": reasons},
                               approvers=approvers, expires_at=now + policy.expire_hours * 3600)

    def reroute_approvals(self, policy: Policy) -> builtins.list[Item]:
        """Held messages follow the policy's approvers: when they change, each waiting message is
        handed to its new approvers (who are then emailed like any other)."""
        moved = []
        for item in self.list([State.AWAITING_APPROVAL], limit=100_000):
            wanted = [a.lower() for a in policy.approvers_for(item.sender)]
            if not wanted or sorted(wanted) == sorted(a.lower() for a in item.approvers):
                continue
            try:
                moved.append(self.transition(item.id, "reroute_approval", "policy",
                                             {"previous_approvers": item.approvers, "approvers": wanted},
                                             approvers=wanted))
            except StateError:  # decided meanwhile
                continue
        return moved

    def cancel(self, item_id: str, actor: str = "user", reason: str = "") -> Item:
        item = self.get(item_id)
        if item.state == State.RELEASING:
            # an interrupted send SendGuard cannot settle yet: stop asking and never send it again
            self._check_settleable(item, "cancel")
            return self.transition(item_id, "cancel_interrupted", actor,
                                   {"reason": reason, "interrupted_send": True, "may_have_been_sent": True},
                                   last_error="cancelled while SendGuard could not tell whether it had gone out; "
                                              "check your Sent mail")
        if item.state == State.FAILED and item.id in self.sends_in_doubt([item.id]):
            # its last send lost its answer: it may be with its recipients already. Nothing more is sent;
            # the user is told, as for an interrupted send (the CLI prints a last error that "could not tell")
            return self.transition(item_id, "cancel", actor,
                                   {"reason": reason, "answer_lost": True, "may_have_been_sent": True},
                                   only_from=[State.FAILED],
                                   last_error="cancelled while SendGuard could not tell whether it had gone out "
                                              "(the answer to its send was lost); check your Sent mail")
        if item.state == State.NEEDS_ATTENTION and self._outcome_unknown(item.id):
            # it waits for the user because nobody could tell whether its send went out: the same warning
            return self.transition(item_id, "cancel", actor,
                                   {"reason": reason, "outcome_unknown": True, "may_have_been_sent": True},
                                   only_from=[State.NEEDS_ATTENTION],
                                   last_error="cancelled while SendGuard could not tell whether it had gone out; "
                                              "check your Sent mail")
        return self.transition(item_id, "cancel", actor, {"reason": reason})

    def _outcome_unknown(self, item_id: str) -> bool:
        """Does the latest word on this item's sends leave open whether it went out? A send whose connection
        broke while the message was handed over (``OutcomeUnknown``) or that failed in a way nobody
        foresaw, an interrupted send the transport could not find or rule out, or a lost answer not
        settled since (a message refused later, ``release_refused``, keeps that doubt)."""
        records = self._send_records([item_id]).get(item_id)
        if not records:
            return False
        event, _ts, data = records[0]
        if event == "reconciled":
            return data.get("found") is None
        return _answer_in_doubt(event, data) or (event == "failed" and bool(data.get("outcome_unknown")))

    def sends_in_doubt(self, item_ids: Collection[str]) -> set[str]:
        """Of these items, the ones whose last failure left their send in doubt: it may have gone out.

        That is an item whose latest ``failed`` / ``reconciled`` / ``retry_requested`` audit record is a
        ``failed`` one saying ``answer_lost`` (the transport lost the answer to the send: ``AnswerLost``) or
        ``may_have_been_sent`` (a later try, within the Sent Items grace of that loss, that sent nothing and
        did not find it yet). A clean failure after it, a reconciliation that found nothing, or the user's
        ``queue resolve --resend`` ("it did not go out") ends the doubt."""
        doubt: set[str] = set()
        for item_id, records in self._send_records(item_ids).items():
            event, _ts, data = records[0]
            if _answer_in_doubt(event, data):
                doubt.add(item_id)
        return doubt

    def _send_records(self, item_ids: Collection[str]) -> dict[str, builtins.list[tuple[str, str, dict[str, Any]]]]:
        """Each item's ``failed`` / ``reconciled`` / ``retry_requested`` audit records, newest first, as
        (event, ts, data): what is known of its earlier sends (``sends_in_doubt``, ``_answer_lost_ago``)."""
        ids = list(dict.fromkeys(item_ids))
        out: dict[str, builtins.list[tuple[str, str, dict[str, Any]]]] = {}
        for start in range(0, len(ids), 500):
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(audit.c.item_id, audit.c.event, audit.c.ts, audit.c.data).where(
                    audit.c.item_id.in_(ids[start:start + 500]),
                    audit.c.event.in_(("failed", "reconciled", "retry_requested")),
                ).order_by(audit.c.seq.desc())).all()
            for row in rows:
                try:
                    data = json.loads(row.data)
                except ValueError:
                    data = None
                # (a record that cannot be read says nothing, but it still counts as the latest)
                out.setdefault(row.item_id, []).append((row.event, row.ts, data if isinstance(data, dict) else {}))
        return out

    def _doubt_remains(self, item: Item, sent: ReleaseItem | None) -> bool:
        """A release that failed without a new lost answer: does the doubt of an earlier one remain? Yes when
        the item's last failure left it in doubt and this try came within the Sent Items grace of that loss
        (``answer_lost_ago``): a connector sends nothing again then, and a copy it found would be ``sent``."""
        ago = sent.answer_lost_ago if sent is not None else None
        if ago is None or ago >= _retry.sent_items_grace():
            return False
        try:
            return item.id in self.sends_in_doubt([item.id])
        except Exception:  # noqa: BLE001 - the failure is recorded all the same
            log.exception("could not read the earlier failures of %s", item.id)
            return True

    def client_stopped(self, item_id: str, actor: str, reason: str = "") -> Item:
        """The client that was to send this item itself (the Outlook add-in, after ``sent``) stopped the
        send: the record ends ``cancelled`` with a ``send_stopped`` audit record. Only for an item handed
        back to its client to send; one SendGuard sent itself stays ``sent`` (StateError)."""
        item = self.get(item_id)
        if item.state != State.SENT or item.source not in CLIENT_SENDS:
            raise StateError(f"message {item_id} is {item.state}: only a message its mail program was to send "
                             "itself can be reported as stopped")
        with self.store.engine.connect() as conn:
            data = conn.execute(select(audit.c.data).where(audit.c.item_id == item_id, audit.c.event == "released")
                                .order_by(audit.c.seq.desc()).limit(1)).scalar()
        transport = (json.loads(data) if data else {}).get("transport")
        if transport != item.source:
            raise StateError(f"message {item_id} was sent by SendGuard ({transport or 'unknown transport'}), not "
                             "handed back to the mail program: it cannot be reported as stopped")
        return self.transition(item_id, "client_stopped", actor, {"reason": reason[:500]}, only_from=[State.SENT],
                               last_error=f"stopped by the mail program after SendGuard cleared it: {reason[:200]}"
                               if reason else "stopped by the mail program after SendGuard cleared it")

    def resolve(self, item_id: str, sent: bool, actor: str = "user") -> Item:
        """For ``needs_attention``, or an interrupted send SendGuard is still asking about: the user says
        it went out, or asks to send it again."""
        item = self.get(item_id)
        allowed = [State.NEEDS_ATTENTION]
        if item.state == State.RELEASING:
            self._check_settleable(item, "resolve --sent" if sent else "resolve")
            allowed.append(State.RELEASING)
        if sent:
            return self.transition(item_id, "resolve_sent", actor, {"resolved_by_user": True}, only_from=allowed,
                                   last_error=None)
        # the old reason (a waiting text above all) no longer holds for the new send
        return self.transition(item_id, "resolve_resend", actor, {}, only_from=[*allowed, State.FAILED],
                               release_after=0.0, last_error=None)

    def _check_settleable(self, item: Item, what: str) -> None:
        """A message in ``releasing`` may be settled by the user only once no process is sending it:
        SendGuard is waiting to learn its fate, or its release lease ran out (the sender died)."""
        if (item.last_error or "").startswith(RECORDING_PREFIX) and what != "resolve --sent":
            raise StateError(f"message {item.id} went out; SendGuard is recording it as sent: cannot {what} it "
                             f"(`sendguard queue resolve {item.id} --sent` records it now)")
        waiting = (item.last_error or "").startswith(WAITING_PREFIX)
        if not waiting and item.release_after > self.clock():
            raise StateError(f"message {item.id} is being sent right now: cannot {what} it; see "
                             f"`sendguard queue show {item.id}` in a moment")

    # ------------------------------------------------------------------ release
    def due(self) -> builtins.list[Item]:
        """Items ready to go now: confirmed (no approval needed, undo window over), approved, failed to retry."""
        now = self.clock()
        query = select(*[c for c in outbox.c if c.name not in ("raw", "final_raw")]).where(
            outbox.c.state.in_(_values(RELEASABLE)), outbox.c.release_after <= now)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.order_by(outbox.c.created_at)).all()
        items = [Item.from_row(r) for r in rows]
        return [i for i in items if not (i.state == State.CONFIRMED and (i.decision or {}).get("needs_approval"))]

    def release_due(self) -> builtins.list[Item]:
        self._cap_waits_now_and_then()
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
            if item.state == State.CONFIRMED and (item.decision or {}).get("needs_approval"):
                raise StateError(f"message {item_id} waits for approval")
            if self.release_guard is not None and (item.approvers or item.approval):
                try:
                    self.release_guard(item)
                except PermissionDenied as exc:
                    return self.transition(item_id, "refuse_release", "sendguard", {"error": str(exc)},
                                           last_error=str(exc))
            refused, approve = self._recheck_before_release(item)
            if refused:
                return self.transition(item_id, "refuse_release", "policy", {"error": refused},
                                       last_error=refused)
            if approve:  # the policy in force asks an approval this confirmation never went through
                return self._approval_since_confirmed(item, approve)
            # a waiting text left from an earlier interrupted send would make this live send look settleable
            # (``_check_settleable``): it goes with the step; any other last error stays to be shown
            stale = {"last_error": None} if (item.last_error or "").startswith(WAITING_PREFIX) else {}
            item = self.transition(item_id, "start_release", "sendguard", {"attempt": item.attempts + 1},
                                   attempts=item.attempts + 1, release_after=self.clock() + RELEASE_LEASE, **stale)
            item = self.get(item_id, with_bodies=True)
            if item.source == "gmail_web" and not item.approval:
                # Gmail in the browser sends it itself once the extension sees the decision.
                return self._sent(item, {"transport": item.source})
            if item.source == "gmail_web":  # the page's copy has no attachment content: never send it
                error = "a message checked in Gmail's page cannot be sent by SendGuard; send it from Gmail again"
                return self.transition(item_id, "fail_for_user", "sendguard",
                                       {"error": error, "permanent": True}, last_error=error)
            if item.source == "outlook" and not item.approval:
                if self.outlook_waiting is None or self.outlook_waiting(item.id):
                    # Outlook sends it itself once the add-in sees the decision.
                    return self._sent(item, {"transport": "outlook"})
                if not self._can_send_outlook_draft(item):
                    return self._outlook_gone(item)
                # The add-in is gone (the user left the message): send the saved draft from the server.
            to_send: ReleaseItem | None = None
            try:
                if self.mailbox_for is None:
                    raise PermanentError("no release transport is configured")
                mailbox = self.mailbox_for(item)
                to_send = self._release_item(item)
                receipt = mailbox.release(to_send)
                faults.point("release.after_transport")
            except OutcomeUnknown as exc:  # it may have gone out and nobody can tell: never send it again
                return self.transition(item_id, "fail_for_user", "sendguard",
                                       {"error": str(exc), "outcome_unknown": True}, last_error=str(exc))
            except TransientError as exc:
                lost = isinstance(exc, AnswerLost)
                return self._failed(item, str(exc), exc.retry_after, answer_lost=lost,
                                    in_doubt=not lost and self._doubt_remains(item, to_send))
            except AuthError as exc:  # asked again after the user signs in (or at the latest in 10 min)
                return self._failed(item, str(exc), None, cap=min(_retry.CAP, 600.0),
                                    in_doubt=self._doubt_remains(item, to_send))
            except PermanentError as exc:
                return self.transition(item_id, "fail_for_user", "sendguard",
                                       {"error": str(exc), "permanent": True}, last_error=str(exc))
            except MailboxError as exc:
                return self._failed(item, str(exc), None, in_doubt=self._doubt_remains(item, to_send))
            except Exception as exc:  # unknown: the transport may or may not have sent it
                log.exception("release of %s failed unexpectedly", item_id)
                return self.transition(item_id, "fail_for_user", "sendguard",
                                       {"error": repr(exc), "outcome_unknown": True},
                                       last_error=f"unexpected error: {exc}")
            return self._sent_by_transport(item, {"transport": receipt.transport, **receipt.detail})

    def _can_send_outlook_draft(self, item: Item) -> bool:
        if not item.source_ref or self.mailbox_for is None:
            return False
        try:
            # a connector that holds items in the mailbox sends the saved draft by its id
            return isinstance(self.mailbox_for(item), HoldingMailbox)
        except Exception:  # an account that cannot be opened cannot send the draft either
            return False

    def _outlook_gone(self, item: Item) -> Item:
        error = ("Outlook stopped waiting for SendGuard before you confirmed (the message was left or closed), "
                 "so it was not sent. Open it from Drafts in Outlook and press Send again.")
        return self.transition(item.id, "fail_for_user", "sendguard",
                               {"error": error, "outlook_gone": True}, last_error=error)

    def _recheck_before_release(self, item: Item) -> tuple[str | None, builtins.list[str]]:
        """Why the policy in force now refuses what was confirmed (a recipient blocked while the message
        waited for its approver or its undo time), or None; and the ``approve`` rules it now asks for a
        message confirmed without an approval (confirmed by another process, `sendguard queue confirm`,
        that read another policy: one saved with a mistake, which this helper does not take; or a rule
        added during the undo time). Not checked again when it was confirmed here under this very policy;
        a check that fails holds the message too."""
        policy = self.policy()
        if self._confirmed_under.pop(item.id, None) is policy:
            return None, []
        try:
            result = self.evaluate(item.final_raw or item.raw or b"", item.envelope_from, item.envelope_to, policy)
        except Exception as exc:  # noqa: BLE001 - fail closed: never released unchecked
            log.exception("checking %s again before its release failed", item.id)
            return f"SendGuard could not check this message again before sending it ({exc}): it was not sent", []
        if result.action == "approve" and item.state in (State.CONFIRMED, State.FAILED) and not item.approval:
            return None, [r.rule for r in result.reasons if r.action == "approve"]
        if result.action != "block":
            return None, []
        blocked = ", ".join(dict.fromkeys(r.target for r in result.reasons if r.action == "block"))
        return (f"{blocked} is blocked by policy since this message was confirmed: it was not sent. "
                "Cancel it, or send it again without that recipient"), []

    def _approval_since_confirmed(self, item: Item, reasons: builtins.list[str]) -> Item:
        """A message confirmed without an approval that the policy in force asks for: handed to its approvers,
        never sent as it is. One that cannot be (a retry, or nobody to approve it) is held for the user."""
        nobody = self.local_approvers and not self.policy().approvers_for(item.sender)
        if item.state == State.CONFIRMED and not nobody:
            return self._request_approval(item, reasons)
        error = ("this message needs approval under the policy in force and was confirmed without one: it was not "
                 "sent. Cancel it, and send it again from your mail program to have it approved")
        return self.transition(item.id, "refuse_release", "policy", {"error": error, "needs_approval": reasons},
                               last_error=error)

    def _release_item(self, item: Item) -> ReleaseItem:
        decision = item.decision or {}
        return ReleaseItem(
            outbox_id=item.id, message_id=item.message_id, raw=item.final_raw or item.raw or b"",
            envelope_from=item.envelope_from or item.sender, recipients=tuple(item.envelope_to),
            bcc=tuple(decision.get("bcc_addresses") or ()), source=item.source, source_ref=item.source_ref,
            held_since=item.created_at, answer_lost_ago=self._answer_lost_ago(item),
        )

    def _answer_lost_ago(self, item: Item) -> float | None:
        """Seconds since an earlier send of this item was left without an answer, from its audit records:
        a ``failed`` one whose transport said the answer was lost (``AnswerLost``), or a ``reconciled`` one
        for a send the helper stopped in that the transport did not find (yet). None when there is none.

        What a connector counts its grace from ("not in Sent Items" is only "not filed yet" for a while):
        kept in the store, so a restart within the grace does not send the message a second time."""
        if item.attempts <= 1:  # this release is the first attempt: no earlier send
            return None
        for event, ts, data in self._send_records([item.id]).get(item.id, []):
            if (event == "failed" and data.get("answer_lost")) \
                    or (event == "reconciled" and data.get("found") is False):
                try:
                    at = datetime.fromisoformat(ts).timestamp()
                except ValueError:
                    continue
                return max(0.0, self.clock() - at)
        return None

    def _sent(self, item: Item, detail: dict[str, Any]) -> Item:
        """``sent``, and its recipients' domains counted as sent to, in one transaction."""
        done = self.transition(item.id, "sent", "sendguard", detail, also=self._record_domains(item.envelope_to),
                               last_error=None)
        self.forget_unknown_domains()
        return done

    def _sent_by_transport(self, item: Item, detail: dict[str, Any], by: str | None = None) -> Item:
        """``sent`` once a transport has sent the message (or has it in Sent Items; not a hand-back to the
        mail program, which sends nothing before it sees ``sent``). Settled meanwhile (by hand once its
        lease was over, or by another process), it went out all the same: logged, recorded in the audit
        log and on the item, never dropped; one left to be sent again goes to the user instead
        (``needs_attention``), so it is never sent twice."""
        try:
            sent = self._sent(item, detail)
        except (StoreUnavailable, OperationalError) as exc:  # it went out: keep the receipt, commit it later
            return self._keep_unrecorded(item, detail, by, exc)
        except StateError as exc:
            state = self.get(item.id).state
            by = by or str(detail.get("transport") or "the mail service")
            log.error("message %s went out through %s after it had been marked %s: %s", item.id, by, state, exc)
            text = (f"{by} took this message after it had been marked {state}: it went out. Check your Sent "
                    "mail; SendGuard does not send it again.")
            data = {"state": state, "error": str(exc), **detail}

            def record(conn: Any) -> None:
                self.store.append_audit(conn, "sent_after_settled", "sendguard", item.id, data, ts=self.clock())
                self.store.record_sent_domains(conn, item.envelope_to, self.clock())

            done: Item | None = None
            if state in RELEASABLE:
                text += f" `sendguard queue resolve {item.id} --sent` records it as sent."
                try:
                    done = self.transition(item.id, "refuse_release", "sendguard",
                                           {"error": text, "sent_after_settled": True}, last_error=text, also=record)
                except StateError:  # taken meanwhile: recorded as it is
                    done = None
            if done is None:
                with self.store.transaction() as conn:
                    conn.execute(update(outbox).where(outbox.c.id == item.id).values(last_error=text))
                    record(conn)
                self._notify(item.id)
                done = self.get(item.id)
            self.forget_unknown_domains()
            return done
        self._unrecorded.pop(item.id, None)
        return sent

    def _keep_unrecorded(self, item: Item, detail: dict[str, Any], by: str | None, exc: Exception) -> Item:
        """The store could not take ``sent`` for a send that went out: keep the receipt in memory and commit
        it from the worker (``record_unrecorded``) as soon as the store can be written again. Meanwhile the
        message stays ``releasing`` under its lease, saying that it went out; it is never sent again."""
        pending = self._unrecorded.get(item.id)
        failures = pending.failures + 1 if pending is not None else 1
        where = by or str(detail.get("transport") or "the mail service")
        text = (f"{RECORDING_PREFIX}: it went out through {where} and SendGuard is recording that (it is not "
                f"sent again). The store cannot be written now: {exc}")
        wait = min(RECORD_RETRY_FIRST * 2 ** (failures - 1), RECORD_RETRY_CAP)
        self._unrecorded[item.id] = _Unrecorded(item, detail, by, text, failures, time.monotonic() + wait)
        if pending is None:
            log.error("message %s went out through %s but the store could not record it as sent (%s): recording "
                      "it as soon as the store can be written again", item.id, where, exc)
        try:  # best effort: a full disk may still take this small write; shown by this process either way
            with self.store.transaction() as conn:
                conn.execute(update(outbox).where(
                    outbox.c.id == item.id, outbox.c.state == State.RELEASING.value,
                    outbox.c.attempts == item.attempts).values(last_error=text))
        except Exception:  # noqa: BLE001 - the receipt in memory is what counts
            pass
        try:
            current = self.get(item.id)
        except Exception:  # noqa: BLE001 - the store cannot even be read: the item as it was sent
            current = self._as_known(item)
        self._notify(item.id, current)
        return current

    def record_unrecorded(self) -> builtins.list[Item]:
        """Every worker turn: commit ``sent`` for sends that went out while the store could not be written,
        once each one's back-off is over. Settled meanwhile (by hand or another process) it is recorded as
        ``_sent_by_transport`` records any such send; a new send started since is never marked by this one."""
        if not self._unrecorded:
            return []
        done = []
        now = time.monotonic()
        with self._release_lock:
            for item_id, pending in list(self._unrecorded.items()):
                if pending.next_at > now:
                    continue
                try:
                    current = self.get(item_id)
                except NotFound:
                    self._unrecorded.pop(item_id, None)
                    continue
                except Exception:  # noqa: BLE001 - cannot read the store either: next turn
                    pending.next_at = now + RECORD_RETRY_CAP
                    continue
                if current.state == State.SENT or (current.state == State.RELEASING
                                                   and current.attempts != pending.item.attempts):
                    # recorded meanwhile (resolved as sent), or a later send of it is under way: that one is
                    # settled by its own sender; this one's receipt is kept in the audit log
                    self._unrecorded.pop(item_id, None)
                    try:
                        with self.store.transaction() as conn:
                            self.store.append_audit(conn, "sent_after_settled", "sendguard", item_id,
                                                    {"state": current.state, **pending.detail}, ts=self.clock())
                    except Exception:  # noqa: BLE001
                        log.exception("could not record the late receipt of %s", item_id)
                    continue
                result = self._sent_by_transport(pending.item, pending.detail, pending.by)
                if item_id not in self._unrecorded:
                    log.info("message %s recorded as sent now that the store can be written", item_id)
                    done.append(result)
        return done

    def _record_domains(self, addresses: builtins.list[str]) -> Callable[[Any], None]:
        return lambda conn: self.store.record_sent_domains(conn, addresses, self.clock())

    def _failed(self, item: Item, error: str, retry_after: float | None, cap: float | None = None,
                answer_lost: bool = False, in_doubt: bool = False) -> Item:
        """``failed``, to be tried again after the back-off. ``answer_lost``: the send may have gone out
        (``AnswerLost``); the audit record says so, and later releases count their grace from it.
        ``in_doubt``: this try sent nothing, but an earlier lost answer still leaves the message possibly
        gone out (``may_have_been_sent``; the grace is still counted from the loss). ``sends_in_doubt``
        reads both: a cancel and the status line say the message may have gone out."""
        backoff = retry_wait(item.attempts, retry_after, cap)
        # a connector says when it would try again (the server's Retry-After); the user reads the wait kept
        error = _TRYING_AGAIN.sub(f"trying again in {backoff:.0f} s", error)
        data: dict[str, Any] = {"error": error, "retry_in": backoff}
        if answer_lost:
            data["answer_lost"] = True
        elif in_doubt:
            data["may_have_been_sent"] = True
        return self.transition(item.id, "fail", "sendguard", data, last_error=error,
                               release_after=self.clock() + backoff)

    def reconcile(self) -> builtins.list[Item]:
        """At start-up: ask about everything left in ``releasing`` (and re-check ``received``).

        Whatever cannot be settled now stays ``releasing`` and is asked about again by the worker
        (``reconcile_due``) with back-off until the transport answers or the user settles it.
        """
        self.cap_waits()  # before anything reads a deadline stored by an earlier run
        settled = self._reconcile(self.list([State.RELEASING]))
        for item in self.list([State.RECEIVED]):
            settled.append(self.process(item.id))
        for item in self.list([State.CONFIRMED], limit=100_000):
            if (item.decision or {}).get("needs_approval"):  # stopped between confirm and its request
                settled.append(self._request_approval(item))
        return settled

    def reconcile_due(self) -> builtins.list[Item]:
        """Every worker turn: interrupted sends whose wait is over (back-off, or a dead sender's lease)."""
        self._cap_waits_now_and_then()
        query = select(*[c for c in outbox.c if c.name not in ("raw", "final_raw")]).where(
            outbox.c.state == State.RELEASING.value, outbox.c.release_after <= self.clock())
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.order_by(outbox.c.updated_at)).all()
        return self._reconcile([Item.from_row(r) for r in rows]) if rows else []

    def _reconcile(self, items: builtins.list[Item]) -> builtins.list[Item]:
        settled = []
        with self._release_lock:  # nothing of ours is mid-send while we ask
            for item in items:
                try:
                    result = self._reconcile_one(item.id)
                except StateError:  # settled meanwhile by the user or another process
                    continue
                if result is not None:
                    settled.append(result)
        return settled

    def _reconcile_one(self, item_id: str) -> Item | None:
        item = self.get(item_id)
        if item.state != State.RELEASING or item_id in self._unrecorded:  # (we know it went out: recording it)
            return None
        if item.source in CLIENT_SENDS and not item.approval:
            return self.transition(item.id, "reconcile_unknown", "sendguard",
                                   {"found": None}, last_error="interrupted while handing back to Outlook")
        found: bool | None
        where = f"the account {item.account}" if item.account else "the mail service"
        try:
            if self.mailbox_for is None:
                found = None
            else:
                mailbox = self.mailbox_for(item)
                where = f"{mailbox.kind} account {mailbox.name or where}"
                found = mailbox.find_sent(item.message_id)
        except Exception as exc:  # cannot ask now (down, throttled, sign-in refused, a bug): ask again later
            return self._wait_for_answer(item, where, exc)
        self._reconcile_failures.pop(item.id, None)
        if found is True:
            return self._sent_by_transport(item, {"reconciled": True}, by=where)
        if found is False:
            return self.transition(item.id, "reconcile_unsent", "sendguard",
                                   {"found": False}, release_after=self.clock(),
                                   last_error="interrupted before it was sent; sending again")
        return self.transition(
            item.id, "reconcile_unknown", "sendguard", {"found": None},
            last_error="interrupted while sending; the transport cannot tell whether it went out. "
                       f"Check your Sent mail, then `sendguard queue resolve {item.id} --sent` or `--resend`")

    def _wait_for_answer(self, item: Item, where: str, exc: Exception) -> Item:
        """Keep the item ``releasing``: say what SendGuard waits for, and when it asks again."""
        failures = self._reconcile_failures.get(item.id, 0) + 1
        self._reconcile_failures[item.id] = failures
        wait = retry_wait(failures, getattr(exc, "retry_after", None))
        if isinstance(exc, MailboxError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("asking %s about %s failed unexpectedly", where, item.id, exc_info=exc)
        text = (f"{WAITING_PREFIX}{where} to say whether message {item.id} went out (its send was interrupted). "
                f"Asking again in {wait:.0f} s; it is not sent again until SendGuard knows. Last answer: "
                f"{reason} To settle it yourself: `sendguard queue resolve {item.id} --sent` (it went out) "
                "or `--resend`.")
        first = not (item.last_error or "").startswith(WAITING_PREFIX)
        with self.store.transaction() as conn:
            # (the same attempt only: a send started since, by the user's resend, is not waiting)
            written = conn.execute(update(outbox).where(
                outbox.c.id == item.id, outbox.c.state == State.RELEASING.value, outbox.c.attempts == item.attempts,
            ).values(release_after=self.clock() + wait, last_error=text)).rowcount
            first = first and bool(written)
            if first:
                self.store.append_audit(conn, "reconcile_waiting", "sendguard", item.id,
                                        {"where": where, "error": reason}, ts=self.clock())
        if first:
            log.warning("cannot tell yet whether %s went out: %s", item.id, reason)
        self._notify(item.id)
        return self.get(item.id)

    # ------------------------------------------------------------------ waits set by a clock that was ahead
    def cap_waits(self) -> builtins.list[str]:
        """Shorten each stored wait longer than SendGuard ever sets to the longest it sets, from now.

        Deadlines are times of the ``SteadyClock``, anchored to the system clock at each start: a helper
        started while that clock was ahead (a boot before NTP) stores them that far ahead, and once the
        clock is corrected and the helper restarted they would hold mail for the whole skew. The longest
        wait of a kind, counted from now, is never shorter than the one set back then, so a message goes at
        worst earlier than the skewed time, never before its undo window or back-off (as the policy and
        [retry] say now). Approval expiry is left alone: a late one only keeps the message held longer.
        Returns the ids changed."""
        self._waits_capped_at = time.monotonic()
        now = self.clock()
        jittered = _retry.CAP * (1 + _retry.JITTER)
        longest = {
            State.CONFIRMED: float(self.policy().hold_seconds),  # the undo window (none before an approval)
            State.APPROVED: 0.0,  # released as soon as it is approved
            State.FAILED: jittered,  # retry_wait: at most max_seconds, plus jitter
            State.RELEASING: max(RELEASE_LEASE, jittered),  # a sender's lease, or asking again (retry_wait)
        }
        query = select(outbox.c.id, outbox.c.state, outbox.c.release_after).where(or_(*(
            and_(outbox.c.state == state.value, outbox.c.release_after > now + wait + WAIT_SLACK)
            for state, wait in longest.items())))
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        changed = []
        for row in rows:
            until = now + longest[State(row.state)] + WAIT_SLACK
            with self.store.transaction() as conn:
                written = conn.execute(update(outbox).where(
                    outbox.c.id == row.id, outbox.c.state == row.state, outbox.c.release_after == row.release_after,
                ).values(release_after=until)).rowcount
                if written:
                    self.store.append_audit(conn, "wait_shortened", "sendguard", row.id, {
                        "state": row.state, "was": row.release_after, "until": until}, ts=now)
            if written:
                log.warning("message %s (%s) was set to wait %.0f s more, longer than SendGuard ever waits (the "
                            "clock was ahead when it was set): it now waits %.0f s", row.id, row.state,
                            row.release_after - now, until - now)
                changed.append(row.id)
                self._notify(row.id)
        return changed

    def _cap_waits_now_and_then(self) -> None:
        """``cap_waits`` from the worker's turns: a wait may also come from another process's clock."""
        if time.monotonic() - self._waits_capped_at >= CAP_WAITS_EVERY:
            self.cap_waits()

    # ------------------------------------------------------------------ housekeeping
    def expire_due(self) -> builtins.list[Item]:
        now = self.clock()
        with self.store.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(select(outbox.c.id).where(
                outbox.c.state == State.AWAITING_APPROVAL.value, outbox.c.expires_at < now)).all()]
        out = []
        for item_id in ids:
            try:
                out.append(self.transition(item_id, "expire", "sendguard", {}))
            except StateError:
                continue
        return out

    def purge(self, retention_days: float) -> int:
        """Drop message bodies of finished items older than ``retention_days``; audit records stay."""
        cutoff = self.clock() - retention_days * 86400
        with self.store.transaction() as conn:
            result = conn.execute(update(outbox).where(
                outbox.c.state.in_(_values(FINAL_STATES)), outbox.c.updated_at < cutoff, outbox.c.purged == 0,
            ).values(raw=None, final_raw=None, purged=1))
            if result.rowcount:
                self.store.append_audit(conn, "purged", "sendguard", None,
                                        {"count": result.rowcount, "retention_days": retention_days})
        return result.rowcount or 0

    # ------------------------------------------------------------------ Outbox interception bookkeeping
    def knows_message(self, message_id: str) -> bool:
        """Whether any outbox item (any source, any state) carries this Message-ID."""
        with self.store.engine.connect() as conn:
            return conn.execute(select(outbox.c.id).where(outbox.c.message_id == message_id).limit(1)).first() \
                is not None

    def watch_started(self, account: str) -> float:
        """When SendGuard first watched this account's Outbox (recorded once in the audit log): what the
        server sent before then was never SendGuard's to take."""
        with self.store.transaction() as conn:
            rows = conn.execute(select(audit.c.data).where(audit.c.event == "outbox_watch_started")).all()
            for (data,) in rows:
                record = json.loads(data)
                if record.get("account") == account:
                    return float(record["at"])
            now = self.clock()
            self.store.append_audit(conn, "outbox_watch_started", "sendguard", None, {"account": account, "at": now},
                                    ts=now)
            return now

    def record_missed(self, missed: MissedItem, source: str, account: str) -> Item | None:
        """Record a message the server sent from the Outbox at its deferred time without SendGuard (the
        helper was not running, or the deferred time was shorter than the watch interval): an item in
        ``sent`` with a ``missed`` audit record, so `queue list`, the window and the audit trail show it.
        Nothing is ever sent again. None when the Message-ID is already known."""
        if self.knows_message(missed.message_id):
            return None
        now = self.clock()
        item_id = new_id()
        note = ("sent by the mail server at its deferred time while SendGuard was not watching: "
                "it was not checked")
        values = _new_row(item_id, State.SENT, now, source=source, account=account,
                          envelope_to=list(missed.recipients), message_id=missed.message_id, subject=missed.subject,
                          raw=missed.raw or None, created_at=missed.sent_at, last_error=note)
        if missed.raw:
            try:
                parsed = message.parse(missed.raw, "", missed.recipients)
                values.update(sender=parsed.sender, owner=parsed.sender, envelope_from=parsed.sender)
            except MessageError:
                pass
        with self.store.transaction() as conn:
            conn.execute(_INSERT_ITEM, [values])
            self.store.append_audit(conn, "missed", source, item_id, {
                "to": State.SENT.value, "source": source, "account": account, "message_id": missed.message_id,
                "sent_at": missed.sent_at, "deferred_until": missed.deferred_until,
                "recipients": list(missed.recipients), "reason": note}, ts=now)
            self.store.record_sent_domains(conn, list(missed.recipients), now)
        self.forget_unknown_domains()
        self._notify(item_id)
        return self.get(item_id)

    # ------------------------------------------------------------------ requests from other machines
    def take_for_approval(self, item_id: str, raw: bytes, *, owner: str, sender: str, envelope_from: str,
                          recipients: builtins.list[str], message_id: str, subject: str, source: str,
                          check: checks.StoredCheck | None, decision: dict[str, Any] | None, approvers: builtins.list[str],
                          expires_at: float, actor: str, audit_data: dict[str, Any]) -> Item:
        """Keep a message another machine holds for approval (the central server, for a user's helper):
        stored in ``awaiting_approval`` under that machine's id, with its ``approval_requested`` record,
        in one transaction. Raises ``IntegrityError`` when the id is taken (the caller answers a retry)."""
        now = self.clock()
        event = TRANSITIONS["request_approval"].event
        values = _new_row(item_id, TRANSITIONS["request_approval"].target, now, source=source, owner=owner,
                          envelope_from=envelope_from, envelope_to=recipients, message_id=message_id,
                          sender=sender, subject=subject, raw=raw, final_raw=raw,
                          check_result=check.to_json() if check else None, decision=decision, approvers=approvers,
                          expires_at=expires_at)
        with self.store.transaction() as conn:
            conn.execute(_INSERT_ITEM, [values])
            self.store.append_audit(conn, event, actor, item_id, audit_data, ts=now)
        self._notify(item_id)
        return self.get(item_id)

    def returns_due(self) -> builtins.list[Item]:
        """Items taken from a server Outbox that ended unsent and are not yet back in the user's Drafts."""
        returned = select(audit.c.item_id).where(audit.c.event == "returned_to_drafts", audit.c.item_id.isnot(None))
        query = select(*[c for c in outbox.c if c.name not in ("raw", "final_raw")]).where(
            outbox.c.source.in_(OUTBOX_SOURCES), outbox.c.state.in_(_values(NOT_SENT_STATES)),
            outbox.c.source_ref.isnot(None), outbox.c.id.not_in(returned))
        with self.store.engine.connect() as conn:
            return [Item.from_row(r) for r in conn.execute(query).all()]

    def mark_returned(self, item_id: str, found: bool, actor: str = "sendguard") -> None:
        """Record that a cancelled Outbox item went back to Drafts (or was no longer there to return)."""
        with self.store.transaction() as conn:
            self.store.append_audit(conn, "returned_to_drafts", actor, item_id, {"found": found}, ts=self.clock())
        self._notify(item_id)


_TRYING_AGAIN = re.compile(r"trying again in \d+ s")


def retry_wait(failures: int, retry_after: float | None, cap: float | None = None) -> float:
    """Seconds the outbox waits after ``failures`` failures in a row: its own back-off, or what the server
    asked for (Retry-After) but never less than a connector's own back-off for that attempt (a server that
    says ``0`` again and again must not make a loop) and never more than ``[retry] max_seconds``."""
    if retry_after is None:
        return _retry.delay(failures, cap=cap)
    own = _retry.delay(failures, cap=min(_retry.CAP, CONNECTOR_BACKOFF_CAP) if cap is None else cap)
    return max(min(float(retry_after), _retry.CAP), own)


HISTORY_DOMAINS = 2000  # most recently sent-to domains used as look-alike references
HISTORY_TTL = 2.0  # seconds the sent-to domains are reused (other processes' releases show up after it)


_OUTBOX_COLUMNS = frozenset(c.name for c in outbox.c)


def _new_row(item_id: str, state: State, now: float, **values: Any) -> dict[str, Any]:
    """Every column of a new outbox row: the defaults, then ``values`` (names as in ``store.outbox``)."""
    row: dict[str, Any] = {
        "id": item_id, "state": state.value, "source": "", "source_ref": None, "account": None, "owner": "",
        "envelope_from": "", "envelope_to": [], "message_id": "", "sender": "", "subject": "", "raw": None,
        "release_after": 0.0, "attempts": 0, "created_at": now, "updated_at": now, "purged": 0,
        "check_result": None, "last_error": None}
    unknown = set(values) - _OUTBOX_COLUMNS
    if unknown:
        raise TypeError(f"no outbox column {', '.join(sorted(unknown))}")
    row.update(values)
    return row


def _policy_changes(decision: Decision, check: StoredCheck) -> None:
    """What the policy itself changes on release: auto Cc/Bcc added, opted-out recipients removed (not list
    members: the mail server expands the list, and the check held the message for the user instead)."""
    removed = set(decision.removed_recipients)
    for row in check.recipients:
        if "suppressed" in row.flags and not row.list_address and row.address not in removed:
            decision.removed_recipients.append(row.address)
            removed.add(row.address)
        elif "auto_added" in row.flags and row.address not in removed:
            (decision.added_bcc if row.field == "bcc" else decision.added_cc).append(row.address)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
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
