"""Build an RFC 5322 message from the fields an add-in reads (Outlook's Office.js item, Gmail drafts).

Attachments whose content the add-in did not send are represented by an empty part whose
Content-Disposition ``size`` parameter (RFC 2183) keeps the real size for the checks.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, cast

from .errors import MessageError
from .message import LISTS_HEADER


def _address(entry: Any, where: str) -> Address:
    if isinstance(entry, str):
        entry = {"address": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("address"), str) or "@" not in entry["address"]:
        raise MessageError(f"{where}: each recipient needs an 'address' like name@example.com, got {entry!r}")
    local, _, domain = entry["address"].strip().rpartition("@")
    try:
        return Address(display_name=str(entry.get("name") or ""), username=local, domain=domain)
    except (ValueError, TypeError, IndexError):
        raise MessageError(f"{where}: {entry['address']!r} is not a valid address") from None


def from_fields(data: dict[str, Any]) -> tuple[bytes, str, list[str]]:
    """(raw MIME, envelope sender, envelope recipients) from an add-in's JSON."""
    if not isinstance(data, dict):
        raise MessageError("expected a JSON object with from, to, cc, bcc, subject, body, attachments")
    msg = EmailMessage(policy=email.policy.default)
    sender = _address(data.get("from") or {}, "from") if data.get("from") else None
    if sender:
        msg["From"] = sender
    recipients: list[str] = []
    lists: list[str] = []  # what the client marks as distribution lists ({"list": true})
    for field in ("to", "cc", "bcc"):
        entries = data.get(field) or []
        if not isinstance(entries, list):
            raise MessageError(f"{field}: expected a list of recipients")
        addrs = [_address(e, f"{field}[{i}]") for i, e in enumerate(entries)]
        if addrs and field != "bcc":
            msg[field.title()] = addrs
        recipients += [a.addr_spec for a in addrs]
        lists += [a.addr_spec for e, a in zip(entries, addrs, strict=True) if isinstance(e, dict) and e.get("list") is True]
    if not recipients:
        raise MessageError("the message has no recipients: add To, Cc or Bcc addresses")
    bcc = [_address(e, "bcc").addr_spec for e in data.get("bcc") or []]
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    if lists:
        msg[LISTS_HEADER] = ", ".join(dict.fromkeys(lists))
    msg["Subject"] = " ".join(str(data.get("subject") or "").splitlines())
    msg["Date"] = email.utils.formatdate(localtime=True)
    message_id = data.get("internetMessageId")
    if message_id is not None and (not isinstance(message_id, str) or any(c in message_id for c in "\r\n")
                                   or len(message_id) > 998):
        raise MessageError("internetMessageId: expected the Message-ID as one line of text")
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="sendguard.local")
    body = data.get("body") or ""
    if not isinstance(body, str):
        raise MessageError("body: expected text")
    msg.set_content(body)
    for index, att in enumerate(data.get("attachments") or []):
        if not isinstance(att, dict) or not att.get("name"):
            raise MessageError(f"attachments[{index}]: each attachment needs a name")
        ctype = str(att.get("contentType") or "application/octet-stream")
        maintype, _, subtype = ctype.partition("/")
        content = att.get("content")
        if content:
            try:
                payload = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise MessageError(f"attachments[{index}] ({att['name']}): content is not valid base64") from None
        else:
            payload = b""
        disposition = "inline" if att.get("isInline") else "attachment"
        msg.add_attachment(payload, maintype=maintype or "application", subtype=subtype or "octet-stream",
                           filename=str(att["name"]), disposition=disposition)
        part = cast("list[EmailMessage]", msg.get_payload())[-1]  # multipart once an attachment is added
        if not content and att.get("size"):
            size = att["size"]
            if isinstance(size, bool) or not (isinstance(size, int) or (isinstance(size, str) and size.isdigit())) \
                    or int(size) < 0:
                raise MessageError(f"attachments[{index}] ({att['name']}): size must be a whole number of bytes")
            part.set_param("size", str(int(size)), header="Content-Disposition")
        if att.get("id"):
            part["X-SendGuard-Attachment-Ref"] = str(att["id"])
    envelope_from = sender.addr_spec if sender else ""
    return msg.as_bytes(), envelope_from, recipients
