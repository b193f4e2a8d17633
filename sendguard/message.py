"""Message model and MIME parsing (standard ``email`` package, ``policy.default``).

``parse`` never raises on bad bytes: what it cannot read it records in ``ParsedMessage.problems``
and the policy treats such a message with care. Only a message with no recipient at all is refused
(``MessageError``), because there is nothing to check.
"""

from __future__ import annotations

import binascii
import email
import email.header
import email.policy
import email.utils
import hashlib
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from typing import Any

import idna

from . import detect, extract
from .errors import MessageError

# Text scanned for personal data and keywords is capped per part: enough for any real document.
TEXT_SCAN_LIMIT = 2_000_000
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/csv", "application/x-csv")


@dataclass
class Recipient:
    address: str  # lower-cased addr-spec
    display_name: str  # as written
    field: str  # to | cc | bcc | attendee
    domain: str  # Unicode form of the domain
    ascii_domain: str  # IDNA (punycode) form
    idn: bool = False
    written: str = ""  # the address as written (case kept)

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]


@dataclass
class Attachment:
    id: str
    filename: str
    size: int
    content_type: str
    sha256: str
    inline: bool = False
    is_message: bool = False
    head: bytes = b""  # first bytes, for magic-number checks
    data: bytes = b""  # decoded content (kept for archives, text scanning and rewriting)
    text: str = ""  # extracted text for content checks, when the type is text-like
    ref: str = ""  # the client's own id for this attachment (Outlook attachment id), if any
    problems: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # found inside (an encrypted member of a zip, ...)
    uninspected: str = ""  # why the content could not be read for checks (fail closed), or ""


# Set by compose.from_fields for the recipients the Outlook add-in reports as distribution lists.
LISTS_HEADER = "X-SendGuard-Distribution-Lists"


@dataclass(frozen=True)
class HiddenFile:
    """A file the message carries outside its listed attachments (encoded in a text body: uuencode,
    begin-base64)."""

    name: str
    head: bytes  # its first bytes (what it really is)
    flags: tuple[str, ...]  # as an attachment's: executable, archive, encrypted, type_mismatch


@dataclass
class ParsedMessage:
    message_id: str
    from_address: str
    from_name: str
    subject: str
    recipients: list[Recipient]
    attachments: list[Attachment]
    body_text: str
    size: int
    # text the recipient's mail program does not show as the message but receives all the same (outside
    # the parts of a multipart, the comments, <head> and <script> of an HTML body, inside a file encoded in a
    # body): checked for personal data and keywords only,
    # never previewed nor read as what the message says (salutation, opt-out, announced attachment)
    hidden_text: str = ""
    # the files among it (encoded in a text body): the rules on programs and locked files apply to them
    hidden_files: list[HiddenFile] = field(default_factory=list)
    envelope_from: str = ""
    problems: list[str] = field(default_factory=list)
    in_reply_to: tuple[str, ...] = ()  # Message-IDs this message answers (In-Reply-To, then References)
    list_unsubscribe: str = ""
    precedence: str = ""
    # recipients the mail client itself marks as distribution lists (the Outlook add-in: Office.js
    # recipientType "distributionList"), from LISTS_HEADER; it can only make a recipient a list
    marked_lists: tuple[str, ...] = ()

    @property
    def sender(self) -> str:
        return self.from_address or self.envelope_from.lower()

    def recipients_in(self, *fields: str) -> list[Recipient]:
        return [r for r in self.recipients if r.field in fields]


