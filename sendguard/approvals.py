"""Supervisor approval (上長承認): who may decide a held message, and the decisions themselves.

Only an approver named for the message, or that approver's active deputy (代理承認), may decide;
the sender only when ``allow_self_approval`` is on and with a comment. The first decision wins;
every refusal is audited too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from .errors import PermissionDenied, StateError
from .outbox import Item, Outbox
from .policy import Policy
from .store import now_iso


@dataclass
class Approvals:
    outbox: Outbox
    policy: Callable[[], Policy]
    clock: Callable[[], float] = time.time

    def _today(self) -> str:
        return date.fromtimestamp(self.clock()).isoformat()

    def acting_for(self, item: Item, actor: str) -> str | None:
        """The approver ``actor`` decides for: themself, or the approver whose deputy they are today."""
        actor = actor.lower()
        approvers = [a.lower() for a in item.approvers]
        if actor in approvers:
            return actor
        today = self._today()
        for deputy in self.policy().deputies:
            if deputy.deputy == actor and deputy.approver in approvers and deputy.start <= today <= deputy.end:
                return deputy.approver
        return None

    def pending_for(self, approver: str | None = None) -> list[Item]:
        items = self.outbox.list(["awaiting_approval"], limit=100_000)
        if approver is None:
            return items
        return [i for i in items if self.acting_for(i, approver) or self._self_allowed(i, approver)]

    def _self_allowed(self, item: Item, actor: str) -> bool:
        return self.policy().allow_self_approval and actor.lower() == item.sender.lower()

    def _refuse(self, item: Item, actor: str, why: str, via: str) -> PermissionDenied:
        with self.outbox.store.transaction() as conn:
            self.outbox.store.append_audit(conn, "approval_refused", actor, item.id, {"reason": why, "via": via},
                                           ts=self.clock())
        return PermissionDenied(why)

    def _check(self, item_id: str, actor: str, via: str) -> tuple[Item, str | None, bool]:
        item = self.outbox.get(item_id)
        actor = actor.strip().lower()
        if item.state != "awaiting_approval":
            if item.approval:
                who, when = item.approval.get("by"), item.approval.get("at")
                raise StateError(f"message {item_id} was already {item.approval.get('decision')} by {who} at {when}")
            raise StateError(f"message {item_id} is {item.state}, not awaiting approval")
        on_behalf = self.acting_for(item, actor)
        self_approval = on_behalf is None and self._self_allowed(item, actor)
        if on_behalf is None and not self_approval:
            names = ", ".join(item.approvers) or "nobody (set [approval] approvers in policy.toml)"
            raise self._refuse(item, actor, f"{actor} is not an approver for message {item_id}; "
                                            f"its approvers are: {names}", via)
        return item, on_behalf, self_approval

    def approve(self, item_id: str, actor: str, comment: str = "", via: str = "cli") -> Item:
        item, on_behalf, self_approval = self._check(item_id, actor, via)
        if self_approval and not comment.strip():
            raise PermissionDenied("approving your own message needs a comment saying why")
        record = {"decision": "approved", "by": actor.lower(), "at": now_iso(self.clock()), "comment": comment,
                  "via": via, "self_approved": self_approval}
        if on_behalf and on_behalf != actor.lower():
            record["on_behalf_of"] = on_behalf
        return self.outbox.transition(item_id, ["awaiting_approval"], "approved", "approved", actor.lower(), record,
                                      approval=record, release_after=self.clock())

    def reject(self, item_id: str, actor: str, reason: str, via: str = "cli") -> Item:
        if not reason or not reason.strip():
            raise PermissionDenied("a rejection needs a reason the sender can act on")
        item, on_behalf, _self = self._check(item_id, actor, via)
        record = {"decision": "rejected", "by": actor.lower(), "at": now_iso(self.clock()), "reason": reason,
                  "via": via}
        if on_behalf and on_behalf != actor.lower():
            record["on_behalf_of"] = on_behalf
        return self.outbox.transition(item_id, ["awaiting_approval"], "rejected", "rejected", actor.lower(), record,
                                      approval=record)


def deadline(item: Item) -> str | None:
    return datetime.fromtimestamp(item.expires_at).isoformat(timespec="minutes") if item.expires_at else None
