"""The outbox's state machine: every state an item can be in, and every allowed move between them.

Kept apart from ``outbox`` (which holds the database side) so that commands which only read (``queue
list``) know the states without loading the database layer. ``sendguard.outbox`` re-exports all of it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class State(enum.StrEnum):
    """Where an outbox item is. Stored and shown as these strings (``State.SENT == "sent"``)."""

    RECEIVED = "received"  # committed on intake, not yet checked
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # held for the user's window
    CONFIRMED = "confirmed"  # the user (or the policy) said send; waits out the undo time
    AWAITING_APPROVAL = "awaiting_approval"  # held for an approver
    APPROVED = "approved"
    REJECTED = "rejected"
    RELEASING = "releasing"  # committed before the transport is called: never sent twice
    SENT = "sent"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # nobody approved it in time
    FAILED = "failed"  # a release failed and is retried after a back-off
    NEEDS_ATTENTION = "needs_attention"  # the user must decide (unknown outcome, permanent error)


@dataclass(frozen=True)
class Transition:
    """One allowed move: from any of ``sources`` to ``target``, recorded as ``event`` in the audit log."""

    sources: frozenset[State]
    target: State
    event: str
    # a record put right after the fact (it never sends anything): its sources stay final states
    correction: bool = False


def _t(sources: Iterable[State], target: State, event: str, correction: bool = False) -> Transition:
    return Transition(frozenset(sources), target, event, correction)


S = State
# Every state an item may still be cancelled from (anything held; ``releasing`` has its own step).
_HELD_FOR_CANCEL = (S.RECEIVED, S.AWAITING_CONFIRMATION, S.CONFIRMED, S.AWAITING_APPROVAL, S.APPROVED, S.FAILED,
                    S.NEEDS_ATTENTION)
# The state machine: step -> (from, to, audit event). ``Outbox.transition`` refuses anything else.
TRANSITIONS: dict[str, Transition] = {
    # the policy holds a checked message for the user's window
    "hold": _t([S.RECEIVED], S.AWAITING_CONFIRMATION, "verdict"),
    # the user's Send (or the policy passing a message on without a window)
    "confirm": _t([S.RECEIVED, S.AWAITING_CONFIRMATION], S.CONFIRMED, "confirmed"),
    "request_approval": _t([S.CONFIRMED], S.AWAITING_APPROVAL, "approval_requested"),
    "reroute_approval": _t([S.AWAITING_APPROVAL], S.AWAITING_APPROVAL, "approval_rerouted"),
    "approve": _t([S.AWAITING_APPROVAL], S.APPROVED, "approved"),
    "reject": _t([S.AWAITING_APPROVAL], S.REJECTED, "rejected"),
    "expire": _t([S.AWAITING_APPROVAL], S.EXPIRED, "expired"),
    "cancel": _t(_HELD_FOR_CANCEL, S.CANCELLED, "cancelled"),
    # an interrupted send SendGuard cannot settle: the user stops it (it may have gone out)
    "cancel_interrupted": _t([S.RELEASING], S.CANCELLED, "cancelled"),
    "start_release": _t([S.CONFIRMED, S.APPROVED, S.FAILED], S.RELEASING, "releasing"),
    # the central server's signed decision does not cover this content: never sent
    "refuse_release": _t([S.CONFIRMED, S.APPROVED, S.FAILED], S.NEEDS_ATTENTION, "release_refused"),
    "sent": _t([S.RELEASING], S.SENT, "released"),
    "fail": _t([S.RELEASING], S.FAILED, "failed"),  # retried after a back-off
    "fail_for_user": _t([S.RELEASING], S.NEEDS_ATTENTION, "failed"),  # permanent, or the outcome is unknown
    # at start-up or later: the transport said it never went out / cannot say
    "reconcile_unsent": _t([S.RELEASING], S.FAILED, "reconciled"),
    "reconcile_unknown": _t([S.RELEASING], S.NEEDS_ATTENTION, "reconciled"),
    # the user settles a message SendGuard cannot: it went out / send it again
    "resolve_sent": _t([S.NEEDS_ATTENTION, S.RELEASING], S.SENT, "released"),
    "resolve_resend": _t([S.NEEDS_ATTENTION, S.RELEASING, S.FAILED], S.FAILED, "retry_requested"),
    # central server: the sender's helper reports it sent the approved message
    "helper_sent": _t([S.APPROVED], S.SENT, "released"),
    # the sender's helper: the central server sent a message it keeps and sends itself
    # ([approval] release = "server"); this helper never sends such a message
    "released_by_server": _t([S.AWAITING_APPROVAL, S.NEEDS_ATTENTION], S.SENT, "released_by_server"),
    # the Outlook add-in was cleared to send (``sent`` for Outlook items means "Outlook may send it now")
    # but then stopped the send itself (it could not apply a removal or an added Cc/Bcc): never sent
    "client_stopped": _t([S.SENT], S.CANCELLED, "send_stopped", correction=True),
}
del S

STATES = tuple(s.value for s in State)  # as stored and shown (`queue list --state`)


def _in_order(states: Iterable[State]) -> tuple[State, ...]:
    wanted = set(states)
    return tuple(s for s in State if s in wanted)


# states no transition leaves: the item is done
FINAL_STATES = _in_order(s for s in State
                         if not any(s in t.sources for t in TRANSITIONS.values() if not t.correction))
HELD_STATES = _in_order(s for s in State if s not in FINAL_STATES)
NOT_SENT_STATES = _in_order(s for s in FINAL_STATES if s != State.SENT)
CANCELLABLE = _in_order(TRANSITIONS["cancel"].sources)
# what an approver's decision (or the lack of one) can end in
APPROVAL_OUTCOMES = _in_order(TRANSITIONS[step].target for step in ("approve", "reject", "expire"))
# an approval request the approvers are done with: a central server hands these back to the sender's helper
DECIDED_STATES = _in_order([*APPROVAL_OUTCOMES, *FINAL_STATES])
# a sender's client (the Outlook add-in, a script) waits for the outcome while the item is in one of these:
# the user has not decided yet, or the decision is being carried out (the undo time, the send itself)
AWAITING_OUTCOME = (State.RECEIVED, State.AWAITING_CONFIRMATION, State.CONFIRMED, State.RELEASING)
# states in which a release is due once ``release_after`` has passed
RELEASABLE = _in_order(TRANSITIONS["start_release"].sources)
# what the status line (sendguard/waiting.py) tells about: a send being carried out or asked about, a send
# retried after a failure, a message waiting for the user's decision
WAITING_STATES = (State.RELEASING, State.FAILED, State.NEEDS_ATTENTION)


def table_text(width: int = 108) -> str:
    """The table as text, one step a line (``step: from states -> to state [audit event]``), wrapped at
    ``width``. ``outbox.py``'s docstring carries this text, and a test keeps the two the same."""
    name_width = max(len(step) for step in TRANSITIONS)
    lines = []
    for step, t in TRANSITIONS.items():
        words = [*(f"{s.value}," for s in State if s in t.sources)]
        words[-1] = words[-1].rstrip(",")
        words += ["->", t.target.value, f"[{t.event}]"]
        line = f"{step:<{name_width}}  "
        for word in words:
            if len(line) + len(word) + 1 > width and line.strip():
                lines.append(line.rstrip())
                line = " " * (name_width + 4)
            line += word + " "
        lines.append(line.rstrip())
    return "\n".join(lines)
