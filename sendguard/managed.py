"""Policy set by the organisation's device management: Group Policy on Windows, MDM on macOS.

* Windows: ``HKLM\\Software\\Policies\\SendGuard\\<section>`` values, written by Group Policy or Intune
  from the ADMX templates (``packaging/windows/admx``): REG_SZ for choices, REG_DWORD for numbers and
  yes/no, REG_MULTI_SZ for lists. ``winreg`` is imported only on Windows; tests pass a reader.
* macOS: the managed preferences of the domain ``org.sendguard.SendGuard``, which a configuration
  profile (.mobileconfig, e.g. from Jamf) puts in ``/Library/Managed Preferences`` (root-owned): the
  same tables as policy.toml (``organization``, ``confirm``, ``approval``, ``rules``).

Every value set there is locked: it wins over the machine-wide policy file and the user's policy.toml.
The values go through the same validation as policy.toml, so a bad one is refused with the registry
path or the profile and the key named.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

REGISTRY_KEY = r"Software\Policies\SendGuard"
REGISTRY_NAME = "HKLM\\" + REGISTRY_KEY
MAC_DOMAIN = "org.sendguard.SendGuard"
MAC_MANAGED_DIR = Path("/Library/Managed Preferences")

# dotted key -> kind, for what a Group Policy template can express (lists, choices, numbers, yes/no).
# The policy file and a macOS profile can also set the structured keys (routes, keywords...).
REGISTRY_KEYS: dict[str, str] = {
    "organization.internal_domains": "list",
    "organization.trusted_domains": "list",
    "confirm.when": "choice",
    "confirm.countdown_seconds": "number",
    "confirm.hold_seconds": "number",
    "approval.approvers": "list",
    "approval.allow_self_approval": "flag",
    "approval.expire_hours": "number",
    "rules.many_external_recipients": "number",
    "rules.external_attachment": "choice",
    "rules.personal_data": "choice",
    "rules.lookalike_domain": "choice",
    "rules.new_domain": "choice",
    "rules.blocked_domains": "list",
    "rules.auto_bcc": "flag",
}

# section -> {value name: data}; data as winreg gives it (str, int, list[str])
RegistryReader = Callable[[], dict[str, dict[str, Any]]]

# Injected by tests (and nothing else): the platform and the registry reader.
PLATFORM = sys.platform
REGISTRY_READER: RegistryReader | None = None


@dataclass(frozen=True)
class ManagedSource:
    name: str  # where an admin looks: the registry path or the managed preferences file
    values: dict[str, Any]  # validated, flattened like policy.parse_file


def windows_registry_reader() -> dict[str, dict[str, Any]]:
    """HKLM\\Software\\Policies\\SendGuard\\<section> values (64-bit view)."""
    if sys.platform != "win32":  # (also tells the type checker that winreg is Windows-only)
        raise OSError("the Windows registry exists only on Windows")
    import winreg

    out: dict[str, dict[str, Any]] = {}
    try:
        root = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, REGISTRY_KEY, 0,
                              winreg.KEY_READ | winreg.KEY_WOW64_64KEY)
    except FileNotFoundError:
        return out
    with root:
        index = 0
        while True:
            try:
                section = winreg.EnumKey(root, index)
            except OSError:
                break
            index += 1
            with winreg.OpenKey(root, section) as key:
                values: dict[str, Any] = {}
                i = 0
                while True:
                    try:
                        name, data, _kind = winreg.EnumValue(key, i)
                    except OSError:
                        break
                    i += 1
                    values[name] = data
                out[section] = values
    return out


def _from_registry(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Registry data turned into policy.toml's tables, by the kind each key has in the template."""
    tables: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        for name, data in values.items():
            dotted = f"{section}.{name}"
            kind = REGISTRY_KEYS.get(dotted)
            if kind is None:
                known = ", ".join(sorted(REGISTRY_KEYS))
                raise ConfigError(f"{REGISTRY_NAME}\\{section}", f"unknown policy value {name!r}; known: {known}",
                                  key=dotted)
            if kind == "flag":
                if not isinstance(data, int):
                    raise ConfigError(f"{REGISTRY_NAME}\\{section}", "expected a REG_DWORD 0 or 1", key=dotted)
                data = bool(data)
            elif kind == "list":
                if isinstance(data, str):  # a REG_SZ list typed by hand: one entry per line or comma
                    data = [p.strip() for p in data.replace(",", "\n").splitlines() if p.strip()]
                elif isinstance(data, list):
                    data = [str(p).strip() for p in data if str(p).strip()]
            tables.setdefault(section, {})[name] = data
    return tables


def _mac_file() -> Path:
    return MAC_MANAGED_DIR / f"{MAC_DOMAIN}.plist"


