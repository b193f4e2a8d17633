"""Supervisor approval (上長承認): who may decide a held message, and the decisions themselves.

Only an approver named for the message, or that approver's active deputy (代理承認), may decide;
the sender only when ``allow_self_approval`` is on and with a comment (the record is marked
``self_approved``). The first decision wins; a later one is refused saying who decided and when.
Every refusal is audited too.

With a central server configured (``[server] url`` in config.toml) the same calls go to the
server (``sendguard.central``), which holds the approvals of the whole organization; the server
itself runs this class on its PostgreSQL outbox.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Text, cast, or_, select

from .errors import PermissionDenied, StateError
from .outbox import Item, Outbox, State
from .policy import Policy
from .store import now_iso, outbox

log = logging.getLogger(__name__)
_AUTO: Any = object()


@dataclass
class Approvals:
    outbox: Outbox
    policy: Callable[[], Policy]
    clock: Callable[[], float] = time.time
    # a ``sendguard.central.CentralClient`` to decide on the central server; by default it is made
    # from config.toml when ``[server] url`` is set (None: decide in this database)
    remote: Any = field(default=_AUTO)
    # the policy the held messages were last routed by (``follow_policy``)
    _routed: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.remote is _AUTO:
            from . import central

            self.remote = central.client_from_config()

    def _today(self) -> str:
        return date.fromtimestamp(self.clock()).isoformat()

    # ------------------------------------------------------------------ who may decide
    def deputy_for(self, actor: str, policy: Policy | None = None) -> set[str]:
        """The approvers whose active deputy ``actor`` is today."""
        actor = actor.lower()
        today = self._today()
        return {d.approver for d in (policy or self.policy()).deputies
                if d.deputy == actor and d.start <= today <= d.end}

    def active_deputies(self, approver: str) -> list[str]:
        """Who stands in for ``approver`` today (they are notified too)."""
        approver = approver.lower()
        today = self._today()
        return [d.deputy for d in self.policy().deputies if d.approver == approver and d.start <= today <= d.end]

    def current_approvers(self, item: Item, policy: Policy | None = None) -> list[str]:
        """Who approves ``item`` now. A message waiting for a decision belongs to the approvers the policy
        in force names for its sender, whatever was stored when it was held (an approver the administrator
        removed decides nothing any more); a decided message keeps the approvers it had."""
        stored = [a.lower() for a in item.approvers]
        if item.state != State.AWAITING_APPROVAL or self.remote is not None:
            return stored  # (with a central server, its policy names them: the server's answer is stored)
        wanted = [a.lower() for a in (policy or self.policy()).approvers_for(item.sender)]
        return wanted or stored  # a policy that names nobody leaves the message with its approvers

    def follow_policy(self) -> list[Item]:
        """When the policy changed since the last look, hand each waiting message to the approvers it
        names now (each move audited as ``approval_rerouted``, so the new approvers are emailed); returns
        the messages moved. Cheap while the policy is unchanged. Not for a helper that decides on a
        central server: the server routes its own requests."""
        if self.remote is not None:
            return []
        policy = self.policy()
        if policy is self._routed:
            return []
        moved = self.outbox.reroute_approvals(policy)
        self._routed = policy  # after: a failed round is tried again on the next call
        return moved

    def _reroute(self, item: Item, via: str) -> Item:
        """Bring one waiting message to its current approvers before anyone decides it (audited)."""
        wanted = self.current_approvers(item)
        if item.state != State.AWAITING_APPROVAL or sorted(wanted) == sorted(a.lower() for a in item.approvers):
            return item
        try:
            return self.outbox.transition(item.id, "reroute_approval", "policy",
                                          {"previous_approvers": item.approvers, "approvers": wanted, "via": via},
                                          only_from=[State.AWAITING_APPROVAL], approvers=wanted)
        except StateError:  # decided meanwhile: the caller reports that
            return self.outbox.get(item.id)

    def acting_for(self, item: Item, actor: str) -> str | None:
        """The approver ``actor`` decides for: themself, or the approver whose deputy they are today
        (among the message's current approvers, see ``current_approvers``)."""
        actor = actor.lower()
        approvers = self.current_approvers(item)
        if actor in approvers:
            return actor
        for approver in sorted(self.deputy_for(actor)):
            if approver in approvers:
                return approver
        return None

    def may_decide(self, item: Item, actor: str) -> bool:
        if is_own(item, actor):
            return self._self_allowed(item, actor)
        return self.acting_for(item, actor) is not None

    def may_view(self, item: Item, actor: str) -> bool:
        """An approver sees a message only while it is theirs to approve (named, or active deputy),
        or when it is their own; never because they approve other people's mail."""
        return is_own(item, actor) or self.acting_for(item, actor) is not None

    def _self_allowed(self, item: Item, actor: str) -> bool:
        return self.policy().allow_self_approval and is_own(item, actor)

    # ------------------------------------------------------------------ listing
    def pending_for(self, approver: str | None = None, limit: int = 100_000, offset: int = 0) -> list[Item]:
        """Messages waiting for a decision (for ``approver``: only those they may decide), soonest
        deadline first. The database narrows the candidates; ``acting_for`` has the last word."""
        if self.remote is not None:
            return self.remote.pending(approver)  # type: ignore[no-any-return]
        self.follow_policy()
        cols = [c for c in outbox.c if c.name not in ("raw", "final_raw")]
        # past its deadline it can no longer be decided (a decision expires it instead): not listed, even
        # before the worker's next turn has marked it expired
        query = select(*cols).where(outbox.c.state == State.AWAITING_APPROVAL.value,
                                    or_(outbox.c.expires_at.is_(None), outbox.c.expires_at >= self.clock()))
        if approver is not None:
            approver = approver.strip().lower()
            policy = self.policy()
            text = cast(outbox.c.approvers, Text)
            conditions = [text.contains(json.dumps(a), autoescape=True)
                          for a in sorted({approver} | self.deputy_for(approver, policy))]
            if policy.allow_self_approval:
                conditions.append(outbox.c.owner == approver)
            query = query.where(or_(*conditions))
        query = query.order_by(outbox.c.expires_at, outbox.c.created_at).offset(offset).limit(limit)
        with self.outbox.store.engine.connect() as conn:
            items = [Item.from_row(r) for r in conn.execute(query).all()]
        if approver is None:
            return items
        return [i for i in items if self.may_decide(i, approver)]

    # ------------------------------------------------------------------ deciding
    def _refuse(self, item: Item, actor: str, why: str, via: str) -> PermissionDenied:
        self.audit_refusal(item.id, actor, why, via)
        return PermissionDenied(why)

    def audit_refusal(self, item_id: str | None, actor: str, why: str, via: str) -> None:
        """Keep a refused attempt in the audit log (who tried, what, why it was refused)."""
        with self.outbox.store.transaction() as conn:
            self.outbox.store.append_audit(conn, "approval_refused", actor or "(unknown)", item_id,
                                           {"reason": why, "via": via}, ts=self.clock())

    def _decided_error(self, item: Item) -> StateError:
        a = item.approval or {}
        if a.get("decision"):
            return StateError(f"message {item.id} was already {a.get('decision')} by {a.get('by')} at "
                              f"{a.get('at')}")
        if item.state == State.EXPIRED:
            return StateError(f"message {item.id} expired without a decision and was not sent")
        return StateError(f"message {item.id} is {item.state}, not awaiting approval")

    def _check(self, item_id: str, actor: str, via: str, rejecting: bool = False) -> tuple[Item, str | None, bool]:
        item = self.outbox.get(item_id)
        actor = actor.strip().lower()
        if item.state == State.AWAITING_APPROVAL and item.expires_at is not None and item.expires_at < self.clock():
            # past its deadline but not yet swept by the worker: expire it now, never approve late
            try:
                item = self.outbox.transition(item_id, "expire", "sendguard", {})
            except StateError:
                item = self.outbox.get(item_id)
        if item.state != State.AWAITING_APPROVAL:
            error = self._decided_error(item)
            self.audit_refusal(item_id, actor, str(error), via)
            raise error
        item = self._reroute(item, via)  # decided against the approvers the policy names now
        if item.state != State.AWAITING_APPROVAL:
            error = self._decided_error(item)
            self.audit_refusal(item_id, actor, str(error), via)
            raise error
        on_behalf = self.acting_for(item, actor)
        self_approval = is_own(item, actor) and not (rejecting and on_behalf is not None)
        if self_approval and not self._self_allowed(item, actor):
            # an approver who is also the sender is no second pair of eyes: the self-approval rule
            # applies whether or not they are named as approver
            raise self._refuse(item, actor, f"{actor} sent message {item_id}: approving your own message is not "
                                            "allowed here ([approval] allow_self_approval = false); another "
                                            "approver must decide", via)
        if on_behalf is None and not self_approval:
            names = ", ".join(item.approvers) or "nobody (set [approval] approvers in policy.toml)"
            raise self._refuse(item, actor, f"{actor} is not an approver for message {item_id}; "
                                            f"its approvers are: {names}", via)
        return item, on_behalf, self_approval

    def _record(self, item: Item, actor: str, step: str, record: dict[str, Any], via: str,
                **values: Any) -> Item:
        """Write the decision, in one transaction with a last look at whom the message waits for: a message
        handed to other approvers after ``_check`` (a policy edited meanwhile) is not decided by this one."""
        checked = sorted(a.lower() for a in item.approvers)

        def same_approvers(conn: Any) -> None:
            row = conn.execute(select(outbox.c.approvers).where(outbox.c.id == item.id)).first()
            now = sorted(a.lower() for a in (row.approvers or [])) if row is not None else []
            if now != checked:
                raise _HandedOn(f"message {item.id} was handed to other approvers ({', '.join(now) or 'nobody'}) "
                                f"while {actor.lower()} decided it: the decision was not recorded; its approvers "
                                "now decide it")

        try:
            return self.outbox.transition(item.id, step, actor.lower(), record, approval=record, also=same_approvers,
                                          **values)
        except _HandedOn as exc:
            self.audit_refusal(item.id, actor.lower(), str(exc), via)
            raise PermissionDenied(str(exc)) from None
        except StateError:
            # someone else decided between our check and our write: the first decision stands
            error = self._decided_error(self.outbox.get(item.id))
            self.audit_refusal(item.id, actor.lower(), str(error), via)
            raise error from None

    def approve(self, item_id: str, actor: str, comment: str = "", via: str = "cli") -> Item:
        if self.remote is not None:
            return self.remote.decide(item_id, "approve", actor, comment)  # type: ignore[no-any-return]
        item, on_behalf, self_approval = self._check(item_id, actor, via)
        if self_approval and not comment.strip():
            raise self._refuse(item, actor.lower(), "approving your own message needs a comment saying why", via)
        record = {"decision": "approved", "by": actor.lower(), "at": now_iso(self.clock()), "comment": comment,
                  "via": via, "self_approved": self_approval}
        if on_behalf and on_behalf != actor.lower():
            record["on_behalf_of"] = on_behalf
        return self._record(item, actor, "approve", record, via, release_after=self.clock())

    def reject(self, item_id: str, actor: str, reason: str, via: str = "cli") -> Item:
        if self.remote is not None:
            return self.remote.decide(item_id, "reject", actor, reason)  # type: ignore[no-any-return]
        if not reason or not reason.strip():
            raise PermissionDenied("a rejection needs a reason the sender can act on")
        item, on_behalf, _self = self._check(item_id, actor, via, rejecting=True)
        record = {"decision": "rejected", "by": actor.lower(), "at": now_iso(self.clock()), "reason": reason,
                  "via": via, "self_approved": False}
        if on_behalf and on_behalf != actor.lower():
            record["on_behalf_of"] = on_behalf
        return self._record(item, actor, "reject", record, via)


class _HandedOn(StateError):
    """The message's approvers changed between the check of who decides and the decision's write."""


def is_own(item: Item, actor: str) -> bool:
    """Whether ``actor`` sent (or owns) the message."""
    actor = actor.strip().lower()
    return bool(actor) and actor in {(item.sender or "").strip().lower(), (item.owner or "").strip().lower()}


def deadline(item: Item) -> str | None:
    return datetime.fromtimestamp(item.expires_at).isoformat(timespec="minutes") if item.expires_at else None
