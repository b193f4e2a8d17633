"""The user's ``config.toml``: ports, language, accounts, central server.

Secrets never live here: passwords and tokens go to the keyring (``sendguard.secrets``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths, tomlfile
from .errors import ConfigError

if TYPE_CHECKING:  # tomlkit only writes config.toml: imported there, so reading commands start faster
    import tomlkit

ACCOUNT_KINDS = ("maildir", "smtp", "exchange", "graph", "gmail")


@dataclass
class Account:
    """A mailbox that releases (and for EWS/Graph/Gmail, can hold) the user's mail."""

    name: str
    kind: str
    address: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def secret_key(self, what: str = "password") -> str:
        """The keyring entry name for one of this account's secrets."""
        return f"account:{self.name}:{what}"

    def to_toml(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "address": self.address, **self.settings}


@dataclass
class Config:
    language: str | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1587
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    # browser extensions (chrome-extension://ID) allowed to ask for an origin-bound add-in token
    api_extension_origins: list[str] = field(default_factory=list)
    window: bool = True
    retention_days: int = 14
    server_url: str | None = None  # central server; None runs approvals embedded
    server_database: str | None = None  # on the central server's machine: its database URL
    # [retry]: the one back-off of the helper (sendguard/mailboxes/_retry.py); None keeps its default
    retry_base_seconds: float | None = None
    retry_max_seconds: float | None = None
    retry_inline_wait_seconds: float | None = None
    accounts: list[Account] = field(default_factory=list)
    path: Path | None = None

    def account_for(self, sender: str) -> Account | None:
        """The account whose address is the sender's (case-insensitive), else None."""
        sender = sender.lower()
        for acc in self.accounts:
            if acc.address and acc.address.lower() == sender:
                return acc
        return None

    def account(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)


_EXTENSION_ORIGIN = re.compile(r"chrome-extension://[a-p]{32}")

_TOP = {
    "language": (str, None),
    "window": (bool, None),
    "retention_days": (int, None),
}
_SECTIONS: dict[str, dict[str, type]] = {
    "smtp": {"host": str, "port": int},
    "api": {"host": str, "port": int, "extension_origins": list},
    "server": {"url": str, "database": str},
    "retry": {"base_seconds": float, "max_seconds": float, "inline_wait_seconds": float},
}


def _known_language(tag: str) -> bool:
    from .i18n import LANGUAGES

    tag = tag.lower().replace("-", "_")
    return any(tag == lang or tag.startswith(lang + "_") for lang in LANGUAGES)


def _expect(path: Path, text: str, key: str, value: Any, typ: type) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            str(path),
            f"expected {typ.__name__}, got {type(value).__name__} {value!r}",
            line=tomlfile.line_of(text, key),
            key=key,
        )
    return value


