"""Baseline: the tables of SendGuard 0.1.0 (outbox, audit chain, domains, approvals, central requests)."""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 1


def upgrade(conn: Connection) -> None:
    # create_all made the 0.1.0 tables already (a store from before migrations has them too)
    del conn
