"""The central server's PostgreSQL database: its URL, the Alembic migrations (``addin/migrations``) and
the server-wide settings kept in it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sendguard.store import Store

MIGRATIONS = Path(__file__).parent / "migrations"


def database_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver SendGuard installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database schema to the latest revision (safe to run by several processes at once)."""
    from alembic import command
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(database_url(url))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # one migrator at a time
                conn.execute(text("SELECT pg_advisory_xact_lock(7253612)"))
            tables = set(inspect(conn).get_table_names())
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            if "outbox" in tables and "alembic_version" not in tables:
                command.stamp(cfg, "head")  # made by an older create_all: adopt it as it is
            else:
                command.upgrade(cfg, "head")
    finally:
        engine.dispose()


def setting(store: Store, key: str, make: Callable[[], str]) -> str:
    """A server-wide value kept in the database (made once, shared by every process)."""
    return store.setting(key, make)
