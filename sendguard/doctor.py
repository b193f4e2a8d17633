"""``sendguard doctor``: a read-only diagnosis of this user's SendGuard.

Every check says what it found and, when something is wrong, what to do. Nothing is created or
changed: no home, no database, no secrets file (a diagnosis that repairs hides the problem).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import config as configmod
from . import instance, paths
from . import policy as policymod
from .errors import SendGuardError
from .i18n import _

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Finding:
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    extra: dict[str, object] = field(default_factory=dict)  # machine-readable details (--json only)

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        return {k: v for k, v in data.items() if k != "extra"} | self.extra | {"ok": self.ok}


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _damage(path: Path) -> str | None:
    """What SQLite's ``quick_check`` finds wrong with the store, read-only (None: it is sound)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows[:3])


def _db_counts(path: Path) -> dict[str, int]:
    """Message counts per state, read with a read-only connection (never creates or migrates)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
    finally:
        conn.close()
    return {str(state): int(n) for state, n in rows}


def _open_to_others(home: Path) -> list[str]:
    """The home and the files in it that other local users can read or enter (looked at, not changed)."""
    if os.name == "nt":  # ACLs: the per-user profile folders are private already
        return []
    found: list[str] = []
    try:
        entries = [home, *home.iterdir()]
    except OSError:
        return found
    for entry in entries:
        try:
            st = entry.lstat()
        except OSError:
            continue
        if not entry.is_symlink() and st.st_uid == os.getuid() and st.st_mode & 0o077:
            found.append(f"{entry.name or entry} ({oct(st.st_mode & 0o777)[2:]})")
    return found


def diagnose(t: Callable[[str], str] = str) -> list[Finding]:
    out: list[Finding] = []
    home = paths.home_path()
    add = out.append
    if home.is_dir():
        exposed = _open_to_others(home)
        if exposed:
            add(Finding("home", WARN, t(_("{path}: readable by other local users: {entries}")).format(
                path=home, entries="; ".join(exposed[:3])),
                t(_("start `sendguard serve` once (it closes them), or run chmod 700 on the folder and chmod 600 on "
                    "its files"))))
        else:
            add(Finding("home", OK, str(home)))
    else:
        add(Finding("home", WARN, t(_("{path} does not exist yet")).format(path=home),
                    t(_("`sendguard serve` creates it on first start"))))

    cfg_path = home / "config.toml"
    try:
        cfg = configmod.load(cfg_path)
        add(Finding("config", OK, str(cfg_path) if cfg_path.exists() else t(_("{path} (not present: defaults)"))
                    .format(path=cfg_path)))
    except SendGuardError as exc:
        cfg = configmod.Config()
        add(Finding("config", FAIL, str(exc), t(_("correct the setting named above in config.toml"))))

    user_policy, admin_policy = home / "policy.toml", paths.admin_policy_file()
    if admin_policy.exists():
        try:
            admin = policymod.parse_file(admin_policy)
            locked = ", ".join(admin.get("locked", ())) or t(_("none"))
            add(Finding("admin policy", OK, t(_("{path}; locked keys: {locked}")).format(path=admin_policy,
                                                                                        locked=locked)))
        except SendGuardError as exc:
            add(Finding("admin policy", FAIL, str(exc), t(_("ask your administrator to correct the machine-wide "
                                                            "policy"))))
    else:
        add(Finding("admin policy", OK, t(_("none (looked for {path})")).format(path=admin_policy)))
    try:
        pol = policymod.load(user_policy if user_policy.exists() else None, admin_policy)
        domains = ", ".join(pol.internal_domains)
        if domains:
            add(Finding("policy", OK, t(_("{source}; internal domains: {domains}")).format(source=pol.source,
                                                                                          domains=domains)))
        else:
            add(Finding("policy", WARN, t(_("{source}; no internal domains set: every recipient counts as "
                                            "external")).format(source=pol.source),
                        t(_("set [organization] internal_domains in {path}")).format(path=user_policy)))
    except SendGuardError as exc:
        add(Finding("policy", FAIL, str(exc), t(_("correct the key named above; until then the helper keeps the "
                                                  "last good policy (or refuses to start)"))))

    from . import managed  # the machine policy in force and where each setting came from

    for entry in managed.doctor_entries(user_policy):
        extra = {k: v for k, v in entry.items() if k not in ("check", "ok", "detail")}
        add(Finding(entry["check"], OK if entry["ok"] else FAIL, entry["detail"], extra=extra))

    running = instance.running(home)
    if running is not None:
        detail = t(_("running (process {pid})")).format(pid=running or "?")
        try:
            import json

            smtp_port = int(json.loads((home / "runtime.json").read_text())["smtp_port"])
        except (OSError, ValueError, KeyError, TypeError):
            smtp_port = cfg.smtp_port
        if _answers(cfg.smtp_host, smtp_port):
            add(Finding("helper", OK, detail + t(_("; SMTP on {host}:{port}")).format(host=cfg.smtp_host,
                                                                                        port=smtp_port)))
        else:
            add(Finding("helper", FAIL, detail, t(_("it does not answer on {host}:{port}; restart it")).format(
                host=cfg.smtp_host, port=smtp_port)))
    else:
        add(Finding("helper", WARN, t(_("not running: mail sent to the SMTP port is not checked")),
                    t(_("start it with `sendguard serve` (or log in again if it starts with your session)"))))
        for name, host, port in (("smtp port", cfg.smtp_host, cfg.smtp_port),
                                 ("api port", cfg.api_host, cfg.api_port)):
            if port and not _port_free(host, port):
                add(Finding(name, FAIL, t(_("{host}:{port} is taken by another program")).format(host=host, port=port),
                            t(_("stop that program, or choose another port in config.toml ([smtp] port / "
                                "[api] port)"))))

    db = home / "sendguard.db"
    damage = _damage(db) if db.exists() else None
    if damage:
        add(Finding("database", FAIL, t(_("{path} is damaged ({problem})")).format(path=db, problem=damage),
                    t(_("`sendguard doctor --set-aside-store` keeps the damaged file beside it and lets SendGuard "
                        "start with an empty store"))))
    elif db.exists():
        try:
            from .outbox import HELD_STATES, State

            counts = _db_counts(db)
            held = sum(n for s, n in counts.items() if s in HELD_STATES)
            add(Finding("database", OK, t(_("{path}: {held} held, {total} in all")).format(
                path=db, held=held, total=sum(counts.values()))))
            attention = counts.get(State.NEEDS_ATTENTION, 0) + counts.get(State.FAILED, 0)
            if attention:
                add(Finding("outbox", WARN, t(_("{count} message(s) could not be sent yet")).format(count=attention),
                            t(_("see `sendguard queue list --state failed --state needs_attention`"))))
        except sqlite3.Error as exc:
            add(Finding("database", FAIL, f"{db}: {exc}", t(_("move the file aside and restart the helper; "
                                                              "`sendguard audit verify` checks the log"))))
    else:
        add(Finding("database", OK, t(_("{path} (not created yet)")).format(path=db)))

    try:
        from . import secrets

        where, ready = secrets.describe_readonly(home)
        weak = "encrypted file" in where or "keyrings.alt" in where
        if ready and weak:
            add(Finding("secrets", WARN, where, t(_("its key sits beside it in this folder, so it protects nothing "
                                                    "against someone who can read the folder: install an OS keyring "
                                                    "(Secret Service/KWallet, macOS Keychain, Windows Credential "
                                                    "Manager)"))))
        else:
            add(Finding("secrets", OK if ready else FAIL, where,
                        "" if ready else t(_("the key for the encrypted file is missing: set "
                                             "SENDGUARD_KEYRING_PASSWORD or restore secrets.key"))))
    except Exception as exc:  # a keyring backend can fail in its own ways
        add(Finding("secrets", FAIL, t(_("no usable keyring: {error}")).format(error=exc),
                    t(_("install a keyring backend, or set SENDGUARD_KEYRING_PASSWORD"))))

    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if display or sys.platform in ("win32", "darwin"):
        add(Finding("display", OK, t(_("window on {display}")).format(display=display or sys.platform)))
    else:
        add(Finding("display", WARN, t(_("no display: confirm in the browser (sendguard queue show ID prints "
                                         "the link)"))))
    add(Finding("transport", OK, ", ".join(f"{a.name} ({a.kind})" for a in cfg.accounts)
                or t(_("local Maildir {path}")).format(path=home / "sent")))
    return out