# a byte the email package could not decode, kept as a lone surrogate (``surrogateescape``)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def clean_text(value: str) -> str:
    """Turn surrogate-escaped 8-bit bytes (undeclared charsets) into readable text."""
    if _ESCAPED_BYTE.search(value):
        raw = value.encode("utf-8", "surrogateescape")
        for codec in ("utf-8", "cp932", "euc-jp", "iso-2022-jp"):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError:
                continue
        return raw.decode("utf-8", "replace")
    return value


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words left in a value (also inside quoted filenames, as Japanese
    mailers write them). Unencoded text keeps its own spacing: ``=?..?=.xlsx`` stays ``資料.xlsx``."""
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (email.errors.HeaderParseError, ValueError):
        return value
    out = []
    for text, charset in parts:
        if isinstance(text, bytes):
            try:
                text = text.decode(charset or "ascii", "replace")
            except LookupError:
                text = text.decode("utf-8", "replace")
        out.append(text)
    return clean_text("".join(out))


def split_domain(domain: str) -> tuple[str, str, bool]:
    """Return (unicode, ascii, is_idn) forms of a domain, tolerant of bad labels."""
    domain = domain.strip().rstrip(".").lower()
    if not domain:
        return "", "", False
    try:
        if domain.isascii():
            ascii_form = domain
            unicode_form = idna.decode(domain) if "xn--" in domain else domain
        else:
            unicode_form = domain
            ascii_form = idna.encode(domain, uts46=True).decode("ascii")
            unicode_form = idna.decode(ascii_form)
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain, domain, not domain.isascii() or "xn--" in domain
    return unicode_form, ascii_form, unicode_form != ascii_form


def make_recipient(addr_spec: str, display_name: str, field_name: str) -> Recipient | None:
    addr_spec = clean_text(addr_spec).strip().strip("<>")
    if "@" not in addr_spec:
        return None
    local, _, domain = addr_spec.rpartition("@")
    uni, asc, is_idn = split_domain(domain)
    if not local or not uni:
        return None
    return Recipient(
        address=f"{local.lower()}@{uni}",
        display_name=clean_text(display_name or ""),
        field=field_name,
        domain=uni,
        ascii_domain=asc,
        idn=is_idn,
        written=addr_spec,
    )


# a message's header values by lower-cased name, as written: ``parse`` reads a dozen headers, and going
# through them all for each one (as ``Message.get`` does) cost more than reading them
HeaderIndex = dict[str, list[str]]


def header_index(msg: Message) -> HeaderIndex:
    index: HeaderIndex = {}
    for key, value in msg.raw_items():
        index.setdefault(key.lower(), []).append(str(value))
    return index


def _raw_values(msg: Message, name: str, index: HeaderIndex | None = None) -> list[str]:
    name = name.lower()
    if index is not None:
        return index.get(name, [])  # (read only: every caller reads the values, none changes them)
    return [str(v) for k, v in msg.raw_items() if k.lower() == name]


def _has_8bit(values: list[str]) -> bool:
    return any(_ESCAPED_BYTE.search(v) for v in values)


# The common shapes of an address header, read without the email package's character-by-character
# parser (a third of the time of parsing a small message): ``addr@domain`` and ``Name <addr@domain>``,
# comma-separated, in plain ASCII with no quotes, comments, groups, encoded words or folding. Anything
# else is read by ``email.utils.getaddresses``, which gives exactly these results for these shapes
# (tests/test_fast_paths.py compares the two).
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"  # RFC 5322 atext: one word of an address
DOT_ATOM = rf"{ATEXT}(?:\.{ATEXT})*"
_PHRASE_WORD = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"  # a word of a display name ('.' allowed, as there)
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:(?:({_PHRASE_WORD}(?:[ \t]+{_PHRASE_WORD})*)[ \t]*)?<({DOT_ATOM}@{DOT_ATOM})>"
    rf"|({DOT_ATOM}@{DOT_ATOM}))[ \t]*")


def _simple_addresses(value: str) -> list[tuple[str, str]] | None:
    """(display name, addr-spec) of a header value in one of the common shapes, or None (encoded words
    are for the header registry to decode)."""
    if not value.isascii() or "=?" in value:
        return None
    out = []
    for element in value.split(","):
        match = _SIMPLE_ADDRESS.fullmatch(element)
        if match is None:
            return None
        phrase, routed, bare = match.groups()
        out.append((" ".join(phrase.split()), routed) if phrase else ("", routed or bare))
    return out


def _header_addresses(msg: Message, name: str, index: HeaderIndex | None = None) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs of an address header, groups flattened; tolerant of junk."""
    raw = _raw_values(msg, name, index)
    if _has_8bit(raw):  # undeclared 8-bit text: decode it ourselves (UTF-8, Shift_JIS, EUC-JP)
        return [(decode_words(d), a) for d, a in email.utils.getaddresses([clean_text(v) for v in raw])]
    # compat32 (as ``parse`` reads) gives the raw strings back; other policies give header objects
    values: list[Any] = raw if msg.policy is email.policy.compat32 else (msg.get_all(name) or [])
    out: list[tuple[str, str]] = []
    for value in values:
        if isinstance(value, str):
            simple = _simple_addresses(_unfold(value))
            if simple is not None:
                out += simple
                continue
        if isinstance(value, str) and "=?" in value:  # encoded words: let the header registry parse it
            try:
                value = email.policy.default.header_factory(name, _unfold(value))
            except (IndexError, TypeError, ValueError, email.errors.HeaderParseError):
                pass
        try:
            for addr in value.addresses:  # type: ignore[union-attr,attr-defined]  # a str has none: below
                out.append((addr.display_name, addr.addr_spec))
            continue
        except (AttributeError, IndexError, TypeError, ValueError, email.errors.HeaderParseError):
            pass
        out.extend((decode_words(d), a) for d, a in email.utils.getaddresses([_unfold(clean_text(str(value)))]))
    return out


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def _safe_header(msg: Message, name: str, index: HeaderIndex | None = None) -> str:
    raw = _raw_values(msg, name, index)
    if _has_8bit(raw):
        return decode_words(" ".join(clean_text(raw[0]).split()))
    if msg.policy is email.policy.compat32:
        return decode_words(_unfold(raw[0])).strip() if raw else ""
    try:
        value = msg.get(name)
    except (IndexError, TypeError, ValueError, LookupError, email.errors.HeaderParseError):
        value = None
        for key, text in msg.raw_items():
            if key.lower() == name.lower():
                value = decode_words(str(text))
                break
    return clean_text(str(value)) if value is not None else ""


# Large encoded bodies are cut out before the email package parses the structure, then decoded
# straight from the raw bytes in chunks: a 25 MB attachment is never held as lines, as one str and
# as bytes at once. Only runs of >= 1024 base64-looking lines (about 77 KB) are cut out; a boundary
# or header line can never be part of such a run.
_ELIDE_MIN_BYTES = 512 * 1024
# possessive repeats: the regex engine keeps no backtracking state per line (that alone would cost
# about 3x the body in memory); the shorter last line of a body is part of its run
_B64_RUN = re.compile(rb"(?:^[A-Za-z0-9+/=]{16,998}\r?\n){1024,}+(?:^[A-Za-z0-9+/=]{1,998}\r?\n)?+", re.M)
_DECODE_CHUNK = 1024 * 1024
KEEP_LIMIT = 32 * 1024 * 1024  # content kept for archive/PDF/text checks up to this size
_KEEP_EXTS = (".zip", ".docx", ".xlsx", ".pptx", ".docm", ".xlsm", ".pptm", ".pdf", ".txt", ".csv", ".tsv",
              ".json", ".xml", ".eml", ".htm", ".html", ".md", ".log", ".ics", ".vcf", ".zipx")


