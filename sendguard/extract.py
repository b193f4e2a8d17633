"""Text of attachments for the personal-data and keyword checks.

Reads text in any declared or detected charset, HTML, docx, xlsx (shared and inline strings and
numeric cells), pptx, OpenDocument (odt, ods, odp), PDF (pypdf: plain and Flate streams), the members
of unencrypted zip archives (also under other names: epub, kmz, a zip named .dat) and attached
messages, recursively; a program inside a zip flags the zip. Every message gets one ``Budget`` (bytes decompressed, seconds,
depth): what does not fit, or cannot be read, is reported as *uninspected* with the reason, so the
policy never shows such a file as checked. No network, no files: bytes in, text out.
"""

from __future__ import annotations

import codecs
import html
import io
import logging
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import detect

log = logging.getLogger(__name__)

TEXT_LIMIT = 8_000_000  # characters of text kept per attachment for the checks
BUDGET_BYTES = 256 * 1024 * 1024  # decompressed bytes read per message (zip bombs stop here)
BUDGET_SECONDS = 20.0  # wall time spent extracting per message
MAX_DEPTH = 4  # zip in zip in message in ...
_CHUNK = 1024 * 1024

TEXT_EXTS = (".txt", ".csv", ".tsv", ".json", ".xml", ".htm", ".html", ".md", ".log", ".ics", ".vcf", ".eml")
OFFICE_EXTS = (".docx", ".docm", ".xlsx", ".xlsm", ".pptx", ".pptm")
ODF_EXTS = (".odt", ".ods", ".odp", ".odg", ".ott", ".ots", ".otp")
# formats that hold text SendGuard cannot read: said so instead of shown as checked
UNREADABLE_EXTS = {".doc": "Word 97-2003", ".xls": "Excel 97-2003", ".ppt": "PowerPoint 97-2003",
                   ".rtf": "RTF", ".7z": "7-Zip", ".rar": "RAR", ".lzh": "LZH", ".gz": "gzip", ".tgz": "gzip",
                   ".tar": "tar", ".bz2": "bzip2", ".xz": "xz", ".cab": "CAB", ".odt": "OpenDocument",
                   ".ods": "OpenDocument", ".odp": "OpenDocument", ".msg": "Outlook .msg", ".one": "OneNote"}


class Uninspectable(Exception):
    """This content cannot be read within the budget; the message says why, for the user."""


@dataclass
class Budget:
    """What one message may cost to inspect; shared by all its attachments and their members."""

    bytes_left: int = BUDGET_BYTES
    seconds: float = BUDGET_SECONDS
    started: float = field(default_factory=time.monotonic)

    def spend(self, size: int) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise Uninspectable(f"more than {BUDGET_BYTES // (1024 * 1024)} MB of content to read")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() - self.started > self.seconds:
            raise Uninspectable(f"inspection took longer than {self.seconds:g} s")


@dataclass
class Extracted:
    text: str = ""
    flags: list[str] = field(default_factory=list)  # found inside: "encrypted"
    uninspected: str = ""  # why (part of) the content could not be read
    # what an attached message (also one inside a zip) had wrong, as its ``ParsedMessage.problems``: the
    # outer message's problems too, named after where they are
    problems: list[str] = field(default_factory=list)

    def found_inside(self, flags: Iterable[str]) -> None:
        """Flags of something inside (a zip's member, an attached message's file) are this file's too."""
        self.flags.extend(f for f in dict.fromkeys(flags) if f not in self.flags)

    def program_inside(self, name: str, content_type: str, head: bytes) -> None:
        """A program inside is a program sent: ``executable`` when this file inside is one."""
        if "executable" not in self.flags and "executable" in detect.file_flags(name, content_type, head, b""):
            self.flags.append("executable")


# ---------------------------------------------------------------- text and charsets

