"""Ending the helper within a bounded time, whatever one of its parts (or a library's thread) is doing.

A clean stop is never what keeps mail safe: every accepted message and every state change is committed
before it is acknowledged, and a send is marked ``releasing`` before the transport is called (so kill -9
at any point loses nothing, and a send cut short is settled at the next start, never sent twice). So a
part that cannot stop within its budget is named in the log and left behind, and the process ends anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback

log = logging.getLogger(__name__)

STOP_SECONDS = 5.0  # the helper's own stop: API server, SMTP port, worker, Outbox watch, connectors
EXIT_SECONDS = 12.0  # from Quit (or SIGTERM) to the process gone, whatever is stuck (the budgets add up to 10)
LEAVE_SECONDS = 1.0  # how long threads that would hold the interpreter's exit get once the helper stopped


def holding_threads() -> list[threading.Thread]:
    """Threads the interpreter would wait for at exit (alive, not daemons), the caller's own left out."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and t.is_alive() and not t.daemon
            and t is not threading.main_thread()]


def where(thread: threading.Thread) -> str:
    """The thread's name and the innermost line it is running (for the log)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return thread.name
    last = traceback.extract_stack(frame)[-1]
    return f"{thread.name} ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"


def exit_now(code: int = 0) -> None:
    """End the process at once: the log and standard streams are flushed, no thread is waited for."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def leave(grace: float = LEAVE_SECONDS) -> None:
    """The last call of a process that has stopped its helper: threads that would still hold the exit
    (a library's, blocked on a window that is gone) get ``grace`` seconds, then are named in the log and
    the process ends without them. Returns when there are none."""
    deadline = threading.Event()
    timer = threading.Timer(grace, deadline.set)
    timer.daemon = True
    timer.start()
    for thread in holding_threads():
        while thread.is_alive() and not deadline.is_set():
            thread.join(0.05)
    timer.cancel()
    holding = holding_threads()
    if holding:
        log.warning("ending now; these threads did not finish: %s", "; ".join(where(t) for t in holding))
        exit_now(0)


class Watchdog:
    """Ends the process if it is still there ``seconds`` after ``arm`` (the stop was asked for): the
    bound on the whole stop, for a part stuck where no budget of its own reaches (a GUI loop that does
    not end, a library call that never returns)."""

    def __init__(self, seconds: float = EXIT_SECONDS):
        self.seconds = seconds
        self._armed = False
        self._lock = threading.Lock()
        self._done = threading.Event()

    def arm(self) -> None:
        """Start counting (the first call; later ones change nothing). Any thread may call it."""
        with self._lock:
            if self._armed:
                return
            self._armed = True
        threading.Thread(target=self._watch, name="sendguard-stop-watchdog", daemon=True).start()

    def disarm(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        busy = [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
        log.error("SendGuard did not stop within %g s; ending now (committed mail stays as it is). Still "
                  "running: %s", self.seconds, "; ".join(where(t) for t in busy))
        exit_now(0)
