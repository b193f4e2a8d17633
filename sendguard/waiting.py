"""What SendGuard is waiting on, one short line per cause: the window's status line and the tray menu.

A message the user confirmed is not always gone a moment later: its mail service may be down (the
send is retried), a send may have been interrupted or its answer lost (it may have gone out: SendGuard
asks the service, or looks in Sent, before it sends again), the central server may be out of reach
(approval requests wait to be handed over), or SendGuard may need the user to decide. Each such group
becomes one ``Waiting`` line that says what it waits for; nothing here changes a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .i18n import _
from .outbox import WAITING_PREFIX, WAITING_STATES, Item, Outbox, State

# the state SendGuard is waiting in, for each kind of line (also the order they are shown in)
KINDS = ("attention", "reconcile", "retry", "central", "sending", "paused")
# how the helper's line for an approved message the central server sends itself begins (central.py)
SERVER_SENDS = "Waiting for the central server to send it"
# how the line for a message the central server would not take for approval begins (central.py)
REFUSED_NOTE = "The central server refused to take this message for approval"
_WHERE = re.compile(re.escape(WAITING_PREFIX) + r"(.+?) to say whether")


@dataclass(frozen=True)
class Waiting:
    """One status line: ``kind`` (see KINDS), how many messages, the ids, and the translated text."""

    kind: str
    text: str
    ids: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "count": len(self.ids), "ids": list(self.ids)}


def _seconds(left: float) -> int:
    return max(0, int(round(left)))


def waiting(outbox: Outbox, gettext: Callable[[str], str], central: Any = None,
            paused: bool = False) -> list[Waiting]:
    """The lines for everything SendGuard is waiting on now (empty when nothing waits)."""
    t = gettext
    items = outbox.list([*WAITING_STATES, *([State.AWAITING_APPROVAL] if central else [])], limit=10_000)
    now = outbox.clock()
    lines: list[Waiting] = []
    attention = [i for i in items if i.state == State.NEEDS_ATTENTION]
    if attention:
        lines.append(Waiting("attention", t(_("{count} message(s) need your decision: see `sendguard queue list`."))
                             .format(count=len(attention)), tuple(i.id for i in attention)))
    # interrupted sends, grouped by whom SendGuard is asking
    asking: dict[str, list[Item]] = {}
    sending: list[Item] = []
    for item in items:
        if item.state != State.RELEASING:
            continue
        found = _WHERE.match(item.last_error or "")
        if found:
            asking.setdefault(found.group(1), []).append(item)
        else:
            sending.append(item)
    for where, group in asking.items():
        left = min(i.release_after for i in group) - now
        lines.append(Waiting("reconcile", t(_("{count} interrupted send(s): waiting for {where} to say whether they "
                                              "went out (asking again in {seconds} s; never sent twice)."))
                             .format(count=len(group), where=where, seconds=_seconds(left)),
                             tuple(i.id for i in group)))
    # sends that failed for now: retried with back-off until the mail service takes them; a send whose
    # answer was lost may have gone out, and is looked for in Sent before it is sent again
    failed = sorted((i for i in items if i.state == State.FAILED), key=lambda i: -i.updated_at)
    doubt = outbox.sends_in_doubt([i.id for i in failed]) if failed else set()
    lost = [i for i in failed if i.id in doubt]
    failed = [i for i in failed if i.id not in doubt]
    if lost:
        left = min(i.release_after for i in lost) - now
        last = next((i.last_error for i in lost if i.last_error), "") or t(_("no answer"))
        lines.append(Waiting("retry", t(_("{count} message(s) may have gone out: the answer to their send was lost. "
                                          "SendGuard looks for them in Sent before sending again (next look in "
                                          "{seconds} s). Last answer: {error}"))
                             .format(count=len(lost), seconds=_seconds(left), error=last),
                             tuple(i.id for i in lost)))
    if failed:
        left = min(i.release_after for i in failed) - now
        last = next((i.last_error for i in failed if i.last_error), "") or t(_("no answer"))
        lines.append(Waiting("retry", t(_("{count} message(s) wait for the mail service to take them (trying again "
                                          "in {seconds} s). Last answer: {error}"))
                             .format(count=len(failed), seconds=_seconds(left), error=last),
                             tuple(i.id for i in failed)))
    error = getattr(central, "last_error", None) if central is not None else None
    held = [i for i in items if i.state == State.AWAITING_APPROVAL]
    if error and held:
        lines.append(Waiting("central", t(_("{count} message(s) held for approval: waiting for the central server "
                                            "{url} ({error}). They stay held; nothing is lost."))
                             .format(count=len(held), url=getattr(getattr(central, "client", None), "url", "")
                                     or "?", error=error), tuple(i.id for i in held)))
    # approved messages the central server sends itself ([approval] release = "server"): what it is doing
    by_server = [i for i in held if (i.decision or {}).get("release") == "server"
                 and (i.last_error or "").startswith(SERVER_SENDS)]
    if by_server:
        lines.append(Waiting("central", t(_("{count} approved message(s): the central server sends them itself. "
                                            "{status}")).format(count=len(by_server), status=by_server[0].last_error),
                             tuple(i.id for i in by_server)))
    if sending:
        lines.append(Waiting("sending", t(_("Sending {count} message(s) now.")).format(count=len(sending)),
                             tuple(i.id for i in sending)))
    if paused:
        lines.append(Waiting("paused", t(_("Paused: confirmed messages are not released until you resume."))))
    return lines