_JA_CODECS = ("cp932", "euc-jp", "iso-2022-jp", "gb18030", "big5")


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes as text: the declared charset if it fits, else UTF-8, else the detected Japanese or
    Chinese codec (Shift_JIS CSV saved by Excel carries no charset), else UTF-8 with replacements."""
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        codec = "utf-8-sig" if data[:1] == b"\xef" else "utf-16"
        return data.decode(codec, "replace")
    if declared:
        try:
            return data.decode(declared)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x1b$" in data[:65536]:
        try:
            return data.decode("iso-2022-jp")
        except UnicodeDecodeError:
            pass
    guess = _detect(data)
    for codec in ((guess,) if guess else ()) + _JA_CODECS:
        try:
            return data.decode(codec)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode(guess or "utf-8", "replace")


def _detect(data: bytes) -> str | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - a dependency; the codec list still works
        return None
    best = from_bytes(data[:262144], cp_isolation=["cp932", "euc_jp", "iso2022_jp", "gb18030", "big5", "utf_8",
                                                  "cp1252"]).best()
    return best.encoding if best else None


_BLOCK_NAMES = "p|div|br|tr|li|h[1-6]|table|section|article|blockquote|pre|hr|dd|dt|ul|ol"
# possessive: with backtracking, a '<' before 20,000 spaces took 44 s trying every split of them
_BLOCK_TAGS = re.compile(rf"(?i)<\s*+/?+\s*+(?:{_BLOCK_NAMES})\b[^>]*+>")
_CELL_TAGS = re.compile(r"(?i)<\s*+/?+\s*+(?:td|th)\b[^>]*+>")
_ANY_TAG = re.compile(r"(?s)<[^>]*+>")
_SPACES = str.maketrans({"\xa0": " ", "\u2007": " ", "\u202f": " ", "\u2009": " ", "\u200a": " ", "\u3000": " ",
                         "\u200b": None, "\u2060": None, "\ufeff": None, "\u00ad": None})
# elements whose content a mail program does not show (<head> holds <title>, <style>, <meta>); which one it is by
# the group that matched
_UNSHOWN_OPEN = re.compile(r"(?i)<(?:(script)|(style)|(head))\b")
_SCRIPT, _STYLE, _HEAD = 1, 2, 3
_END_TAGS = {_SCRIPT: re.compile(r"(?i)</script\s*>"), _STYLE: re.compile(r"(?i)</style\s*>"),
             _HEAD: re.compile(r"(?i)</head\s*>")}
_SAME_NAME = re.compile(r"(?i)(.+)\x00\1")


def html_to_text(markup: str) -> str:
    """Readable text of HTML: block ends become line breaks, inline tags vanish (so digits split by
    <span> or &nbsp; still read as one number), entities decoded, no-break spaces made plain."""
    return html_parts(markup, 0)[0]


def html_parts(markup: str, keep: int = TEXT_LIMIT) -> tuple[str, str]:
    """(text shown, source not shown) of HTML: ``html_to_text``'s text, and the source a mail program does not show
    but sends (comments, a comment never closed to the end, <head> with its <title>, <script>, and the text of
    attributes shown only for a missing image, on hover or to a screen reader: alt, title...), at most ``keep``
    characters, the pieces a line apart. Read for personal data, keywords and encoded files only. The CSS of a
    <style> is left out: the mail program or the template wrote it, and with its digits the personal-data check
    of a newsletter's CSS took five times as long as that of its text."""
    unshown = _Unshown(keep)
    markup = _without_elements(markup, unshown)
    markup = _without_comments(markup, unshown)
    _attribute_text(markup, unshown)
    markup = _tags_replaced(_BLOCK_TAGS, "\n", markup)
    markup = _tags_replaced(_CELL_TAGS, "\t", markup)
    markup = _tags_replaced(_ANY_TAG, "", markup)
    return normalize_spaces(html.unescape(markup)), "\n".join(unshown.pieces)


