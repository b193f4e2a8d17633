"""Reading and verifying the keyed hash-chained audit log, and its signed checkpoints."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from .store import GENESIS, Store, audit, audit_head, canonical, now_iso, record_hash


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


def count(store: Store) -> int:
    """How many records the log holds (without reading them)."""
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit)).scalar_one())


def verify(store: Store, checkpoint: dict[str, Any] | None = None) -> list[Problem]:
    """Every way the chain was tampered with: edited, deleted, inserted or reordered records, and
    (against a signed ``checkpoint`` kept outside the database) a cut or rewritten tail.

    Records are HMACs under the audit key, which lives in the keyring, not in the database: whoever
    edits the database cannot re-hash the chain. Returns an empty list for an intact log; each
    problem names the record (seq) it concerns. The log is read in pages, so memory stays flat
    however long it is.
    """
    problems: list[Problem] = []
    prev_hash = GENESIS
    expected_seq = 1
    last_seq = 0
    checkpoint_seq = int(checkpoint["seq"]) if checkpoint is not None else None
    hash_at_checkpoint: str | None = None
    with store.engine.connect() as conn:
        head = conn.execute(select(audit_head)).mappings().first()
        rows = conn.execution_options(yield_per=2000).execute(select(audit).order_by(audit.c.seq)).mappings()
        for row in rows:
            last_seq = _check_record(store, row, prev_hash, expected_seq, problems)
            if last_seq == checkpoint_seq:
                hash_at_checkpoint = row["hash"]
            prev_hash = row["hash"]
            expected_seq = last_seq + 1
    if head is not None:
        if head["seq"] != last_seq:
            problems.append(Problem(head["seq"], f"the log ends at record {last_seq} but {head['seq']} were "
                                                 "written: the latest records were deleted"))
        elif head["hash"] != prev_hash:
            problems.append(Problem(last_seq, f"record {last_seq} was replaced: it does not match the chain head"))
    if checkpoint is not None and checkpoint_seq is not None:
        seq, when = checkpoint_seq, checkpoint.get("ts", "?")
        if last_seq < seq:
            problems.append(Problem(seq, f"truncated: the log ends at record {last_seq} but the checkpoint of {when} "
                                         f"saw {seq} records; records {last_seq + 1}-{seq} were deleted"))
        elif seq and hash_at_checkpoint != checkpoint["hash"]:
            problems.append(Problem(seq, f"record {seq} is not the one the checkpoint of {when} saw: the log "
                                         "was rewritten"))
    return problems


def _check_record(store: Store, row: Any, prev_hash: str, expected_seq: int, problems: list[Problem]) -> int:
    """Check one record against the one before it; returns its seq."""
    seq: int = row["seq"]
    if seq != expected_seq:
        if seq > expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            problems.append(Problem(seq, f"record(s) {missing} deleted before record {seq}"))
        else:
            problems.append(Problem(seq, f"record {seq} is out of order"))
    key = store.audit_key if seq > store.audit_legacy_end else None
    recomputed = record_hash(row["prev_hash"], seq, row["ts"], row["item_id"], row["event"], row["actor"],
                             row["data"], key)
    if not hmac.compare_digest(recomputed, row["hash"]):
        problems.append(Problem(seq, f"record {seq} ({row['event']}) was edited: its hash does not match"))
    elif row["prev_hash"] != prev_hash and seq == expected_seq:
        problems.append(Problem(seq, f"record {seq} does not follow record {seq - 1} (reordered or replaced)"))
    return seq


# ---------------------------------------------------------------------- checkpoints
CHECKPOINT_FILE = "audit-checkpoint.json"


def _checkpoint_sig(store: Store, body: dict[str, Any]) -> str:
    text = canonical({k: body.get(k) for k in ("seq", "hash", "ts", "db")})
    return hmac.new(store.audit_key or b"", ("checkpoint:" + text).encode(), hashlib.sha256).hexdigest()


def checkpoint(store: Store) -> dict[str, Any]:
    """The chain's head now, signed with the audit key: kept outside the database, it shows later
    whether records were cut off or the log rewritten."""
    with store.engine.connect() as conn:
        head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
    body = {"seq": int(head.seq), "hash": str(head.hash), "ts": now_iso(), "db": store.setting("audit_db_id", str)}
    return {**body, "sig": _checkpoint_sig(store, body)}


def save_checkpoint(store: Store, path: Path) -> dict[str, Any]:
    """Write the signed checkpoint to ``path`` (0600, replaced atomically); never moves it backwards."""
    current = checkpoint(store)
    old = load_checkpoint(store, path)
    if old is not None and int(old["seq"]) >= current["seq"]:
        return old
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(current, fh)
    os.replace(tmp, path)
    return current


def load_checkpoint(store: Store, path: Path) -> dict[str, Any] | None:
    """The checkpoint in ``path`` if it is there and its signature holds (else None; see ``checkpoint_problem``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if valid_checkpoint(store, data) else None


def valid_checkpoint(store: Store, data: Any) -> bool:
    """A checkpoint of this log, signed with its key."""
    if not isinstance(data, dict) or not {"seq", "hash", "ts", "sig"} <= set(data):
        return False
    return hmac.compare_digest(str(data["sig"]), _checkpoint_sig(store, data))


def latest(*checkpoints: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint that saw the most records."""
    found = [c for c in checkpoints if c]
    return max(found, key=lambda c: int(c["seq"])) if found else None


def checkpoint_problem(store: Store, path: Path) -> Problem | None:
    """A checkpoint file that exists but was altered (its signature does not hold)."""
    if path.exists() and load_checkpoint(store, path) is None:
        return Problem(0, f"the checkpoint {path} was altered or is not this log's (its signature does not hold)")
    return None