def load(path: Path | None = None) -> Config:
    """Read config.toml; a missing file means the embedded defaults."""
    path = path or paths.config_file()
    cfg = Config(path=path)
    if not path.exists():
        return cfg
    data, text = tomlfile.read(path)
    for key, value in data.items():
        if key in _TOP:
            setattr(cfg, key, _expect(path, text, key, value, _TOP[key][0]))
            if key == "language" and not _known_language(value):
                from .i18n import LANGUAGES

                raise ConfigError(str(path), f"{value!r} is not a language SendGuard speaks; one of "
                                             f"{', '.join(LANGUAGES)} (or leave it out to follow the system)",
                                  tomlfile.line_of(text, key), key)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(str(path), "expected a table", tomlfile.line_of(text, key), key)
            for sub, sub_value in value.items():
                typ = _SECTIONS[key].get(sub)
                if typ is None:
                    raise ConfigError(str(path), f"unknown setting; known: {', '.join(_SECTIONS[key])}",
                                      tomlfile.line_of(text, f"{key}.{sub}"), f"{key}.{sub}")
                sub_value = _expect(path, text, f"{key}.{sub}", sub_value, typ)
                setattr(cfg, f"{key}_{sub}", sub_value)
        elif key == "accounts":
            cfg.accounts = _accounts(path, text, value)
        else:
            raise ConfigError(str(path), "unknown setting", tomlfile.line_of(text, key), key)
    for origin in cfg.api_extension_origins:
        if not isinstance(origin, str) or not _EXTENSION_ORIGIN.fullmatch(origin):
            raise ConfigError(str(path), f"{origin!r} is not a browser extension origin like "
                              "chrome-extension://<32 letters a-p> (see chrome://extensions)",
                              tomlfile.line_of(text, "api.extension_origins"), "api.extension_origins")
    for host_key in ("smtp_host", "api_host"):
        if not is_loopback(getattr(cfg, host_key)):
            key = host_key.replace("_", ".")
            raise ConfigError(str(path), f"{getattr(cfg, host_key)!r} is not a loopback address: the helper listens "
                                         "on this machine only (127.0.0.1, ::1 or localhost); the networked "
                                         "component is the central server (`sendguard server`)",
                              tomlfile.line_of(text, key), key)
    for port_key in ("smtp_port", "api_port"):
        port = getattr(cfg, port_key)
        if not 0 <= port <= 65535:
            raise ConfigError(str(path), f"port {port} out of range 0-65535",
                              tomlfile.line_of(text, port_key.replace("_", ".")), port_key.replace("_", "."))
    return cfg


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (the only places the helper may listen)."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _accounts(path: Path, text: str, value: Any) -> list[Account]:
    if not isinstance(value, list):
        raise ConfigError(str(path), "write accounts as [[accounts]] tables", tomlfile.line_of(text, "accounts"),
                          "accounts")
    out: list[Account] = []
    for index, entry in enumerate(value):
        where = f"accounts[{index}]"
        if not isinstance(entry, dict) or "name" not in entry or "kind" not in entry:
            raise ConfigError(str(path), "each account needs name and kind", tomlfile.line_of(text, "accounts"),
                              where)
        if entry["kind"] not in ACCOUNT_KINDS:
            raise ConfigError(str(path), f"unknown kind {entry['kind']!r}; one of {', '.join(ACCOUNT_KINDS)}",
                              tomlfile.line_of(text, "accounts.kind"), f"{where}.kind")
        settings = {k: v for k, v in entry.items() if k not in ("name", "kind", "address")}
        if "expand_lists" in settings and (not isinstance(settings["expand_lists"], bool)
                                           or entry["kind"] not in ("exchange", "graph")):
            raise ConfigError(str(path), "expand_lists is true or false, for exchange and graph accounts only "
                                         "(it lets SendGuard ask the server who is on a distribution list)",
                              tomlfile.line_of(text, "accounts.expand_lists"), f"{where}.expand_lists")
        out.append(Account(entry["name"], entry["kind"], str(entry.get("address", "")), settings))
    return out


def _document(path: Path) -> tomlkit.TOMLDocument:
    import tomlkit

    if path.exists():
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    return tomlkit.document()


def save_account(account: Account, path: Path | None = None) -> None:
    """Add or replace the account of that name, keeping the rest of the file (comments too)."""
    import tomlkit

    path = path or paths.config_file()
    doc = _document(path)
    accounts = doc.get("accounts")
    if accounts is None:
        accounts = tomlkit.aot()
        doc["accounts"] = accounts
    for index, entry in enumerate(list(accounts)):
        if entry.get("name") == account.name:
            del accounts[index]
            break
    table = tomlkit.table()
    for key, value in account.to_toml().items():
        if value is not None:
            table[key] = value
    accounts.append(table)
    paths.write_private_text(path, tomlkit.dumps(doc))


def remove_account(name: str, path: Path | None = None) -> bool:
    import tomlkit

    path = path or paths.config_file()
    doc = _document(path)
    accounts = doc.get("accounts") or []
    for index, entry in enumerate(list(accounts)):
        if entry.get("name") == name:
            del accounts[index]
            paths.write_private_text(path, tomlkit.dumps(doc))
            return True
    return False
