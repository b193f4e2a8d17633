"""Versioned schema migrations of the local SQLite store (``sendguard.db`` in each user's home).

The central server's PostgreSQL database migrates with Alembic (``addin/migrations``); a helper's
store is a single SQLite file opened by one user's processes, so it carries its schema version in
SQLite's own header (``PRAGMA user_version``) and migrates itself when a newer SendGuard opens it:

* each module ``mNNNN_<name>.py`` here is one step with ``VERSION = NNNN``, a one-line docstring and
  ``upgrade(conn)``; steps run in order, all of them in one ``BEGIN IMMEDIATE`` transaction with the
  new version, so a crash or a second process never sees a half-migrated store;
* tables new in ``sendguard.store.metadata`` are created by ``create_all`` before the steps run (a new
  table needs no step); a new column, index or data change on an existing table does;
* before the first step touches a store that holds data, a copy is kept beside it
  (``sendguard.db.schema-N.bak``), made with ``VACUUM INTO``;
* a store written by a newer SendGuard (a version this one does not know) is refused with a clear
  error rather than opened: downgrading must not silently lose what the newer schema holds.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SendGuardError

if TYPE_CHECKING:  # not imported at run time: ``store_read`` counts the steps without SQLAlchemy
    from sqlalchemy import Connection, MetaData
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

_MODULE = re.compile(r"m(\d{4})_[a-z0-9_]+")


class StoreVersionError(SendGuardError):
    """The store was written by a newer SendGuard than this one."""


@dataclass(frozen=True)
class Step:
    version: int
    name: str
    description: str
    upgrade: Callable[[Connection], None]


def steps() -> list[Step]:
    """Every migration step shipped with this SendGuard, in order (checked: 1, 2, 3, ... with no gap)."""
    found: list[Step] = []
    for info in pkgutil.iter_modules(__path__):
        match = _MODULE.fullmatch(info.name)
        if not match:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        version = int(match.group(1))
        if getattr(module, "VERSION", None) != version:
            raise RuntimeError(f"{info.name}: VERSION must be {version}")
        doc = (module.__doc__ or info.name).strip().splitlines()[0]
        found.append(Step(version, info.name, doc, module.upgrade))
    found.sort(key=lambda s: s.version)
    if [s.version for s in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"store migrations must be numbered 1..N without gaps: {[s.name for s in found]}")
    return found


def latest_version() -> int:
    return len(steps())


def current_version(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)


def migrate(engine: Engine, metadata: MetaData, database: Path | None) -> list[str]:
    """Bring the SQLite store behind ``engine`` to the latest version; returns the steps applied.

    The steps run under ``BEGIN IMMEDIATE`` (sendguard.store's writer connections), so two processes
    opening an old store at once migrate it once: the second re-reads the version after the first
    committed.
    """
    todo = steps()
    latest = len(todo)
    raw = engine.raw_connection()  # autocommit at the driver level (no BEGIN IMMEDIATE just to look)
    try:
        version = int(raw.execute("PRAGMA user_version").fetchone()[0] or 0)
        has_data = raw.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()
    finally:
        raw.close()
    if version > latest:
        raise StoreVersionError(
            f"{database or engine.url}: this store was written by a newer SendGuard (schema {version}; this "
            f"SendGuard knows up to {latest}). Install the newer SendGuard again, or move the file away to "
            "start with an empty store.")
    if version == latest:
        return []
    if has_data and database is not None and database.exists():
        backup = database.with_name(f"{database.name}.schema-{version}.bak")
        if not backup.exists():
            # VACUUM cannot run under the write lock, so two processes may both copy: each writes a file of
            # its own and links it into place only if no copy is there yet (the first, made before any step ran)
            partial = backup.with_name(f"{backup.name}.{os.getpid()}-{threading.get_ident()}.tmp")
            partial.unlink(missing_ok=True)
            raw = engine.raw_connection()
            try:
                raw.execute("VACUUM INTO ?", (str(partial),))
            finally:
                raw.close()
            try:
                os.link(partial, backup)
                log.info("store %s: copy kept as %s before migrating from schema %s", database, backup, version)
            except FileExistsError:
                pass  # another process kept its copy first
            finally:
                partial.unlink(missing_ok=True)
    applied: list[str] = []
    with engine.connect() as conn:
        conn.execution_options(sendguard_read=False)  # BEGIN IMMEDIATE: the write lock before reading
        with conn.begin():
            applied += _apply(conn, todo, metadata, database or engine.url)
    if applied:
        log.info("store %s migrated from schema %s to %s: %s", database or engine.url, version, latest,
                 "; ".join(applied))
    return applied


def _apply(conn: Connection, todo: list[Step], metadata: MetaData, where: object) -> list[str]:
    """Inside the caller's write transaction: create new tables, run the steps not yet applied."""
    latest = len(todo)
    applied: list[str] = []
    version = current_version(conn)  # another process may have migrated meanwhile
    if version > latest:
        raise StoreVersionError(f"{where}: migrated by a newer SendGuard meanwhile")
    metadata.create_all(conn)
    for step in todo:
        if step.version > version:
            step.upgrade(conn)
            applied.append(f"{step.version}: {step.description}")
    conn.exec_driver_sql(f"PRAGMA user_version = {latest:d}")
    return applied
