"""Signed, expiring links and the local API token.

Confirmation links (``/confirm/{id}?t=...``) and approval links (``/approve/{id}?t=...``) are signed
with itsdangerous and carry a one-time id (``jti``) that the server records when used. Keys and the
API token live in the keyring (``sendguard.secrets``).
"""

from __future__ import annotations

import hmac
import secrets as _random
import time
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from . import secrets
from .errors import PermissionDenied
from .store import Store, used_links


def _secret(name: str) -> str:
    value = secrets.get(name)
    if not value:
        value = _random.token_urlsafe(32)
        secrets.put(name, value)
    return value


def api_token() -> str:
    """The bearer token the local API requires (``sendguard token`` prints it)."""
    return _secret("api-token")


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def signing_key() -> str:
    return _secret("link-signing-key")


class LinkSigner:
    """Signs and checks link payloads for one purpose (``confirm`` or ``approve``)."""

    def __init__(self, key: str, purpose: str):
        self.serializer = URLSafeTimedSerializer(key, salt=f"sendguard-{purpose}")
        self.purpose = purpose

    def sign(self, item_id: str, **claims: Any) -> str:
        return self.serializer.dumps({"id": item_id, "jti": _random.token_urlsafe(12), **claims})

    def load(self, token: str, item_id: str, max_age: float) -> dict[str, Any]:
        """The claims, or PermissionDenied saying exactly why the link does not work."""
        try:
            # itsdangerous compares ages in (fractional) seconds; its annotation says int
            data = self.serializer.loads(token, max_age=max_age)  # type: ignore[arg-type]
        except SignatureExpired:
            raise PermissionDenied("this link has expired: ask for a new one") from None
        except BadSignature:
            raise PermissionDenied("this link is not valid (altered or incomplete): open the link from "
                                   "the original email or ask for a new one") from None
        if not isinstance(data, dict) or data.get("id") != item_id:
            raise PermissionDenied("this link belongs to another message")
        return data


def approvals_login_url(base: str, who: str, key: str, via: str | None = None) -> str:
    """A sign-in link to the approvals list for ``who`` (signed with the web app's secret ``key``).
    ``via``: the hash of the helper token it was asked with (central server); the sign-in ends with it."""
    claims = {"who": who.lower(), **({"via": via} if via else {})}
    token = LinkSigner(key, "approvals-login").sign("approvals", **claims)
    return f"{base.rstrip('/')}/approvals/login?t={token}"


def was_used(store: Store, jti: str) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(used_links.c.jti).where(used_links.c.jti == jti)).first() is not None


def use_once(store: Store, jti: str) -> None:
    """Record a link as used; a second use raises PermissionDenied."""
    try:
        with store.transaction() as conn:
            if conn.execute(select(used_links.c.jti).where(used_links.c.jti == jti)).first():
                raise PermissionDenied("this link has already been used")
            conn.execute(insert(used_links).values(jti=jti, used_at=time.time()))
    except IntegrityError:
        raise PermissionDenied("this link has already been used") from None
