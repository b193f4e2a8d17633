"""Index the outbox by (state, release_after): the worker asks every turn which messages are due."""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 2


def upgrade(conn: Connection) -> None:
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_outbox_state_release_after ON outbox (state, release_after)")
