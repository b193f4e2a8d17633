"""The helper service without windows: store, policy, outbox, SMTP submission and the release worker.

``desktop`` adds the windows and the local web API on top; ``sendguard serve --no-window`` runs
only this plus the API.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import audit, notify, paths, runtime, shutdown
from . import config as configmod
from . import directory as directorymod
from .addin_relay import AddinRelay
from .approvals import Approvals
from .central import CentralSync, client_from_config
from .checker import CheckerProcess
from .clock import SteadyClock
from .config import Config
from .errors import SendGuardError
from .i18n import translator
from .mailboxes import _retry, registry
from .mailboxes.base import HeldItem, HoldingMailbox, Mailbox, MailboxError, OutboxStreaming, OutboxWatching
from .outbox import RECORDING_PREFIX, WAITING_PREFIX, Item, Outbox, State
from .outlook_presence import AddinPresence
from .policy import PolicyHolder
from .store import Store
from .submission import SubmissionHandler, SubmissionServer

log = logging.getLogger(__name__)
CHECKPOINT_SECONDS = 10.0

# Outbox interception (mail Outlook sends with a deferred time waits in the server-side Outbox, where
# SendGuard takes it before the server sends it): how often each Exchange/Graph account's Outbox is
# looked at, unless the account sets ``outbox_poll_seconds``. The worst case from an item appearing in the Outbox to it
# being taken is this interval plus one look (a FindItem/list and a move: well under a second on a
# healthy server), so any deferred time above that is enough; a one-minute defer rule leaves ample room.
# On EWS a streaming subscription on the Outbox wakes the watch at once as well (``outbox_streaming``);
# the polling stays, so a lost notification costs at most one interval.
OUTBOX_POLL_SECONDS = 5.0
MIN_OUTBOX_POLL_SECONDS = 1.0
MISSED_SCAN_SECONDS = 60.0  # how often Sent Items is checked for deferred mail the server sent itself
MISSED_LOOKBACK_SECONDS = 14 * 86400.0
WATCH_FAILURES_BEFORE_NOTICE = 3


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
        self.connectors = registry.Connectors(self.home)  # one per account, built on first use, closed at stop
        self._unopened: set[str] = set()  # accounts whose connector could not be built (said once)
        _retry.configure(self.config.retry_base_seconds, self.config.retry_max_seconds,
                         self.config.retry_inline_wait_seconds)
        # distribution lists from the server's directory, for accounts set up with --expand-lists
        self.directory = directorymod.for_accounts(self.config.accounts, self.home)
        # deadlines (hold_seconds, approval expiry, back-off) follow a clock the system clock cannot jump
        self.outbox = Outbox(self.store, self.policy.get, self.mailbox_for, clock=SteadyClock(),
                             gettext=self.gettext,
                             accounts=lambda: [a.address for a in self.config.accounts if a.address],
                             directory=self.directory)
        self.addin_presence = AddinPresence()  # the Outlook add-in still waiting to send an item itself?
        self.outbox.outlook_waiting = self.addin_presence.waiting
        # approvals: embedded in this database, or on the central server when [server] url is set
        self.central = client_from_config(self.config)
        self.approvals = Approvals(self.outbox, self.policy.get, remote=self.central, clock=self.outbox.clock)
        self.sync = (CentralSync(self.outbox, self.central, self.wake, clock=self.outbox.clock)
                     if self.central else None)
        if self.sync:  # an approval releases only with the server's signature over this content
            self.outbox.release_guard = self.sync.release_guard
        # Outlook add-in served by the central server: its checks come through the server
        self.addin_relay = AddinRelay(self.outbox, self.central, self.config, self.addin_presence) \
            if self.central else None
        self.outbox.local_approvers = self.central is None
        self.notifier = notify.desktop_notify  # (title, body): tells the sender about decisions
        self.decisions = notify.DecisionWatcher(self.outbox, lambda t, b: self.notifier(t, b), self.gettext)
        self._notices_at = 0.0
        self._scanned_at = 0.0
        self.outbox.listeners.append(self._approval_listener)
        self.outbox.listeners.append(self._waiting_listener)
        self._told_waiting: set[str] = set()
        self.smtp: SubmissionServer | None = None
        self.checker: CheckerProcess[Any] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watched_at: dict[str, float] = {}  # account -> monotonic time of the last Outbox look
        self._missed_at: dict[str, float] = {}  # account -> monotonic time of the last Sent Items check
        self._missed_since: dict[str, float] = {}  # account -> epoch lower bound for the next check
        self._intake_lock = threading.Lock()
        self._watch_wake = threading.Event()
        self._intake_pending: set[str] = set()  # accounts with items moved out of the Outbox, not yet taken in
        self._watch_failures: dict[str, int] = {}  # account -> failed looks in a row
        self._streams: list[threading.Thread] = []
        self._last_purge = 0.0
        self._routed_policy: object = None
        self._checkpoint_at = 0.0
        self.paused = False

    # ------------------------------------------------------------------ mailboxes
    def mailbox_for(self, item: Item) -> Mailbox:
        """The connector that releases (and reconciles) this message: the account that holds it, else
        the sender's account, else the first relay for everyone, else the Maildir sink."""
        if item.account:
            account = self.config.account(item.account)
            if account is None:
                raise MailboxError(f"the account {item.account!r} that holds this message is no longer configured")
            return self.connectors.get(account)
        return self.connectors.for_sender(self.config, item.sender or item.envelope_from)

    def _connector(self, account: configmod.Account) -> Mailbox | None:
        """The account's connector, or None (said once in the log) when it cannot be built."""
        try:
            box = self.connectors.get(account)
        except Exception as exc:
            if account.name not in self._unopened:
                self._unopened.add(account.name)
                log.warning("account %s cannot be opened: %s", account.name, exc)
            return None
        self._unopened.discard(account.name)
        return box

    def holding_mailboxes(self) -> list[HoldingMailbox]:
        """Connectors with a hold folder to take mail from (``hold`` is on unless the account turns it off)."""
        boxes = []
        for account in self.config.accounts:
            if account.settings.get("hold", True):
                box = self._connector(account)
                if isinstance(box, HoldingMailbox):
                    boxes.append(box)
        return boxes

    # ------------------------------------------------------------------ lifecycle
    def start(self, smtp: bool = True, smtp_port: int | None = None) -> Helper:
        """Open the SMTP port and start the worker. Never waits for (or fails on) a mail service: messages
        left ``releasing`` by a previous run are settled by the worker, asking again until it knows."""
        try:  # now rather than at the first message: its 250 does not wait for the keyring
            self.store.load_audit_key()
        except Exception as exc:  # the first write asks again (and answers 451 while it cannot)
            log.warning("cannot read the audit key yet: %s", exc)
        if smtp:
            if not configmod.is_loopback(self.config.smtp_host):
                raise SendGuardError(f"[smtp] host {self.config.smtp_host!r}: the helper listens on loopback only")
            port = self.config.smtp_port if smtp_port is None else smtp_port
            handler = SubmissionHandler(self.outbox, self.enqueue, self._intake_checker())
            self.smtp = SubmissionServer(handler, self.config.smtp_host, port).start()
        self._worker = threading.Thread(target=self._run, name="sendguard-worker", daemon=True)
        self._worker.start()
        if self.outbox_accounts():
            self._watcher = threading.Thread(target=self._watch_forever, name="sendguard-outbox-watch", daemon=True)
            self._watcher.start()
            for account in self.outbox_accounts():
                streams = isinstance(self._connector(account), OutboxStreaming)
                if streams and account.settings.get("outbox_streaming", True):
                    thread = threading.Thread(target=self._stream_forever, args=(account,), daemon=True,
                                              name=f"sendguard-outbox-stream-{account.name}")
                    thread.start()
                    self._streams.append(thread)
        if self.sync:
            self.sync.start()
        if self.addin_relay:
            self.addin_relay.start()
        return self

    def _intake_checker(self) -> Callable[..., CheckerProcess[Any]] | None:
        """A process of its own for the checks at SMTP intake when messages come in together (a mail merge,
        several clients), where another core can take them. Not with a mail server's directory: what it
        knows of lists is in this process only."""
        if self.directory is not None or (os.cpu_count() or 1) < 2 or self.store.path is None:
            return None
        database, language = self.store.path, self.config.language

        def make(take_in: Callable[..., None], settle: Callable[..., None]) -> CheckerProcess[Any]:
            self.checker = CheckerProcess(self.outbox, database, language, take_in, settle)
            return self.checker  # started by the first messages that come in together

        return make

    def stop(self, timeout: float = shutdown.STOP_SECONDS) -> None:
        """Stop within ``timeout`` seconds in all. A thread still busy then (the worker in a send to a slow
        server) is named in the log and left behind with its connector open, so that its send is neither
        cut short under it nor repeated: what it committed stays, and a send it had begun is settled at the
        next start (``releasing`` is reconciled, never sent twice)."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self._stop.set()
        self._wake.set()
        self._watch_wake.set()
        if self.sync:
            self.sync.stop()
        if self.addin_relay:
            self.addin_relay.stop()
        busy = []
        if self.smtp and not self.smtp.stop(left()):
            busy.append("the SMTP port")
        if self.checker is not None:  # what it still holds is checked and committed here
            self.checker.close()
        for what, thread in (("the release worker", self._worker), ("the Outbox watch", self._watcher)):
            if thread is not None:
                thread.join(left())
                if thread.is_alive():
                    busy.append(f"{what} ({shutdown.where(thread)})")
        if busy:
            log.warning("stopping without waiting longer for %s (%.0f s budget); a send in progress is "
                        "settled at the next start", ", ".join(busy), timeout)
        else:
            self.connectors.close(timeout=min(5.0, left()))
        self.save_checkpoint()
        if self.directory is not None:
            self.directory.close()
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
        if item.state == State.AWAITING_APPROVAL:
            self._notices_at = 0.0
            self.wake()
        if self.sync and item.state in (State.AWAITING_APPROVAL, State.SENT, State.CANCELLED):
            self.sync.kick()

    def _waiting_listener(self, item: Item) -> None:
        """Tell the user once when an interrupted send waits for its mail service to answer."""
        waiting_for = item.waiting_for or ""
        # (a send that went out and is being recorded is not an interrupted one: nothing to ask the user)
        if item.state != State.RELEASING or not waiting_for.startswith(WAITING_PREFIX) \
                or waiting_for.startswith(RECORDING_PREFIX):
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
    def warm_up(self) -> None:
        """Check one sample message in memory, so the first real one does not pay for loading the
        rules' data (public suffixes, confusables, ...): it would delay the first window."""
        sample = (b"From: warm@example.invalid\r\nTo: someone@warm.example\r\nSubject: warm-up\r\n\r\n"
                  b"warm-up 4111 1111 1111 1111\r\n")
        try:
            self.outbox.evaluate(sample, "warm@example.invalid", ["someone@warm.example"])
            from . import detect

            detect.registrable("warm.xn--zckzah")  # the suffix list's IDN forms, loaded only for such domains
        except Exception:  # warming is best effort; the real check reports its own errors
            log.debug("warm-up check failed", exc_info=True)

    def _run(self) -> None:
        self.warm_up()
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

    def _process(self, item_id: str) -> None:
        """Check one received message; a failure with one message never holds up the others."""
        try:
            self.outbox.process(item_id)
        except Exception:
            log.exception("checking %s failed; it stays received and is checked again", item_id)

    def tick(self, poll_held: bool = False) -> None:
        try:  # first: sends that went out while the store could not be written, recorded once it can
            self.outbox.record_unrecorded()
        except Exception:  # noqa: BLE001 - asked again next turn
            log.exception("recording sent messages failed")
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for item_id in pending:
            self._process(item_id)
        if time.monotonic() - self._scanned_at > 2.0:  # not on every wake-up: intake stays cheap
            self._scanned_at = time.monotonic()
            for item in self.outbox.list([State.RECEIVED]):
                if time.time() - item.created_at > 5:  # missed (e.g. stored by another process)
                    self._process(item.id)
        self.outbox.expire_due()
        policy = self.policy.get()
        if policy is not self._routed_policy and self.central is None:  # approvers changed: re-route held mail
            self.outbox.reroute_approvals(policy)
            self._routed_policy = policy  # after: a failed round is tried again on the next tick
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
        if time.monotonic() - self._checkpoint_at > CHECKPOINT_SECONDS:
            self.save_checkpoint()
        if time.time() - self._last_purge > 3600:
            self._last_purge = time.time()
            self.outbox.purge(self.config.retention_days)

    def poll_held(self) -> None:
        for box in self.holding_mailboxes():
            try:
                with self._intake_lock:  # the Outbox watcher takes in from the same folder
                    held = box.fetch_held()
                    self._take_in(box, held)
            except MailboxError as exc:
                log.warning("cannot read the hold folder of %s: %s", box.name, exc)
                continue

    def _take_in(self, box: HoldingMailbox, held: list[HeldItem]) -> None:
        for h in held:
            if self.outbox.by_source_ref(h.source, h.ref):
                box.ack_held(h.ref)
                continue
            item_id = self.outbox.receive(h.raw, h.envelope_from, h.recipients, h.source, h.ref, box.name)
            box.ack_held(h.ref)
            self.outbox.process(item_id)

    # ------------------------------------------------------------------ Outbox interception
    def outbox_accounts(self) -> list[configmod.Account]:
        """Accounts whose server-side Outbox is watched: their connector can (``OutboxWatching``: Exchange,
        Graph) and ``hold`` and ``intercept_outbox`` are on (the default)."""
        return [a for a in self.config.accounts if a.settings.get("hold", True)
                and a.settings.get("intercept_outbox", True) and isinstance(self._connector(a), OutboxWatching)]

    @staticmethod
    def outbox_poll_seconds(account: configmod.Account) -> float:
        try:
            value = float(account.settings.get("outbox_poll_seconds", OUTBOX_POLL_SECONDS))
        except (TypeError, ValueError):
            value = OUTBOX_POLL_SECONDS
        return max(MIN_OUTBOX_POLL_SECONDS, value)

    def _watch_forever(self) -> None:
        # Its own thread, with its own connection per account: a slow release or a busy worker never
        # delays a take (the race against the deferred time is the point).
        while not self._stop.is_set():
            try:
                self.watch_outboxes()
            except Exception:
                log.exception("Outbox watch failed")
            self._watch_wake.wait(0.25)
            self._watch_wake.clear()

    def _stream_forever(self, account: configmod.Account) -> None:
        """Keep a streaming subscription on the account's Outbox open; each notification makes the watch
        look at once. When streaming fails (or the server does not offer it) polling carries on alone and
        streaming is tried again later. Blocked in a read at stop: the thread is a daemon."""
        failures = 0
        while not self._stop.is_set():
            try:
                box = self.connectors.get(account, registry.OUTBOX_STREAM)
                assert isinstance(box, OutboxStreaming)  # only such accounts get this thread (start)
                box.stream_outbox_changes(lambda: self.outbox_changed(account.name), minutes=1)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - polling covers for it; say why once per failure
                failures += 1
                log.info("no streaming notifications from the Outbox of %s (%s); polling every %.0f s", account.name,
                         exc, self.outbox_poll_seconds(account))
                self._stop.wait(min(300.0, 15.0 * failures))

    def outbox_changed(self, account_name: str) -> None:
        """Something arrived in an account's Outbox: look at it now, not at the next poll."""
        self._watched_at.pop(account_name, None)
        self._watch_wake.set()

    def watch_outboxes(self, force: bool = False) -> int:
        """Look at every watched Outbox that is due (all of them with ``force``); returns items taken."""
        taken = 0
        for account in self.outbox_accounts():
            now = time.monotonic()
            last = self._watched_at.get(account.name)
            if not force and last is not None and now - last < self.outbox_poll_seconds(account):
                continue
            self._watched_at[account.name] = now
            taken += self.watch_outbox(account)
        return taken

    def watch_outbox(self, account: configmod.Account) -> int:
        """One look at one account: take deferred items out of its Outbox and into SendGuard's outbox,
        give cancelled ones back as drafts, and record what the server sent without us."""
        try:
            box = self.connectors.get(account, registry.OUTBOX_WATCH)
            assert isinstance(box, OutboxWatching)  # outbox_accounts() names only such accounts
        except Exception as exc:
            log.warning("account %s cannot be opened to watch its Outbox: %s", account.name, exc)
            self._watch_failed(account, str(exc))
            return 0
        try:
            taken = box.watch_outbox()
            if taken or account.name in self._intake_pending:
                # out of the Outbox already; a failed intake is tried again at the next look
                self._intake_pending.add(account.name)
                with self._intake_lock:
                    self._take_in(box, box.fetch_held())
                self._intake_pending.discard(account.name)
            self._return_unsent(box, account)
            self._check_missed(box, account)
        except MailboxError as exc:
            log.warning("cannot watch the Outbox of %s: %s", account.name, exc)
            self._watch_failed(account, str(exc))
            return 0
        if self._watch_failures.pop(account.name, 0) >= WATCH_FAILURES_BEFORE_NOTICE:
            log.info("watching the Outbox of %s again", account.name)
        return taken

    def _watch_failed(self, account: configmod.Account, error: str) -> None:
        """While the Outbox cannot be watched, deferred mail goes out unchecked at its time: say so once
        per outage (after a few failed looks in a row, so a blip is not worth a notice)."""
        count = self._watch_failures.get(account.name, 0) + 1
        self._watch_failures[account.name] = count
        if count != WATCH_FAILURES_BEFORE_NOTICE:
            return
        try:
            self.notifier(self.gettext("SendGuard cannot watch your Outbox"),
                          self.gettext("Account {account}: {error} Until this is fixed, mail you send with a "
                                       "delay goes out unchecked.").format(account=account.name, error=error))
        except Exception:  # the log line above stands
            log.exception("could not show the Outbox watch notice")

    def _return_unsent(self, box: OutboxWatching, account: configmod.Account) -> None:
        for item in self.outbox.returns_due():
            if item.account == account.name and item.source == box.source_outbox and item.source_ref:
                found = box.return_to_drafts(item.source_ref)
                self.outbox.mark_returned(item.id, found)

    def _check_missed(self, box: OutboxWatching, account: configmod.Account) -> None:
        now = time.monotonic()
        last = self._missed_at.get(account.name)
        if last is not None and now - last < MISSED_SCAN_SECONDS:
            return
        started = self.outbox.watch_started(account.name)
        since = max(started, self._missed_since.get(account.name, 0.0), time.time() - MISSED_LOOKBACK_SECONDS)
        checked_at = time.time()
        for missed in box.find_missed(since):
            item = self.outbox.record_missed(missed, box.source_outbox, account.name)
            if item is None:
                continue
            log.warning("the server sent %s from the Outbox of %s without a check (SendGuard was not watching)",
                        missed.message_id, account.name)
            try:
                self.notifier(self.gettext("SendGuard: a message went out unchecked"),
                              self.gettext("“{subject}” was sent by the mail server at its deferred time while "
                                           "SendGuard was not running. It was not checked.").format(
                                  subject=missed.subject or missed.message_id))
            except Exception:  # telling the user must never stop the watch; the audit record stands
                log.exception("could not show the missed-message notice")
        self._missed_at[account.name] = now
        # the next look starts an hour before this one: the server's clock may differ from ours
        self._missed_since[account.name] = checked_at - 3600.0

