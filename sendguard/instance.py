"""One helper per SENDGUARD_HOME: an OS file lock on ``helper.lock`` that holds the owner's PID.

The lock goes away with the process (even on kill -9), so a stale file never blocks a restart.
``running(home)`` tells, without changing anything, whether a helper holds it (``doctor`` uses it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from .errors import SendGuardError

LOCK_NAME = "helper.lock"


class AlreadyRunning(SendGuardError):
    """Another helper holds this home."""

    def __init__(self, home: Path, pid: int | None):
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"SendGuard is already running for {home} ({who} holds {home / LOCK_NAME}); "
                         "stop that one first, or use another SENDGUARD_HOME")


def _try_lock(fh: IO[str]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(fh: IO[str]) -> None:
    if sys.platform == "win32":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class InstanceLock:
    """Held for the life of the helper; ``release`` (or process exit) frees it."""

    def __init__(self, home: Path):
        self.path = home / LOCK_NAME
        self._fh: IO[str] | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="ascii")  # noqa: SIM115 - kept open while the lock is held
        if not _try_lock(fh):
            fh.close()
            raise AlreadyRunning(self.path.parent, _pid_in(self.path))
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self._fh.seek(0)
            self._fh.truncate()
            _unlock(self._fh)
        finally:
            self._fh.close()
            self._fh = None


def running(home: Path) -> int | None:
    """The PID of the helper running for ``home`` (0 if it holds the lock but the PID is unknown), else None.
    Read-only: a missing lock file is not created."""
    path = home / LOCK_NAME
    if not path.exists():
        return None
    try:
        fh = open(path, encoding="ascii")  # noqa: SIM115
    except OSError:
        return None
    with fh:
        if _try_lock(fh):
            _unlock(fh)
            return None
    return _pid_in(path) or 0
