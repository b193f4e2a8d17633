"""The helper service without windows: store, policy, outbox, SMTP submission and the release worker.

``desktop`` adds the windows and the local web API on top; ``sendguard serve --no-window`` runs
only this plus the API.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from . import audit, notify, paths, runtime
from . import config as configmod
from .approvals import Approvals
from .central import CentralSync, client_from_config
from .config import Config
from .errors import SendGuardError
from .i18n import translator
from .mailboxes import registry
from .mailboxes.base import Mailbox, MailboxError
from .outbox import Item, Outbox
from .policy import PolicyHolder
from .store import Store
from .submission import SubmissionHandler, SubmissionServer

log = logging.getLogger(__name__)
CHECKPOINT_SECONDS = 10.0


class Helper:
    """One user's SendGuard: everything but the UI. Thread-safe."""

    def __init__(self, home: Path | None = None, cfg: Config | None = None, database_url: str | None = None):
        self.home = home or paths.home()
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.make_private(self.home)  # mail bodies live here: the user's alone (repairs an older install)
        self.config = cfg or configmod.load(self.home / "config.toml")
        self.policy = PolicyHolder(self.home / "policy.toml", paths.admin_policy_file())
        self.policy.reload()
        self.gettext = translator(self.config.language)
        self.store = Store(database_url or paths.private_file(self.home / "sendguard.db"))
        self.outbox = Outbox(self.store, self.policy.get, self.mailbox_for, gettext=self.gettext)
        # approvals: embedded in this database, or on the central server when [server] url is set
        self.central = client_from_config(self.config)
        self.approvals = Approvals(self.outbox, self.policy.get, remote=self.central)
        self.sync = CentralSync(self.outbox, self.central, self.wake) if self.central else None
        if self.sync:  # an approval releases only with the server's signature over this content
            self.outbox.release_guard = self.sync.release_guard
        self.notifier = notify.desktop_notify  # (title, body): tells the sender about decisions
        self.decisions = notify.DecisionWatcher(self.outbox, lambda t, b: self.notifier(t, b), self.gettext)
        self._notices_at = 0.0
        self.outbox.listeners.append(self._approval_listener)
        self.smtp: SubmissionServer | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._last_purge = 0.0
        self._checkpoint_at = 0.0
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
        self.outbox.reconcile()
        if smtp:
            if not configmod.is_loopback(self.config.smtp_host):
                raise SendGuardError(f"[smtp] host {self.config.smtp_host!r}: the helper listens on loopback only")
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
        self.save_checkpoint()
        self.store.close()

    def save_checkpoint(self) -> None:
        """Sign the audit chain's head into a file outside the database (``audit verify`` checks it)."""
        self._checkpoint_at = time.monotonic()
        try:
            audit.save_checkpoint(self.store, self.home / audit.CHECKPOINT_FILE)
        except Exception as exc:  # a checkpoint is evidence, never a reason to hold up mail
            log.warning("cannot write the audit checkpoint: %s", exc)

    def confirm_url(self, item_id: str) -> str:
        return runtime.confirm_url(item_id, self.home)

    def approval_link(self, item: Item, approver: str) -> str | None:
        """The signed, single-use approval link for one approver (standalone; the central server mails its own)."""
        if self.sync:
            return None
        from .links import LinkSigner, signing_key

        token = LinkSigner(signing_key(), "approve").sign(item.id, approver=approver.lower())
        return f"{runtime.api_base(self.home)}/approve/{item.id}?t={token}"

    def approval_targets(self, item: Item) -> list[tuple[str, str | None]]:
        """Who this helper emails about a held message: its approvers and their active deputies (with a
        central server: nobody, the server mails them)."""
        if self.sync:
            return []
        return notify.approvers_and_deputies(item, self.approvals)

    def _approval_listener(self, item: Item) -> None:
        if item.state == "awaiting_approval":
            self._notices_at = 0.0
            self.wake()
        if self.sync and item.state in ("awaiting_approval", "sent", "cancelled"):
            self.sync.kick()

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
        if not self.paused:
            self.outbox.release_due()
        if poll_held:
            self.poll_held()
        if time.monotonic() - self._checkpoint_at > CHECKPOINT_SECONDS:
            self.save_checkpoint()
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

