"""Whole-service fault switches shared by the fake servers (EWS, Graph + sign-in, Google).

``fail_next`` on each fake breaks single requests; an ``Outage`` breaks the service as a whole until it
is lifted: ``down("drop")`` closes every connection without an answer (the peer is gone),
``down("503")`` answers every request 503 with a Retry-After (sign-in included), ``slow(seconds)`` does the
work at once but holds every answer back (past the client's timeout: the client cannot tell whether a
send went out). ``hits`` counts requests refused or delayed.
"""

from __future__ import annotations

import threading
import time


class Outage:
    def __init__(self) -> None:
        self.mode: str | None = None
        self.delay = 0.0
        self.retry_after = 0
        self.hits = 0
        self._lock = threading.Lock()

    def down(self, mode: str = "drop", retry_after: int = 0) -> None:
        assert mode in ("drop", "503"), mode
        with self._lock:
            self.mode, self.retry_after = mode, retry_after

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    def up(self) -> None:
        with self._lock:
            self.mode, self.delay = None, 0.0

    def gate(self) -> str | None:
        """Called first thing for every request: the outage mode (or None)."""
        with self._lock:
            if self.mode or self.delay:
                self.hits += 1
            return self.mode

    def linger(self) -> None:
        """Called just before an answer is written: a slow service answers late."""
        delay = self.delay
        if delay:
            time.sleep(delay)