@dataclass
class _Elided:
    raw: bytes
    spans: dict[str, tuple[int, int]]
    prefix: str  # every token starts with it; a random part, so no message can forge one

    def restore(self, text: str) -> str:
        """``text`` with each token put back as the original bytes it stands for."""
        def original(match: re.Match[str]) -> str:
            start, end = self.spans[match.group(1)]
            piece = self.raw[start:end].decode("ascii", "surrogateescape")
            # the parser drops the line break before a boundary: drop it here too where it dropped the token's
            return piece if match.group(2) else piece.rstrip("\r\n")
        return re.sub(rf"({re.escape(self.prefix)}\d+)(\r?\n)?", original, text)


def _elide(raw: bytes) -> tuple[bytes, _Elided | None]:
    if len(raw) < _ELIDE_MIN_BYTES:
        return raw, None
    spans: dict[str, tuple[int, int]] = {}
    pieces: list[bytes] = []
    last = 0
    prefix = f"SENDGUARD-ELIDED-{secrets.token_hex(8)}-"
    for index, match in enumerate(_B64_RUN.finditer(raw)):
        token = f"{prefix}{index}"
        pieces += [raw[last : match.start()], token.encode() + b"\n"]
        spans[token] = match.span()
        last = match.end()
    if not spans:
        return raw, None
    pieces.append(raw[last:])
    return b"".join(pieces), _Elided(raw, spans, prefix)


def _restore_elided(msg: Message, elided: _Elided | None) -> None:
    """Put the original bytes back into every part that holds a token, but one: a base64 leaf of the
    message itself whose whole body is one token, which ``_content`` decodes straight from the raw
    bytes. Nothing is ever read as token text (a 7-bit CSV after its header line, a body, a base64
    run split by a stray space, the parts of an attached message)."""
    if elided is None:
        return
    streamed = {id(part) for _path, _parent, part in _iter_leaves_at(msg)}
    for part in msg.walk():
        payload = part.get_payload() if not part.is_multipart() else None
        if not isinstance(payload, str) or elided.prefix not in payload:
            continue
        if id(part) in streamed and payload.strip() in elided.spans and part.get_content_type() not in \
                ("text/calendar", "application/ics") and \
                str(part.get("content-transfer-encoding", "")).strip().lower() == "base64":
            continue
        part.set_payload(elided.restore(payload))


def _elided_span(part: Message, elided: _Elided | None) -> tuple[int, int] | None:
    if elided is None or part.is_multipart():
        return None
    payload = part.get_payload()
    return elided.spans.get(payload.strip()) if isinstance(payload, str) and len(payload) < 80 else None


def _decode_chunks(raw: bytes, span: tuple[int, int], cte: str) -> Iterator[bytes]:
    """Decode a cut-out body piece by piece (base64) or in one go (anything else)."""
    start, end = span
    if cte != "base64":
        body = raw[start:end]
        yield binascii.a2b_qp(body) if cte == "quoted-printable" else body
        return
    carry = b""
    pos = start
    while pos < end:
        stop = min(end, pos + _DECODE_CHUNK)
        if stop < end:
            newline = raw.find(b"\n", stop, end)
            stop = end if newline < 0 else newline + 1
        buf = carry + raw[pos:stop].translate(None, b"\r\n \t")
        cut = len(buf) - len(buf) % 4
        carry = buf[cut:]
        if cut:
            try:
                yield binascii.a2b_base64(buf[:cut])
            except binascii.Error:
                yield binascii.a2b_base64(buf[:cut] + b"==")
        pos = stop
    if carry.strip(b"="):
        yield binascii.a2b_base64(carry + b"=" * (-len(carry) % 4))


def _content(part: Message, name: str, elided: _Elided | None, problems: list[str]) -> tuple[bytes, int, str, bytes]:
    """(data kept for content checks, size, sha256, head) of an attachment, streaming large ones."""
    span = _elided_span(part, elided)
    if span is None or elided is None:
        data = _part_bytes(part, problems)
        return data, len(data), hashlib.sha256(data).hexdigest(), data[:4096]
    digest = hashlib.sha256()
    size = 0
    head = b""
    kept: list[bytes] | None = None
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    try:
        for chunk in _decode_chunks(elided.raw, span, cte):
            if not head:
                head = chunk[:4096]
                wanted = name.lower().endswith(_KEEP_EXTS) or part.get_content_maintype() == "text" or \
                    head.startswith((b"PK\x03\x04", b"%PDF")) or extract.looks_like_text(head)
                kept = [] if wanted else None
            digest.update(chunk)
            size += len(chunk)
            if kept is not None:
                kept.append(chunk)
                if size > KEEP_LIMIT:
                    kept = None
    except binascii.Error:
        problems.append("broken base64 in an attachment; its content may be incomplete")
    return (b"".join(kept) if kept else b""), size, digest.hexdigest(), head


def _part_bytes(part: Message, problems: list[str]) -> bytes:
    if part.get_content_maintype() == "message" and part.is_multipart():
        inner = part.get_payload(0)
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable") and isinstance(inner, Message) and not inner.keys():
            # an attached message sent encoded (not allowed by RFC 2046, written by some clients anyway)
            encoded = str(inner.get_payload()).encode("ascii", "replace")
            try:
                return binascii.a2b_base64(encoded) if cte == "base64" else binascii.a2b_qp(encoded)
            except binascii.Error:
                problems.append("broken base64 in an attachment; its content may be incomplete")
                return b""
        try:
            return inner.as_bytes(policy=email.policy.SMTP) if isinstance(inner, Message) else b""
        except (UnicodeError, ValueError, TypeError, LookupError, IndexError):
            return str(inner).encode("utf-8", "surrogateescape")
    try:
        data = part.get_payload(decode=True)
    except (ValueError, TypeError, LookupError):
        data = None
    if data is None:
        payload = part.get_payload()
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    if not isinstance(data, bytes):  # get_payload(decode=True) gives bytes for a leaf part, None otherwise
        data = b""
    for defect in getattr(part, "defects", []):
        name = type(defect).__name__
        if "Base64" in name:
            problems.append("broken base64 in an attachment; its content may be incomplete")
            break
    return data