class _Unshown:
    """The source not shown, kept up to ``room`` characters."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.pieces: list[str] = []

    def add(self, markup: str, start: int, end: int) -> None:
        if self.room > 0 and end > start:
            piece = markup[start : min(end, start + self.room)]
            self.pieces.append(piece)
            self.room -= len(piece) + 1


def _without_elements(markup: str, unshown: _Unshown, in_head: bool = False) -> str:
    """``markup`` with each <script>, <style> and <head> element a space, exactly as
    ``re.sub(r"(?is)<(script|style|head)\\b.*?</\\1\\s*>", " ", markup)`` gives it, but in linear time: that read to
    the end of the text from every start tag that has no end tag (25,000 '<script>' took 24 s). A start tag whose
    end tag is not found rules out the later ones of its name."""
    found = _UNSHOWN_OPEN.search(markup)
    if found is None:
        return markup
    out: list[str] = []
    done = 0
    unclosed: set[str] = set()  # (lower-cased: the end tag matches the start tag's name in any case)
    while found is not None:
        start = found.start()
        kind = found.lastindex
        name = found.group(kind or 0).lower()
        end = None if name in unclosed else _end_of(markup, found)
        if end is None:
            unclosed.add(name)
            found = _UNSHOWN_OPEN.search(markup, start + 1)
            continue
        out += (markup[done:start], " ")
        if kind == _SCRIPT or (kind == _HEAD and in_head):
            unshown.add(markup, start, end)
        elif kind == _HEAD and unshown.room > 0:  # its <title>, <meta>, comments and scripts, not its CSS
            inner = markup[markup.find(">", found.end()) + 1 : end]  # (after its start tag)
            inner = _without_elements(inner, unshown, in_head=True)
            unshown.add(inner, 0, len(inner))
        done = end
        found = _UNSHOWN_OPEN.search(markup, done)
    out.append(markup[done:])
    return "".join(out)


def _end_of(markup: str, start_tag: re.Match[str]) -> int | None:
    """Where the element of ``start_tag`` ends, or None: after the first end tag of its name as the pattern of
    ``_without_elements`` finds it (``</\\1\\s*>``, the name a backreference). End tags are found by their '</'
    (the regex engine skips to it), not tried at every character of the CSS or script between: that was most of
    the time a newsletter's HTML took to read."""
    name = start_tag.group(start_tag.lastindex or 0)
    end_tag = _END_TAGS[start_tag.lastindex or 0]
    pos = start_tag.end()
    while (found := end_tag.search(markup, pos)) is not None:
        written = markup[found.start() + 2 : found.start() + 2 + len(name)]
        # (a case-insensitive letter also takes the long s for 's', a backreference does not)
        if (written.isascii() and name.isascii()) or _SAME_NAME.fullmatch(f"{name}\x00{written}"):
            return found.end()
        pos = found.start() + 1
    return None


def _without_comments(markup: str, unshown: _Unshown) -> str:
    """``markup`` without its comments, exactly as ``re.sub(r"(?s)<!--.*?-->", "", markup)`` gives it, in linear
    time (that read to the end from each of thousands of unclosed ones: 54 s). The text of an unclosed comment is
    left in place, as before, yet the recipient's program hides the rest of the page: it is kept as unshown too."""
    start = markup.find("<!--")
    if start < 0:
        return markup
    out: list[str] = []
    done = 0
    while start >= 0:
        end = markup.find("-->", start + 4)
        if end < 0:
            unshown.add(markup, start + 4, len(markup))
            break
        out.append(markup[done:start])
        unshown.add(markup, start + 4, end)
        done = end + 3
        start = markup.find("<!--", done)
    out.append(markup[done:])
    return "".join(out)


# attributes whose text a mail program shows only now and then: for an image not loaded (most programs do not load
# them), on hover, to a screen reader, in a form field. The value quoted either way or bare.
_SHOWN_SOMETIMES = re.compile(
    r"""(?i)[\s"'/](?:alt|title|aria-label|aria-description|placeholder|value|summary|label)\s*+=\s*+"""
    r"""(?:"([^"]*+)"|'([^']*+)'|([^\s"'<>=`]++))""")


def _attribute_text(markup: str, unshown: _Unshown) -> None:
    """Keep the text of such attributes of the tags left (comments and unshown elements are out already) as
    unshown source, each value a piece; one pass over the tags, then over the few that have a '='."""
    if unshown.room <= 0 or "=" not in markup:
        return
    end = markup.rfind(">") + 1
    for tag in _ANY_TAG.finditer(markup, 0, end):
        if "=" not in tag.group():
            continue
        for found in _SHOWN_SOMETIMES.finditer(tag.group()):
            value = found.group(found.lastindex or 0)
            if value.strip():
                unshown.add(value, 0, len(value))


