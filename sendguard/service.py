"""The helper service without windows: store, policy, outbox, SMTP submission and the release worker.

``desktop`` adds the windows and the local web API on top; ``sendguard serve --no-window`` runs
only this plus the API.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from . import config as configmod
from . import notify, paths, runtime
from .approvals import Approvals
from .central import CentralSync, client_from_config
from .clock import SteadyClock
from .config import Config
from .i18n import translator
from .mailboxes import _retry, registry
from .mailboxes.base import Mailbox, MailboxError
from .outbox import WAITING_PREFIX, Item, Outbox
from .policy import PolicyHolder
from .store import Store
from .submission import SubmissionHandler, SubmissionServer

log = logging.getLogger(__name__)


class Helper:
    """One user's SendGuard: everything but the UI. Thread-safe."""

    def __init__(self, home: Path | None = None, cfg: Config | None = None, database_url: str | None = None):
        self.home = home or paths.home()
        self.config = cfg or configmod.load(self.home / "config.toml")
        self.policy = PolicyHolder(self.home / "policy.toml", paths.admin_policy_file())
        self.policy.reload()
        self.gettext = translator(self.config.language)
        self.store = Store(database_url or (self.home / "sendguard.db"))
        _retry.configure(self.config.retry_base_seconds, self.config.retry_max_seconds,
                         self.config.retry_inline_wait_seconds)
        # deadlines (hold_seconds, approval expiry, back-off) follow a clock the system clock cannot jump
        self.outbox = Outbox(self.store, self.policy.get, self.mailbox_for, clock=SteadyClock(),
                             gettext=self.gettext)
        # approvals: embedded in this database, or on the central server when [server] url is set
        self.central = client_from_config(self.config)
        self.approvals = Approvals(self.outbox, self.policy.get, remote=self.central, clock=self.outbox.clock)
        self.sync = (CentralSync(self.outbox, self.central, self.wake, clock=self.outbox.clock)
                     if self.central else None)
        self.notifier = notify.desktop_notify  # (title, body): tells the sender about decisions
        self.decisions = notify.DecisionWatcher(self.outbox, lambda t, b: self.notifier(t, b), self.gettext)
        self._notices_at = 0.0
        self.outbox.listeners.append(self._approval_listener)
        self.outbox.listeners.append(self._waiting_listener)
        self._told_waiting: set[str] = set()
        self.smtp: SubmissionServer | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._last_purge = 0.0
        self.paused = False

    # ------------------------------------------------------------------ mailboxes
    def mailbox_for(self, item: Item) -> Mailbox:
        if item.account:
            account = self.config.account(item.account)
            if account is None:
                raise MailboxError(f"the account {item.account!r} that holds this message is no longer configured")
            return registry.build(account, self.home)
        return registry.for_sender(self.config, item.sender or item.envelope_from, self.home)

    def holding_mailboxes(self) -> list[Mailbox]:
        boxes = []
        for account in self.config.accounts:
            if account.kind in ("exchange", "graph") and account.settings.get("hold", True):
                try:
                    boxes.append(registry.build(account, self.home))
                except Exception as exc:
                    log.warning("account %s cannot be opened: %s", account.name, exc)
        return boxes

    # ------------------------------------------------------------------ lifecycle
    def start(self, smtp: bool = True, smtp_port: int | None = None) -> Helper:
        """Open the SMTP port and start the worker. Never waits for (or fails on) a mail service: messages
        left ``releasing`` by a previous run are settled by the worker, asking again until it knows."""
        if smtp:
            port = self.config.smtp_port if smtp_port is None else smtp_port
            handler = SubmissionHandler(self.outbox, self.enqueue)
            self.smtp = SubmissionServer(handler, self.config.smtp_host, port).start()
        self._worker = threading.Thread(target=self._run, name="sendguard-worker", daemon=True)
        self._worker.start()
        if self.sync:
            self.sync.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.sync:
            self.sync.stop()
        if self.smtp:
            self.smtp.stop()
        if self._worker:
            self._worker.join(15)
        self.store.close()

    def confirm_url(self, item_id: str) -> str:
        return runtime.confirm_url(item_id, self.home)

    def approval_link(self, item: Item, approver: str) -> str | None:
        """The signed, single-use approval link for one approver: the central server's, else our own."""
        if self.sync:
            return self.sync.link_for(item, approver)
        from .links import LinkSigner, signing_key

        token = LinkSigner(signing_key(), "approve").sign(item.id, approver=approver.lower())
        return f"{runtime.api_base(self.home)}/approve/{item.id}?t={token}"

    def approval_targets(self, item: Item) -> list[tuple[str, str | None]]:
        """Who is emailed about a held message: its approvers and their active deputies."""
        if self.sync:
            return self.sync.targets(item)
        return notify.approvers_and_deputies(item, self.approvals)

    def _approval_listener(self, item: Item) -> None:
        if item.state == "awaiting_approval":
            self._notices_at = 0.0
            self.wake()
        if self.sync and item.state in ("awaiting_approval", "sent", "cancelled"):
            self.sync.kick()

    def _waiting_listener(self, item: Item) -> None:
        """Tell the user once when an interrupted send waits for its mail service to answer."""
        if item.state != "releasing" or not (item.waiting_for or "").startswith(WAITING_PREFIX):
            self._told_waiting.discard(item.id)
            return
        if item.id in self._told_waiting:
            return
        self._told_waiting.add(item.id)
        try:
            self.notifier(self.gettext(notify.TITLE_WAITING),
                          self.gettext(notify.BODY_WAITING).format(subject=item.subject, id=item.id))
        except Exception:  # a notification must never hold up the outbox
            log.exception("could not show the waiting notice")

    def notify_approvals(self) -> None:
        """Email approvers of newly held messages; tell the sender about decisions (each once)."""
        notify.notify_approvers(self.outbox, self.approval_targets, self.mailbox_for, self.approval_link,
                                self.gettext)
        self.decisions.poll()

    def enqueue(self, item_id: str) -> None:
        """A message was received: check it soon (in the worker, not in the SMTP loop)."""
        with self._pending_lock:
            self._pending.append(item_id)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        last_poll = 0.0
        try:
            self.outbox.reconcile()  # what a previous run left half-done
        except Exception:
            log.exception("start-up reconciliation failed; the worker asks again every turn")
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            poll = time.monotonic() - last_poll > 15
            try:
                self.tick(poll_held=poll)
                if poll:
                    last_poll = time.monotonic()
            except Exception:
                log.exception("worker tick failed")

    def tick(self, poll_held: bool = False) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for item_id in pending:
            self.outbox.process(item_id)
        for item in self.outbox.list(["received"]):
            if time.time() - item.created_at > 5:  # missed (e.g. stored by another process)
                self.outbox.process(item.id)
        self.outbox.expire_due()
        if time.monotonic() - self._notices_at > 2.0:
            self._notices_at = time.monotonic()
            try:
                self.notify_approvals()
            except Exception:  # notices never hold up releases; they are retried next round
                log.exception("approval notices failed")
        self.outbox.reconcile_due()  # interrupted sends: ask the transport again once their wait is over
        if not self.paused:
            self.outbox.release_due()
        if poll_held:
            self.poll_held()
        if time.time() - self._last_purge > 3600:
            self._last_purge = time.time()
            self.outbox.purge(self.config.retention_days)

    def poll_held(self) -> None:
        for box in self.holding_mailboxes():
            fetch = getattr(box, "fetch_held", None)
            if fetch is None:
                continue
            try:
                held = fetch()
            except MailboxError as exc:
                log.warning("cannot read the hold folder of %s: %s", box.name, exc)
                continue
            for h in held:
                if self.outbox.by_source_ref(h.source, h.ref):
                    box.ack_held(h.ref)  # type: ignore[attr-defined]
                    continue
                item_id = self.outbox.receive(h.raw, h.envelope_from, h.recipients, h.source, h.ref, box.name)
                box.ack_held(h.ref)  # type: ignore[attr-defined]
                self.outbox.process(item_id)

