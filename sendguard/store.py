"""Durable storage (SQLAlchemy 2): outbox items, the hash-chained audit log, domain history, approvals.

SQLite (WAL, synchronous=FULL, ``BEGIN IMMEDIATE`` so writers from several processes serialize) on
one machine; PostgreSQL for the central server (the audit head row is locked ``FOR UPDATE``).
Every outbox transition and its audit record are written in one transaction (``Store.transaction``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.pool import Pool, PoolProxiedConnection

from . import store_migrations
from .clock import now_iso
from .errors import StoreDamaged, StoreUnavailable

metadata = MetaData()

outbox = Table(
    "outbox",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("state", String(32), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("source_ref", Text),
    Column("account", String(128)),
    Column("owner", String(320), index=True),  # the sender; approvals and the central server key on it
    Column("envelope_from", String(320), nullable=False, default=""),
    Column("envelope_to", JSON, nullable=False),
    Column("message_id", String(998), nullable=False, default="", index=True),
    Column("sender", String(320), nullable=False, default=""),
    Column("subject", Text, nullable=False, default=""),
    Column("raw", LargeBinary),  # as received; purged after retention_days
    Column("final_raw", LargeBinary),  # after the user's removals/Bcc; what is released
    Column("check_result", JSON),
    Column("decision", JSON),
    Column("approvers", JSON),
    Column("approval", JSON),  # who decided, when, comment/reason
    Column("release_after", Float, nullable=False, default=0.0),
    Column("expires_at", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("purged", Integer, nullable=False, default=0),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("item_id", String(32), index=True),
    Column("event", String(40), nullable=False),
    Column("actor", String(320), nullable=False),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

domains = Table(
    "domains",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("first_sent", Float, nullable=False),
    Column("last_sent", Float, nullable=False),
    Column("count", Integer, nullable=False, default=0),
)

# single-use approval links: a link's id is recorded when used
used_links = Table(
    "used_links",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("used_at", Float, nullable=False),
)

# approval notices already sent (approver emails, sender notifications): at most one per key
notices = Table(
    "notices",
    metadata,
    Column("item_id", String(32), primary_key=True),
    Column("kind", String(32), primary_key=True),  # approval_request | decision
    Column("recipient", String(320), primary_key=True),
    Column("sent_at", Float, nullable=False),
)

# helper side: where each approval request stands with the central server
central_requests = Table(
    "central_requests",
    metadata,
    Column("item_id", String(32), primary_key=True),
    Column("server_url", Text, nullable=False),
    Column("submitted_at", Float),
    Column("links", JSON),  # approver -> signed approval link issued by the server
    Column("server_state", String(32)),
    Column("last_error", Text),
    Column("updated_at", Float, nullable=False),
)

# central server: per-user helper tokens (only their SHA-256 is kept) and server-wide settings
helper_tokens = Table(
    "helper_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user", String(320), nullable=False, index=True),
    Column("label", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

server_settings = Table(
    "server_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# central server: Outlook add-in checks relayed to the user's helper over the helper's own connection
# (so no browser calls loopback). state: pending -> taken (by the helper) | cancelled (by the add-in)
# | expired (no helper took it); status is the helper's latest view of the outbox item.
addin_relay = Table(
    "addin_relay",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(320), nullable=False, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("request", JSON),  # the add-in's check payload; dropped once the helper took it
    Column("status", JSON),
    Column("version", Integer, nullable=False, default=0),
    Column("addin_seen", Float, nullable=False),  # the add-in's last call about it
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

GENESIS = "0" * 64
# prepared once: the statement cache then skips compiling on the hot path (SMTP intake)
_INSERT_AUDIT = insert(audit)
_UPDATE_HEAD = update(audit_head).where(audit_head.c.id == 1).values(
    seq=bindparam("new_seq"), hash=bindparam("new_hash"))


_OUTBOX_JSON = frozenset(c.name for c in outbox.c if isinstance(c.type, JSON))
_AUDIT_COLUMNS = ("seq", "ts", "item_id", "event", "actor", "data", "prev_hash", "hash")


def _insert_sql(table: str, names: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"


_AUDIT_SQL = _insert_sql("audit", list(_AUDIT_COLUMNS))


@functools.lru_cache(maxsize=16)
def _json_places(names: tuple[str, ...]) -> tuple[int, ...]:
    """Where the JSON columns are among these outbox columns."""
    return tuple(i for i, name in enumerate(names) if name in _OUTBOX_JSON)


# (one encoder for every record: json.dumps with these options would build one on each call)
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def canonical(data: Any) -> str:
    return _CANONICAL.encode(data)


def record_hash(prev_hash: str, seq: int, ts: str, item_id: str | None, event_name: str, actor: str,
                data: str, key: bytes | None = None) -> str:
    """The record's link in the chain: HMAC-SHA256 under the audit key (plain SHA-256 for records
    written before the log had a key). Without the key nobody can re-hash an edited chain."""
    body = canonical([prev_hash, seq, ts, item_id or "", event_name, actor, data]).encode("utf-8")
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


AUDIT_KEY_ENV = "SENDGUARD_AUDIT_KEY"
_AUTO: Any = object()


def audit_key() -> bytes:
    """The audit key: ``$SENDGUARD_AUDIT_KEY`` or the keyring (made there once), never the database."""
    from . import secrets

    key = os.environ.get(AUDIT_KEY_ENV) or secrets.get("audit-key")
    if not key:
        key = secrets_token()
        secrets.put("audit-key", key)
    return key.encode("utf-8")


LEGACY_END_SETTING = "audit_legacy_end"


def legacy_end_value(key: bytes, db_id: str, seq: int) -> str:
    """The stored form of the legacy marker: the number and its HMAC under the audit key, so that
    whoever edits the database cannot move it (records up to it are checked without the key)."""
    mac = hmac.new(key, f"audit-legacy-end:{db_id}:{seq}".encode(), hashlib.sha256).hexdigest()
    return f"{seq}:{mac}"


def parse_legacy_end(key: bytes, db_id: str, value: str) -> int:
    """The marker's number; 0 (every record must carry the key) when its HMAC does not hold."""
    seq, _, _mac = value.partition(":")
    if seq.isdigit() and hmac.compare_digest(legacy_end_value(key, db_id, int(seq)), value):
        return int(seq)
    return 0


