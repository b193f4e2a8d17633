"""Apply the user's decision to a message: drop recipients and attachments, move addresses to Bcc.

The released message never carries a Bcc header; blind copies travel in the envelope only.
"""

from __future__ import annotations

import email.policy
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import Message

from . import message as msgmod
from .errors import MessageError


@dataclass
class Decision:
    """What the user (or policy) decided in the confirmation window."""

    removed_recipients: list[str] = field(default_factory=list)
    removed_attachments: list[str] = field(default_factory=list)  # attachment ids
    bcc: bool = False  # move external To/Cc into Bcc
    bcc_addresses: list[str] = field(default_factory=list)  # filled in: the addresses moved
    added_cc: list[str] = field(default_factory=list)  # [[rules.auto_cc]]: put in Cc
    added_bcc: list[str] = field(default_factory=list)  # [[rules.auto_cc]]: envelope only

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"removed_recipients": self.removed_recipients,
                                  "removed_attachments": self.removed_attachments,
                                  "bcc": self.bcc, "bcc_addresses": self.bcc_addresses}
        if self.added_cc or self.added_bcc:
            out.update(added_cc=self.added_cc, added_bcc=self.added_bcc)
        return out

    @classmethod
    def from_json(cls, data: dict[str, object] | None) -> Decision:
        data = data or {}
        return cls(list(data.get("removed_recipients") or []), list(data.get("removed_attachments") or []),  # type: ignore[call-overload]
                   bool(data.get("bcc")), list(data.get("bcc_addresses") or []),  # type: ignore[call-overload]
                   list(data.get("added_cc") or []), list(data.get("added_bcc") or []))  # type: ignore[call-overload]


def _address_key(addr_spec: str) -> str:
    rcpt = msgmod.make_recipient(addr_spec, "", "to")
    return rcpt.address if rcpt else addr_spec.lower()


def _addresses(msg: Message, name: str) -> list[Address]:
    out = []
    for display, spec in msgmod._header_addresses(msg, name):
        if "@" not in spec:
            continue
        local, _, domain = spec.rpartition("@")
        try:
            out.append(Address(display_name=msgmod.clean_text(display or ""), username=local, domain=domain))
        except (ValueError, TypeError, IndexError):
            try:
                out.append(Address(username=local, domain=domain))
            except (ValueError, TypeError, IndexError):
                raise MessageError(f"cannot rewrite the address {spec!r} in {name.title()}; "
                                   "fix it in your mail client and send again") from None
    return out


def _set_addresses(msg: Message, name: str, addrs: list[Address]) -> None:
    del msg[name]
    if addrs:
        msg[name] = addrs  # type: ignore[assignment]  # the header registry takes Address objects


