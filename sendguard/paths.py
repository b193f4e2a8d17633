"""Where SendGuard keeps its files: ``$SENDGUARD_HOME`` or the platform's user data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "SendGuard"


def home_path() -> Path:
    """Where the home is, without creating it (``doctor`` looks and never writes)."""
    env = os.environ.get("SENDGUARD_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP, appauthor=False))


def home() -> Path:
    """The directory holding config.toml, policy.toml, sendguard.db, logs/ and sent/."""
    path = home_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    path.mkdir(exist_ok=True)
    return path