def _text_of(part: Message, data: bytes) -> str:
    """A body part's text: declared charset, else detected (undeclared Shift_JIS included)."""
    return _texts_of(part, data)[0]


def _texts_of(part: Message, data: bytes) -> tuple[str, str]:
    """A body part's text (``_text_of``), and the source of an HTML part that its reader does not show but receives
    (comments, <head> and <title>, <script>: ``extract.html_parts``), or ""."""
    text = extract.decode_text(data, part.get_content_charset())
    if part.get_content_subtype() == "html":
        text, unshown = extract.html_parts(text, TEXT_SCAN_LIMIT)
        return text[:TEXT_SCAN_LIMIT], unshown
    return extract.normalize_spaces(text)[:TEXT_SCAN_LIMIT], ""


def html_to_text(markup: str) -> str:
    return extract.html_to_text(markup)


# A comment in a structured header (RFC 5322 CFWS): "(" at the start or after a space, ";" or "=", outside a
# quoted string. A "(" glued to a word (``report(1).pdf``) is read as part of the word, as mail clients do.
def _without_comments(value: str) -> str:
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if not depth:
                out.append(ch)
            continue
        if ch == "\\" and (quoted or depth):
            escaped = True
            if not depth:
                out.append(ch)
            continue
        if not depth and ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(" and (depth or not out or out[-1] in " \t\r\n;="):
            depth += 1
            continue
        elif depth and ch == ")":
            depth -= 1
            if not depth:
                out.append(" ")
            continue
        if not depth:
            out.append(ch)
    return "".join(out)


def _param_source(part: Message) -> Message:
    """Where to read a part's type and file name from, the same way whatever the policy the part was
    parsed with: ``part`` itself when parsed as the check parses (compat32) and its Content-Type and
    Content-Disposition hold no comment; else a compat32 stand-in holding those two headers as written,
    comments removed (``(v2) name="quote.pdf"`` names quote.pdf), raw 8-bit bytes read in the charset
    they were written in (a Shift_JIS file name with no RFC 2231/2047 encoding; compat32 would give
    each byte as U+FFFD)."""
    if part.policy is email.policy.compat32:
        ctype, disposition = part.get("content-type"), part.get("content-disposition")
        # (a value holding raw 8-bit bytes comes back as a Header object)
        if (not isinstance(ctype, email.header.Header) and not isinstance(disposition, email.header.Header)
                and "(" not in str(ctype or "") and "(" not in str(disposition or "")):
            return part
    probe = Message(policy=email.policy.compat32)
    for key, value in part.raw_items():
        if key.lower() in ("content-type", "content-disposition"):
            probe[key] = clean_text(_without_comments(str(value)))
    return probe


def _content_type(part: Message) -> str:
    return _param_source(part).get_content_type()


def _is_inline(part: Message, ctype: str) -> bool:
    """An image shown in the body rather than attached: ``inline``, or one the HTML refers to by
    Content-ID with no disposition at all (a signature logo, a pasted screenshot). It does not count as
    the file a message promises, nor as a file sent outside. Anything else is a file, whatever its
    disposition says: Apple Mail and iOS Mail attach a PDF or a spreadsheet as ``inline; filename=``,
    and the recipient's program lists it as an attachment."""
    if not ctype.startswith("image/"):
        return False
    disposition = _disposition(part)
    return disposition == "inline" or (not disposition and bool(str(part.get("content-id", "")).strip()))


def _disposition(part: Message) -> str:
    """The disposition word, lower-cased ("" without one); comments, quotes and encoded words read."""
    value = _param_source(part).get("content-disposition")
    if value is None:
        return ""
    return decode_words(str(value).split(";")[0].strip().strip('"')).strip().lower()


def _name_param(part: Message) -> str | None:
    """The file name a part gives itself (Content-Disposition filename, else Content-Type name)."""
    source = _param_source(part)
    try:
        name = source.get_filename() or source.get_param("name")
    except (IndexError, TypeError, ValueError, LookupError):
        return None
    if isinstance(name, tuple):  # undecoded RFC 2231 triple
        name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return None
    name = str(name).strip()
    if len(name) > 2 and name[0] == name[-1] == "'":  # filename='notes.txt' (single quotes are no quoting)
        name = name[1:-1]
    return name or None


def _is_attachment(part: Message) -> bool:
    """An attached file (listed, removable, inspected as a file) rather than body text.

    Every leaf that is not text is a file, named or not, as mail clients show it: an unnamed
    application/octet-stream, PDF or image, a message that is nothing but a file. Text is a file when
    it says so (attachment disposition, a file name)."""
    if part.get("content-disposition") is None and "name" not in str(part.get("content-type", "")).lower():
        # the common body part: no disposition and no file name (saves parsing its parameters thrice)
        return _content_type(part).partition("/")[0] not in ("text", "multipart") or \
            part.get_content_type() == "message/rfc822"
    return _is_attachment_in_full(part)


def _is_attachment_in_full(part: Message) -> bool:
    if _content_type(part).partition("/")[0] not in ("text", "multipart") or \
            part.get_content_type() == "message/rfc822":
        return True  # a file, whatever its disposition says
    return _disposition(part) == "attachment" or bool(_name_param(part))


def _filename(part: Message, index: int) -> str:
    name = _name_param(part)
    if name:
        return clean_text(decode_words(name)).strip()
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0) if part.is_multipart() else None
        subject = _safe_header(inner, "subject") if isinstance(inner, Message) else ""
        return f"{subject or 'message'}.eml"
    return f"attachment-{index}"


