"""Where a message came from, in the words the window, the CLI and the audit trail share.

``Item.source`` is the adapter that handed the message to the outbox; ``source_label`` says it for
people (translated when a gettext is given). Unknown sources are shown as they are.
"""

from __future__ import annotations

from collections.abc import Callable

from .i18n import _

SOURCE_LABELS = {
    "smtp": _("SMTP submission"),
    "outlook": _("Outlook add-in"),
    "exchange": _("Hold folder (Exchange)"),
    "graph": _("Hold folder (Microsoft 365)"),
    "exchange-outbox": _("Outbox interception (Exchange)"),
    "graph-outbox": _("Outbox interception (Microsoft 365)"),
    "gmail": _("Gmail"),
}


def source_label(source: str, gettext: Callable[[str], str] = str) -> str:
    """The human name of a message's source, e.g. "Outbox interception (Exchange)"."""
    label = SOURCE_LABELS.get(source)
    return gettext(label) if label else source