def _from_plist(path: Path) -> dict[str, Any]:
    import plistlib  # macOS only: not loaded by every command's start elsewhere

    try:
        data = plistlib.loads(path.read_bytes())
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        raise ConfigError(str(path), f"cannot read the managed preferences: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "expected a dictionary of policy tables")
    # profile bookkeeping (PayloadUUID...) and MCX keys are not policy
    return {k: v for k, v in data.items() if not k.startswith(("Payload", "PayloadContent", "mcx_"))}


def _validated(name: str, tables: dict[str, Any]) -> dict[str, Any]:
    from . import policy

    values = policy._flatten(Path(name), "", tables)
    values.pop("locked", None)  # everything managed is locked anyway
    return values


def sources() -> list[ManagedSource]:
    """The device-management sources present on this machine, in order of precedence (last wins)."""
    found: list[ManagedSource] = []
    if PLATFORM == "win32":
        reader = REGISTRY_READER or windows_registry_reader
        raw = reader()
        if raw:
            found.append(ManagedSource(REGISTRY_NAME, _validated(REGISTRY_NAME, _from_registry(raw))))
    elif PLATFORM == "darwin":
        plist = _mac_file()
        if plist.exists():
            found.append(ManagedSource(str(plist), _validated(str(plist), _from_plist(plist))))
    return found


def apply(admin: dict[str, Any] | None, managed: list[ManagedSource] | None = None) -> dict[str, Any] | None:
    """The machine policy file's values with every managed value on top, each managed key locked."""
    managed = sources() if managed is None else managed
    if not managed:
        return admin
    merged = dict(admin or {})
    locked = list(merged.get("locked", ()))
    for source in managed:
        merged.update(source.values)
        locked.extend(k for k in source.values if k not in locked)
    merged["locked"] = tuple(locked)
    return merged


def stamp() -> str:
    """Changes whenever a managed source changes (so a running helper re-reads its policy)."""
    if PLATFORM == "win32":
        try:
            raw = (REGISTRY_READER or windows_registry_reader)()
        except OSError:
            return "unreadable"
        return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
    if PLATFORM == "darwin":
        try:
            return str(_mac_file().stat().st_mtime_ns)
        except OSError:
            return ""
    return ""


def provenance(user_path: Path | None, admin_path: Path | None) -> list[dict[str, Any]]:
    """Each policy setting in force that is not the built-in default: its value and where it came from.

    Sources, weakest first: the machine policy file, the user's policy.toml (unless the machine locked
    the key), the machine file's locked keys, Group Policy / managed preferences (always locked).
    """
    import fnmatch

    from . import policy

    admin = policy.parse_file(admin_path) if admin_path and admin_path.exists() else {}
    user = policy.parse_file(user_path) if user_path and user_path.exists() else {}
    managed = sources()
    locked = tuple(admin.get("locked", ()))
    chosen: dict[str, tuple[Any, str]] = {}
    for dotted, value in admin.items():
        if dotted != "locked":
            chosen[dotted] = (value, f"machine policy {admin_path}")
    for dotted, value in user.items():
        if dotted == "locked":
            continue
        if any(fnmatch.fnmatchcase(dotted, p) for p in locked):
            if dotted in chosen:
                chosen[dotted] = (chosen[dotted][0], f"machine policy {admin_path} (locked)")
            else:
                chosen[dotted] = (None, f"built-in default (locked by machine policy {admin_path})")
            continue
        chosen[dotted] = (value, f"user policy {user_path}")
    for dotted in list(chosen):
        value, where = chosen[dotted]
        if where.startswith("machine policy") and any(fnmatch.fnmatchcase(dotted, p) for p in locked):
            chosen[dotted] = (value, f"machine policy {admin_path} (locked)")
    for source in managed:
        for dotted, value in source.values.items():
            label = "Group Policy" if source.name == REGISTRY_NAME else "managed preferences"
            chosen[dotted] = (value, f"{label} {source.name} (locked)")
    out = []
    for dotted, (value, where) in sorted(chosen.items()):
        out.append({"key": dotted, "value": _plain(value), "source": where})
    return out


def _plain(value: Any) -> Any:
    """JSON-friendly: tuples as lists, policy dataclasses (routes, keywords) as their fields."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__ if k != "regex"}
    return value


def doctor_entries(user_path: Path) -> list[dict[str, Any]]:
    """``sendguard doctor`` lines: which machine policy is in force and where each setting came from."""
    from . import paths
    from .errors import SendGuardError

    why_text = {"installer": "pinned by the installer's marker", "system": "the system folder",
                "environment": "SENDGUARD_ADMIN_POLICY (no machine policy installed)", "xdg": "XDG_CONFIG_DIRS"}
    try:
        admin_path, why = paths.admin_policy_source()
        import os

        detail = f"{admin_path} ({why_text[why]}{'' if admin_path.exists() else '; not present'})"
        env = os.environ.get("SENDGUARD_ADMIN_POLICY")
        if env and why in ("installer", "system") and Path(env) != admin_path:
            detail += f"; SENDGUARD_ADMIN_POLICY={env} is ignored"
        managed_names = [s.name for s in sources()]
        if managed_names:
            detail += "; managed: " + ", ".join(managed_names)
        out: list[dict[str, Any]] = [{"check": "machine policy", "ok": True, "detail": detail}]
        for entry in provenance(user_path, admin_path):
            out.append({"check": "policy value", "ok": True,
                        "detail": f"{entry['key']} = {json.dumps(entry['value'], ensure_ascii=False)}: {entry['source']}",
                        **entry})
        return out
    except SendGuardError as exc:
        return [{"check": "machine policy", "ok": False, "detail": str(exc)}]