_MSGID_RE = re.compile(r"<[^<>\s]+@[^<>\s]+>")
_ICS_ATTENDEE = re.compile(r"^ATTENDEE((?:;[^:]*)?):(?:mailto:)?(.+)$", re.IGNORECASE)
_ICS_CN = re.compile(r';CN=("[^"]*"|[^;:]*)', re.IGNORECASE)


def calendar_attendees(msg: Message) -> list[tuple[str, str]]:
    """(name, address) of each ATTENDEE of a meeting request (text/calendar, METHOD:REQUEST)."""
    out: list[tuple[str, str]] = []
    for _parent, part in iter_leaves(msg):
        if part.get_content_type() not in ("text/calendar", "application/ics"):
            continue
        data = _part_bytes(part, [])
        text = _text_of(part, data) if part.get_content_maintype() == "text" else data.decode("utf-8", "replace")
        lines = re.sub(r"\r?\n[ \t]", "", text).splitlines()  # unfold (RFC 5545 3.1)
        if not any(line.strip().upper() == "METHOD:REQUEST" for line in lines):
            continue
        for line in lines:
            match = _ICS_ATTENDEE.match(line.strip())
            if match:
                cn = _ICS_CN.search(match.group(1))
                out.append(((cn.group(1).strip('"') if cn else ""), match.group(2).strip()))
    return out


Path = tuple[int, ...]  # a part's place in the tree: the index in each parent's list of parts


def _iter_leaves_at(msg: Message) -> Iterator[tuple[Path, Message | None, Message]]:
    stack: list[tuple[Path, Message | None, Message]] = [((), None, msg)]
    while stack:
        path, parent, part = stack.pop()
        if part.get_content_type() == "message/rfc822" and part is not msg:
            yield path, parent, part
        elif part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(((*path, i), part, child) for i, child in reversed(list(enumerate(payload)))
                             if isinstance(child, Message))
        else:
            yield path, parent, part


def iter_leaves(msg: Message) -> Iterator[tuple[Message | None, Message]]:
    """(parent, leaf) depth-first, not descending into attached messages (they are attachments).

    The order defines attachment ids, so parsing and rewriting number attachments alike.
    """
    for _path, parent, part in _iter_leaves_at(msg):
        yield parent, part


def iter_parts(msg: Message) -> Iterator[tuple[str | None, Message | None, Message]]:
    """(attachment id, parent, leaf) in document order: ids "1", "2", ... for attachments, None for
    body parts. The one numbering of attachments: the check, the rewrite and the pages all use it.

    The ids are those of the check only on a tree parsed as the check parses (``check_tree``): the
    email package reads some parameters differently under other policies. ``attachment_paths`` gives
    each id's place, to find the same parts in a tree parsed otherwise."""
    index = 0
    for _path, parent, part in _iter_leaves_at(msg):
        if _is_attachment(part):
            index += 1
            yield str(index), parent, part
        else:
            yield None, parent, part


def iter_attachments(msg: Message) -> Iterator[tuple[str, Message | None, Message]]:
    """(id, parent, part) for each attachment (see ``iter_parts``)."""
    for att_id, parent, part in iter_parts(msg):
        if att_id is not None:
            yield att_id, parent, part


def check_tree(raw: bytes) -> Message:
    """The tree of parts as ``parse`` reads a message (compat32): the one its attachment ids are of."""
    single = _single_part(raw)
    return single if single is not None else email.message_from_bytes(raw, policy=email.policy.compat32)


# A header block the email package reads line by line and field by field, read here at once in its
# common shape: fields of printable ASCII (tabs allowed), folded or not, every line ending in LF or CRLF,
# then the empty line. Anything else (8-bit or control characters, a lone CR, a line that is no field,
# a missing empty line, a unix "From " line) is left to the email package, as is any multipart or
# message/* part. tests/test_fast_paths.py compares the two.
_FIELD = r"[\x21-\x39\x3b-\x7e]+:[\t\x20-\x7e]*\r?\n(?:[\t ][\t\x20-\x7e]*\r?\n)*"
_PLAIN_HEADER_BLOCK = re.compile(rf"(?:{_FIELD})+(?=\r?\n)".encode("ascii"))
_ONE_FIELD = re.compile(_FIELD)


def _single_part(raw: bytes) -> Message | None:
    """The message as ``email.message_from_bytes`` (compat32) gives it, when it is a single part with a
    plain header block; else None. The body is kept as the parser keeps it: the text after the empty
    line, undecoded (bytes beyond ASCII as surrogates)."""
    block = _PLAIN_HEADER_BLOCK.match(raw)
    if block is None:
        return None
    policy = email.policy.compat32
    msg = Message(policy=policy)
    for found in _ONE_FIELD.finditer(block.group().decode("ascii")):
        msg.set_raw(*policy.header_source_parse(found.group().splitlines(True)))
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    end = block.end()
    msg.set_payload(raw[end + (2 if raw.startswith(b"\r\n", end) else 1):].decode("ascii", "surrogateescape"))
    return msg


def attachment_paths(tree: Message) -> dict[str, Path]:
    """Attachment id -> place in the tree, for a ``check_tree``."""
    index = 0
    out: dict[str, Path] = {}
    for path, _parent, part in _iter_leaves_at(tree):
        if _is_attachment(part):
            index += 1
            out[str(index)] = path
    return out


def tree_shape(msg: Message) -> list[tuple[Path, int]]:
    """(place, number of parts or -1 for a leaf) of every part: two parses of the same bytes with the
    same shape hold the same parts at the same places."""
    out: list[tuple[Path, int]] = []
    stack: list[tuple[Path, Message]] = [((), msg)]
    while stack:
        path, part = stack.pop()
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            out.append((path, len(payload)))
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(payload)))
                         if isinstance(child, Message))
        else:
            out.append((path, -1))
    return out