def apply(
    raw: bytes,
    decision: Decision,
    envelope: Iterable[str],
    external: set[str],
    message_id: str,
) -> tuple[bytes, list[str], list[str]]:
    """Return (final raw, envelope recipients, bcc addresses) after the decision.

    ``external`` holds the lower-cased external addresses (for Bcc conversion).
    """
    msg = msgmod.load(raw)
    removed = {a.lower() for a in decision.removed_recipients}
    to = [a for a in _addresses(msg, "to") if _address_key(a.addr_spec) not in removed]
    cc = [a for a in _addresses(msg, "cc") if _address_key(a.addr_spec) not in removed]
    bcc_header = [a for a in _addresses(msg, "bcc") if _address_key(a.addr_spec) not in removed]
    bcc = [_address_key(a.addr_spec) for a in bcc_header]
    present = {_address_key(a.addr_spec) for a in to + cc} | set(bcc) | {_address_key(a) for a in envelope}
    for address in decision.added_cc:
        if address not in present and address not in removed:
            local, _, domain = address.rpartition("@")
            cc.append(Address(username=local, domain=domain))
            present.add(address)
    for address in decision.added_bcc:
        if address not in present and address not in removed:
            bcc.append(address)
            present.add(address)
    if decision.bcc:
        moved = [a for a in to + cc if _address_key(a.addr_spec) in external]
        bcc += [_address_key(a.addr_spec) for a in moved]
        to = [a for a in to if _address_key(a.addr_spec) not in external]
        cc = [a for a in cc if _address_key(a.addr_spec) not in external]
    header_rcpts = [_address_key(a.addr_spec) for a in to + cc] + bcc
    env = [_address_key(a) for a in envelope] or header_rcpts
    # envelope-only recipients (Bcc given at submission) keep going unless removed
    added = [a for a in decision.added_cc if a not in removed]
    recipients = list(dict.fromkeys([a for a in env if a not in removed] + [a for a in bcc if a not in env]
                                    + [a for a in added if a not in env]))
    if not recipients:
        raise MessageError("no recipients left after the removals: cancel the message instead")
    changed = bool(removed or decision.bcc or decision.removed_attachments or msg.get("bcc") is not None
                   or not msg.get("message-id") or decision.added_cc or msg.get(msgmod.LISTS_HEADER) is not None)
    if not changed:
        return raw, recipients, sorted(set(bcc))
    _set_addresses(msg, "To", to)
    _set_addresses(msg, "Cc", cc)
    del msg["Bcc"]
    del msg[msgmod.LISTS_HEADER]  # SendGuard's own note to itself never goes out
    if not to:
        msg["To"] = "undisclosed-recipients:;"
    if not msg.get("message-id"):
        msg["Message-ID"] = message_id
    if decision.removed_attachments:
        _drop_attachments(raw, msg, decision.removed_attachments)
    try:
        final = msg.as_bytes(policy=email.policy.default)
    except (UnicodeError, ValueError, TypeError, LookupError) as exc:
        raise MessageError(f"cannot rewrite this message ({exc}); cancel it and send it again") from None
    verify_attachments(raw, final, decision.removed_attachments)
    return final, recipients, sorted(set(bcc))


def _drop_attachments(raw: bytes, msg: Message, removed: Iterable[str]) -> None:
    """Take the attachments with these ids (numbered as the check numbered them) out of ``msg``.

    The check reads the message as ``message.check_tree`` does; ``msg`` is parsed with another policy,
    under which the email package reads some parameters differently (a comment in Content-Type, a
    single-quoted filename), so the parts are found by their place in the check's tree, never by
    numbering ``msg`` again."""
    tree = msgmod.check_tree(raw)
    paths = msgmod.attachment_paths(tree)
    unknown = [att_id for att_id in removed if att_id not in paths]
    if unknown:
        raise MessageError(f"cannot remove attachment {', '.join(unknown)}: the message has attachments "
                           f"{', '.join(paths) or 'none'}; the message stays held, cancel it or confirm it again")
    if msgmod.tree_shape(tree) != msgmod.tree_shape(msg):
        raise MessageError("cannot remove attachments from this message: its MIME structure reads two ways "
                           "(a damaged boundary or Content-Type); the message stays held, cancel it and "
                           "send it again without the attachment")
    targets = []
    for att_id in dict.fromkeys(removed):
        path = paths[att_id]
        if not path:
            raise MessageError("the message is nothing but this attachment; cancel it instead")
        targets.append((msgmod.part_at(msg, path[:-1]), msgmod.part_at(msg, path)))
    for parent, part in targets:
        payload = parent.get_payload()
        if isinstance(payload, list):
            payload[:] = [p for p in payload if p is not part]


def verify_attachments(raw: bytes, final: bytes, removed: Iterable[str]) -> None:
    """Refuse (``MessageError``: nothing is released) unless the rewritten message, read the way the
    check reads it, holds exactly the attachments of ``raw`` minus the removed ids, in order and
    byte for byte (content type and SHA-256)."""
    if final == raw:
        return
    drop = set(removed)
    before = msgmod.attachment_digests(raw)
    expected = [a for a in before if a.id not in drop]
    found = msgmod.attachment_digests(final)
    if [(a.content_type, a.sha256) for a in found] != [(a.content_type, a.sha256) for a in expected]:
        def names(items: list[msgmod.AttachmentDigest]) -> str:
            return ", ".join(f"{a.filename} ({a.size} bytes)" for a in items) or "none"

        raise MessageError(f"the rewritten message does not hold the attachments you confirmed (expected: "
                           f"{names(expected)}; found: {names(found)}); nothing was sent and the message "
                           "stays held: cancel it and send it again from your mail client")
