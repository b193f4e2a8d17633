"""From an account in config.toml to its connector; the outbox only sees the Mailbox interface.

``Connectors`` is the helper's set of connectors: one per account (and per role: the Outbox watch and
its streaming connection have their own, so a long release never delays a take), built on first use,
kept while the helper runs so a connection, sign-in, hold folder and subscription carry over from one
call to the next, and closed at stop. ``build`` makes a one-off connector (a command, a test).
"""

from __future__ import annotations

import logging
import threading
from importlib import import_module
from pathlib import Path
from typing import Protocol

from ..config import Account, Config
from .base import Mailbox, OutboxWatching

log = logging.getLogger(__name__)

# kind -> "module:Class"; each class has ``from_account(account, home) -> Mailbox``.
CONNECTORS = {
    "maildir": "sendguard.mailboxes.maildir:MaildirMailbox",
    "smtp": "sendguard.mailboxes.smtp:SmtpRelay",
    "exchange": "sendguard.mailboxes.exchange:ExchangeMailbox",
    "graph": "sendguard.mailboxes.graph:GraphMailbox",
    "gmail": "sendguard.mailboxes.gmail:GmailMailbox",
}
RELEASE = "release"  # the connector that releases, reconciles and reads the hold folder
OUTBOX_WATCH = "outbox-watch"  # takes deferred items out of the server-side Outbox
OUTBOX_STREAM = "outbox-stream"  # keeps a streaming subscription on the Outbox open


class ConnectorClass(Protocol):
    """A connector class: it makes the connector for an account from config.toml and the keyring."""

    def from_account(self, account: Account, home: Path) -> Mailbox: ...


def connector_class(kind: str) -> ConnectorClass:
    module, _, cls = CONNECTORS[kind].partition(":")
    return getattr(import_module(module), cls)  # type: ignore[no-any-return]


def build(account: Account, home: Path) -> Mailbox:
    return connector_class(account.kind).from_account(account, home)


def default_sink(home: Path) -> Mailbox:
    """The embedded default: a Maildir under ``$SENDGUARD_HOME/sent``."""
    return build(Account("local", "maildir"), home)


def release_account(cfg: Config, sender: str) -> Account | None:
    """The account whose address is the sender; else the first SMTP relay (or Maildir) for everyone."""
    account = cfg.account_for(sender)
    if account is None:
        account = next((a for a in cfg.accounts if a.kind in ("smtp", "maildir") and not a.address), None)
    return account


def for_sender(cfg: Config, sender: str, home: Path) -> Mailbox:
    """A one-off connector for the sender's account (see ``release_account``); else the Maildir sink."""
    account = release_account(cfg, sender)
    return build(account, home) if account else default_sink(home)


def _close(box: Mailbox) -> None:
    try:
        box.close()
    except Exception:  # closing is tidying up; a connection that is already gone is fine
        log.debug("closing connector %s failed", getattr(box, "name", box), exc_info=True)


class Connectors:
    """One connector per account and role for the life of the helper. Thread-safe."""

    def __init__(self, home: Path):
        self.home = home
        self._boxes: dict[tuple[str, str], tuple[str, Mailbox]] = {}
        self._lock = threading.RLock()

    @staticmethod
    def _shape(account: Account) -> str:
        # settings changed (an account replaced): a new connector; the old one is closed
        return repr((account.kind, account.address, sorted(account.settings.items())))

    def get(self, account: Account, role: str = RELEASE) -> Mailbox:
        """The account's connector for ``role``, built once. The Outbox roles get a companion of the
        release connector: the same sign-in, a connection of their own."""
        key, shape = (f"{account.kind}:{account.name}", role), self._shape(account)
        with self._lock:
            found = self._boxes.get(key)
            if found is not None and found[0] == shape:
                return found[1]
            if found is not None:
                _close(found[1])
            if role == RELEASE:
                box = build(account, self.home)
            else:
                main = self.get(account)
                if not isinstance(main, OutboxWatching):
                    raise TypeError(f"{account.kind} account {account.name} has no server-side Outbox to watch")
                box = main.companion()
            self._boxes[key] = (shape, box)
            return box

    def sink(self) -> Mailbox:
        """The embedded Maildir sink, for mail no account releases."""
        return self.get(Account("local", "maildir"))

    def for_sender(self, cfg: Config, sender: str) -> Mailbox:
        account = release_account(cfg, sender)
        return self.get(account) if account else self.sink()

    def close(self, timeout: float = 5.0) -> None:
        """Close every connector (the helper stops); a later ``get`` builds anew.

        A connector busy in a long call (a streaming subscription waits up to a minute) closes once that
        call returns: closing happens beside the caller, which waits at most ``timeout`` seconds.
        """
        with self._lock:
            boxes, self._boxes = [box for _shape, box in self._boxes.values()], {}
        if not boxes:
            return

        def close_all() -> None:
            for box in boxes:
                _close(box)

        closer = threading.Thread(target=close_all, name="sendguard-close-connectors", daemon=True)
        closer.start()
        closer.join(timeout)
