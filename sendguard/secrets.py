"""Secrets (passwords, refresh tokens) only through keyring.

Where the OS has no keyring backend (headless Linux), SendGuard falls back deliberately to an
encrypted file (keyrings.cryptfile) in ``SENDGUARD_HOME`` and ``sendguard doctor`` says so. The file
key comes from ``SENDGUARD_KEYRING_PASSWORD`` or, failing that, a random key file readable only by
the user.
"""

from __future__ import annotations

import logging
import os
import secrets as _random
import threading
from functools import lru_cache
from pathlib import Path

import keyring
import keyring.backend
from keyring.backends import fail

from . import paths

log = logging.getLogger(__name__)
SERVICE = "sendguard"


def _usable(kr: keyring.backend.KeyringBackend) -> keyring.backend.KeyringBackend | None:
    """The backend to use from what keyring chose, or None when only file stand-ins are there.

    keyrings.cryptfile and keyrings.alt register themselves as backends; picked silently they would
    prompt for a password on a terminal (cryptfile) or keep secrets in plain text (alt). They are
    used only when selected explicitly (``PYTHON_KEYRING_BACKEND``) or as our configured fallback.
    """
    if isinstance(kr, fail.Keyring):
        return None
    backends = getattr(kr, "backends", None)  # the chainer
    if backends is not None:
        usable = [b for b in (_usable(b) for b in backends) if b is not None]
        return max(usable, key=lambda b: getattr(b, "priority", 0)) if usable else None
    module = type(kr).__module__
    if module.startswith(("keyrings.cryptfile", "keyrings.alt")) and not os.environ.get("PYTHON_KEYRING_BACKEND"):
        return None
    return kr


def backend() -> keyring.backend.KeyringBackend:
    """The keyring in use: the OS one, or the encrypted-file fallback in this SENDGUARD_HOME."""
    return _backend(str(paths.home()), os.environ.get("PYTHON_KEYRING_BACKEND", ""))


@lru_cache(maxsize=8)
def _backend(home: str, _selected: str) -> keyring.backend.KeyringBackend:
    chosen = _usable(keyring.get_keyring())
    if chosen is not None:
        return chosen
    from keyrings.cryptfile.cryptfile import CryptFileKeyring

    store = CryptFileKeyring()
    store.file_path = os.path.join(home, "secrets.cfg")
    password = os.environ.get("SENDGUARD_KEYRING_PASSWORD")
    if not password:
        key_file = Path(home) / "secrets.key"
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(_random.token_urlsafe(32))
        password = key_file.read_text().strip()
    store.keyring_key = password
    log.info("no OS keyring backend; using the encrypted file %s", store.file_path)
    return store


def describe() -> str:
    """One line for ``doctor``: which store holds secrets."""
    kr = backend()
    name = f"{type(kr).__module__}.{type(kr).__name__}"
    if "cryptfile" in name:
        return f"encrypted file {getattr(kr, 'file_path', '?')} (no OS keyring backend found)"
    return name


def describe_readonly(home: Path) -> tuple[str, bool]:
    """(where secrets would be kept, whether that store is ready) without creating anything."""
    chosen = _usable(keyring.get_keyring())
    if chosen is not None:
        return f"{type(chosen).__module__}.{type(chosen).__name__}", True
    path = home / "secrets.cfg"
    key_ready = bool(os.environ.get("SENDGUARD_KEYRING_PASSWORD")) or (home / "secrets.key").exists()
    return f"encrypted file {path} (no OS keyring backend found)", key_ready or not path.exists()


# File keyrings (the encrypted-file fallback) rewrite one file in place: a read while another thread
# writes sees half a file. One lock per process keeps the helper's threads (token caches, the audit
# key) from meeting there.
_lock = threading.RLock()


def get(key: str) -> str | None:
    with _lock:
        return backend().get_password(SERVICE, key)


def put(key: str, value: str) -> None:
    with _lock:
        backend().set_password(SERVICE, key, value)


def delete(key: str) -> None:
    with _lock:
        try:
            backend().delete_password(SERVICE, key)
        except keyring.errors.PasswordDeleteError:
            pass