def part_at(msg: Message, path: Path) -> Message:
    part = msg
    for i in path:
        payload = part.get_payload()
        child = payload[i] if isinstance(payload, list) and i < len(payload) else None
        if not isinstance(child, Message):
            raise LookupError(f"no part at {path}")
        part = child
    return part


@dataclass(frozen=True)
class AttachmentDigest:
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str


def attachment_digests(raw: bytes) -> list[AttachmentDigest]:
    """Each attachment as ``parse`` reads it (same tree, same ids, same content and hash), without the
    text extraction: what the rewrite compares before and after."""
    skeleton, elided = _elide(raw)
    out = []
    tree = check_tree(skeleton)
    _restore_elided(tree, elided)
    for att_id, _parent, part in iter_attachments(tree):
        name = _filename(part, int(att_id))
        data, size, digest, _head = _content(part, name, elided, [])
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte != "base64" and len(data) == size:
            # line breaks of text sent as text are the transport's, not the content's: a rewrite written
            # with LF keeps a CRLF attachment unchanged
            digest = hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()
        out.append(AttachmentDigest(att_id, name, part.get_content_type(), size, digest))
    return out


def parse(
    raw: bytes,
    envelope_from: str = "",
    envelope_recipients: Iterable[str] = (),
    *,
    require_recipients: bool = True,
    budget: extract.Budget | None = None,
    depth: int = 0,
) -> ParsedMessage:
    """Parse raw RFC 5322 bytes into the model the policy checks.

    Attachments' text is extracted within one ``budget`` per message (attached messages share their
    parent's); what cannot be read is marked ``uninspected`` with the reason.
    """
    budget = budget or extract.Budget()
    problems: list[str] = []
    # an attached message's own sender and recipients are no concern of the message it travels in: only
    # what could not be read of its content is reported there
    header_problems = problems if depth == 0 else []
    skeleton, elided = _elide(raw)
    # compat32 keeps header values as text: the few we need are decoded below, instead of the
    # header registry parsing every header of every part (the bulk of the time on small messages)
    msg = check_tree(skeleton)
    _restore_elided(msg, elided)
    if not msg.keys():
        header_problems.append("the message has no headers (not an RFC 5322 message)")
    index = header_index(msg)
    recipients = _recipients(msg, envelope_recipients, header_problems, index)
    if require_recipients and not recipients:
        raise MessageError("the message has no recipients: add To, Cc or Bcc addresses")
    from_name, from_address = _sender(msg, envelope_from, header_problems, index)
    attachments: list[Attachment] = []
    body_chunks: list[str] = []
    hidden = _outside_parts(msg, elided) if msg.is_multipart() else []
    encoded = _EncodedFiles(budget, depth, problems)
    for att_id, _parent, part in iter_parts(msg):
        if att_id is not None:
            attachments.append(_attachment(att_id, part, elided, budget, depth, problems))
        elif part.get_content_maintype() == "text":
            text, unshown = _texts_of(part, _content(part, "body.txt", elided, problems)[0])
            body_chunks.append(text)
            if ("begin " in text or "begin-base64 " in text) and part.get_content_subtype() in ("plain", "html"):
                hidden += encoded.read(text, len(text) >= TEXT_SCAN_LIMIT)  # rare: no regex for most bodies
                if _QUOTED_MARK.search(text):  # a file in the quoted message of a reply goes out again with it
                    hidden += encoded.read(_unquoted(text), len(text) >= TEXT_SCAN_LIMIT)
            if unshown:  # HTML comments, <head>, <script>: checked, never read as what the message says
                hidden.append(extract.unshown_text(unshown))
                if "begin " in unshown or "begin-base64 " in unshown:  # a file left in a comment, as pasted
                    hidden += encoded.read(unshown, len(unshown) >= TEXT_SCAN_LIMIT)
        elif part.get_content_maintype() == "multipart":  # one the parser could not split
            body_chunks.append(_broken_multipart(part, budget, depth, problems))
    encoded.finish()
    thread = _MSGID_RE.findall(_safe_header(msg, "in-reply-to", index) + " " + _safe_header(msg, "references", index))
    return ParsedMessage(
        message_id=_safe_header(msg, "message-id", index).strip(),
        from_address=from_address,
        from_name=from_name,
        subject=_safe_header(msg, "subject", index),
        recipients=recipients,
        attachments=attachments,
        body_text="\n".join(body_chunks),
        size=len(raw),
        hidden_text="\n".join(hidden),
        hidden_files=encoded.files,
        envelope_from=envelope_from,
        problems=list(dict.fromkeys(problems)),
        in_reply_to=tuple(dict.fromkeys(thread))[:100],
        list_unsubscribe=_safe_header(msg, "list-unsubscribe", index).strip(),
        precedence=_safe_header(msg, "precedence", index).strip().lower(),
        marked_lists=tuple(a.strip().lower() for a in _safe_header(msg, LISTS_HEADER, index).split(",") if "@" in a),
    )


def _outside_parts(msg: Message, elided: _Elided | None) -> list[str]:
    """The text before the first and after the closing boundary of every multipart (preamble, epilogue):
    mail programs do not show it, yet it travels with the message. Attached messages are left to their
    own parse, as their parts are."""
    out: list[str] = []
    stack = [msg]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if not isinstance(payload, list) or (part is not msg and part.get_content_type() == "message/rfc822"):
            continue
        for text in (part.preamble, part.epilogue):
            if text and not text.isspace():
                if elided is not None and elided.prefix in text:
                    text = elided.restore(text)
                out.append(extract.normalize_spaces(clean_text(text))[:TEXT_SCAN_LIMIT])
        stack.extend(child for child in payload if isinstance(child, Message))
    return out