def secrets_token() -> str:
    import secrets as random

    return random.token_urlsafe(32)


def _configure(dbapi_conn: Any) -> None:
    """Every SQLite connection of ours: WAL, a commit durable on return, waiting for other writers."""
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _driver(conn: Connection | PoolProxiedConnection | sqlite3.Connection) -> sqlite3.Connection:
    """The sqlite3 connection under a SQLAlchemy one (or itself)."""
    if isinstance(conn, sqlite3.Connection):
        return conn
    driver = (conn.connection if isinstance(conn, Connection) else conn).driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        _configure(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # writers take the write lock up front (no upgrade deadlocks); readers do not, so reading still
        # works while the file cannot be written (read-only disk) and never waits for a writer
        # through the driver: SQLAlchemy's statement machinery cost more than the BEGIN itself
        conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN" if conn.get_execution_options().get("sendguard_read") else "BEGIN IMMEDIATE")


class Store:
    """The database behind one helper (SQLite file) or the central server (PostgreSQL URL)."""

    def __init__(self, url: str | Path, audit_key: bytes | None = _AUTO, prepare: bool = True):
        """``prepare`` False: open a store another process has set up, to read it (no check, no migration)."""
        self._audit_key: tuple[bytes | None, int] | None = None if audit_key is _AUTO else (audit_key, 0)
        self._audit_key_lock = threading.Lock()
        self._key_busy = True  # no key is needed to set the database up
        if isinstance(url, Path) or "://" not in str(url):
            url = f"sqlite:///{Path(url)}"
        self.url = str(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock = threading.RLock()
        # see ``intake_transaction``: (the pool it is of, the pooled connection, its sqlite3 connection)
        self._intake: tuple[Pool, PoolProxiedConnection, sqlite3.Connection] | None = None
        # hide_parameters: a database error (and the traceback logged with it) names the statement, never its
        # values (a message's subject, its raw MIME, addresses)
        if self.is_sqlite:
            # plain connections read (deferred BEGIN); ``transaction()`` marks its connection as a writer
            self.engine = create_engine(self.url, pool_size=8, max_overflow=8, pool_timeout=60, hide_parameters=True,
                                        execution_options={"sendguard_read": True})
            _sqlite_setup(self.engine)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                        hide_parameters=True)
        self.write_problem: StoreUnavailable | None = None  # the last write failure, until a write succeeds
        if not prepare:
            self._key_busy = False
            return
        if self.is_sqlite:
            self._check_integrity()
            # a helper's own store migrates itself (versioned steps); the central server's uses Alembic
            database = self.engine.url.database
            # as a writer (BEGIN IMMEDIATE): two processes opening an old store migrate it once
            store_migrations.migrate(self.engine.execution_options(sendguard_read=False), metadata,
                                     Path(database) if database and database != ":memory:" else None)
        else:
            metadata.create_all(self.engine)
        with self.transaction() as conn:
            if conn.execute(select(audit_head.c.id)).first() is None:
                conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
        # the key itself is read at the first write (``_load_audit_key``), or at start by the helper
        # (``load_audit_key``): commands that only read never open the keyring for it
        self._key_busy = False

    @property
    def audit_key(self) -> bytes | None:
        """The HMAC key of the audit chain (read from the keyring on first use: commands that write no
        audit record never open the keyring for it)."""
        return self._load_audit_key()[0]

    @property
    def audit_legacy_end(self) -> int:
        """The last record written before this database had a key (plain SHA-256 up to here)."""
        return self._load_audit_key()[1]

    def _load_audit_key(self) -> tuple[bytes | None, int]:
        with self._audit_key_lock:
            if self._audit_key is None:
                self._key_busy = True
                try:
                    db_id = self.setting("audit_db_id", secrets_token)
                    key = audit_key()
                    self._audit_key = (key, parse_legacy_end(key, db_id, self.setting(
                        LEGACY_END_SETTING, lambda: self._first_legacy_end(key, db_id))))
                finally:
                    self._key_busy = False
            return self._audit_key

    def _first_legacy_end(self, key: bytes, db_id: str) -> str:
        """The legacy marker of a store that has none yet: the one an older SendGuard kept in the keyring,
        else the head (everything written so far predates the key)."""
        from . import secrets

        kept = secrets.get(f"audit-legacy-end:{db_id}")
        if kept is not None and kept.isdigit():
            seq = int(kept)
        else:
            with self.engine.connect() as conn:  # the committed head: what the next record builds on
                seq = int(conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).scalar_one())
        return legacy_end_value(key, db_id, seq)

    def load_audit_key(self) -> None:
        """Read the audit key now (the helper does at start), so the first message taken in does not
        wait for the keyring."""
        self._load_audit_key()

    def setting(self, key: str, make: Any) -> str:
        """A value kept in the database (made once by ``make()``)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(server_settings.c.value).where(server_settings.c.key == key)).first()
        if row:
            return str(row[0])
        try:
            with self.transaction() as conn:
                conn.execute(insert(server_settings).values(key=key, value=make()))
        except IntegrityError:
            pass
        with self.engine.connect() as conn:
            return str(conn.execute(select(server_settings.c.value).where(server_settings.c.key == key)).scalar_one())

    @property
    def path(self) -> Path | None:
        database = self.engine.url.database if self.is_sqlite else None
        return Path(database) if database and database != ":memory:" else None

    def _check_integrity(self) -> None:
        """``PRAGMA quick_check`` at start: a damaged file is refused with a way out, never reset."""
        path = self.path
        if path is None or not path.exists():
            return
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").all()]
        except DatabaseError as exc:
            rows = [str(exc.orig or exc).splitlines()[0]]
        if rows != ["ok"]:
            self.engine.dispose()
            raise StoreDamaged(f"SendGuard's store {path} is damaged ({'; '.join(rows[:3])}). SendGuard will not "
                               "start on it and has changed nothing. Run `sendguard doctor` to see what can be "
                               "done, and `sendguard doctor --set-aside-store` to keep the damaged file beside "
                               "it and start with an empty store.")

    def _report_write_failure(self, exc: OperationalError | sqlite3.OperationalError) -> NoReturn:
        """Raise what a failed write means for the user (``StoreUnavailable``: full, read-only…), else ``exc``."""
        problem = self._write_failed(exc)
        if problem is None:
            raise exc
        raise problem from exc

    def _write_failed(self, exc: OperationalError | sqlite3.OperationalError) -> StoreUnavailable | None:
        text = str(getattr(exc, "orig", None) or exc).lower()
        where = self.path or "the database"
        if "full" in text:
            problem = StoreUnavailable(f"SendGuard cannot write its store {where}: the disk is full. Free some "
                                       "space; held mail is safe and SendGuard carries on by itself.", "full")
        elif "readonly" in text or "read-only" in text or "read only" in text:
            problem = StoreUnavailable(f"SendGuard cannot write its store {where}: it is read-only. Make it "
                                       "writable again; held mail is safe.", "read_only")
        elif "disk i/o error" in text or "unable to open" in text:
            problem = StoreUnavailable(f"SendGuard cannot write its store {where}: disk I/O error ({text}). Check "
                                       "the disk; held mail is safe.", "io")
        else:
            return None
        self.write_problem = problem
        return problem

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._audit_key is None and not self._key_busy:
            # before the write lock: reading the key (and the head) inside it would wait on ourselves
            self._load_audit_key()
        try:
            if self.is_sqlite:
                # one writer at a time inside this process: SQLite's own busy handler sleeps and retries,
                # which wastes most of the time when several threads write at once
                with self._write_lock, self.engine.connect() as conn:
                    conn.execution_options(sendguard_read=False)
                    with conn.begin():
                        yield conn
            else:
                with self.engine.begin() as conn:
                    yield conn
        except (OperationalError, sqlite3.OperationalError) as exc:  # the latter from driver-level writes
            self._report_write_failure(exc)
        self.write_problem = None

    def append_audit(self, conn: Connection, event_name: str, actor: str, item_id: str | None,
                     data: dict[str, Any] | None = None, ts: float | None = None) -> int:
        """Append one hash-chained record inside the caller's transaction; returns its seq."""
        query = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        if not self.is_sqlite:
            query = query.with_for_update()
        head = conn.execute(query).one()
        seq = head.seq + 1
        stamp = now_iso(ts)
        body = canonical(data or {})
        digest = record_hash(head.hash, seq, stamp, item_id, event_name, actor, body, self.audit_key)
        conn.execute(_INSERT_AUDIT, {"seq": seq, "ts": stamp, "item_id": item_id, "event": event_name,
                                     "actor": actor, "data": body, "prev_hash": head.hash, "hash": digest})
        conn.execute(_UPDATE_HEAD, {"new_seq": seq, "new_hash": digest})
        return seq

    @contextmanager
    def intake_transaction(self) -> Iterator[Connection | sqlite3.Connection]:
        """The write transaction of SMTP intake (``insert_items`` and ``append_audit_many`` take it).

        On SQLite it runs straight through the driver on one pooled connection that intake keeps checked
        out: a batch of messages costs its BEGIN, inserts and COMMIT, and nothing of the pool's checkout,
        reset and checkin, which cost more than the inserts themselves. The connection is the pool's (so
        it is set up as every other) and is taken anew when the pool is replaced or a write fails. Same
        locking and error reports as ``transaction``; elsewhere it is ``transaction``.
        """
        if not self.is_sqlite:
            with self.transaction() as conn:
                yield conn
            return
        if self._audit_key is None and not self._key_busy:
            self._load_audit_key()
        try:
            with self._write_lock:
                driver = self._intake_driver()
                driver.execute("BEGIN IMMEDIATE")
                try:
                    yield driver
                except BaseException:
                    driver.rollback()
                    raise
                driver.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._drop_intake_connection()  # a file made writable again is written by a new one
            self._report_write_failure(exc)
        self.write_problem = None

    def _intake_driver(self) -> sqlite3.Connection:
        if self._intake is not None and self._intake[0] is not self.engine.pool:
            self._drop_intake_connection()
        if self._intake is None:
            fairy = self.engine.raw_connection()
            self._intake = (self.engine.pool, fairy, _driver(fairy))
        return self._intake[2]

    def _drop_intake_connection(self) -> None:
        with self._write_lock:
            if self._intake is not None:
                _pool, fairy, _sqlite = self._intake
                self._intake = None
                try:
                    fairy.invalidate()  # never back into the pool: it may be mid-transaction
                except Exception:  # noqa: BLE001 - it is gone either way
                    pass

    def insert_items(self, conn: Connection | sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
        """Insert new outbox rows (all with the same columns) inside the caller's transaction.

        On SQLite straight through the driver: SMTP intake calls this for every batch, and building
        the statement through SQLAlchemy cost more than the insert itself. Values are stored as
        SQLAlchemy would store them (JSON columns as JSON text, ``None`` as JSON ``null``).
        """
        if not rows:
            return
        if not self.is_sqlite:
            assert isinstance(conn, Connection)
            conn.execute(insert(outbox), rows)
            return
        driver = _driver(conn)
        by_columns: dict[tuple[str, ...], list[list[Any]]] = {}
        for row in rows:
            names = tuple(row)
            values = list(row.values())
            for i in _json_places(names):
                values[i] = "null" if values[i] is None else json.dumps(values[i])
            by_columns.setdefault(names, []).append(values)
        for names, params in by_columns.items():
            driver.executemany(_insert_sql("outbox", list(names)), params)

    def stored_items(self, conn: Connection | sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Of these outbox ids, the ones stored already: id -> {id, state, stored_before} (inside the caller's
        transaction)."""
        if not ids:
            return {}
        found: list[tuple[str, str]]
        if self.is_sqlite:
            marks = ",".join("?" * len(ids))
            found = _driver(conn).execute(f"SELECT id, state FROM outbox WHERE id IN ({marks})", ids).fetchall()
        else:
            assert isinstance(conn, Connection)
            found = [(r.id, r.state) for r in conn.execute(select(outbox.c.id, outbox.c.state)
                                                           .where(outbox.c.id.in_(ids)))]
        return {item_id: {"id": item_id, "state": state, "stored_before": True} for item_id, state in found}

    def append_audit_many(self, conn: Connection | sqlite3.Connection,
                          records: list[tuple[str, str, str | None, dict[str, Any]]],
                          ts: float | Sequence[float] | None = None) -> None:
        """Append several (event, actor, item_id, data) records in one go (one head read and write).
        ``ts``: the time of all of them (now by default), or one time per record."""
        if not records:
            return
        if self.is_sqlite:  # the intake path: through the driver, as ``insert_items``
            driver = _driver(conn)
            seq, prev = driver.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        else:
            assert isinstance(conn, Connection)
            head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
                                .with_for_update()).one()
            seq, prev = head.seq, head.hash
        if ts is None or isinstance(ts, (int, float)):
            stamps = [now_iso(ts)] * len(records)
        else:
            at: dict[float, str] = {}  # a batch's records share a handful of times
            stamps = [at[t] if t in at else at.setdefault(t, now_iso(t)) for t in ts]
        rows = []
        for (event_name, actor, item_id, data), stamp in zip(records, stamps, strict=True):
            seq += 1
            body = canonical(data)
            digest = record_hash(prev, seq, stamp, item_id, event_name, actor, body, self.audit_key)
            rows.append({"seq": seq, "ts": stamp, "item_id": item_id, "event": event_name, "actor": actor,
                         "data": body, "prev_hash": prev, "hash": digest})
            prev = digest
        if not rows:
            return
        if self.is_sqlite:
            driver.executemany(_AUDIT_SQL, [[r[k] for k in _AUDIT_COLUMNS] for r in rows])
            driver.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        else:
            assert isinstance(conn, Connection)
            conn.execute(_INSERT_AUDIT, rows)
            conn.execute(_UPDATE_HEAD, {"new_seq": seq, "new_hash": prev})

    def record_sent_domains(self, conn: Connection, addresses: list[str], now: float) -> None:
        """Inside the caller's transaction: these recipients' domains have now been sent to."""
        for domain in sorted({a.rpartition("@")[2].lower() for a in addresses if "@" in a}):
            row = conn.execute(select(domains.c.domain).where(domains.c.domain == domain)).first()
            if row is None:
                conn.execute(insert(domains).values(domain=domain, first_sent=now, last_sent=now, count=1))
            else:
                conn.execute(update(domains).where(domains.c.domain == domain)
                             .values(last_sent=now, count=domains.c.count + 1))

    def close(self) -> None:
        self._drop_intake_connection()
        self.engine.dispose()
