"""``runtime.json`` in SENDGUARD_HOME: where the running helper listens (ports may be chosen at start)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import config as configmod
from . import paths


def write(home: Path, **info: Any) -> None:
    path = home / "runtime.json"
    tmp = path.with_suffix(".tmp")
    with paths.open_private(tmp) as fh:
        fh.write(json.dumps({"pid": os.getpid(), **info}).encode("utf-8"))
    os.replace(tmp, path)


def read(home: Path | None = None) -> dict[str, Any]:
    path = (home or paths.home()) / "runtime.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def clear(home: Path) -> None:
    try:
        (home / "runtime.json").unlink()
    except OSError:
        pass


def api_base(home: Path | None = None) -> str:
    """The helper's web base URL: from the running helper, else from config."""
    info = read(home)
    if info.get("api_port"):
        return f"{info.get('scheme', 'http')}://localhost:{info['api_port']}"
    cfg = configmod.load((home or paths.home()) / "config.toml")
    scheme = "https" if ((home or paths.home()) / "certs" / "server.pem").exists() else "http"
    return f"{scheme}://localhost:{cfg.api_port}"


def confirm_url(item_id: str, home: Path | None = None) -> str:
    """A loopback link that opens the confirmation page for one message, with a one-time credential."""
    from .links import LinkSigner, signing_key

    token = LinkSigner(signing_key(), "confirm").sign(item_id)
    return f"{api_base(home)}/confirm/{item_id}?t={token}"
