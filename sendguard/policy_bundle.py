"""``sendguard policy export|import``: a policy with its contacts, lists and opt-out files, as one zip.

Export writes ``policy.toml`` with the data files it names stored beside it (``files/NAME``) and the
paths rewritten to them. Import reads such a zip into a temporary folder, validates it exactly as the
helper would load it, and only then replaces the policy and its files in the SendGuard home: a bad
bundle changes nothing.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import tomlkit

from . import policy
from .errors import ConfigError

# policy keys that name data files, as (table path, key)
FILE_KEYS = ((("organization",), "contacts"), (("organization",), "lists"), (("rules", "suppression"), "files"))
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


def _table(doc: Any, path: tuple[str, ...]) -> Any:
    node = doc
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def export(policy_path: Path, out: Path) -> list[str]:
    """Write the bundle; returns the names stored. The policy must load (it is checked first)."""
    policy.load(policy_path)  # refuse to export a policy the helper would refuse
    text = policy_path.read_text(encoding="utf-8")
    doc = tomlkit.parse(text)
    stored: dict[str, bytes] = {}
    for table_path, key in FILE_KEYS:
        table = _table(doc, table_path)
        if table is None or key not in table:
            continue
        renamed = []
        for name in _names(table[key]):
            source = Path(name).expanduser()
            if not source.is_absolute():
                source = policy_path.parent / source
            arcname = source.name
            stem, dot, ext = arcname.partition(".")
            n = 1
            while f"files/{arcname}" in stored:
                n += 1
                arcname = f"{stem}-{n}{dot}{ext}"
            stored[f"files/{arcname}"] = source.read_bytes()
            renamed.append(f"files/{arcname}")
        table[key] = renamed
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("policy.toml", tomlkit.dumps(doc))
        for arcname, data in stored.items():
            z.writestr(arcname, data)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    return ["policy.toml", *stored]


def _safe_members(archive: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    members = []
    total = 0
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = info.filename
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or ":" in name or not (
                name == "policy.toml" or (len(parts) == 2 and parts[0] == "files")):
            raise ConfigError(str(source), f"unexpected file {name!r} in the bundle (only policy.toml and files/)")
        total += info.file_size
        if total > MAX_BUNDLE_BYTES:
            raise ConfigError(str(source), "the bundle is larger than 64 MB unpacked")
        members.append(info)
    if "policy.toml" not in {m.filename for m in members}:
        raise ConfigError(str(source), "no policy.toml in the bundle (make one with `sendguard policy export`)")
    return members


def import_bundle(source: Path, home: Path) -> policy.Policy:
    """Validate the bundle as a whole, then put its policy and files into ``home``. Raises ConfigError."""
    try:
        archive = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(str(source), f"not a policy bundle (zip): {exc}") from None
    with archive, tempfile.TemporaryDirectory(prefix="sendguard-policy-") as tmpdir:
        staging = Path(tmpdir)
        for info in _safe_members(archive, source):
            target = staging / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
        try:
            loaded = policy.load(staging / "policy.toml")
        except ConfigError as exc:  # name the bundle and the member, not the temporary folder
            where = exc.path.replace(str(staging) + os.sep, f"{source}:")
            raise ConfigError(where, exc.detail, line=exc.line, key=exc.key) from None
        # everything is valid: copy the files first, then switch the policy in one rename
        home.mkdir(parents=True, exist_ok=True)
        files = staging / "files"
        if files.is_dir():
            (home / "files").mkdir(exist_ok=True)
            for path in sorted(files.iterdir()):
                tmp = home / "files" / (path.name + ".tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, home / "files" / path.name)
        tmp = home / "policy.toml.tmp"
        shutil.copyfile(staging / "policy.toml", tmp)
        os.replace(tmp, home / "policy.toml")
    return loaded


# ---------------------------------------------------------------- FlexConfirmMail (Outlook VSTO add-in)
# Its configuration folder holds Common.txt (Key = Value) and the lists TrustedDomains.txt,
# UnsafeDomains.txt and UnsafeFiles.txt (one entry a line, # comments).
_FCM_BOOL = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


def decode_settings_text(path: Path, codecs: tuple[str, ...], refusal: str) -> str:
    """A Windows add-in's settings file as text: the first of ``codecs`` that decodes it (they save UTF-8 with
    or without a BOM, UTF-16 or Shift_JIS), else ``ConfigError`` naming the file with ``refusal``."""
    data = path.read_bytes()
    for codec in codecs:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    raise ConfigError(str(path), refusal)


def _fcm_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = decode_settings_text(path, ("utf-8-sig", "utf-16", "cp932"), "not UTF-8, UTF-16 or Shift_JIS text")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def from_flexconfirmmail(folder: Path) -> tuple[str, list[str]]:
    """A policy.toml equivalent to a FlexConfirmMail configuration folder, and notes on what differs."""
    if not folder.is_dir():
        raise ConfigError(str(folder), "not a folder (give the folder holding Common.txt and TrustedDomains.txt)")
    names = ("Common.txt", "TrustedDomains.txt", "UnsafeDomains.txt", "UnsafeFiles.txt")
    if not any((folder / n).exists() for n in names):
        raise ConfigError(str(folder), f"no FlexConfirmMail files here ({', '.join(names)})")
    notes: list[str] = []
    common: dict[str, str] = {}
    for line_no, line in enumerate(_fcm_lines(folder / "Common.txt"), start=1):
        key, eq, value = line.partition("=")
        if not eq:
            raise ConfigError(str(folder / "Common.txt"), f"expected Key = Value, got {line!r}", line=line_no)
        common[key.strip()] = value.strip()

    def flag(key: str, default: bool) -> bool:
        value = common.get(key)
        if value is None:
            return default
        if value.lower() not in _FCM_BOOL:
            raise ConfigError(str(folder / "Common.txt"), f"{key}: expected yes/no, got {value!r}", key=key)
        return _FCM_BOOL[value.lower()]

    def number(key: str, default: int) -> int:
        value = common.get(key)
        if value is None:
            return default
        if not value.isdigit():
            raise ConfigError(str(folder / "Common.txt"), f"{key}: expected a whole number, got {value!r}", key=key)
        return int(value)

    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Imported from FlexConfirmMail ({folder})"))
    internal = []
    for entry in _fcm_lines(folder / "TrustedDomains.txt"):
        entry = entry.lower()
        if entry.startswith("-") or "@" in entry.lstrip("*@"):
            notes.append(f"TrustedDomains: {entry!r} (an exception or an address) has no SendGuard equivalent; skipped")
            continue
        domain = entry.lstrip("*.").lstrip("@")
        if domain and domain not in internal:
            internal.append(domain)
    organization = tomlkit.table()
    organization["internal_domains"] = internal
    doc["organization"] = organization
    confirm = tomlkit.table()
    confirm["countdown_seconds"] = number("CountSeconds", 3) if flag("CountEnabled", True) else 0
    doc["confirm"] = confirm
    rules = tomlkit.table()
    if flag("SafeBccEnabled", True):
        rules["many_external_recipients"] = max(1, number("SafeBccThreshold", 4))
        notes.append("SafeBccThreshold counts domains in FlexConfirmMail and external addresses in SendGuard")
    doc["rules"] = rules
    unsafe = [d.lower().lstrip("*.").lstrip("@") for d in _fcm_lines(folder / "UnsafeDomains.txt")]
    if unsafe:
        address = tomlkit.aot()
        table = tomlkit.table()
        table["match"] = [p for d in unsafe for p in (f"*@{d}", f"*@*.{d}")]
        table["action"] = "reconfirm"
        table["message"] = "FlexConfirmMail: a domain your organization marked as needing care"
        address.append(table)
        rules["address"] = address
    files = _fcm_lines(folder / "UnsafeFiles.txt")
    if files:
        keywords = tomlkit.aot()
        for word in files:
            table = tomlkit.table()
            table["pattern"] = re.escape(word)
            table["action"] = "confirm"
            keywords.append(table)
        rules["keywords"] = keywords
        notes.append("UnsafeFiles words become keywords: they also match the subject and body")
    for key in ("CountAllowSkip", "MainSkipIfNoExt", "SafeNewDomainsEnabled"):
        if key in common:
            notes.append(f"{key} has no SendGuard equivalent; skipped")
    return tomlkit.dumps(doc), notes


def import_flexconfirmmail(folder: Path, home: Path) -> tuple[policy.Policy, list[str]]:
    """Turn a FlexConfirmMail folder into the policy in force, validated before anything is replaced."""
    text, notes = from_flexconfirmmail(folder)
    with tempfile.TemporaryDirectory(prefix="sendguard-policy-") as tmpdir:
        staging = Path(tmpdir) / "policy.toml"
        staging.write_text(text, encoding="utf-8")
        loaded = policy.load(staging)
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / "policy.toml.tmp"
        shutil.copyfile(staging, tmp)
        os.replace(tmp, home / "policy.toml")
    return loaded, notes