# ``begin <mode> <name>`` ... ``end`` (uuencode) and ``begin-base64 <mode> <name>`` ... ``====`` (uuencode -m) in a
# text body, plain or HTML (read as the text it shows: <pre>, <br>, a paragraph per line, entities). Outlook,
# Thunderbird and others show a uuencoded block as an attached file, though the message lists no attachment, and
# uudecode turns either back into the file. A mark may be indented (HTML shows no indent). The name runs to the end
# of its line and is stripped afterwards (a lazy name before ``[ \t]*`` would be quadratic on a run of spaces).
_ENCODED_MARK = re.compile(r"(?m)^[ \t]*(?:begin(-base64)? [0-7]{1,4} +(\S[^\r\n]*)\r?$|(end|====)[ \t]*\r?$)")
_ENCODED_NAMED = 10  # encoded files named one by one in the problems
# a begin line in quoted text ("> begin 644 list.zip", "> > begin-base64 ..."), as a reply quotes the message
_QUOTED_MARK = re.compile(r"(?m)^[ \t]*+(?:>[ \t]?+)++[ \t]*+begin(?:-base64)? [0-7]{1,4} +\S")
_QUOTE_PREFIX = re.compile(r"(?m)^[ \t]*+(?:>[ \t]?+)++")


def _unquoted(text: str) -> str:
    """``text`` with the quote marks at the start of its lines taken off: the quoted message as it was written."""
    return _QUOTE_PREFIX.sub("", text)


class _EncodedFiles:
    """The files encoded into the text bodies of one message, each read once as an attachment is, within the
    message's budget. Always a problem: SendGuard neither lists nor removes such a file, so the user sees the
    message; one it could not read in full says so."""

    def __init__(self, budget: extract.Budget, depth: int, problems: list[str]) -> None:
        self.budget = budget
        self.depth = depth
        self.problems = problems
        self.files: list[HiddenFile] = []
        self._seen: set[tuple[str, bytes]] = set()  # (name, sha256): one file in both the plain and the HTML text
        self._more = 0  # files past the ones named
        self._more_unread = 0  # of them, the ones not read in full

    def read(self, text: str, cut: bool) -> list[str]:
        """The text of each file in one body (its flags go to ``files``); ``cut``: the body is longer than
        the text SendGuard reads of it."""
        out: list[str] = []
        for name, is_base64, block, why in _encoded_blocks(text, cut):
            data = b""
            try:
                self.budget.check_time()  # thousands of files in one body: those past the budget are not read
            except extract.Uninspectable as exc:
                found = extract.Extracted(uninspected=str(exc))
            else:
                data, broken = _base64_decode(block) if is_base64 else (_uudecode(block), "")
                why = why or broken
                key = (name, hashlib.sha256(data).digest())
                if key in self._seen:
                    continue
                self._seen.add(key)
                found = extract.extract(name, "", data, self.budget, self.depth)
                out.append(found.text)
            head = data[:4096]
            flags = detect.file_flags(name, "", head, data)
            self.files.append(HiddenFile(name, head, (*flags, *(f for f in found.flags if f not in flags))))
            unread = "; ".join(w for w in (why, found.uninspected) if w)
            if len(self.files) > _ENCODED_NAMED:  # every file is read; a body of thousands is not thousands of problems
                self._more += 1
                self._more_unread += bool(unread)
                continue
            self.problems.extend(f"in {name}: {p}" for p in found.problems)
            what = (f"a base64-encoded file {name} (begin-base64), which uudecode turns back into the file"
                    if is_base64 else f"a uuencoded file {name}, which mail programs show as an attachment")
            read = (f"SendGuard could not read it ({unread})" if unread else
                    "SendGuard checked its content but cannot list or remove it")
            self.problems.append(f"the message body carries {what}: {read}; check it yourself, or send it as a "
                                 "normal attachment")
        return out

    def finish(self) -> None:
        """Count the files past the ones named, in one problem."""
        if self._more:
            unread = f" ({self._more_unread} of them SendGuard could not read)" if self._more_unread else ""
            self.problems.append(f"the message body carries {self._more} more uuencoded files{unread}, which mail "
                                 "programs show as attachments: check them yourself")


def _encoded_blocks(text: str, cut: bool) -> Iterator[tuple[str, bool, str, str]]:
    """(name, base64 or not, its lines, why it is incomplete or "") of each encoded block in ``text``, in one pass
    over the marks: a block ends at its own end line, else at the next begin line or the end of the text. A
    block that reads past its end would make thousands of begin lines read the rest of the body each."""
    begin: re.Match[str] | None = None
    for mark in _ENCODED_MARK.finditer(text):
        if mark.group(3) is None:  # a begin line
            if begin is not None:
                yield _block(begin, text[begin.end() : mark.start()], "its end line is missing before the next file")
            begin = mark
        elif begin is not None and mark.group(3) == _end_line(begin):
            yield _block(begin, text[begin.end() : mark.start()], "")
            begin = None
    if begin is not None:
        yield _block(begin, text[begin.end() :],
                     f"its end line is past the first {TEXT_SCAN_LIMIT // 1_000_000} million characters SendGuard "
                     "reads of a body" if cut else f"its end line ({_end_line(begin)}) is missing: it is cut off")


def _end_line(begin: re.Match[str]) -> str:
    return "====" if begin.group(1) else "end"


def _block(begin: re.Match[str], lines: str, why: str) -> tuple[str, bool, str, str]:
    return begin.group(2).strip()[:200], begin.group(1) is not None, lines, why


