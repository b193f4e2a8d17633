"""Time for deadlines that must not move when the system clock does.

``SteadyClock`` reads like ``time.time()`` (seconds since the epoch, so it can be stored and shown) but
advances with a monotonic clock that counts suspend (Linux ``CLOCK_BOOTTIME``), anchored to the wall
clock once at start. A jump of the system clock while the helper runs (NTP step, a user or VM setting it)
therefore does not expire an approval early, end a ``hold_seconds`` undo window early, or shorten a
back-off. Anchoring again happens at the next start.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def _steady() -> float:
    if _BOOTTIME is not None:
        try:
            return time.clock_gettime(_BOOTTIME)
        except OSError:  # pragma: no cover - a kernel without it
            pass
    return time.monotonic()


class SteadyClock:
    def __init__(self) -> None:
        self._wall = time.time()
        self._steady = _steady()

    def __call__(self) -> float:
        return self._wall + (_steady() - self._steady)

    def skew(self) -> float:
        """How far the system clock has moved away from this clock since start (seconds, signed)."""
        return time.time() - self()


def now_iso(ts: float | None = None) -> str:
    """A timestamp (now by default) as ISO 8601 UTC with microseconds, as stored in the audit log."""
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).isoformat(timespec="microseconds")
