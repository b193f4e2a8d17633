"""The one retry policy of the helper: every connector and the outbox wait by these numbers.

- A connector never sleeps for long inside ``release``/``find_sent``: a short server-requested pause
  (throttling, at most ``MAX_INLINE_WAIT`` seconds, at most ``MAX_INLINE_ATTEMPTS`` tries) is honoured in
  place; anything longer goes back to the outbox as ``TransientError(retry_after=...)``, so the mail stays
  held and the worker tries again when the time comes.
- The outbox waits ``delay(n)`` after the n-th failure in a row (a release, or asking a transport whether
  an interrupted send went out): ``BASE``, doubling, capped at ``CAP``, with jitter so many helpers do not
  come back at the same second. A server's Retry-After wins when it names a time.
- After a send whose answer was lost, a connector does not read "not in Sent Items" as "not sent" for
  ``sent_items_grace()`` (``LostAnswers``): the mail service may still be filing it. The grace counts from
  the loss the outbox has on record (``ReleaseItem.answer_lost_ago``), so it holds across a restart.

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
# After a send whose answer was lost (it may have gone out), how long "not in Sent Items" still reads
# as "not filed yet": Exchange files an accepted message asynchronously (seconds later under load).
# Within it a connector sends nothing again; never longer than the outbox's longest wait (``CAP``).
SENT_ITEMS_GRACE = 60.0


DEFAULTS = {"base": BASE, "cap": CAP, "inline_wait": MAX_INLINE_WAIT}


def configure(base: float | None = None, cap: float | None = None, inline_wait: float | None = None) -> None:
    """Set the policy for this process (from config.toml ``[retry]``); None means the default."""
    global BASE, CAP, MAX_INLINE_WAIT
    BASE = max(0.0, float(DEFAULTS["base"] if base is None else base))
    CAP = max(BASE, float(DEFAULTS["cap"] if cap is None else cap))
    MAX_INLINE_WAIT = max(0.0, float(DEFAULTS["inline_wait"] if inline_wait is None else inline_wait))


def sent_items_grace() -> float:
    """Seconds after a lost answer to a send during which a connector does not send the message again
    while the service may still be filing it: ``SENT_ITEMS_GRACE``, at most ``[retry] max_seconds``."""
    return min(SENT_ITEMS_GRACE, CAP)


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


class LostAnswers:
    """Sends whose answer was lost (they may have gone out), by Message-ID, kept per connector.

    Within ``sent_items_grace()`` after one, "not in Sent Items" only means "not filed yet": the mail
    service files an accepted message asynchronously. ``check`` raises TransientError then, so nothing
    is sent again; after the grace the lost answer is forgotten and ``check`` returns True. A connector
    ``recall``s the outbox's record of a loss first, so a new process (after a restart) keeps the grace."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, message_id: str) -> None:
        with self._lock:
            self._since[message_id] = time.monotonic()

    def recall(self, message_id: str, ago: float | None) -> None:
        """A loss the outbox has on record (``ReleaseItem.answer_lost_ago``): kept as if recorded ``ago``
        seconds ago (never in the future), unless a later one is known here."""
        if ago is None:
            return
        since = time.monotonic() - max(0.0, ago)
        with self._lock:
            known = self._since.get(message_id)
            if known is None or since > known:
                self._since[message_id] = since

    def forget(self, message_id: str) -> None:
        with self._lock:
            self._since.pop(message_id, None)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._since

    def check(self, message_id: str, service: str, where: str = "Sent Items or the Outbox") -> bool:
        """For a message not found in the mailbox (``where``): False when no answer to a send of it was
        lost; a TransientError within the grace; True (and forgotten) once the grace is over."""
        from .base import TransientError  # here: base is the connectors' module, this one is policy only

        with self._lock:
            since = self._since.get(message_id)
            if since is None:
                return False
            left = sent_items_grace() - (time.monotonic() - since)
            if left <= 0:
                del self._since[message_id]
                return True
        wait = min(left, max(1.0, BASE))
        raise TransientError(f"{service} has not filed the message in {where} yet; the answer "
                             "to its send was lost, so it may have gone out and it is not sent again while the "
                             f"service may still be filing it ({left:.0f} s more); trying again in {wait:.0f} s.",
                             retry_after=wait)