def _base64_decode(block: str) -> tuple[bytes, str]:
    """The bytes of base64 lines, and why they are broken (or ""): then what is base64 of them is decoded."""
    data = "".join(block.split()).encode("ascii", "replace")
    try:
        return binascii.a2b_base64(data, strict_mode=True), ""
    except binascii.Error as exc:
        why = f"broken base64: {exc}"
    data = re.sub(rb"[^A-Za-z0-9+/]+", b"", data)
    return binascii.a2b_base64(data[: len(data) - len(data) % 4]), why


def _uudecode(block: str) -> bytes:
    """Decode uuencoded lines, skipping the ones that are not (a line wrapped or added by the way);
    a line a mail server stripped of trailing spaces, or padded, or indented, still decodes."""
    out: list[bytes] = []
    for line in block.splitlines():
        line = line.lstrip(" \t")  # no data line starts with a space: its first character is its length
        if not line.strip():
            continue
        try:
            out.append(binascii.a2b_uu(line))
        except (binascii.Error, ValueError):
            # the uu module's workaround: keep only the characters the line's length byte promises
            try:
                out.append(binascii.a2b_uu(line[: (((ord(line[0]) - 32) & 63) * 4 + 5) // 3]))
            except (binascii.Error, ValueError):
                continue
    return b"".join(out)


_BOUNDARY_LINE = re.compile(r"(?m)^--([^\s]{1,70}?)(?:--)?[ \t]*\r?$")


def _broken_multipart(part: Message, budget: extract.Budget, depth: int, problems: list[str]) -> str:
    """The text to check of a multipart the email package could not split (no boundary parameter, or a
    boundary that never comes): all of it as text, and what the parts are when the boundary its body
    uses is taken instead. Always a problem, so the user sees the message."""
    boundary = part.get_boundary()
    why = "has no boundary parameter" if boundary is None else f"never shows its boundary {boundary!r}"
    problems.append(f"a {part.get_content_type()} part {why}, so its parts cannot be told apart: SendGuard "
                    "checked it as plain text; check it yourself, or fix the message in your mail client")
    payload = part.get_payload()
    raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    pieces = [clean_text(raw.decode("ascii", "surrogateescape"))[:TEXT_SCAN_LIMIT]]
    used = _BOUNDARY_LINE.search(pieces[0])
    if used is not None:
        header = f'Content-Type: {part.get_content_type()}; boundary="{used.group(1)}"\n\n'.encode()
        found = extract.extract("parts.eml", "message/rfc822", header + raw, budget, depth)
        pieces.append(found.text)
        if found.uninspected:
            problems.append(f"in that {part.get_content_type()} part: {found.uninspected}")
        problems.extend(f"in that {part.get_content_type()} part: {p}" for p in found.problems)
    return "\n".join(pieces)


def _recipients(msg: Message, envelope_recipients: Iterable[str], problems: list[str],
                index: HeaderIndex | None = None) -> list[Recipient]:
    """To, Cc, Bcc, meeting attendees (even when the headers do not name them), then envelope-only
    addresses as Bcc; each address once, in that order."""
    found: dict[str, Recipient] = {}

    def add(rcpt: Recipient | None) -> None:
        if rcpt is not None and rcpt.address not in found:
            found[rcpt.address] = rcpt

    for header in ("to", "cc", "bcc"):
        for display, addr_spec in _header_addresses(msg, header, index):
            rcpt = make_recipient(addr_spec, display, header)
            if rcpt is None and (addr_spec or display):
                problems.append(f"unreadable address in {header.title()}: {clean_text(addr_spec or display)!r}")
            add(rcpt)
    for display, addr_spec in calendar_attendees(msg):
        add(make_recipient(addr_spec, display, "attendee"))
    for addr in envelope_recipients:
        add(make_recipient(addr, "", "bcc"))
    return list(found.values())


def _sender(msg: Message, envelope_from: str, problems: list[str], index: HeaderIndex | None = None) -> tuple[str, str]:
    """(display name, lower-cased address) of From; the envelope sender when From has no address."""
    from_pairs = _header_addresses(msg, "from", index)
    from_name, from_address = ("", "")
    if from_pairs:
        from_name, from_address = from_pairs[0]
        from_address = clean_text(from_address).strip().lower()
        if "@" not in from_address:
            problems.append(f"invalid From address {from_address!r}")
            from_address = ""
    else:
        problems.append("the message has no From address")
    if not from_address and envelope_from:
        from_address = envelope_from.lower()
    return clean_text(from_name or ""), from_address


def _attachment(att_id: str, part: Message, elided: _Elided | None, budget: extract.Budget, depth: int,
                problems: list[str]) -> Attachment:
    """One attachment with its content's text and flags, or the reason it could not be read."""
    name = _filename(part, int(att_id))
    ctype = _content_type(part)
    data, size, digest, head = _content(part, name, elided, problems)
    att = Attachment(id=att_id, filename=name, size=size, content_type=ctype, sha256=digest,
                     inline=_is_inline(part, ctype), is_message=ctype == "message/rfc822",
                     head=head, data=data, ref=part.get("X-SendGuard-Attachment-Ref", ""))
    declared = part.get_param("size", header="content-disposition")
    kind = extract.kind_of(name, ctype, head)
    if not size and isinstance(declared, str) and declared.isdigit():
        att.size = int(declared)  # content not supplied (add-in check): keep the real size
        if kind not in ("none", "unreadable"):
            att.uninspected = "its content was not handed to SendGuard"
    elif size and not data and kind != "none":
        att.uninspected = f"larger than {KEEP_LIMIT // (1024 * 1024)} MB"
    else:
        found = extract.extract(name, ctype, data, budget, depth, part.get_content_charset())
        att.text, att.flags, att.uninspected = found.text, found.flags, found.uninspected
        problems.extend(f"in {name}: {p}" for p in found.problems)
    return att


def load(raw: bytes) -> EmailMessage:
    """The ``EmailMessage`` for rewriting (policy.default)."""
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]
