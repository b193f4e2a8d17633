"""Back-off shared by the Exchange and Graph connectors.

A connector never sleeps for long inside ``release``: a short server-requested pause (throttling) is
honoured in place, anything longer goes back to the outbox as ``TransientError(retry_after=...)`` so
the mail stays held and the outbox retries when the time comes.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from datetime import UTC, datetime

# Longest pause honoured inside one call; longer waits are handed to the outbox.
MAX_INLINE_WAIT = 5.0
# Attempts inside one call for throttling answers (429/503/ErrorServerBusy) before giving up to the outbox.
MAX_INLINE_ATTEMPTS = 3


class Backoff:
    """Exponential back-off with jitter for an unreachable server: 5 s, 10 s, 20 s ... capped at 5 min.

    Kept per mailbox; ``reset()`` after any successful call.
    """

    def __init__(self, base: float = 5.0, cap: float = 300.0, jitter: float = 0.2):
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._failures = 0
        self._lock = threading.Lock()

    def next_delay(self) -> float:
        with self._lock:
            delay = min(self.cap, self.base * (2 ** self._failures))
            self._failures += 1
        return delay * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311 - not for security

    def reset(self) -> None:
        with self._lock:
            self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures


def parse_retry_after(value: str | None, default: float | None = None) -> float | None:
    """Retry-After in seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return default
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def sleep(seconds: float) -> None:
    """A pause honoured in place (kept as a function so tests can watch it)."""
    time.sleep(seconds)
