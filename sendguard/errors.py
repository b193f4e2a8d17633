"""Errors a user can act on. Each says what was wrong, where, and what to do."""

from __future__ import annotations


class SendGuardError(Exception):
    """Base class: the message is one line, fit to show a user as it is."""


class ConfigError(SendGuardError):
    """A config or policy file is wrong: names the file, the line and the key."""

    def __init__(self, path: str, message: str, line: int | None = None, key: str | None = None,
                 shown_key: str | None = None):
        self.path = str(path)
        self.line = line
        self.key = key
        self.detail = message
        where = self.path + (f":{line}" if line else "")
        shown_key = shown_key or key  # e.g. rules.address[2].action: which of several [[rules.address]]
        what = f" [{shown_key}]" if shown_key else ""
        super().__init__(f"{where}{what}: {message}")


class MessageError(SendGuardError):
    """A message cannot be checked (unreadable, no recipients, ...)."""


class CheckFormatError(SendGuardError):
    """A check result (stored, or sent by another machine) without the shape of ``sendguard check --json``:
    names the first wrong key."""


class StateError(SendGuardError):
    """An outbox action does not fit the message's current state."""


class NotFound(SendGuardError):
    """No such outbox item, approval or account."""


class PermissionDenied(SendGuardError):
    """The actor may not do this (wrong approver, wrong token)."""


class StoreUnavailable(SendGuardError):
    """The store cannot be written now (disk full, read-only, I/O error): nothing new is accepted until
    it can; held mail is safe. ``reason`` is ``full`` | ``read_only`` | ``io``."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class StoreDamaged(SendGuardError):
    """The store file fails SQLite's integrity check: SendGuard refuses to start on it (never resets it)."""


class NeedsReconfirmation(StateError):
    """A ``reconfirm`` reason is still open: the user must confirm once more, the reason named."""
