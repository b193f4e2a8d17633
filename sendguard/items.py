"""One outbox item as stored: what reading commands need, without the database layer (``sendguard
queue list`` loads this and ``states``, not SQLAlchemy; see ``store_read``)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .clock import now_iso
from .errors import CheckFormatError
from .sources import source_label
from .states import State

if TYPE_CHECKING:
    from .checks import StoredCheck, Verdict

log = logging.getLogger(__name__)

# last_error of an item in ``releasing`` whose fate SendGuard is still asking the transport about
WAITING_PREFIX = "Waiting for "


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
    check_json: dict[str, Any] | None  # the check result as stored (None until checked): see ``check``
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
        return cls.from_mapping(row._mapping, with_bodies)

    @classmethod
    def from_mapping(cls, m: Any, with_bodies: bool = False) -> Item:
        """From a row's mapping, or the column values an insert was just given."""
        return cls(
            id=m["id"], state=m["state"], source=m["source"], source_ref=m["source_ref"], account=m["account"],
            owner=m["owner"] or "", envelope_from=m["envelope_from"] or "", envelope_to=list(m["envelope_to"] or []),
            message_id=m["message_id"] or "", sender=m["sender"] or "", subject=m["subject"] or "",
            check_json=m["check_result"], decision=m.get("decision"), approvers=list(m.get("approvers") or []),
            approval=m.get("approval"), release_after=m["release_after"] or 0.0, expires_at=m.get("expires_at"),
            attempts=m["attempts"] or 0, last_error=m["last_error"], created_at=m["created_at"],
            updated_at=m["updated_at"], purged=bool(m["purged"]),
            raw=m["raw"] if with_bodies else None, final_raw=m["final_raw"] if with_bodies else None,
        )

    @cached_property
    def check(self) -> StoredCheck | None:
        """The check result, read when first asked: a damaged stored result (``CheckFormatError``) fails
        whatever needs this one message, never a listing of all of them."""
        from .checks import StoredCheck  # the rule engine: loaded when a check result is read

        return None if self.check_json is None else StoredCheck.from_json(self.check_json)

    @property
    def verdict(self) -> Verdict:
        from .checks import Verdict

        return self.check.verdict if self.check else Verdict()

    def summary(self) -> dict[str, Any]:
        """The ``queue list --json`` shape."""
        from .checks import StoredCheck

        try:
            check = self.check
        except CheckFormatError as exc:  # listed from its envelope; whatever acts on it says what is wrong
            log.error("message %s: %s", self.id, exc)
            check = StoredCheck.unreadable(str(exc))
        gone, gone_attachments = self.removed()
        # what the user (or the policy's opt-out list) took out at Send stays listed, marked ``removed``
        recipients = [r.to_json() | ({"removed": True} if self.is_removed(r, gone) else {})
                      for r in check.recipients] if check else [{"address": a} for a in self.envelope_to]
        attachments = [a.to_json() | ({"removed": True} if a.id in gone_attachments else {})
                       for a in check.attachments] if check else []
        return {
            "id": self.id,
            "state": self.state,
            "source": self.source,
            "source_label": source_label(self.source),
            "from": self.sender,
            "subject": self.subject,
            "recipients": recipients,
            "attachments": attachments,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "verdict": check.verdict.action if check else "allow",
            "last_error": self.last_error,
            "waiting_for": self.waiting_for,
        }

    def removed(self) -> tuple[set[str], set[str]]:
        """The recipients (addresses, lower-cased) and attachments (ids) taken out of the message when it was
        confirmed: it is not sent to or with them. Empty before the confirmation."""
        decision = self.decision or {}
        return ({str(a).lower() for a in decision.get("removed_recipients") or []},
                {str(a) for a in decision.get("removed_attachments") or []})

    @staticmethod
    def is_removed(recipient: Any, gone: set[str]) -> bool:
        """Whether a check's recipient row was taken out (itself, or the list it gets the message through)."""
        return recipient.address.lower() in gone or bool(recipient.list_address
                                                          and recipient.list_address.lower() in gone)

    @property
    def waiting_for(self) -> str | None:
        """For an interrupted send: what SendGuard is waiting to learn, and from whom; for a message the
        central server sends itself: what the server is doing with it (else None)."""
        if self.state == State.AWAITING_APPROVAL and (self.decision or {}).get("release") == "server":
            return self.last_error
        if self.state != State.RELEASING:
            return None
        if self.last_error and self.last_error.startswith(WAITING_PREFIX):
            return self.last_error
        return "Sending now"


def _iso(ts: float) -> str:
    return now_iso(ts)


_ID_LOCK = threading.Lock()
_last_id = [0, 0]  # the millisecond and the count of the last id made here


def new_id() -> str:
    """An item's id: 20 hex digits, the time in milliseconds (11), then 9 that start at a random place in
    each millisecond and count up for every further id made here in it.

    Ids made one after the other sort one after the other, so a message taken in adds to the end of the
    store's indexes on its id (the outbox's key, the audit log's item index) instead of to a page anywhere
    in them: a commit of a few messages writes fewer pages. Two processes making an id in the same
    millisecond share a random start about once in 30 billion times (the store would refuse the second).
    """
    now = time.time_ns() // 1_000_000
    with _ID_LOCK:
        last, count = _last_id
        if now <= last:  # in the same millisecond, or the clock went back: after the last one
            now, count = last, count + 1
            if count >= 1 << 36:
                now, count = last + 1, secrets.randbelow(1 << 35)
        else:
            count = secrets.randbelow(1 << 35)  # (half the range: room to count up)
        _last_id[:] = [now, count]
    return f"{now:011x}{count:09x}"
