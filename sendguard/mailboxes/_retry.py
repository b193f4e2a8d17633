"""The one retry policy of the helper: every connector and the outbox wait by these numbers.

- A connector never sleeps for long inside ``release``/``find_sent``: a short server-requested pause
  (throttling, at most ``MAX_INLINE_WAIT`` seconds, at most ``MAX_INLINE_ATTEMPTS`` tries) is honoured in
  place; anything longer goes back to the outbox as ``TransientError(retry_after=...)``, so the mail stays
  held and the worker tries again when the time comes.
- The outbox waits ``delay(n)`` after the n-th failure in a row (a release, or asking a transport whether
  an interrupted send went out): ``BASE``, doubling, capped at ``CAP``, with jitter so many helpers do not
  come back at the same second. A server's Retry-After wins when it names a time.

``configure`` sets the numbers from config.toml ``[retry]`` (tests use short ones; never real minutes).
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from datetime import UTC, datetime

# The outbox's back-off: first wait and longest wait, in seconds.
BASE = 5.0
CAP = 1800.0
JITTER = 0.2
# Longest pause honoured inside one call; longer waits are handed to the outbox.
MAX_INLINE_WAIT = 5.0
# Attempts inside one call for throttling answers (429/503/ErrorServerBusy) before giving up to the outbox.
MAX_INLINE_ATTEMPTS = 3


DEFAULTS = {"base": BASE, "cap": CAP, "inline_wait": MAX_INLINE_WAIT}


def configure(base: float | None = None, cap: float | None = None, inline_wait: float | None = None) -> None:
    """Set the policy for this process (from config.toml ``[retry]``); None means the default."""
    global BASE, CAP, MAX_INLINE_WAIT
    BASE = max(0.0, float(DEFAULTS["base"] if base is None else base))
    CAP = max(BASE, float(DEFAULTS["cap"] if cap is None else cap))
    MAX_INLINE_WAIT = max(0.0, float(DEFAULTS["inline_wait"] if inline_wait is None else inline_wait))


def delay(failures: int, base: float | None = None, cap: float | None = None) -> float:
    """Seconds to wait after ``failures`` failures in a row (1 = the first): base, 2*base, 4*base ... cap."""
    base = BASE if base is None else base
    cap = CAP if cap is None else cap
    raw = min(cap, base * (2 ** max(0, min(failures - 1, 40))))
    return raw * (1 + random.uniform(-JITTER, JITTER))  # noqa: S311 - not for security


class Backoff:
    """Failures in a row against one server (kept per mailbox); ``reset()`` after any successful call.

    Waits follow ``delay``; a connector's own server-unreachable back-off stops at 5 minutes so a
    server that comes back is noticed soon.
    """

    def __init__(self, base: float | None = None, cap: float | None = 300.0, jitter: float | None = None):
        self.base = base
        self.cap = cap
        self._failures = 0
        self._lock = threading.Lock()

    def next_delay(self) -> float:
        with self._lock:
            self._failures += 1
            failures = self._failures
        cap = CAP if self.cap is None else min(self.cap, CAP)
        return delay(failures, self.base, cap)

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