def _tags_replaced(tag: re.Pattern[str], replacement: str, markup: str) -> str:
    """``tag.sub(replacement, markup)`` for a tag pattern ending in ``[^>]*+>``: no tag reaches past the last '>',
    and leaving the text after it out keeps the regex from reading to the end from every '<' there (200,000 '<'
    took 27 s)."""
    end = markup.rfind(">") + 1
    if end == len(markup):
        return tag.sub(replacement, markup)
    return tag.sub(replacement, markup[:end]) + markup[end:]


# in source not shown, a tag is a '<' and a letter, '/', '!' or '?' up to the next '>', never past another '<': a
# comment holds whatever was pasted, and '価格 < 100' must not hide the text after it
_UNSHOWN_BLOCK = re.compile(rf"(?i)<\s*+/?+\s*+(?:{_BLOCK_NAMES})\b[^<>]*+>")
_UNSHOWN_CELL = re.compile(r"(?i)<\s*+/?+\s*+(?:td|th)\b[^<>]*+>")
_UNSHOWN_TAG = re.compile(r"<[A-Za-z/!?][^<>]*+>")


def unshown_text(source: str) -> str:
    """The text of HTML source not shown (``html_parts``), read as ``html_to_text`` reads markup (a template left
    in a comment is markup), comments inside it included, for the personal-data and keyword checks."""
    source = source.replace("<!--", "\n").replace("-->", "\n")
    source = _UNSHOWN_BLOCK.sub("\n", source)
    source = _UNSHOWN_CELL.sub("\t", source)
    source = _UNSHOWN_TAG.sub("", source)
    return normalize_spaces(html.unescape(source))


_NEEDS_SPACES = re.compile("[\xa0\u2007\u202f\u2009\u200a\u3000\u200b\u2060\ufeff\u00ad]")


def normalize_spaces(text: str) -> str:
    """No-break, thin and ideographic spaces as plain spaces; invisible characters dropped."""
    return text.translate(_SPACES) if _NEEDS_SPACES.search(text) else text


# ---------------------------------------------------------------- Office Open XML

_XML_BREAKS = re.compile(r"</w:p>|</a:p>|<w:br\b[^>]*/>|<w:tab\b[^>]*/>|<a:br\b[^>]*/>|</si>|</c>|</row>|<w:cr\b[^>]*/>")
_XML_TAG = re.compile(r"<[^>]*>")
_SCI = re.compile(r"^-?\d+(?:\.\d+)?[eE][+-]?\d+$")


def _xml_text(xml: str) -> str:
    return html.unescape(_XML_TAG.sub("", _XML_BREAKS.sub("\n", xml)))


def _number(value: str) -> str:
    """A numeric cell as written by a person: 1.23456789018E+11 -> 123456789018."""
    if _SCI.match(value):
        try:
            number = float(value)
        except ValueError:
            return value
        if number.is_integer() and abs(number) < 1e20:
            return str(int(number))
    if value.endswith(".0") and value[:-2].lstrip("-").isdigit():
        return value[:-2]
    return value


_LONG_NUMBER = 12  # the shortest personal number (My Number); shorter cells cannot hold one
# inline strings, and numeric cells long enough to hold a personal number (plain or 1.23E+11)
_SHEET_TEXT = re.compile(r"<t(?:\s[^>]*)?>([^<]*)</t>|<v>(-?\d[\d.]{11,}|-?\d(?:\.\d+)?[eE]\+?\d+)</v>")


def _sheet_values(xml: str) -> str:
    """A worksheet's own text: inline strings and the numeric cells that could be a personal number.
    A sheet of prices and quantities stays small; shared strings are read once from their own part."""
    out = []
    for text, number in _SHEET_TEXT.findall(xml):
        if number:
            number = _number(number)
            if sum(ch.isdigit() for ch in number) >= _LONG_NUMBER:
                out.append(number)
        elif text:
            out.append(text)
    return "\n".join(out) + "\n" if out else ""


def _office_members(ext: str, names: list[str]) -> list[str]:
    wanted: tuple[str, ...]
    if ext in (".docx", ".docm"):
        wanted = ("word/document.xml", "word/header", "word/footer", "word/footnotes.xml", "word/endnotes.xml",
                  "word/comments.xml")
    elif ext in (".xlsx", ".xlsm"):
        wanted = ("xl/sharedStrings.xml", "xl/worksheets/sheet", "xl/comments")
    else:
        wanted = ("ppt/slides/slide", "ppt/notesSlides/notesSlide")
    return [n for n in names if n.startswith(wanted) and n.endswith(".xml")]


