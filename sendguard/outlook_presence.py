"""Whether the Outlook add-in is still waiting for the user's decision on an outbox item.

A send checked by the add-in is handed back to Outlook: when the user confirms, Outlook sends it -
but only while the add-in's handler is still running. Outlook ends the handler when the user leaves
the message (Outlook on the web and new Outlook save it to Drafts; classic Outlook offers "Save as
Draft" when it was composed in the Reading Pane) and after five minutes. The add-in long-polls the
item while it waits, so an item with no poll open, and none for a few seconds, has nobody to hand
it back to. The outbox then sends the draft itself through the sender's Exchange/Graph account, or
says that the message is in Drafts - it never records such a message as sent.

One process holds this (the helper that serves the add-in and shows the window).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

GRACE_SECONDS = 5.0  # between two long-polls, and between the check and the first poll
_FORGET_AFTER = 3600.0


class AddinPresence:
    """Open long-polls and the last contact per outbox item."""

    def __init__(self, grace: float = GRACE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.grace = grace
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def seen(self, item_id: str) -> None:
        """The add-in has just talked about this item (submitted it, or a poll answered)."""
        with self._lock:
            now = self.clock()
            self._last[item_id] = now
            if len(self._last) > 1000:
                for key in [k for k, t in self._last.items() if now - t > _FORGET_AFTER and not self._open.get(k)]:
                    del self._last[key]

    @contextmanager
    def polling(self, item_id: str) -> Iterator[None]:
        """Wraps one long-poll of the add-in for this item."""
        with self._lock:
            self._open[item_id] = self._open.get(item_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._open.get(item_id, 1) - 1
                if left:
                    self._open[item_id] = left
                else:
                    self._open.pop(item_id, None)
            self.seen(item_id)

    def waiting(self, item_id: str) -> bool:
        """True while a poll is open or the last contact was within the grace period."""
        with self._lock:
            if self._open.get(item_id):
                return True
            last = self._last.get(item_id)
            return last is not None and self.clock() - last <= self.grace
