"""Build an RFC 5322 message from the fields an add-in reads (Outlook's Office.js item, Gmail drafts).

Attachments whose content the add-in did not send are represented by an empty part whose
Content-Disposition ``size`` parameter (RFC 2183) keeps the real size for the checks.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.policy
import email.utils
import re
from collections.abc import Iterator
from contextlib import contextmanager
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, cast

from .errors import MessageError
from .message import LISTS_HEADER

# What the email package refuses in a header value or a MIME parameter (``str.splitlines`` breaks a line at
# each of these, and so does the package: "Header values may not contain linefeed or carriage return").
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON "\ud800": not text at all, no charset can write it
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # no address holds one
_MESSAGE_ID = re.compile("[\x20-\x7e]+")  # RFC 5322: a Message-ID is printable ASCII
# What the email package may raise on a value it cannot write (the checks above come first, naming the field).
_EMAIL_ERRORS = (ValueError, TypeError, IndexError, LookupError, email.errors.HeaderParseError)


def _text(value: Any, where: str, what: str, fix: str) -> str:
    """``value`` as one line of text for a header or a MIME parameter, else a ``MessageError`` naming the
    field and what to do (a line break in a header value is refused by the email package: a 500 before)."""
    text = str(value)
    if _SURROGATE.search(text):
        raise MessageError(f"{where}: {what} is not valid text (it holds a lone surrogate); {fix}")
    if _LINE_BREAK.search(text):
        raise MessageError(f"{where}: {what} cannot hold a line break ({text[:80]!r}); {fix}")
    return text


@contextmanager
def _writing(where: str, fix: str, value: Any = None) -> Iterator[None]:
    """Whatever else the email package refuses while a field is written is the field's fault, not a 500."""
    try:
        yield
    except MessageError:
        raise
    except _EMAIL_ERRORS as exc:
        shown = f" {str(value)[:80]!r}" if value is not None else ""
        raise MessageError(f"{where}: SendGuard cannot write{shown} into a message ({type(exc).__name__}: {exc}); "
                           f"{fix}") from None


def _address(entry: Any, where: str) -> Address:
    if isinstance(entry, str):
        entry = {"address": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("address"), str) or "@" not in entry["address"]:
        raise MessageError(f"{where}: each recipient needs an 'address' like name@example.com, got {entry!r}")
    spec = entry["address"].strip()
    if _CONTROL.search(spec) or _SURROGATE.search(spec):
        raise MessageError(f"{where}: {spec[:320]!r} is not a valid address (it holds a control character); "
                           "correct the address, then send again")
    name = _text(entry.get("name") or "", f"{where}.name", "a display name",
                 "correct the recipient's name (one line), then send again")
    local, _, domain = spec.rpartition("@")
    try:
        return Address(display_name=name, username=local, domain=domain)
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
    # a subject is shown as one line (as mail clients do): its line breaks are cleaned, not refused
    subject = " ".join(str(data.get("subject") or "").splitlines())
    with _writing("subject", "correct the subject, then send again"):
        msg["Subject"] = _text(subject, "subject", "the subject", "correct the subject, then send again")
    msg["Date"] = email.utils.formatdate(localtime=True)
    message_id = data.get("internetMessageId")
    fix = "send the Message-ID as the message has it (such as <id@example.com>), or leave it out"
    if message_id is not None and (not isinstance(message_id, str) or len(message_id) > 998
                                   or (message_id and not _MESSAGE_ID.fullmatch(message_id))):
        raise MessageError(f"internetMessageId: expected the Message-ID as one line of printable ASCII text, got "
                           f"{str(message_id)[:80]!r}; {fix}")
    with _writing("internetMessageId", fix, message_id):
        msg["Message-ID"] = message_id or email.utils.make_msgid(domain="sendguard.local")
    body = data.get("body") or ""
    if not isinstance(body, str):
        raise MessageError("body: expected text")
    if _SURROGATE.search(body):
        raise MessageError("body: is not valid text (it holds a lone surrogate); correct the body, then send again")
    with _writing("body", "correct the body, then send again"):
        msg.set_content(body)
    for index, att in enumerate(data.get("attachments") or []):
        if not isinstance(att, dict) or not att.get("name"):
            raise MessageError(f"attachments[{index}]: each attachment needs a name")
        where = f"attachments[{index}]"
        filename = _text(att["name"], f"{where}.name", "a file name", "rename the attachment, then send again")
        ctype = _text(att.get("contentType") or "application/octet-stream", f"{where}.contentType",
                      "a content type", "send a MIME type such as application/pdf, or leave it out")
        maintype, _, subtype = ctype.partition("/")
        content = att.get("content")
        if content:
            try:
                payload = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise MessageError(f"{where} ({filename}): content is not valid base64") from None
        else:
            payload = b""
        disposition = "inline" if att.get("isInline") else "attachment"
        with _writing(f"{where} ({filename})", "rename the attachment or correct its content type, then send again"):
            msg.add_attachment(payload, maintype=maintype or "application", subtype=subtype or "octet-stream",
                               filename=filename, disposition=disposition)
        part = cast("list[EmailMessage]", msg.get_payload())[-1]  # multipart once an attachment is added
        if not content and att.get("size"):
            size = att["size"]
            # ASCII digits only: "²".isdigit() is true, and int() refuses it (a 500 before)
            if isinstance(size, bool) or not (isinstance(size, int) or (isinstance(size, str) and size.isascii()
                                                                       and size.isdigit() and len(size) <= 20)) \
                    or int(size) < 0:
                raise MessageError(f"{where} ({filename}): size must be a whole number of bytes, not {str(size)[:40]!r}; "
                                   "send the size in digits, or leave it out")
            part.set_param("size", str(int(size)), header="Content-Disposition")
        if att.get("id"):
            ref = _text(att["id"], f"{where}.id", "an attachment id",
                        "send the attachment's id as Outlook gives it, or leave it out")
            with _writing(f"{where}.id", "send the attachment's id as Outlook gives it, or leave it out"):
                part["X-SendGuard-Attachment-Ref"] = ref
    envelope_from = sender.addr_spec if sender else ""
    with _writing("the message", "correct the fields named in it, then send again"):
        return msg.as_bytes(), envelope_from, recipients
