"""From an account in config.toml to its connector; the outbox only sees the Mailbox interface."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from ..config import Account, Config
from .base import Mailbox

# kind -> "module:Class"; each class has ``from_account(account, home) -> Mailbox``.
CONNECTORS = {
    "maildir": "sendguard.mailboxes.maildir:MaildirMailbox",
    "smtp": "sendguard.mailboxes.smtp:SmtpRelay",
    "exchange": "sendguard.mailboxes.exchange:ExchangeMailbox",
    "graph": "sendguard.mailboxes.graph:GraphMailbox",
    "gmail": "sendguard.mailboxes.gmail:GmailMailbox",
}


def connector_class(kind: str) -> type:
    module, _, cls = CONNECTORS[kind].partition(":")
    return getattr(import_module(module), cls)


def build(account: Account, home: Path) -> Mailbox:
    return connector_class(account.kind).from_account(account, home)


def default_sink(home: Path) -> Mailbox:
    """The embedded default: a Maildir under ``$SENDGUARD_HOME/sent``."""
    return connector_class("maildir").from_account(Account("local", "maildir"), home)


def for_sender(cfg: Config, sender: str, home: Path) -> Mailbox:
    """The account whose address is the sender; else the first SMTP relay; else the Maildir sink."""
    account = cfg.account_for(sender)
    if account is None:
        account = next((a for a in cfg.accounts if a.kind in ("smtp", "maildir") and not a.address), None)
    return build(account, home) if account else default_sink(home)