def _read_member_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> Iterator[str]:
    """A member's XML, decoded piece by piece (never all at once), cut after closing tags."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    carry = ""
    with archive.open(info) as fh:
        while chunk := fh.read(_CHUNK):
            budget.spend(len(chunk))
            text = carry + decoder.decode(chunk)
            close = text.rfind("</")  # cut after a closing tag: never between <v> and its value
            cut = text.find(">", close) + 1 if close >= 0 else 0
            carry = text[cut:]
            if cut:
                yield text[:cut]
    carry += decoder.decode(b"", final=True)
    if carry:
        yield carry


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError)


def _member_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget, pieces: list[str], size: int,
                 convert: Callable[[str], str]) -> int:
    """Append the text of one XML member of an Office/OpenDocument zip to ``pieces``, within the text
    limit over the whole file; returns the characters read so far."""
    for xml in _read_member_text(archive, info, budget):
        text = convert(xml)
        size += len(text)
        if size > TEXT_LIMIT:
            raise Uninspectable(f"more than {TEXT_LIMIT // 1_000_000} million characters of text")
        pieces.append(text)
    return size


def office_text(ext: str, data: bytes, budget: Budget) -> Extracted:
    out = Extracted()
    pieces: list[str] = []
    size = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            for name in _office_members(ext, sorted(infos)):
                info = infos[name]
                if info.flag_bits & 0x1:
                    out.flags.append("encrypted")
                    continue
                is_sheet = name.startswith("xl/worksheets/")
                size = _member_text(archive, info, budget, pieces, size,
                                    (lambda xml: html.unescape(_sheet_values(xml))) if is_sheet else _xml_text)
    except _ZIP_ERRORS as exc:
        raise Uninspectable(f"damaged Office file: {exc}") from None
    out.text = "\n".join(pieces)
    return out


# ---------------------------------------------------------------- OpenDocument

_ODF_BREAKS = re.compile(r"</text:p>|</text:h>|<text:line-break\b[^>]*/>|<text:tab\b[^>]*/>|</table:table-cell>"
                         r"|</table:table-row>")
# a numeric cell's own value (the text shown may be rounded: 4.11E+15), when long enough for a personal number
_ODF_VALUE = re.compile(r'office:value="(-?\d[\d.]{11,}|-?\d(?:\.\d+)?[eE][+-]?\d+)"')


def _odf_xml_text(xml: str) -> str:
    numbers = [n for n in map(_number, _ODF_VALUE.findall(xml)) if sum(ch.isdigit() for ch in n) >= _LONG_NUMBER]
    text = html.unescape(_XML_TAG.sub("", _ODF_BREAKS.sub("\n", xml)))
    return text + ("\n" + "\n".join(numbers) if numbers else "")


def opendocument_text(data: bytes, budget: Budget) -> Extracted:
    """Text of an OpenDocument file (odt, ods, odp): content.xml and styles.xml (headers, footers);
    a password-protected one (its manifest names encryption data) is flagged."""
    out = Extracted()
    pieces: list[str] = []
    size = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            manifest = infos.get("META-INF/manifest.xml")
            if manifest is not None and manifest.file_size < 4 * 1024 * 1024:
                budget.spend(manifest.file_size)
                if b"encryption-data" in archive.read(manifest):
                    out.flags.append("encrypted")
                    return out
            if "content.xml" not in infos:
                raise Uninspectable("OpenDocument file without its content (content.xml)")
            for name in ("content.xml", "styles.xml"):
                info = infos.get(name)
                if info is None:
                    continue
                if info.flag_bits & 0x1:
                    out.flags.append("encrypted")
                    return out
                size = _member_text(archive, info, budget, pieces, size, _odf_xml_text)
    except _ZIP_ERRORS as exc:
        raise Uninspectable(f"damaged OpenDocument file: {exc}") from None
    out.text = normalize_spaces("\n".join(pieces))
    return out


# ---------------------------------------------------------------- PDF

def pdf_text(data: bytes, budget: Budget) -> Extracted:
    """Text of every page (pypdf decodes Flate and the other filters); encrypted PDFs are flagged."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:  # pragma: no cover - a dependency; without it a PDF is said to be unread
        raise Uninspectable("no PDF reader installed") from None
    if b"%PDF-" not in data[:1024]:
        raise Uninspectable("named or typed as PDF but not a PDF")
    # pypdf reports each oddity of a damaged file as a warning; the outcome is all we need
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    out = Extracted()
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    out.flags.append("encrypted")
                    return out
            except Exception:  # noqa: BLE001 - unsupported crypto: the file is password-protected
                out.flags.append("encrypted")
                return out
        pieces: list[str] = []
        size = 0
        for page in reader.pages:
            budget.check_time()
            text = page.extract_text() or ""
            size += len(text)
            if size > TEXT_LIMIT:
                raise Uninspectable(f"more than {TEXT_LIMIT // 1_000_000} million characters of text")
            pieces.append(text)
        out.text = normalize_spaces("\n".join(pieces))
    except Uninspectable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, zlib.error,
            RecursionError, AssertionError, OSError) as exc:
        raise Uninspectable(f"unreadable PDF: {type(exc).__name__}") from None
    return out


