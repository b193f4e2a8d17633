"""What the web app needs from the process it runs in: the ``AppService`` protocol.

Two classes offer it: the desktop helper (``sendguard.service.Helper``) and the central server
(``addin.server.CentralService``). Views ask ``service()`` for it and call what the protocol names;
the type checker checks both classes against it, so no view needs ``hasattr``/``getattr`` to find out
what the service can do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from flask import current_app

from sendguard.approvals import Approvals
from sendguard.config import Config
from sendguard.outbox import Outbox
from sendguard.outlook_presence import AddinPresence
from sendguard.policy import PolicyHolder
from sendguard.store import Store


class AppService(Protocol):
    """The helper or the central server, as the REST API, the pages and the add-ins see it."""

    # read-only members: each class may hold a more specific type (the server's outbox is a ServerOutbox)
    @property
    def home(self) -> Path:
        """SENDGUARD_HOME of the process."""
        ...

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def policy(self) -> PolicyHolder: ...

    @property
    def approvals(self) -> Approvals: ...

    @property
    def addin_presence(self) -> AddinPresence | None:
        """The Outlook add-in still waiting to send an item itself (the helper); None on the central server,
        where no add-in sends mail on a user's behalf."""
        ...

    def gettext(self, text: str) -> str:
        """``text`` in the service's language."""
        ...

    def wake(self) -> None:
        """Something was decided: act on it now (the helper releases, the server mails notices)."""
        ...

    def confirm_url(self, item_id: str) -> str | None:
        """A link that opens the confirmation page for one message; None where there is no such page."""
        ...


def current_service() -> AppService | None:
    """The service of the running app, or None while it starts (``create_app()`` without one)."""
    service: AppService | None = current_app.config.get("SENDGUARD_SERVICE")
    return service
