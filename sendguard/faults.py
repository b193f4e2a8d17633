"""Crash points for the crash-safety tests: ``SENDGUARD_CRASH_AT=name`` kills the process (SIGKILL)
at that point, exactly as a power cut or ``kill -9`` would. Unset (always, in production) it does nothing.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("SENDGUARD_CRASH_AT", "")


def point(name: str) -> None:
    if _TARGET and _TARGET == name:
        os.kill(os.getpid(), signal.SIGKILL)
