"""Reading and verifying the hash-chained audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from .store import GENESIS, Store, audit, audit_head, record_hash


@dataclass
class Problem:
    seq: int
    message: str


def records(store: Store, item_id: str | None = None) -> list[dict[str, Any]]:
    query = select(audit).order_by(audit.c.seq)
    if item_id:
        query = query.where(audit.c.item_id == item_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    out = []
    for row in rows:
        rec = dict(row)
        rec["data"] = json.loads(rec["data"])
        out.append(rec)
    return out


def count(store: Store) -> int:
    """How many records the log holds (without reading them)."""
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit)).scalar_one())


def verify(store: Store) -> list[Problem]:
    """Every way the chain was tampered with: edited, deleted, inserted or reordered records.

    Returns an empty list for an intact log. Each problem names the record (seq) it concerns.
    """
    problems: list[Problem] = []
    prev_hash = GENESIS
    expected_seq = 1
    last_seq = 0
    # one read transaction, streamed in pages: memory stays flat however long the log is
    with store.engine.connect() as conn:
        head = conn.execute(select(audit_head)).mappings().first()
        rows = conn.execution_options(yield_per=2000).execute(select(audit).order_by(audit.c.seq)).mappings()
        for row in rows:
            last_seq = _check_record(row, prev_hash, expected_seq, problems)
            prev_hash = row["hash"]
            expected_seq = last_seq + 1
    if head is not None:
        if head["seq"] != last_seq:
            problems.append(Problem(head["seq"], f"the log ends at record {last_seq} but {head['seq']} were "
                                                 "written: the latest records were deleted"))
        elif head["hash"] != prev_hash:
            problems.append(Problem(last_seq, f"record {last_seq} was replaced: it does not match the chain head"))
    return problems


def _check_record(row: Any, prev_hash: str, expected_seq: int, problems: list[Problem]) -> int:
    """Check one record against the one before it; returns its seq."""
    seq: int = row["seq"]
    if seq != expected_seq:
        if seq > expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            problems.append(Problem(seq, f"record(s) {missing} deleted before record {seq}"))
        else:
            problems.append(Problem(seq, f"record {seq} is out of order"))
    recomputed = record_hash(row["prev_hash"], seq, row["ts"], row["item_id"], row["event"], row["actor"],
                             row["data"])
    if recomputed != row["hash"]:
        problems.append(Problem(seq, f"record {seq} ({row['event']}) was edited: its hash does not match"))
    elif row["prev_hash"] != prev_hash and seq == expected_seq:
        problems.append(Problem(seq, f"record {seq} does not follow record {seq - 1} (reordered or replaced)"))
    return seq
