"""``sendguard server connect URL --token T``, run on the user's machine: point this helper at the
company's central server. The token is checked against the server first; only then does it go to the
keyring (with the server's decision key, which approvals are checked against) and the URL to
config.toml [server] url. Nothing is changed when the server refuses or cannot be reached."""

from __future__ import annotations

from . import central, paths
from . import secrets as secretstore
from .errors import PermissionDenied, SendGuardError


def connect(url: str, token: str) -> None:
    """Check ``token`` with the server at ``url``, then keep both; ``SendGuardError`` says why not."""
    import tomlkit

    client = central.CentralClient(url, token)
    try:
        client.decisions(wait=0)
    except PermissionDenied:
        raise SendGuardError(
            f"{url} refused this token. Use the helper token your administrator issued for you on the server "
            "(`sendguard server token issue --user ADDR`), not the local API token.") from None
    except central.CentralUnavailable as exc:
        reason = str(exc).split(":", 1)[-1].split(";", 1)[0].strip()
        raise SendGuardError(f"cannot reach {url} ({reason}): check the address and that the server is "
                             "running; this helper's settings were not changed") from None
    except SendGuardError as exc:
        raise SendGuardError(f"cannot use {url} with this token: {exc}") from None
    secretstore.put(central.TOKEN_KEY, token)
    secretstore.put(central.DECISION_KEY, client.decision_key())  # approvals are checked against it
    path = paths.config_file()
    doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    table = doc.get("server")
    if table is None:
        table = tomlkit.table()
        doc["server"] = table
    table["url"] = url.rstrip("/")
    paths.write_private_text(path, tomlkit.dumps(doc))
