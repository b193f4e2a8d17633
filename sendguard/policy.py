"""``policy.toml``: loading, validation (file, line and key named) and the admin lock.

The machine-wide admin file supplies defaults; for every key it lists in ``locked`` its value wins
over the user's. A bad file is refused; ``PolicyHolder`` keeps the last good policy in force.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import tomlfile
from .errors import ConfigError

log = logging.getLogger(__name__)

ACTIONS = ("allow", "confirm", "reconfirm", "approve", "block")
SUPPRESSION_ACTIONS = ("remove", "block")
# contacts, lists and opt-out files larger than this are refused (they are read on every policy load)
DATA_FILE_LIMIT = 20 * 1024 * 1024
CONFIRM_WHEN = ("always", "external", "flagged", "never")


@dataclass(frozen=True)
class Route:
    senders: tuple[str, ...]
    approvers: tuple[str, ...]

    def matches(self, sender: str) -> bool:
        return any(fnmatch.fnmatchcase(sender.lower(), pattern.lower()) for pattern in self.senders)


@dataclass(frozen=True)
class Keyword:
    pattern: str
    action: str
    regex: re.Pattern[str]
    message: str = ""  # shown as the reason instead of the catalog's text (e.g. an imported alert)


@dataclass(frozen=True)
class Contact:
    """One row of a contacts file: an address (or ``*@domain``), a person's name and a company."""

    address: str
    name: str = ""
    company: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def matches(self, address: str) -> bool:
        return address == self.address or (self.address.startswith("*@") and address.endswith(self.address[1:]))


@dataclass(frozen=True)
class DistributionList:
    """A list address and its members (empty when the list is known but its members are not)."""

    address: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class AddressRule:
    """``[[rules.address]]``: fnmatch patterns on the lower-cased address, exceptions, an action."""

    match: tuple[str, ...]
    exclude: tuple[str, ...]
    action: str
    message: str = ""

    def applies_to(self, address: str) -> bool:
        return any(fnmatch.fnmatchcase(address, p) for p in self.match) and not any(
            fnmatch.fnmatchcase(address, p) for p in self.exclude)


@dataclass(frozen=True)
class AutoCc:
    """``[[rules.auto_cc]]``: add Cc/Bcc recipients when a recipient, keyword or attachment matches."""

    when_recipient: tuple[str, ...] = ()
    when_keyword: re.Pattern[str] | None = None
    when_attachment: bool = False
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()

    @property
    def unconditional(self) -> bool:
        return not self.when_recipient and self.when_keyword is None and not self.when_attachment


@dataclass(frozen=True)
class Suppression:
    """``[rules.suppression]``: opted-out addresses (or ``*@domain``) and what to do with them."""

    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    action: str = "remove"

    def matches(self, address: str) -> bool:
        return address in self.addresses or address.rpartition("@")[2] in self.domains


@dataclass(frozen=True)
class Deputy:
    """代理承認: ``deputy`` decides for ``approver`` between ``start`` and ``end`` (ISO dates)."""

    approver: str
    deputy: str
    start: str
    end: str


