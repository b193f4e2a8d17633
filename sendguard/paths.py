"""Where SendGuard keeps its files: ``$SENDGUARD_HOME`` or the platform's user data directory.

The machine-wide admin policy is found where no setting of the user's can move it: an installer
names it in the install marker (``sendguard-install.toml`` in the admin-owned environment it made),
and a policy in the platform's fixed system folder counts as installed too. Only when neither exists
(a developer's checkout, the test suite) do ``SENDGUARD_ADMIN_POLICY`` and ``XDG_CONFIG_DIRS`` choose it.
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import platformdirs

from .errors import ConfigError

APP = "SendGuard"
# Written by the installers into the environment they create (root/Administrators-only).
INSTALL_MARKER = "sendguard-install.toml"


def home_path() -> Path:
    """Where the home is, without creating it (``doctor`` looks and never writes)."""
    env = os.environ.get("SENDGUARD_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP, appauthor=False))


# what ``home()`` found readable by others and closed (``doctor`` reports it)
REPAIRED: list[str] = []
_checked: set[str] = set()


def home() -> Path:
    """The directory holding config.toml, policy.toml, sendguard.db, logs/ and sent/.

    It is the user's alone (0700; its files 0600): it holds mail bodies. A home found open to others
    (an older version, umask 022) is closed at first use and ``doctor`` says so."""
    path = home_path()
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


def open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing, created 0600 whatever the umask (never readable by others, not even
    for a moment). A file already there (left by a crash) is emptied and closed to others first."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    try:
        if os.name != "nt":
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def write_private_text(path: Path, text: str) -> None:
    """Write a settings file (config.toml) as the user's alone, 0600 from its creation whatever the umask,
    and whole: written beside it and moved in place, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open_private(tmp) as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


@dataclass(frozen=True)
class MachineInstall:
    """What a machine-wide installer pinned for every user of this environment."""

    marker: Path
    admin_policy: Path | None = None
    ca_dir: Path | None = None


def install_marker_file() -> Path:
    return Path(sys.prefix) / INSTALL_MARKER


def machine_install() -> MachineInstall | None:
    """The installer's marker in this environment, or None for a developer's or a user's own install.

    A marker that cannot be read is an error, not "no install": fail closed rather than run
    without the machine policy.
    """
    marker = install_marker_file()
    try:
        text = marker.read_text(encoding="utf-8-sig")  # Windows tools like to add a BOM
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(str(marker), f"cannot read the install marker: {exc}; reinstall SendGuard") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(marker), f"not valid TOML ({exc}); reinstall SendGuard") from None
    values: dict[str, Path | None] = {}
    for key in ("admin_policy", "ca_dir"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not Path(value).is_absolute()):
            raise ConfigError(str(marker), "expected an absolute path", key=key)
        values[key] = Path(value) if value else None
    return MachineInstall(marker=marker, **values)


def fixed_system_config_dir() -> Path:
    """The platform's machine-wide config folder, never taken from the user's environment."""
    if sys.platform == "win32":
        # %ProgramData%\SendGuard; platformdirs asks the shell API (ctypes) rather than the environment
        return Path(platformdirs.site_config_dir(APP, appauthor=False))
    if sys.platform == "darwin":
        return Path("/Library/Application Support") / APP  # root-owned, unlike a Homebrew prefix
    return Path("/etc/xdg") / APP


def admin_policy_source() -> tuple[Path, str]:
    """The machine-wide policy file and why that one: ``installer``, ``system``, ``environment`` or ``xdg``."""
    install = machine_install()
    if install is not None and install.admin_policy is not None:
        return install.admin_policy, "installer"
    fixed = fixed_system_config_dir() / "policy.toml"
    if fixed.exists():
        return fixed, "system"
    env = os.environ.get("SENDGUARD_ADMIN_POLICY")
    if env:
        return Path(env), "environment"
    # every system config dir counts (XDG_CONFIG_DIRS may list several, e.g. /etc/xdg/xdg-ubuntu:/etc/xdg)
    dirs = platformdirs.site_config_dir(APP, appauthor=False, multipath=True).split(os.pathsep)
    candidates = [Path(d) / "policy.toml" for d in dirs if d]
    return next((c for c in candidates if c.exists()), candidates[-1]), "xdg"


def admin_policy_file() -> Path:
    """The machine-wide policy an admin deploys; its locked keys override the user's.

    ``SENDGUARD_ADMIN_POLICY`` cannot replace or switch off an installed machine policy.
    """
    return admin_policy_source()[0]


def database_file() -> Path:
    return home() / "sendguard.db"


def sent_dir() -> Path:
    return home() / "sent"


def logs_dir() -> Path:
    path = home() / "logs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path
