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
        """Check one relayed payload and report its state until the add-in has an outcome."""
        try:
            raw, envelope_from, recipients = compose.from_fields(payload)
            ref = outlook_items.item_ref(self.config, envelope_from, payload)
            item = self.outbox.submit(raw, envelope_from, recipients, source="outlook", source_ref=ref)
        except SendGuardError as exc:
            self._report(relay_id, {"state": "error", "error": str(exc)})
            return
        self.presence.seen(item.id)
        self.on_new(item)
        deadline = time.monotonic() + MAX_HANDLE_SECONDS
        while not self._stop.is_set():
            answer = self._report(relay_id, status_of(item))
            if answer.get("addin_waiting"):
                self.presence.seen(item.id)
            if answer.get("cancel") and item.state in AWAITING_OUTCOME:
                try:
                    item = self.outbox.cancel(item.id, actor="outlook", reason="withdrawn by the Outlook add-in")
                except StateError:
                    item = self.outbox.get(item.id)
                continue
            if item.state not in AWAITING_OUTCOME or time.monotonic() > deadline:
                break
            item = self.outbox.wait(item.id, AWAITING_OUTCOME, STATUS_EVERY)
        if item.state == State.SENT and item.source == "outlook":
            self._listen_for_stop(relay_id, item)

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
            self.handle(relay_id, payload)
        except Exception:  # one bad check never stops the relay
            log.exception("relayed add-in check %s failed", relay_id)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.step()
                backoff = 0.5
                if self.client.poll_after:  # the server answered at once (its wait budget is full)
                    self._stop.wait(self.client.poll_after)
            except SendGuardError as exc:
                log.warning("add-in relay: %s", exc)
                self._stop.wait(backoff)
                backoff = min(15.0, backoff * 2)

    def start(self) -> AddinRelay:
        self._thread = threading.Thread(target=self._run, name="sendguard-addin-relay-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
