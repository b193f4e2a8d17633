"""The helper's side of the central server's add-in relay.

With a central server, Outlook loads the add-in from the server (a public origin), so no browser
ever calls loopback (Chrome/Edge Local Network Access would ask the user, and a page that cannot
load makes SoftBlock offer "Send Anyway"). The add-in's check goes to the server, and this helper
fetches it over its own authenticated connection (``GET /api/v1/central/relay/pending``), checks it in
its outbox exactly as if the add-in had called it directly (the SendGuard window opens here), and
reports the item's state back (``POST /api/v1/central/relay/{id}/status``) until the add-in has its
answer. The server says whether the add-in is still waiting and whether it withdrew the check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import compose, outlook_items
from .central import CentralClient
from .config import Config
from .errors import SendGuardError, StateError
from .outbox import AWAITING_OUTCOME, Item, Outbox, State
from .outlook_presence import AddinPresence

log = logging.getLogger(__name__)

POLL_SECONDS = 25.0
STATUS_EVERY = 2.0  # how often an open check reports (the add-in's presence rides on it)
MAX_HANDLE_SECONDS = 330.0  # Outlook ends a handler at 5 minutes
HANDED_BACK_SECONDS = 20.0  # after "sent", how long the add-in may still report that it stopped the send


def status_of(item: Item) -> dict[str, Any]:
    """What the add-in is told (the same fields as the helper's own ``GET /api/v1/outbox/{id}``)."""
    message = ""
    if item.state == State.CANCELLED and item.verdict.action == "block":
        blocked = [r.message for r in item.verdict.reasons_at("block")]
        message = "Blocked by policy: " + "; ".join(blocked)
    return {"state": item.state, "user_message": message, "approvers": item.approvers,
            "decision": outlook_items.decision_for_addin(item)}


def failure_message(exc: Exception) -> str:
    """What the add-in's user is told when the helper could not check a relayed message."""
    if isinstance(exc, SendGuardError):
        return str(exc)
    detail = str(exc).strip() or "no details"
    if len(detail) > 300:
        detail = detail[:300] + "..."
    if isinstance(exc, ValueError):  # what the email package raises for a header or address it refuses
        return (f"SendGuard could not read this message ({detail}); nothing was sent: correct the "
                "recipients, subject or attachments, then press Send again")
    return (f"SendGuard could not check this message: an unexpected error on this computer "
            f"({type(exc).__name__}: {detail}); nothing was sent: press Send again, and if this keeps "
            "happening, tell your administrator (SendGuard's log has the details)")


@dataclass
class _Progress:
    """How far the handling of one relayed check got (read when it fails)."""

    item: Item | None = None  # the outbox item, once submitted (the last state seen)
    reported: str | None = None  # the last state the server took from us (None: the add-in has no answer yet)


class AddinRelay:
    """Takes the user's relayed add-in checks from the central server and answers them."""

    def __init__(self, outbox: Outbox, client: CentralClient, config: Config, presence: AddinPresence,
                 on_new: Callable[[Item], None] = lambda item: None):
        self.outbox = outbox
        self.client = client
        self.config = config
        self.presence = presence
        self.on_new = on_new
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ one relayed check
    def handle(self, relay_id: str, payload: dict[str, Any]) -> None:
        """Check one relayed payload and report its state until the add-in has an outcome.

        Any failure (not only a ``SendGuardError``: a bug in a rule, a ``ValueError`` from the email package,
        a store error) is reported at once, so the add-in stops the send with the reason instead of waiting
        for the server to give up; nothing is sent unchecked (fail closed)."""
        progress = _Progress()
        try:
            self._handle(relay_id, payload, progress)
        except Exception as exc:
            if not isinstance(exc, SendGuardError) or progress.item is not None:
                log.exception("relayed add-in check %s failed", relay_id)
            self._failed(relay_id, progress, exc)

    def _handle(self, relay_id: str, payload: dict[str, Any], progress: _Progress) -> None:
        raw, envelope_from, recipients = compose.from_fields(payload)
        ref = outlook_items.item_ref(self.config, envelope_from, payload)
        item = progress.item = self.outbox.submit(raw, envelope_from, recipients, source="outlook", source_ref=ref)
        self.presence.seen(item.id)
        self.on_new(item)
        deadline = time.monotonic() + MAX_HANDLE_SECONDS
        while not self._stop.is_set():
            answer = self._report(relay_id, status_of(item))
            if answer:  # the server has the helper's view: the add-in's check was answered with it
                progress.reported = item.state
            if answer.get("addin_waiting"):
                self.presence.seen(item.id)
            if answer.get("cancel") and item.state in AWAITING_OUTCOME:
                try:
                    item = progress.item = self.outbox.cancel(item.id, actor="outlook",
                                                              reason="withdrawn by the Outlook add-in")
                except StateError:
                    item = progress.item = self.outbox.get(item.id)
                continue
            if item.state not in AWAITING_OUTCOME or time.monotonic() > deadline:
                break
            item = progress.item = self.outbox.wait(item.id, AWAITING_OUTCOME, STATUS_EVERY)
        if item.state == State.SENT and item.source == "outlook":
            self._listen_for_stop(relay_id, item)

    def _failed(self, relay_id: str, progress: _Progress, exc: Exception) -> None:
        """Handling one check failed: withdraw its item (the window stops asking about a send Outlook will
        not make) and tell the add-in why, unless it already has its outcome."""
        message = failure_message(exc)
        item = progress.item
        if item is not None:
            try:
                current = self.outbox.get(item.id)
                if current.state in AWAITING_OUTCOME:
                    self.outbox.cancel(item.id, actor="outlook", reason=message[:500])
                elif progress.reported != current.state:
                    # it reached an outcome (the user decided) the add-in was not told: tell it that, as it is
                    self._report(relay_id, status_of(current))
                    return
            except Exception:
                log.exception("relayed add-in check %s: its message %s could not be cancelled", relay_id, item.id)
        if progress.reported is None:
            # no answer yet: the server refuses the add-in's check (422 refused) with this message
            self._report(relay_id, {"state": "error", "error": message})
        elif progress.reported in AWAITING_OUTCOME:
            # the add-in has an answer and waits for the outcome: it stops the send with this message
            self._report(relay_id, {"state": State.CANCELLED, "user_message": message,
                                    "approvers": item.approvers if item is not None else [], "decision": None})
        # else the add-in already has its outcome (sent, held for approval...): nothing more to tell it

    def _listen_for_stop(self, relay_id: str, item: Item) -> None:
        """Handed back to Outlook ("sent": Outlook may send it): for a while the add-in may still stop the
        send (it could not apply a removal or an added Cc/Bcc) and say so; then the record ends not sent."""
        until = time.monotonic() + HANDED_BACK_SECONDS
        while not self._stop.wait(STATUS_EVERY) and time.monotonic() < until:
            answer = self._report(relay_id, status_of(item))
            if answer.get("stopped_send"):
                try:
                    item = self.outbox.client_stopped(item.id, actor="outlook", reason=str(answer.get("reason") or ""))
                except StateError as exc:
                    log.warning("Outlook stopped relayed check %s, but %s", relay_id, exc)
                    return
                self._report(relay_id, status_of(item))
                return

    def _report(self, relay_id: str, status: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(3):
            try:
                answer = self.client._call("POST", f"/api/v1/central/relay/{relay_id}/status", json=status)
                return answer if isinstance(answer, dict) else {}
            except SendGuardError as exc:
                log.warning("relay status for %s not delivered (%s)", relay_id, exc)
                time.sleep(0.5 * (attempt + 1))
        return {}

    # ------------------------------------------------------------------ the loop
    def step(self, wait: float = POLL_SECONDS) -> int:
        pending = self.client.relay_pending(wait)
        for request in pending:
            threading.Thread(target=self._handle_safely, args=(str(request["id"]), request.get("request") or {}),
                             name="sendguard-addin-relay", daemon=True).start()
        return len(pending)

    def _handle_safely(self, relay_id: str, payload: dict[str, Any]) -> None:
        try:
            self.handle(relay_id, payload)  # reports its own failures
        except Exception:  # one bad check never stops the relay (reporting the failure itself failed)
            log.exception("relayed add-in check %s failed", relay_id)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.step()
                backoff = 0.5
                if self.client.poll_after:  # the server answered at once (its wait budget is full)
                    self._stop.wait(self.client.poll_after)
            except Exception as exc:  # never ends the loop: the helper would stop taking checks until restarted
                if isinstance(exc, SendGuardError):
                    log.warning("add-in relay: %s", exc)
                else:
                    log.exception("add-in relay: unexpected error polling for checks")
                self._stop.wait(backoff)
                backoff = min(15.0, backoff * 2)

    def start(self) -> AddinRelay:
        self._thread = threading.Thread(target=self._run, name="sendguard-addin-relay-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
