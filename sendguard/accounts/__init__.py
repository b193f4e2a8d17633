"""Setting accounts up: ``sendguard accounts add KIND`` and the sign-in flows behind it.

``sendguard.mailboxes`` only moves mail (release, hold folder, reconciliation) for accounts that
exist; everything that creates or renews an account lives here: the click commands, the questions
they ask, the browser or device-code sign-in, and writing ``config.toml`` and the keyring. A module
per kind, each with an ``add_command``; Gmail also has ``sendguard gmail ...`` (``gmail_group``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# kind -> "module:command" for `sendguard accounts add KIND`, in the order `--help` lists them
ADD_COMMANDS = {
    "smtp": "sendguard.accounts.smtp:add_command",
    "exchange": "sendguard.accounts.exchange:add_command",
    "graph": "sendguard.accounts.graph:add_command",
    "gmail": "sendguard.accounts.gmail:add_command",
}


def add_command(kind: str) -> Any:
    """The click command that adds an account of ``kind`` (imported only when asked for)."""
    module, _, name = ADD_COMMANDS[kind].partition(":")
    return getattr(import_module(module), name)