@dataclass(frozen=True)
class Policy:
    internal_domains: tuple[str, ...] = ()
    trusted_domains: tuple[str, ...] = ()
    confirm_when: str = "external"
    countdown_seconds: int = 0
    hold_seconds: int = 0
    approvers: tuple[str, ...] = ()
    allow_self_approval: bool = False
    expire_hours: float = 72
    # who sends an approved message: the sender's helper, or (central server only) the server itself
    release: str = "helper"
    routes: tuple[Route, ...] = ()
    deputies: tuple[Deputy, ...] = ()
    many_external_recipients: int = 10
    external_attachment: str = "confirm"
    personal_data: str = "approve"
    lookalike_domain: str = "approve"
    display_name_mismatch: str = "confirm"
    new_domain: str = "confirm"
    blocked_domains: tuple[str, ...] = ()
    auto_bcc: bool = False
    keywords: tuple[Keyword, ...] = ()
    # the rules that catch the wrong customer and the forgotten file (parity with FlexConfirmMail / OutlookOkan)
    contacts: tuple[Contact, ...] = ()
    lists: tuple[DistributionList, ...] = ()
    reply_new_domain: str = "confirm"
    missing_attachment: str = "confirm"
    missing_attachment_words: tuple[str, ...] = ()
    large_attachment_mb: float = 10
    large_attachment: str = "confirm"
    name_mismatch: str = "confirm"
    attachment_name_mismatch: str = "confirm"
    unsafe_attachment: str = "approve"
    encrypted_attachment: str = "confirm"
    sender_account: str = "confirm"
    distribution_list: str = "confirm"
    bulk_unsubscribe: str = "confirm"
    bulk_min_recipients: int = 20
    address_rules: tuple[AddressRule, ...] = ()
    auto_cc: tuple[AutoCc, ...] = ()
    suppression: Suppression = field(default_factory=Suppression)
    data_files: tuple[str, ...] = ()  # contacts/lists/opt-out files read, for reload on change
    locked: tuple[str, ...] = ()
    source: str = "(embedded defaults)"
    # set when no policy file could be used since the helper started: every message is held, with this why
    load_error: str = ""
    _contact_index: dict[str, Contact] = field(default_factory=dict, init=False, repr=False, compare=False)
    _list_index: dict[str, DistributionList] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for contact in self.contacts:  # exact rows win over *@domain rows; the first row of each wins
            self._contact_index.setdefault(contact.address, contact)
        for dist in self.lists:
            self._list_index.setdefault(dist.address, dist)

    def approvers_for(self, sender: str) -> tuple[str, ...]:
        """First matching route wins; else the default approvers."""
        for route in self.routes:
            if route.matches(sender):
                return route.approvers
        return self.approvers

    def contact_for(self, address: str) -> Contact | None:
        """The contact row for an address: an exact row first, else a ``*@domain`` row."""
        return self._contact_index.get(address) or self._contact_index.get("*@" + address.rpartition("@")[2])

    def list_for(self, address: str) -> DistributionList | None:
        return self._list_index.get(address)

    def is_locked(self, dotted_key: str) -> bool:
        return any(fnmatch.fnmatchcase(dotted_key, pattern) for pattern in self.locked)


# dotted key -> (attribute, kind, extra) ; kind drives validation
# locked names that are not policy settings: "guard.pause" takes Pause away from the tray and window
LOCKABLE_OUTSIDE_POLICY = ("guard.pause",)

_SCHEMA: dict[str, tuple[str, str, Any]] = {
    "organization.internal_domains": ("internal_domains", "domains", None),
    "organization.trusted_domains": ("trusted_domains", "domains", None),
    "confirm.when": ("confirm_when", "enum", CONFIRM_WHEN),
    "confirm.countdown_seconds": ("countdown_seconds", "int", (0, 600)),
    "confirm.hold_seconds": ("hold_seconds", "int", (0, 3600)),
    "approval.approvers": ("approvers", "addresses", None),
    "approval.allow_self_approval": ("allow_self_approval", "bool", None),
    "approval.expire_hours": ("expire_hours", "number", (0.001, 24 * 365)),
    "approval.release": ("release", "enum", ("helper", "server")),
    "approval.route": ("routes", "routes", None),
    "approval.deputies": ("deputies", "deputies", None),
    "rules.many_external_recipients": ("many_external_recipients", "int", (1, 100_000)),
    "rules.external_attachment": ("external_attachment", "enum", ("confirm", "reconfirm", "approve", "block")),
    "rules.personal_data": ("personal_data", "enum", ACTIONS),
    "rules.lookalike_domain": ("lookalike_domain", "enum", ACTIONS),
    "rules.display_name_mismatch": ("display_name_mismatch", "enum", ACTIONS),
    "rules.new_domain": ("new_domain", "enum", ACTIONS),
    "rules.blocked_domains": ("blocked_domains", "domains", None),
    "rules.auto_bcc": ("auto_bcc", "bool", None),
    "rules.keywords": ("keywords", "keywords", None),
    "organization.contacts": ("contacts", "contacts", None),
    "organization.lists": ("lists", "lists", None),
    "rules.reply_new_domain": ("reply_new_domain", "enum", ACTIONS),
    "rules.missing_attachment": ("missing_attachment", "enum", ACTIONS),
    "rules.missing_attachment_words": ("missing_attachment_words", "words", None),
    "rules.large_attachment_mb": ("large_attachment_mb", "number", (0.001, 100_000)),
    "rules.large_attachment": ("large_attachment", "enum", ACTIONS),
    "rules.name_mismatch": ("name_mismatch", "enum", ACTIONS),
    "rules.attachment_name_mismatch": ("attachment_name_mismatch", "enum", ACTIONS),
    "rules.unsafe_attachment": ("unsafe_attachment", "enum", ACTIONS),
    "rules.encrypted_attachment": ("encrypted_attachment", "enum", ACTIONS),
    "rules.sender_account": ("sender_account", "enum", ACTIONS),
    "rules.distribution_list": ("distribution_list", "enum", ACTIONS),
    "rules.bulk_unsubscribe": ("bulk_unsubscribe", "enum", ACTIONS),
    "rules.bulk_min_recipients": ("bulk_min_recipients", "int", (1, 1_000_000)),
    "rules.address": ("address_rules", "address_rules", None),
    "rules.auto_cc": ("auto_cc", "auto_cc", None),
    "rules.suppression": ("suppression", "suppression", None),
}
_SECTIONS = {"organization", "confirm", "approval", "rules"}


