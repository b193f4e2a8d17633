"""Reading and verifying the hash-chained audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

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


def created_by(store: Store, item_id: str) -> str | None:
    """The actor of the item's ``received`` record: who handed the message in."""
    query = select(audit.c.actor).where(audit.c.item_id == item_id, audit.c.event == "received") \
        .order_by(audit.c.seq).limit(1)
    with store.engine.connect() as conn:
        row = conn.execute(query).first()
    return str(row[0]) if row else None


def verify(store: Store) -> list[Problem]:
    """Every way the chain was tampered with: edited, deleted, inserted or reordered records.

    Returns an empty list for an intact log. Each problem names the record (seq) it concerns.
    """
    problems: list[Problem] = []
    with store.engine.connect() as conn:
        rows = conn.execute(select(audit).order_by(audit.c.seq)).mappings().all()
        head = conn.execute(select(audit_head)).mappings().first()
    prev_hash = GENESIS
    expected_seq = 1
    for row in rows:
        seq = row["seq"]
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
        prev_hash = row["hash"]
        expected_seq = seq + 1
    if head is not None:
        last_seq = rows[-1]["seq"] if rows else 0
        if head["seq"] != last_seq:
            problems.append(Problem(head["seq"], f"the log ends at record {last_seq} but {head['seq']} were "
                                                 "written: the latest records were deleted"))
        elif head["hash"] != prev_hash:
            problems.append(Problem(last_seq, f"record {last_seq} was replaced: it does not match the chain head"))
    return problems