# ---------------------------------------------------------------- archives and messages

def zip_text(data: bytes, budget: Budget, depth: int) -> Extracted:
    """Each member of an unencrypted zip, read as if it were attached itself."""
    out = Extracted()
    pieces: list[str] = []
    problems: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                name = _zip_name(info)
                if info.flag_bits & 0x1:
                    out.found_inside(["encrypted"])
                    continue
                budget.spend(0)
                if info.file_size > budget.bytes_left:
                    raise Uninspectable(f"{name}: more than the {BUDGET_BYTES // (1024 * 1024)} MB of content "
                                        "SendGuard reads per message")
                with archive.open(info) as fh:
                    member = fh.read(info.file_size + 1)
                budget.spend(len(member))
                inner = extract(name, "", member, budget, depth + 1)
                out.program_inside(name, "", member[:4096])
                out.found_inside(inner.flags)
                if inner.uninspected:
                    problems.append(f"{name}: {inner.uninspected}")
                out.problems += [f"in {name}: {p}" for p in inner.problems]
                if inner.text:
                    pieces.append(inner.text)
    except _ZIP_ERRORS as exc:
        raise Uninspectable(f"damaged zip archive: {exc}") from None
    out.text = "\n".join(pieces)[:TEXT_LIMIT]
    out.uninspected = "; ".join(problems[:3]) + (f" (+{len(problems) - 3})" if len(problems) > 3 else "")
    return out


def _zip_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & 0x800:  # not flagged UTF-8: Japanese Windows writes Shift_JIS names
        try:
            name = name.encode("cp437").decode("cp932")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name


def message_text(data: bytes, budget: Budget, depth: int) -> Extracted:
    """An attached message: its subject, body and attachments, recursively."""
    from . import message  # message.py imports this module

    out = Extracted()
    try:
        inner = message.parse(data, require_recipients=False, budget=budget, depth=depth)
    except Uninspectable:
        raise
    except Exception as exc:  # noqa: BLE001 - a message we cannot parse is said to be unread, never checked
        raise Uninspectable(f"unreadable attached message: {type(exc).__name__}") from None
    pieces = [inner.subject, inner.body_text, inner.hidden_text]
    problems = []
    for att in inner.attachments:
        pieces.append(att.filename)
        if att.text:
            pieces.append(att.text)
        out.found_inside(att.flags)
        out.program_inside(att.filename, att.content_type, att.head)
        if att.uninspected:
            problems.append(f"{att.filename}: {att.uninspected}")
    for hidden in inner.hidden_files:  # uuencoded into its body: found inside, as an attachment's would be
        out.found_inside(f for f in hidden.flags if f in ("encrypted", "executable"))
    out.text = "\n".join(pieces)[:TEXT_LIMIT]
    out.uninspected = "; ".join(problems[:3])
    out.problems = inner.problems
    return out


# ---------------------------------------------------------------- dispatch

_TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"


