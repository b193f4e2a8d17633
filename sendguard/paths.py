"""Where SendGuard keeps its files: ``$SENDGUARD_HOME`` or the platform's user data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "SendGuard"


# what ``home()`` found readable by others and closed (``doctor`` reports it)
REPAIRED: list[str] = []
_checked: set[str] = set()


def home() -> Path:
    """The directory holding config.toml, policy.toml, sendguard.db, logs/ and sent/.

    It is the user's alone (0700; its files 0600): it holds mail bodies. A home found open to others
    (an older version, umask 022) is closed at first use and ``doctor`` says so."""
    env = os.environ.get("SENDGUARD_HOME")
    path = Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP, appauthor=False))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if str(path) not in _checked:
        _checked.add(str(path))
        make_private(path)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty and 0600 if it is missing (SQLite then gives its -wal/-shm the same mode)."""
    if os.name != "nt" and not path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
    return path


def make_private(path: Path) -> list[str]:
    """Close ``path`` (0700) and the files in it (0600) to other local users; returns what was changed."""
    if os.name == "nt":  # ACLs: the per-user profile folders are private already
        return []
    changed: list[str] = []
    try:
        entries = [path, *path.iterdir()]
    except OSError:
        return changed
    for entry in entries:
        try:
            st = entry.lstat()
            if entry.is_symlink() or st.st_uid != os.getuid() or not st.st_mode & 0o077:
                continue
            wanted = 0o700 if entry.is_dir() else 0o600
            os.chmod(entry, wanted)
            changed.append(f"{entry} was {oct(st.st_mode & 0o777)[2:]}, now {oct(wanted)[2:]}")
        except OSError:
            continue
    if changed:
        import logging

        logging.getLogger(__name__).info("closed to other users: %s", "; ".join(changed))
        REPAIRED.extend(changed)
    return changed


def config_file() -> Path:
    return home() / "config.toml"


def policy_file() -> Path:
    return home() / "policy.toml"


def admin_policy_file() -> Path:
    """The machine-wide policy an admin deploys; its locked keys override the user's."""
    env = os.environ.get("SENDGUARD_ADMIN_POLICY")
    if env:
        return Path(env)
    # every system config dir counts (XDG_CONFIG_DIRS may list several, e.g. /etc/xdg/xdg-ubuntu:/etc/xdg)
    dirs = platformdirs.site_config_dir(APP, appauthor=False, multipath=True).split(os.pathsep)
    candidates = [Path(d) / "policy.toml" for d in dirs if d]
    return next((c for c in candidates if c.exists()), candidates[-1])


def database_file() -> Path:
    return home() / "sendguard.db"


def sent_dir() -> Path:
    return home() / "sent"


def logs_dir() -> Path:
    path = home() / "logs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path
