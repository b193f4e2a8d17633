"""Helper tokens of the central server: issued by an administrator per user (only their SHA-256 is
kept), revoked, and checked on every request with a short cache."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from sqlalchemy import and_, insert, select, update

from sendguard.errors import SendGuardError
from sendguard.store import Store, helper_tokens

TOKEN_CACHE_SECONDS = 10.0  # a revoked token stops working within this time


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store: Store, user: str, label: str = "") -> str:
    """A new helper token for ``user``; shown once, only its hash is kept. The issue is audited."""
    user = user.strip().lower()
    if "@" not in user:
        raise SendGuardError(f"{user!r} is not an email address")
    token = "sgh_" + secrets.token_urlsafe(32)
    with store.transaction() as conn:
        conn.execute(insert(helper_tokens).values(token_hash=_hash(token), user=user, label=label,
                                                  created_at=time.time()))
        store.append_audit(conn, "token_issued", "admin", None, {"user": user, "label": label,
                                                                 "token_id": _hash(token)[:12]})
    return token


def revoke_tokens(store: Store, user: str, token_id: str | None = None) -> int:
    user = user.strip().lower()
    cond = and_(helper_tokens.c.user == user, helper_tokens.c.revoked_at.is_(None))
    if token_id:
        cond = and_(cond, helper_tokens.c.token_hash.startswith(token_id))
    with store.transaction() as conn:
        count = conn.execute(update(helper_tokens).where(cond).values(revoked_at=time.time())).rowcount or 0
        store.append_audit(conn, "token_revoked", "admin", None, {"user": user, "token_id": token_id,
                                                                  "count": count})
    return count


class TokenVerifier:
    """Helper token -> user, with a short cache (a revoked token stops working within seconds)."""

    def __init__(self, store: Store, ttl: float = TOKEN_CACHE_SECONDS):
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, token: str) -> str | None:
        if not token.startswith("sgh_"):
            return None
        return self.user_of_hash(_hash(token))

    def user_of_hash(self, digest: str) -> str | None:
        """The user of the token with this hash while it is not revoked (a sign-in made with it lasts as long)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        with self.store.engine.connect() as conn:
            row = conn.execute(select(helper_tokens.c.user).where(
                helper_tokens.c.token_hash == digest, helper_tokens.c.revoked_at.is_(None))).first()
        user = str(row[0]) if row else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, user)
        return user
