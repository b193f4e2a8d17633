"""The one interface every mailbox connector implements.

The outbox never knows which connector it talks to. A connector:
- ``release(item)``: sends the final MIME (recipients already removed, Bcc already applied) and
  returns a receipt; raises ``TransientError`` (nothing sent, retry later), ``AuthError`` (sign in
  again; mail stays held) or ``PermanentError`` (this message can never go this way).
- ``find_sent(message_id)``: after a crash in ``releasing``, says whether the message went out:
  True (found in Sent Items / the sink), False (certainly not sent), None (cannot be known).
- A send whose answer was lost (it may have gone out) raises ``AnswerLost``; the outbox keeps that on
  record and gives every later release of the message its age (``ReleaseItem.answer_lost_ago``), so a
  connector whose service files sent mail late looks before it sends again, also after a restart.
- ``fetch_held()`` (``HoldingMailbox``: Exchange and Graph): items the user put in the account's hold
  folder, to take into the outbox; ``ack_held(ref)`` is called once such an item is durable in the
  outbox. Such a connector can also send an item it holds by its ``source_ref`` (an Outlook draft).
- Outbox interception (optional, Exchange and Graph; see ``OutboxWatching``): ``watch_outbox()``
  takes every item waiting in the server-side Outbox with a future deferred send time into the hold
  folder, where ``fetch_held`` finds it; ``return_to_drafts(ref)`` gives a cancelled one back to the
  user; ``find_missed(since)`` lists what the server sent at its deferred time without SendGuard;
  ``companion()`` gives another connector for the same sign-in with a connection of its own (the watch
  must never wait behind a long release). ``OutboxStreaming`` connectors can also be woken by the server.

Which of these a connector offers is checked with ``isinstance`` against the protocols below, never
by its kind: a new connector that implements ``OutboxWatching`` is watched like Exchange and Graph.
The helper (``registry.Connectors``) builds one connector per account and closes it at stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# the failures a connector raises live apart, so code that only catches them (the directory, the CLI)
# does not load these dataclasses and protocols; they are named here too, where connectors look for them
from .errors import (  # noqa: F401
    AnswerLost,
    AuthError,
    MailboxError,
    OutcomeUnknown,
    PermanentError,
    TransientError,
)

# What SendGuard names in the user's Exchange / Exchange Online mailbox (EWS and Graph alike, so a user
# moved from one to the other finds the same folder): the folder held mail waits in, the category a
# draft is handed over with, and the one marking an item already taken.
HOLD_FOLDER = "SendGuard Hold"
DRAFT_CATEGORY = "SendGuard"
TAKEN_CATEGORY = "SendGuard: taken"


@dataclass(frozen=True)
class ReleaseItem:
    """What to send: the final bytes and envelope, after the user's confirmation and any approval."""

    outbox_id: str
    message_id: str  # the Message-ID header, with angle brackets
    raw: bytes  # final RFC 5322 message; holds no Bcc header
    envelope_from: str
    recipients: tuple[str, ...]  # every address that must receive it (To, Cc and Bcc)
    bcc: tuple[str, ...] = ()  # the subset of recipients that are blind copies
    source: str = "smtp"  # smtp | outlook | exchange | exchange-outbox | graph | graph-outbox | gmail
    source_ref: str | None = None  # the connector's own id of a held item (EWS item id, draft id...)
    held_since: float | None = None  # epoch seconds the outbox took it in (grace periods for late syncs)
    # Seconds since an earlier send of it was left without an answer (``AnswerLost``, or a send the helper
    # was stopped in and that reconciliation did not find yet), from the outbox's records; None when none
    # was. A connector reads "not in Sent Items" as "not filed yet" for a grace after it, after a restart too.
    answer_lost_ago: float | None = None


@dataclass(frozen=True)
class ReleaseReceipt:
    transport: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeldItem:
    """An item found in an account's hold folder (or a draft handed to SendGuard)."""

    ref: str
    raw: bytes
    envelope_from: str
    recipients: tuple[str, ...]
    source: str


@runtime_checkable
class Mailbox(Protocol):
    name: str
    kind: str

    def release(self, item: ReleaseItem) -> ReleaseReceipt: ...

    def find_sent(self, message_id: str) -> bool | None: ...

    def close(self) -> None:
        """Let go of connections (the helper stops); a later call connects again."""
        ...


@runtime_checkable
class HoldingMailbox(Mailbox, Protocol):
    def fetch_held(self) -> list[HeldItem]: ...

    def ack_held(self, ref: str) -> None: ...


@dataclass(frozen=True)
class MissedItem:
    """A message the server sent from the Outbox at its deferred time, which SendGuard never took."""

    message_id: str
    subject: str
    sent_at: float  # epoch seconds, the server's DateTimeSent / sentDateTime
    deferred_until: float | None
    recipients: tuple[str, ...]
    raw: bytes = b""


@runtime_checkable
class OutboxWatching(HoldingMailbox, Protocol):
    source_outbox: str  # the outbox source of items it takes: exchange-outbox | graph-outbox

    def watch_outbox(self) -> int: ...

    def return_to_drafts(self, ref: str) -> bool: ...

    def find_missed(self, since: float) -> list[MissedItem]: ...

    def companion(self) -> OutboxWatching: ...


@runtime_checkable
class OutboxStreaming(OutboxWatching, Protocol):
    def stream_outbox_changes(self, on_change: Callable[[], None], minutes: int = 1) -> None: ...