def _looks_like_address(cell: str) -> bool:
    local, at, domain = cell.partition("@")
    return bool(at and local and domain and "." in domain and " " not in cell and "@" not in domain
                and (local == "*" or "*" not in local) and "*" not in domain)


def _decode_data_file(path: Path, data: bytes, key: str) -> str:
    """UTF-8 (with or without BOM) or Shift_JIS, as Excel saves CSV in Japan."""
    for codec in ("utf-8-sig", "cp932"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    raise ConfigError(str(path), "not UTF-8 or Shift_JIS text; save the file as UTF-8 CSV", key=key)


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each CSV record."""
    rows = []
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise ConfigError(str(path), f"bad CSV: {exc}", line=reader.line_num) from None
    return rows


def _header(path: Path, rows: list[tuple[int, list[str]]], wanted: tuple[str, ...], key: str) -> list[str]:
    if not rows:
        raise ConfigError(str(path), f"empty file; the first line must be the header {','.join(wanted)}", key=key)
    number, row = rows[0]
    header = [c.strip().lower() for c in row]
    if header[: len(wanted)] != list(wanted) and not set(wanted[:1]) <= set(header):
        raise ConfigError(str(path), f"the first line must be the header {','.join(wanted)}, found {','.join(row)!r}",
                          line=number, key=key)
    return header


class _Validator:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text
        self.files: list[str] = []
        self._entry: tuple[str, int, int] | None = None  # the [[table]] being read: (key, index, how many)

    def fail(self, key: str, message: str) -> ConfigError:
        entry = self._entry
        if entry is None or not (key == entry[0] or key.startswith(entry[0] + ".")):
            return ConfigError(str(self.path), message, line=tomlfile.line_of(self.text, key), key=key)
        table, index, count = entry
        shown = f"{table}[{index + 1}]{key[len(table):]}" if count > 1 else None
        return ConfigError(str(self.path), message, line=tomlfile.line_of(self.text, key, (table, index)), key=key,
                           shown_key=shown)

    def _entries(self, key: str, value: list[Any]) -> Iterator[Any]:
        """The [[key]] tables one by one: a mistake in one is placed in it (line, and which one of several)."""
        try:
            for index, entry in enumerate(value):
                self._entry = (key, index, len(value))
                yield entry
        finally:
            self._entry = None

    def value(self, key: str, kind: str, extra: Any, value: Any) -> Any:
        if kind == "enum":
            if value not in extra:
                raise self.fail(key, f"{value!r} is not one of {', '.join(extra)}")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if kind in ("int", "number"):
            ok_types = (int,) if kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_types):
                raise self.fail(key, f"expected a whole number, got {value!r}" if kind == "int"
                                else f"expected a number, got {value!r}")
            low, high = extra
            if not low <= value <= high:
                raise self.fail(key, f"{value} is out of range {low}-{high}")
            return value
        if kind in ("domains", "addresses"):
            return self.strings(key, value, kind)
        if kind == "routes":
            return self.routes(key, value)
        if kind == "deputies":
            return self.deputies(key, value)
        if kind == "keywords":
            return self.keywords(key, value)
        if kind == "words":
            return tuple(w.strip() for w in self._list(key, value) if w.strip())
        if kind == "contacts":
            return self.contacts(key, value)
        if kind == "lists":
            return self.lists(key, value)
        if kind == "address_rules":
            return self.address_rules(key, value)
        if kind == "auto_cc":
            return self.auto_cc(key, value)
        if kind == "suppression":
            return self.suppression(key, value)
        raise AssertionError(kind)

    # ---------------------------------------------------------- tables and data files of [rules]/[organization]
    def _table_keys(self, key: str, entry: Any, allowed: set[str], what: str) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise self.fail(key, f"write it as a {what} table")
        extra = set(entry) - allowed
        if extra:
            raise self.fail(f"{key}.{sorted(extra)[0]}", f"unknown setting; {what} has {', '.join(sorted(allowed))}")
        return entry

    def _patterns(self, key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        out = []
        for item in self._list(key, value):
            item = _address_pattern(item)
            if not item:
                raise self.fail(key, "an empty pattern matches nothing; remove it")
            out.append(item)
        return tuple(out)

    def _action(self, key: str, value: Any, default: str = "confirm") -> str:
        value = default if value is None else value
        if value not in ACTIONS:
            raise self.fail(key, f"{value!r} is not one of {', '.join(ACTIONS)}")
        return str(value)

    def address_rules(self, key: str, value: Any) -> tuple[AddressRule, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "write address rules as [[rules.address]] tables")
        out = []
        for entry in self._entries(key, value):
            entry = self._table_keys(key, entry, {"match", "except", "action", "message"}, "[[rules.address]]")
            match = self._patterns(f"{key}.match", entry.get("match"))
            if not match:
                raise self.fail(f"{key}.match", "each [[rules.address]] needs match patterns")
            exclude = self._patterns(f"{key}.except", entry.get("except", []))
            action = self._action(f"{key}.action", entry.get("action"))
            message = entry.get("message", "")
            if not isinstance(message, str):
                raise self.fail(f"{key}.message", f"expected text, got {message!r}")
            out.append(AddressRule(match, exclude, action, message.strip()))
        return tuple(out)

    def auto_cc(self, key: str, value: Any) -> tuple[AutoCc, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "write automatic Cc/Bcc as [[rules.auto_cc]] tables")
        out = []
        allowed = {"when_recipient", "when_keyword", "when_attachment", "cc", "bcc"}
        for entry in self._entries(key, value):
            entry = self._table_keys(key, entry, allowed, "[[rules.auto_cc]]")
            when_recipient = self._patterns(f"{key}.when_recipient", entry.get("when_recipient", []))
            pattern = entry.get("when_keyword")
            regex = None
            if pattern is not None:
                if not isinstance(pattern, str) or not pattern:
                    raise self.fail(f"{key}.when_keyword", "expected a non-empty regular expression")
                try:
                    regex = re.compile(pattern, re.IGNORECASE)
                except re.error as exc:
                    raise self.fail(f"{key}.when_keyword", f"bad regular expression {pattern!r}: {exc}") from None
            when_attachment = entry.get("when_attachment", False)
            if not isinstance(when_attachment, bool):
                raise self.fail(f"{key}.when_attachment", f"expected true or false, got {when_attachment!r}")
            cc = self.strings(f"{key}.cc", entry.get("cc", []), "addresses")
            bcc = self.strings(f"{key}.bcc", entry.get("bcc", []), "addresses")
            if not cc and not bcc:
                raise self.fail(key, "each [[rules.auto_cc]] needs cc or bcc addresses")
            out.append(AutoCc(when_recipient, regex, when_attachment, cc, bcc))
        return tuple(out)

    def suppression(self, key: str, value: Any) -> Suppression:
        entry = self._table_keys(key, value, {"files", "action"}, "[rules.suppression]")
        action = entry.get("action", "remove")
        if action not in SUPPRESSION_ACTIONS:
            raise self.fail(f"{key}.action", f"{action!r} is not one of {', '.join(SUPPRESSION_ACTIONS)}")
        addresses: set[str] = set()
        domains: set[str] = set()
        for path, text in self._data_files(f"{key}.files", entry.get("files", [])):
            for number, row in _csv_rows(path, text):
                cell = (row[0] if row else "").strip().lower()
                if not cell.isascii() or "xn--" in cell:  # punycode, full width: as [[rules.address]] reads them
                    cell = _address_pattern(cell)
                if not cell or cell.startswith("#") or (number == 1 and "@" not in cell):
                    continue  # blank lines, comments and a header row
                if not _looks_like_address(cell):
                    raise ConfigError(str(path), f"{row[0]!r} is not an email address or *@domain",
                                      line=number, key=f"{key}.files")
                if cell.startswith("*@"):
                    domains.add(cell[2:])
                else:
                    addresses.add(cell)
        return Suppression(frozenset(addresses), frozenset(domains), action)

    def contacts(self, key: str, value: Any) -> tuple[Contact, ...]:
        out = []
        for path, text in self._data_files(key, value):
            rows = _csv_rows(path, text)
            header = _header(path, rows, ("address", "name", "company"), key)
            for number, row in rows[1:]:
                cells = dict(zip(header, (c.strip() for c in row), strict=False))
                address = cells.get("address", "").lower()
                if not address and not any(cells.values()):
                    continue
                if not _looks_like_address(address):
                    raise ConfigError(str(path), f"{cells.get('address', '')!r} is not an email address or *@domain",
                                      line=number, key=key)
                out.append(Contact(address, cells.get("name", ""), cells.get("company", "")))
        return tuple(out)

    def lists(self, key: str, value: Any) -> tuple[DistributionList, ...]:
        members: dict[str, list[str]] = {}
        for path, text in self._data_files(key, value):
            rows = _csv_rows(path, text)
            header = _header(path, rows, ("list", "member"), key)
            for number, row in rows[1:]:
                cells = dict(zip(header, (c.strip().lower() for c in row), strict=False))
                # punycode and full width read as recipients are (the domain in Unicode), as opt-out entries are
                address, member = (_address_pattern(cell) if cell and (not cell.isascii() or "xn--" in cell)
                                   else cell for cell in (cells.get("list", ""), cells.get("member", "")))
                if not address and not member:
                    continue
                for what, cell in (("list", address), ("member", member)):
                    if (cell or what == "list") and ("@" not in cell or cell.startswith("*")):
                        raise ConfigError(str(path), f"{what} {cell!r} is not an email address", line=number, key=key)
                bucket = members.setdefault(address, [])
                if member and member not in bucket:
                    bucket.append(member)
        return tuple(DistributionList(a, tuple(m)) for a, m in members.items())

    def _data_files(self, key: str, value: Any) -> list[tuple[Path, str]]:
        """Read the files a key names, relative to this policy file; missing or unreadable is an error."""
        if isinstance(value, str):
            value = [value]
        out = []
        for name in self._list(key, value):
            path = Path(name).expanduser()
            if not path.is_absolute():
                path = self.path.parent / path
            try:
                if path.stat().st_size > DATA_FILE_LIMIT:
                    raise self.fail(key, f"{path} is larger than {DATA_FILE_LIMIT // (1024 * 1024)} MB")
                data = path.read_bytes()
            except OSError as exc:
                raise self.fail(key, f"cannot read {path}: {exc.strerror or exc}") from None
            out.append((path, _decode_data_file(path, data, key)))
            self.files.append(str(path))
        return out

    def strings(self, key: str, value: Any, kind: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        out = []
        for item in value:
            item = item.strip().lower()
            if kind == "domains":
                item = item.lstrip("*.").lstrip("@")
                if not item or "@" in item or " " in item or "." not in item:
                    raise self.fail(key, f"{item!r} is not a domain name (write it like example.co.jp)")
                from .message import split_domain

                item = split_domain(item)[0]
                if key in ("organization.internal_domains", "organization.trusted_domains"):
                    from .detect import registrable

                    if not registrable(item)[0]:  # co.jp: every company under it would count as ours
                        raise self.fail(key, f"{item!r} is a public suffix, shared by every organization "
                                             "registered under it: write your own domain (like example.co.jp)")
            elif "@" not in item:
                raise self.fail(key, f"{item!r} is not an email address")
            out.append(item)
        return tuple(out)

    def routes(self, key: str, value: Any) -> tuple[Route, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "write routes as [[approval.route]] tables")
        routes = []
        for entry in self._entries(key, value):
            if not isinstance(entry, dict) or set(entry) - {"senders", "approvers"}:
                raise self.fail(key, "each [[approval.route]] has only senders and approvers")
            senders = tuple(s.lower() for s in self._list(f"{key}.senders", entry.get("senders")))
            approvers = self.strings(f"{key}.approvers", entry.get("approvers", []), "addresses")
            if not senders or not approvers:
                raise self.fail(key, "each [[approval.route]] needs senders and approvers")
            routes.append(Route(senders, approvers))
        return tuple(routes)

    def deputies(self, key: str, value: Any) -> tuple[Deputy, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "write deputies as [[approval.deputies]] tables")
        out = []
        for entry in self._entries(key, value):
            need = {"approver", "deputy", "start", "end"}
            if not isinstance(entry, dict) or set(entry) != need:
                raise self.fail(key, "each [[approval.deputies]] has approver, deputy, start and end")
            start, end = str(entry["start"]), str(entry["end"])
            if start > end:
                raise self.fail(key, f"start {start} is after end {end}")
            approver, deputy = self.strings(key, [entry["approver"], entry["deputy"]], "addresses")
            out.append(Deputy(approver, deputy, start, end))
        return tuple(out)

    def _list(self, key: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        return value

    def keywords(self, key: str, value: Any) -> tuple[Keyword, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "write keywords as [[rules.keywords]] tables")
        out = []
        for entry in self._entries(key, value):
            if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str) or not entry["pattern"]:
                raise self.fail(f"{key}.pattern", "each [[rules.keywords]] needs a non-empty pattern")
            action = entry.get("action", "confirm")
            if action not in ACTIONS:
                raise self.fail(f"{key}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
            extra = set(entry) - {"pattern", "action", "message"}
            if extra:
                raise self.fail(f"{key}.{sorted(extra)[0]}",
                                "unknown setting; a keyword has pattern, action and message")
            message = entry.get("message", "")
            if not isinstance(message, str):
                raise self.fail(f"{key}.message", f"expected text, got {message!r}")
            try:
                regex = re.compile(entry["pattern"], re.IGNORECASE)
            except re.error as exc:
                raise self.fail(f"{key}.pattern", f"bad regular expression {entry['pattern']!r}: {exc}") from None
            out.append(Keyword(entry["pattern"], action, regex, message.strip()))
        return tuple(out)


def _flatten(path: Path, text: str, data: dict[str, Any]) -> dict[str, Any]:
    """{"section.key": value} for the known schema; unknown keys are errors."""
    validator = _Validator(path, text)
    out: dict[str, Any] = {}
    for section, body in data.items():
        if section == "locked":
            out["locked"] = tuple(validator._list("locked", body))
            for pattern in out["locked"]:  # a misspelt entry would leave the key to every user, silently
                if not any(fnmatch.fnmatchcase(key, pattern) for key in (*_SCHEMA, *LOCKABLE_OUTSIDE_POLICY)):
                    raise validator.fail("locked", f"{pattern!r} names no setting: write section.key as in "
                                                   "the policy file (e.g. \"rules.personal_data\", "
                                                   "\"organization.*\")")
            continue
        if section not in _SECTIONS:
            raise validator.fail(section, f"unknown section; known: {', '.join(sorted(_SECTIONS))}, locked")
        if not isinstance(body, dict):
            raise validator.fail(section, f"expected a table like [{section}]")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if dotted not in _SCHEMA:
                known = ", ".join(k.split(".", 1)[1] for k in _SCHEMA if k.startswith(section + "."))
                raise validator.fail(dotted, f"unknown setting; known in [{section}]: {known}")
            attr, kind, extra = _SCHEMA[dotted]
            out[dotted] = validator.value(dotted, kind, extra, value)
    if validator.files:
        out["data_files"] = tuple(validator.files)
    return out


def parse_file(path: Path, content: dict[Path, bool] | None = None) -> dict[str, Any]:
    """The file's settings, validated and flattened; ``content`` records whether it had any (``_has_content``)."""
    data, text = tomlfile.read(path)
    if content is not None:
        content[path] = _has_content(text)
    return _flatten(path, text, data)


def _has_content(text: str) -> bool:
    """False for a file that reads as nothing: empty, or only spaces, line ends or byte order marks."""
    return bool(text.replace("\ufeff", "").strip())


def build(user: dict[str, Any], admin: dict[str, Any] | None = None, source: str = "") -> Policy:
    """Merge admin defaults, the user's file, and the admin's locked keys (admin wins there)."""
    admin = admin or {}
    locked = tuple(admin.get("locked", ()))
    values: dict[str, Any] = {}
    files = tuple(admin.get("data_files", ())) + tuple(user.get("data_files", ()))
    for layer in (admin, user):
        for dotted, value in layer.items():
            if dotted in ("locked", "data_files"):
                continue
            if layer is user and any(fnmatch.fnmatchcase(dotted, p) for p in locked):
                continue  # locked: the admin's value, or the built-in default when the admin set none
            values[dotted] = value
    kwargs = {_SCHEMA[k][0]: v for k, v in values.items()}
    return Policy(locked=locked, source=source, data_files=files, **kwargs)


def _approve_keys(layer: dict[str, Any]) -> list[str]:
    """Keys in one file whose action is ``approve`` (plain settings, or tables such as keywords)."""
    found = []
    for dotted, value in layer.items():
        if value == "approve" or (isinstance(value, tuple) and any(
                getattr(entry, "action", None) == "approve" for entry in value)):
            found.append(dotted)
    return found


def check_approvers(policy: Policy, layers: list[tuple[Path, dict[str, Any]]]) -> None:
    """A rule the files set to ``approve`` needs someone to approve: with no default approvers a
    message from any sender no route covers would wait for nobody. Refused, with the key named."""
    if policy.approvers:
        return
    for path, layer in layers:
        for dotted in _approve_keys(layer):
            effective = getattr(policy, _SCHEMA[dotted][0], None) if dotted in _SCHEMA else None
            if effective is not None and effective != "approve" and not (isinstance(effective, tuple) and any(
                    getattr(entry, "action", None) == "approve" for entry in effective)):
                continue  # overridden by a locked admin value
            text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            # two whole sentences rather than one with a piece put in: error_texts recognises each
            empty = ("this rule asks for approval, but [approval] approvers is empty (the [[approval.route]] tables "
                     "cover only some senders): " if policy.routes else
                     "this rule asks for approval, but [approval] approvers is empty: ")
            raise ConfigError(str(path), empty + "nobody could approve such a message. Add approvers = [\"boss@example"
                                                 ".com\"] under [approval], or set the rule to confirm or block",
                              line=tomlfile.line_of(text, dotted), key=dotted)


def load(path: Path | None, admin_path: Path | None = None) -> Policy:
    """Load and validate the user's policy (and the admin's, if present). Raises ConfigError."""
    return _load(path, admin_path)[0]


def _load(path: Path | None, admin_path: Path | None) -> tuple[Policy, dict[Path, bool]]:
    """``load``, and for each policy file read whether it had any content (``PolicyHolder`` tells a file
    read half-written from it)."""
    from . import managed  # Group Policy / MDM values: locked, on top of the machine file

    content: dict[Path, bool] = {}
    admin = managed.apply(parse_file(admin_path, content) if admin_path and admin_path.exists() else None)
    user = parse_file(path, content) if path and path.exists() else {}
    source = str(path) if path and path.exists() else "(embedded defaults)"
    policy = build(user, admin, source)
    layers = [(p, layer) for p, layer in ((admin_path, admin), (path, user)) if p is not None and layer]
    check_approvers(policy, layers)  # type: ignore[arg-type]
    return policy, content


def _address_pattern(pattern: str) -> str:
    """An address pattern in the form addresses are compared in: lower case, full-width letters and ＠ as
    ASCII (NFKC), the domain in Unicode (``*@xn--r8jz45g.jp`` is ``*@例え.jp``); otherwise a pattern
    written in punycode or full width would silently never match."""
    import unicodedata

    pattern = unicodedata.normalize("NFKC", pattern).strip().lower()
    local, at, domain = pattern.rpartition("@")
    if not at or not domain:
        return pattern
    if not any(c in domain for c in "*?["):
        from .message import split_domain

        return f"{local}@{split_domain(domain)[0]}"
    labels = []
    for label in domain.split("."):  # a wildcard domain: each plain punycode label on its own
        if label.startswith("xn--") and not any(c in label for c in "*?["):
            from .message import split_domain

            label = split_domain(label)[0]
        labels.append(label)
    return f"{local}@{'.'.join(labels)}"


def _fail_closed(admin_path: Path | None, error: ConfigError) -> Policy:
    """What is in force when the policy cannot be read and none was before: the machine-wide policy when it
    can be read on its own (else the built-in rules), with every message held for the user and the
    mistake named (an organization's block rules may be in the file that could not be read)."""
    try:
        base = load(None, admin_path)
    except ConfigError:
        base = Policy()
    return replace(base, confirm_when="always", load_error=str(error))


@dataclass
class PolicyHolder:
    """Keeps the last good policy: a reload that fails leaves the old one in force and says why.

    A policy file that had content and now reads as empty is refused too: an editor that saves by
    truncating the file and then writing it leaves it empty for a moment, and an empty file is a valid
    policy with every rule off. So is a policy file that is gone (moved aside while the new one is written):
    the last one read stays in force until the file is back or the helper restarts. A helper that starts
    with an empty file, or with none, uses the built-in defaults."""

    path: Path | None
    admin_path: Path | None = None
    current: Policy = field(default_factory=Policy)
    last_error: ConfigError | None = None
    _stamp: tuple[object, ...] = (0.0, 0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _good: bool = False  # a policy file was read since start (a later mistake keeps that one)
    _content: dict[Path, bool] = field(default_factory=dict)  # which files the policy in force had content in

    def _mtimes(self) -> tuple[object, ...]:
        def mtime(p: Path | None) -> object:
            # the size too: an editor that truncates and then writes may leave both with one modification
            # time, and the empty file read in between must not stay in force
            try:
                found = p.stat() if p else None
            except OSError:
                return 0.0
            return (found.st_mtime_ns, found.st_size) if found else 0.0

        from . import managed

        # the contacts, lists and opt-out files count too: an edited opt-out list applies at once
        data = tuple(mtime(Path(f)) for f in self.current.data_files)
        return (mtime(self.path), mtime(self.admin_path), managed.stamp(), *data)

    def _emptied(self, content: dict[Path, bool]) -> ConfigError | None:
        """The error for a policy file that had content when last read and now reads as empty, or is gone
        (an editor that saves by moving the old file aside and writing a new one leaves no file for a
        moment, and no file means the built-in rules)."""
        for path, had in self._content.items():
            if not had:
                continue
            if path not in content:
                return ConfigError(str(path), "the file is gone; SendGuard keeps the policy it last read from it, "
                                              "as an editor may be saving it by replacing the file. To run on "
                                              "the built-in rules, restart SendGuard")
            if not content[path]:
                return ConfigError(str(path), "the file is empty; SendGuard keeps the policy it last read from it, "
                                              "as an editor may still be writing it. To run without these rules, "
                                              "write a comment line such as \"# no rules\" in the file, or "
                                              "restart SendGuard")
        return None

    def reload(self) -> Policy:
        with self._lock:
            # size and time as they were before the read: a file written while it is being read (the
            # editor's write just after its truncation) differs from them, and is read again on the next get()
            seen = self._mtimes()
            data_files = self.current.data_files
            try:
                policy, content = _load(self.path, self.admin_path)
                emptied = self._emptied(content)
                if emptied is not None:
                    raise emptied
                self.current, self._content = policy, content
                self.last_error = None
                self._good = True
            except ConfigError as exc:
                self.last_error = exc
                if self._good:
                    log.error("policy refused, keeping the last good one: %s", exc)
                else:
                    self.current = _fail_closed(self.admin_path, exc)
                    log.error("policy refused and no earlier one to keep: every message is held for the "
                              "user until it is fixed: %s", exc)
            if self.current.data_files != data_files:  # the files the policy now names, as they are now
                seen = (*seen[:3], *self._mtimes()[3:])
            self._stamp = seen
            return self.current

    def get(self) -> Policy:
        """The policy in force, re-read when a file changed on disk."""
        if self._mtimes() != self._stamp:
            return self.reload()
        return self.current