def kind_of(filename: str, content_type: str, head: bytes) -> str:
    """Which reader applies: text, html, office, opendocument, pdf, zip, zip-other (a zip under another
    name: epub, jar, kmz, xps, .dat), message, tnef, unreadable, or none."""
    name = filename.lower().strip()
    ext = name[name.rfind(".") :] if "." in name else ""
    ctype = content_type.lower()
    if ctype == "message/rfc822" or ext == ".eml":
        return "message"
    if ctype in ("application/ms-tnef", "application/vnd.ms-tnef") or name == "winmail.dat" or \
            head.startswith(_TNEF_SIGNATURE):
        return "tnef"
    if head.startswith(b"%PDF") or ext == ".pdf" or ctype == "application/pdf":
        return "pdf"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        if ext in OFFICE_EXTS:
            return "office"
        if ext in ODF_EXTS or ctype.startswith("application/vnd.oasis.opendocument."):
            return "opendocument"
        return "zip" if ext in ("", ".zip", ".zipx") else "zip-other"
    if ext in OFFICE_EXTS:
        return "unreadable"  # an Office name without a zip inside (encrypted ones are flagged elsewhere)
    if ctype in ("text/html", "application/xhtml+xml") or ext in (".htm", ".html"):
        return "html"
    if ctype.startswith("text/") or ctype in ("application/json", "application/xml", "application/csv",
                                              "application/x-csv", "application/ics") or ext in TEXT_EXTS:
        return "text"
    if ext in UNREADABLE_EXTS:
        return "unreadable"
    return "none"


# bytes that text never holds (NUL and the C0 controls but tab, line breaks, form feed and ESC)
_BINARY_BYTES = bytes(set(range(32)) - {9, 10, 12, 13, 27}) + b"\x7f"


def looks_like_text(data: bytes) -> bool:
    """Whether content of no known type is text to read: a text BOM, or no NUL and hardly any other
    control byte in its first 64 KB (images, archives and programs are full of them)."""
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True
    head = data[:65536]
    if not head or b"\x00" in head:
        return False
    return len(head) - len(head.translate(None, _BINARY_BYTES)) <= len(head) // 1000


def extract(filename: str, content_type: str, data: bytes, budget: Budget, depth: int = 0,
            declared_charset: str | None = None) -> Extracted:
    """Text and inside-flags of one attachment; never raises: what fails is ``uninspected``."""
    kind = kind_of(filename, content_type, data[:8])
    name = filename.lower()
    ext = name[name.rfind(".") :] if "." in name else ""
    try:
        if depth > MAX_DEPTH and kind in ("zip", "zip-other", "message", "office", "opendocument"):
            raise Uninspectable(f"nested more than {MAX_DEPTH} levels deep")
        if kind == "text":
            return Extracted(normalize_spaces(decode_text(data[: TEXT_LIMIT * 2], declared_charset)[:TEXT_LIMIT]))
        if kind == "html":  # the source a browser does not show is read too: it is in the file sent
            text, unshown = html_parts(decode_text(data[: TEXT_LIMIT * 4], declared_charset), TEXT_LIMIT)
            return Extracted((text[:TEXT_LIMIT] + "\n" + unshown_text(unshown) if unshown else text)[:TEXT_LIMIT])
        if kind == "office":
            return office_text(ext, data, budget)
        if kind == "pdf":
            return pdf_text(data, budget)
        if kind == "zip" or kind == "zip-other":  # an epub, a kmz, a zip named .dat: its members are read
            return zip_text(data, budget, depth)
        if kind == "opendocument":
            return opendocument_text(data, budget)
        if kind == "tnef":
            return Extracted(uninspected="SendGuard cannot read TNEF files (winmail.dat: Outlook's rich text "
                                         "format, which can hold the real attachments)")
        if kind == "message":
            return message_text(data, budget, depth + 1)
        if kind == "none" and looks_like_text(data):
            # a file of no known type that is text all the same (an unnamed application/octet-stream CSV)
            return Extracted(normalize_spaces(decode_text(data[: TEXT_LIMIT * 2], declared_charset)[:TEXT_LIMIT]))
        if kind == "unreadable":
            if ext in OFFICE_EXTS and data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
                return Extracted()  # a password-protected Office file: flagged "encrypted" by its type
            return Extracted(uninspected=f"SendGuard cannot read {UNREADABLE_EXTS.get(ext, ext or 'this')} files")
        return Extracted()
    except Uninspectable as exc:
        return Extracted(uninspected=str(exc))
    except MemoryError:
        return Extracted(uninspected="too large to inspect in memory")
