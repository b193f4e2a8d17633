"""MIME facts the Exchange and Graph connectors need about a final message."""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid

from .base import PermanentError, ReleaseItem


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def header_addresses(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of one address header, in order, empty addresses dropped."""
    values = [str(v) for v in msg.get_all(name, [])]
    return [(n, a) for n, a in getaddresses(values) if a and "@" in a]


@dataclass(frozen=True)
class RecipientPlan:
    """Who goes in To, Cc and Bcc of the message handed to the server."""

    to: tuple[tuple[str, str], ...]
    cc: tuple[tuple[str, str], ...]
    bcc: tuple[tuple[str, str], ...]

    def addresses(self) -> set[str]:
        return {a.lower() for _, a in self.to + self.cc + self.bcc}


def plan_recipients(item: ReleaseItem, msg: EmailMessage | None = None) -> RecipientPlan:
    """To and Cc as the final headers give them, Bcc for every other envelope recipient.

    The outbox's ``recipients`` is the authority on who receives the mail. A To/Cc address that is not
    among them (a header left behind after a removal) stops the release: sending it would reach
    someone the user removed.
    """
    msg = msg if msg is not None else parse(item.raw)
    wanted = {r.lower() for r in item.recipients}
    if not wanted:
        raise PermanentError("The message has no recipients left; nothing was sent.")
    blind = {b.lower() for b in item.bcc}
    to = [(n, a) for n, a in header_addresses(msg, "To")]
    cc = [(n, a) for n, a in header_addresses(msg, "Cc")]
    stray = [a for _, a in to + cc if a.lower() not in wanted]
    if stray:
        raise PermanentError(
            f"The final message still lists {', '.join(stray)} in To/Cc although it is not a recipient; "
            "nothing was sent.")
    to = [(n, a) for n, a in to if a.lower() not in blind]
    cc = [(n, a) for n, a in cc if a.lower() not in blind]
    shown = {a.lower() for _, a in to + cc}
    bcc, seen = [], set()
    for addr in item.recipients:
        low = addr.lower()
        if low not in shown and low not in seen:
            seen.add(low)
            bcc.append(("", addr))
    return RecipientPlan(tuple(_dedupe(to)), tuple(_dedupe(cc, {a.lower() for _, a in to})), tuple(bcc))


def _dedupe(pairs, skip=frozenset()):
    seen = set(skip)
    out = []
    for name, addr in pairs:
        if addr.lower() not in seen:
            seen.add(addr.lower())
            out.append((name, addr))
    return out


def attachment_names(msg: EmailMessage) -> Counter:
    """File names of the attachments (inline ones with a name count too), as a multiset."""
    return Counter(part.get_filename() or "" for part in msg.iter_attachments())


def message_id(msg: EmailMessage) -> str | None:
    value = msg.get("Message-ID")
    return str(value).strip() if value else None


def ensure_message_id(raw: bytes, wanted: str | None) -> bytes:
    """The raw message with the Message-ID header set to ``wanted`` (or a fresh one when it has none)."""
    msg = parse(raw)
    current = message_id(msg)
    if current and (wanted is None or current == wanted):
        return raw
    del msg["Message-ID"]
    msg["Message-ID"] = wanted or make_msgid()
    return msg.as_bytes(policy=email.policy.SMTP)


def with_bcc_header(raw: bytes, bcc: list[str]) -> bytes:
    """A copy carrying a Bcc header, for servers that take the blind copies from the MIME (Graph)."""
    if not bcc:
        return raw
    msg = parse(raw)
    del msg["Bcc"]
    msg["Bcc"] = ", ".join(bcc)
    return msg.as_bytes(policy=email.policy.SMTP)


@dataclass(frozen=True)
class LargeAttachment:
    name: str
    content_type: str
    content: bytes
    is_inline: bool
    content_id: str | None


def split_large_attachments(raw: bytes, limit: int) -> tuple[bytes, list[LargeAttachment]]:
    """Take attachments bigger than ``limit`` bytes out of the message; return the rest and them."""
    msg = parse(raw)
    large: list[LargeAttachment] = []

    def walk(part) -> None:
        if not part.is_multipart():
            return
        kept = []
        for child in part.get_payload():
            is_attachment = child.get_content_disposition() in ("attachment", "inline") and child.get_filename()
            if is_attachment and not child.is_multipart():
                payload = child.get_payload(decode=True) or b""
                if len(payload) > limit:
                    large.append(LargeAttachment(child.get_filename(), child.get_content_type(), payload,
                                                 child.get_content_disposition() == "inline",
                                                 (child.get("Content-ID") or "").strip("<> ") or None))
                    continue
            walk(child)
            kept.append(child)
        part.set_payload(kept)

    walk(msg)
    if not large:
        return raw, []
    return msg.as_bytes(policy=email.policy.SMTP), large
