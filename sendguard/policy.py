"""``policy.toml``: loading, validation (file, line and key named) and the admin lock.

The machine-wide admin file supplies defaults; for every key it lists in ``locked`` its value wins
over the user's. A bad file is refused; ``PolicyHolder`` keeps the last good policy in force.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tomlfile
from .errors import ConfigError

log = logging.getLogger(__name__)

ACTIONS = ("allow", "confirm", "approve", "block")
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
    locked: tuple[str, ...] = ()
    source: str = "(embedded defaults)"

    def approvers_for(self, sender: str) -> tuple[str, ...]:
        """First matching route wins; else the default approvers."""
        for route in self.routes:
            if route.matches(sender):
                return route.approvers
        return self.approvers

    def is_locked(self, dotted_key: str) -> bool:
        return any(fnmatch.fnmatchcase(dotted_key, pattern) for pattern in self.locked)


# dotted key -> (attribute, kind, extra) ; kind drives validation
_SCHEMA: dict[str, tuple[str, str, Any]] = {
    "organization.internal_domains": ("internal_domains", "domains", None),
    "organization.trusted_domains": ("trusted_domains", "domains", None),
    "confirm.when": ("confirm_when", "enum", CONFIRM_WHEN),
    "confirm.countdown_seconds": ("countdown_seconds", "int", (0, 600)),
    "confirm.hold_seconds": ("hold_seconds", "int", (0, 3600)),
    "approval.approvers": ("approvers", "addresses", None),
    "approval.allow_self_approval": ("allow_self_approval", "bool", None),
    "approval.expire_hours": ("expire_hours", "number", (0.001, 24 * 365)),
    "approval.route": ("routes", "routes", None),
    "approval.deputies": ("deputies", "deputies", None),
    "rules.many_external_recipients": ("many_external_recipients", "int", (1, 100_000)),
    "rules.external_attachment": ("external_attachment", "enum", ("confirm", "approve", "block")),
    "rules.personal_data": ("personal_data", "enum", ACTIONS),
    "rules.lookalike_domain": ("lookalike_domain", "enum", ACTIONS),
    "rules.display_name_mismatch": ("display_name_mismatch", "enum", ACTIONS),
    "rules.new_domain": ("new_domain", "enum", ACTIONS),
    "rules.blocked_domains": ("blocked_domains", "domains", None),
    "rules.auto_bcc": ("auto_bcc", "bool", None),
    "rules.keywords": ("keywords", "keywords", None),
}
_SECTIONS = {"organization", "confirm", "approval", "rules"}


class _Validator:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(str(self.path), message, line=tomlfile.line_of(self.text, key), key=key)

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
                raise self.fail(key, f"expected a {'whole ' if kind == 'int' else ''}number, got {value!r}")
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
        raise AssertionError(kind)

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
            elif "@" not in item:
                raise self.fail(key, f"{item!r} is not an email address")
            out.append(item)
        return tuple(out)

    def routes(self, key: str, value: Any) -> tuple[Route, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "write routes as [[approval.route]] tables")
        routes = []
        for entry in value:
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
        for entry in value:
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
        for entry in value:
            if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str) or not entry["pattern"]:
                raise self.fail(f"{key}.pattern", "each [[rules.keywords]] needs a non-empty pattern")
            action = entry.get("action", "confirm")
            if action not in ACTIONS:
                raise self.fail(f"{key}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
            extra = set(entry) - {"pattern", "action"}
            if extra:
                raise self.fail(f"{key}.{sorted(extra)[0]}", "unknown setting; a keyword has pattern and action")
            try:
                regex = re.compile(entry["pattern"], re.IGNORECASE)
            except re.error as exc:
                raise self.fail(f"{key}.pattern", f"bad regular expression {entry['pattern']!r}: {exc}") from None
            out.append(Keyword(entry["pattern"], action, regex))
        return tuple(out)


def _flatten(path: Path, text: str, data: dict[str, Any]) -> dict[str, Any]:
    """{"section.key": value} for the known schema; unknown keys are errors."""
    validator = _Validator(path, text)
    out: dict[str, Any] = {}
    for section, body in data.items():
        if section == "locked":
            out["locked"] = tuple(validator._list("locked", body))
            continue
        if section not in _SECTIONS:
            raise validator.fail(section, f"unknown section; known: {', '.join(sorted(_SECTIONS))}, locked")
        if not isinstance(body, dict):
            raise validator.fail(section, "expected a table like [" + section + "]")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if dotted not in _SCHEMA:
                known = ", ".join(k.split(".", 1)[1] for k in _SCHEMA if k.startswith(section + "."))
                raise validator.fail(dotted, f"unknown setting; known in [{section}]: {known}")
            attr, kind, extra = _SCHEMA[dotted]
            out[dotted] = validator.value(dotted, kind, extra, value)
    return out


def parse_file(path: Path) -> dict[str, Any]:
    data, text = tomlfile.read(path)
    return _flatten(path, text, data)


def build(user: dict[str, Any], admin: dict[str, Any] | None = None, source: str = "") -> Policy:
    """Merge admin defaults, the user's file, and the admin's locked keys (admin wins there)."""
    admin = admin or {}
    locked = tuple(admin.get("locked", ()))
    values: dict[str, Any] = {}
    for layer in (admin, user):
        for dotted, value in layer.items():
            if dotted == "locked":
                continue
            if layer is user and any(fnmatch.fnmatchcase(dotted, p) for p in locked):
                continue  # locked: the admin's value, or the built-in default when the admin set none
            values[dotted] = value
    kwargs = {_SCHEMA[k][0]: v for k, v in values.items()}
    return Policy(locked=locked, source=source, **kwargs)


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
            covered = " (the [[approval.route]] tables cover only some senders)" if policy.routes else ""
            raise ConfigError(str(path), f"this rule asks for approval, but [approval] approvers is empty{covered}: "
                                         "nobody could approve such a message. Add approvers = [\"boss@example.com\"] "
                                         "under [approval], or set the rule to confirm or block",
                              line=tomlfile.line_of(text, dotted), key=dotted)


def load(path: Path | None, admin_path: Path | None = None) -> Policy:
    """Load and validate the user's policy (and the admin's, if present). Raises ConfigError."""
    from . import managed  # Group Policy / MDM values: locked, on top of the machine file

    admin = managed.apply(parse_file(admin_path) if admin_path and admin_path.exists() else None)
    user = parse_file(path) if path and path.exists() else {}
    source = str(path) if path and path.exists() else "(embedded defaults)"
    policy = build(user, admin, source)
    layers = [(p, layer) for p, layer in ((admin_path, admin), (path, user)) if p is not None and layer]
    check_approvers(policy, layers)  # type: ignore[arg-type]
    return policy


@dataclass
class PolicyHolder:
    """Keeps the last good policy: a reload that fails leaves the old one in force and says why."""

    path: Path | None
    admin_path: Path | None = None
    current: Policy = field(default_factory=Policy)
    last_error: ConfigError | None = None
    _stamp: tuple[float, float, str] = (0.0, 0.0, "")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mtimes(self) -> tuple[float, float, str]:
        def mtime(p: Path | None) -> float:
            try:
                return p.stat().st_mtime_ns if p else 0.0
            except OSError:
                return 0.0

        from . import managed

        return (mtime(self.path), mtime(self.admin_path), managed.stamp())

    def reload(self) -> Policy:
        with self._lock:
            stamp = self._mtimes()
            try:
                self.current = load(self.path, self.admin_path)
                self.last_error = None
            except ConfigError as exc:
                self.last_error = exc
                log.error("policy refused, keeping the last good one: %s", exc)
            self._stamp = stamp
            return self.current

    def get(self) -> Policy:
        """The policy in force, re-read when a file changed on disk."""
        if self._mtimes() != self._stamp:
            return self.reload()
        return self.current
