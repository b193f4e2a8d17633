"""Reading the local store with the standard library only, for commands that only read.

``sendguard queue list`` and ``sendguard check`` start in a fraction of the time the full ``Store``
takes: no SQLAlchemy, no keyring or audit key, no migration or integrity scan of a large file. The
file is opened as it is; anything this module cannot read as the current schema (no file yet, an
older or newer schema) makes ``open_store`` return None and the caller uses ``sendguard.store.Store``,
which migrates or refuses with its own messages. A damaged file read here is refused with the same
message ``Store`` gives.
"""

from __future__ import annotations

import json
import pkgutil
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import StoreDamaged
from .items import Item

# outbox columns stored as JSON text (the same as sendguard.store.outbox's JSON columns; a test keeps
# the two in step), and the columns a listing reads (never the message bodies)
JSON_COLUMNS = frozenset({"envelope_to", "check_result", "decision", "approvers", "approval"})
LIST_COLUMNS = ("id", "state", "source", "source_ref", "account", "owner", "envelope_from", "envelope_to",
                "message_id", "sender", "subject", "check_result", "decision", "approvers", "approval",
                "release_after", "expires_at", "attempts", "last_error", "created_at", "updated_at", "purged")
HISTORY_DOMAINS = 2000  # as sendguard.outbox.HISTORY_DOMAINS


def schema_version() -> int:
    """The schema version this SendGuard writes: the number of migration steps it ships (read from
    the package's file names, so the migrations and SQLAlchemy are not imported)."""
    from . import store_migrations

    return sum(1 for info in pkgutil.iter_modules(store_migrations.__path__)
               if re.fullmatch(r"m\d{4}_[a-z0-9_]+", info.name))


def damaged(path: Path, reason: str) -> StoreDamaged:
    return StoreDamaged(f"SendGuard's store {path} is damaged ({reason}). SendGuard will not start on it and has "
                        "changed nothing. Run `sendguard doctor` to see what can be done, and `sendguard doctor "
                        "--set-aside-store` to keep the damaged file beside it and start with an empty store.")


class ReadStore:
    """A read-only view of one helper's SQLite store."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "malformed" not in str(exc):
                raise
            raise damaged(self.path, str(exc)) from None

    def items(self, states: Iterable[str] | None = None, owner: str | None = None, limit: int = 1000) -> list[Item]:
        """As ``Outbox.list``: newest first, bodies left out."""
        sql = f"SELECT {', '.join(LIST_COLUMNS)} FROM outbox"
        where: list[str] = []
        params: list[Any] = []
        wanted = list(states or ())
        if wanted:
            where.append(f"state IN ({', '.join('?' for _ in wanted)})")
            params += [str(s) for s in wanted]  # a state enum as its stored string
        if owner:
            where.append("owner = ?")
            params.append(owner.lower())
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        out = []
        for row in self._rows(sql, params):
            values = {k: (json.loads(row[k]) if k in JSON_COLUMNS and row[k] is not None else row[k])
                      for k in LIST_COLUMNS}
            out.append(Item.from_mapping(values))
        return out

    def known_domains(self, candidates: Iterable[str]) -> set[str]:
        wanted = sorted(set(candidates))
        if not wanted:
            return set()
        rows = self._rows(f"SELECT domain FROM domains WHERE domain IN ({', '.join('?' for _ in wanted)})", wanted)
        return {r[0] for r in rows}

    def sent_domains(self, limit: int = HISTORY_DOMAINS) -> tuple[str, ...]:
        """The most recently sent-to domains (the look-alike references of a check)."""
        return tuple(r[0] for r in self._rows("SELECT domain FROM domains ORDER BY last_sent DESC LIMIT ?",
                                              (limit,)))

    def thread_domains(self, refs: list[str]) -> frozenset[str] | None:
        """The domains of released messages a reply answers (None when it answers none of ours)."""
        if not refs:
            return None
        rows = self._rows(f"SELECT envelope_to, sender FROM outbox WHERE state = 'sent' AND message_id IN "
                          f"({', '.join('?' for _ in refs)})", refs)
        if not rows:
            return None
        return frozenset(a.rpartition("@")[2].lower() for row in rows
                         for a in [*json.loads(row["envelope_to"] or "[]"), row["sender"] or ""] if "@" in a)

    def close(self) -> None:
        self._conn.close()


# A store up to this size is scanned for damage on every open (a few milliseconds); a larger one is
# scanned by the helper at start and by ``doctor``, and damage a read meets is reported all the same.
SCAN_BELOW_BYTES = 4 * 1024 * 1024


def open_store(path: Path) -> ReadStore | None:
    """The store at ``path`` for reading, or None when it is not there or not of this version's schema."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    try:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    except sqlite3.Error:
        return None
    conn.row_factory = sqlite3.Row
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0] or 0)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise damaged(path, str(exc)) from None
    if version != schema_version():
        conn.close()
        return None
    store = ReadStore(path, conn)
    if size <= SCAN_BELOW_BYTES:
        found = [r[0] for r in store._rows("PRAGMA quick_check")]
        if found != ["ok"]:
            store.close()
            raise damaged(path, "; ".join(found[:3]))
    return store
