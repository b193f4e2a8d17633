"""Pure detectors used by the policy: personal data, file types, lookalike domains. No I/O."""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

# puremagic, confusable_homoglyphs, publicsuffixlist and rapidfuzz are imported where first used: loading
# their tables is most of a command's start-up otherwise (``sendguard check`` of a plain message)

# ---------------------------------------------------------------- personal data

# full-width digits read as digits; no-break, thin and ideographic spaces as plain spaces (HTML &nbsp;)
_DIGITS = str.maketrans("０１２３４５６７８９\xa0\u2007\u202f\u2009\u3000－", "0123456789     -")
_NEEDS_DIGITS = re.compile("[０-９\xa0\u2007\u202f\u2009\u3000－]")


def _plain_digits(text: str) -> str:
    """Full-width digits and odd spaces as ASCII (translating only text that has any: a dict
    translation walks every character in Python-level lookups)."""
    return text.translate(_DIGITS) if _NEEDS_DIGITS.search(text) else text
# 13-19 digits, optionally grouped by single spaces or hyphens; not glued to other digits (no digit or
# hyphen, nor a digit and a space, right before the first digit). Both patterns begin with the digit and
# look behind it from there: the regex engine then skips text without digits in its fast scan instead
# of trying the look-behinds at every character (about 6x faster on a typical body, same matches).
_CARD_RE = re.compile(r"\d(?<![\d-]\d)(?<!\d \d)[ -]?(?:\d[ -]?){11,17}\d(?!\d)(?![ -]\d)")
# 12 digits, plain or as 4-4-4 with one separator style.
_MYNUMBER_RE = re.compile(r"(\d(?<![\d-]\d)(?<!\d \d)\d{3})([ -]?)(\d{4})\2(\d{4})(?!\d)(?![ -]\d)")


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` passes the Luhn (mod 10) check."""
    total = 0
    for index, ch in enumerate(reversed(digits)):
        value = ord(ch) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def mynumber_ok(digits: str) -> bool:
    """True when a 12-digit string has a valid My Number (個人番号) check digit."""
    if len(digits) != 12 or not digits.isdigit():
        return False
    body = digits[:11]
    total = 0
    for n in range(1, 12):  # P_n is the n-th digit from the right of the 11-digit body
        p = ord(body[11 - n]) - 48
        q = n + 1 if n <= 6 else n - 5
        total += p * q
    remainder = total % 11
    check = 0 if remainder <= 1 else 11 - remainder
    return check == ord(digits[11]) - 48


def find_card_numbers(text: str) -> list[str]:
    """Payment card numbers (14-19 digits, Luhn-valid, not one repeated digit)."""
    return _card_numbers(_plain_digits(text))


def _card_numbers(plain: str) -> list[str]:
    found = []
    for match in _CARD_RE.finditer(plain):
        chunk = match.group(0)
        if "  " in chunk or "--" in chunk:
            continue
        digits = re.sub(r"\D", "", chunk)
        if 14 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits):
            found.append(digits)
    return found


def find_my_numbers(text: str) -> list[str]:
    """12-digit individual numbers whose check digit is valid."""
    return _my_numbers(_plain_digits(text))


def _my_numbers(plain: str) -> list[str]:
    found = []
    for match in _MYNUMBER_RE.finditer(plain):
        digits = match.group(1) + match.group(3) + match.group(4)
        if len(set(digits)) > 1 and mynumber_ok(digits):
            found.append(digits)
    return found


def personal_data_kinds(text: str) -> list[str]:
    """Which kinds of personal data appear: ``card_number`` and/or ``my_number``."""
    kinds = []
    plain = _plain_digits(text)
    if _card_numbers(plain):
        kinds.append("card_number")
    if _my_numbers(plain):
        kinds.append("my_number")
    return kinds


# ---------------------------------------------------------------- file types

EXECUTABLE_EXTS = {
    ".exe", ".scr", ".com", ".pif", ".bat", ".cmd", ".msi", ".msp", ".dll", ".cpl", ".jar", ".js", ".jse",
    ".vbs", ".vbe", ".wsf", ".wsh", ".ps1", ".psm1", ".hta", ".lnk", ".reg", ".sh", ".app", ".apk",
    ".iso", ".img", ".docm", ".xlsm", ".pptm",
}
ARCHIVE_EXTS = {".zip", ".7z", ".rar", ".lzh", ".lha", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".cab", ".zipx"}
_MAGIC_FAMILY = {
    # family name -> extensions that legitimately carry it
    "zip": {".zip", ".docx", ".xlsx", ".pptx", ".docm", ".xlsm", ".pptm", ".odt", ".ods", ".odp", ".jar",
            ".apk", ".epub", ".zipx", ".xps", ".vsdx", ".kmz", ".ipa"},
    "ole": {".doc", ".xls", ".ppt", ".msg", ".msi", ".vsd", ".pub"},
    "pdf": {".pdf", ".ai"},
    "jpeg": {".jpg", ".jpeg", ".jfif", ".jpe"},
    "png": {".png"},
    "gif": {".gif"},
    "exe": {".exe", ".dll", ".scr", ".com", ".sys", ".cpl", ".msi", ".ocx"},
    "elf": {".so", ".elf", ".bin", ""},
    "rar": {".rar"},
    "7z": {".7z"},
    "gzip": {".gz", ".tgz"},
}
_SIGNATURES = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (b"%PDF-", "pdf"), (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"),
    (b"MZ", "exe"), (b"\x7fELF", "elf"), (b"Rar!\x1a\x07", "rar"), (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x1f\x8b", "gzip"),
)


def extension(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].strip().rstrip(".").lower()
    return base[base.rfind(".") :] if "." in base else ""


@lru_cache(maxsize=512)  # a message is checked at intake and again at Send: identify each head once
def magic_family(head: bytes) -> str | None:
    """The content family from magic bytes (the common types first, puremagic for the rest)."""
    for sig, family in _SIGNATURES:
        if head.startswith(sig):
            return family
    if len(head) < 8:
        return None
    import puremagic

    try:
        guess = puremagic.from_string(head)
    except (puremagic.PureError, ValueError):
        return None
    for family, exts in _MAGIC_FAMILY.items():
        if guess in exts and guess:
            return family
    return None


def hidden_extension(filename: str) -> str:
    """Extension after right-to-left overrides are taken into account (``ann\u202egpj.exe`` is .exe)."""
    return extension(filename.replace("\u202e", "").replace("\u202d", ""))


def file_flags(filename: str, content_type: str, head: bytes, data: bytes) -> list[str]:
    """Attachment flags from name and content: executable, archive, encrypted, type_mismatch."""
    flags: list[str] = []
    ext = hidden_extension(filename)
    family = magic_family(head)
    if ext in EXECUTABLE_EXTS or family in ("exe", "elf") or any(
        ch in filename for ch in ("\u202e", "\u202d", "\u2066", "\u2067", "\u2068")
    ):
        flags.append("executable")
    if ext in ARCHIVE_EXTS or family in ("rar", "7z", "gzip") or (family == "zip" and ext in ("", ".zip")):
        flags.append("archive")
    if family == "zip" and zip_encrypted(data):
        flags.append("encrypted")
    elif family == "pdf" and pdf_encrypted(data):
        flags.append("encrypted")
    elif family == "ole" and ext in _OOXML_EXTS and ooxml_encrypted(data):
        flags.append("encrypted")  # a password-protected .docx/.xlsx/.pptx is an OLE file inside
        return flags
    if family and ext and ext not in _MAGIC_FAMILY.get(family, set()):
        flags.append("type_mismatch")
    return flags


_OOXML_EXTS = {".docx", ".xlsx", ".pptx", ".docm", ".xlsm", ".pptm"}
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
_PDF_ENCRYPT = re.compile(rb"/Encrypt\s*(?:\d+\s+\d+\s+R|<<)")
_HARMLESS_FAMILIES = {"jpeg", "png", "gif"}


def ooxml_encrypted(data: bytes) -> bool:
    """An Office document saved with a password: an OLE container holding an EncryptedPackage stream."""
    return _ENCRYPTED_PACKAGE in data[:4 * 1024 * 1024]


def pdf_encrypted(data: bytes) -> bool:
    """A PDF with an /Encrypt dictionary in its trailer (looked for near the end, then anywhere)."""
    return _PDF_ENCRYPT.search(data[-65536:]) is not None or _PDF_ENCRYPT.search(data) is not None


def disguised(filename: str, head: bytes) -> bool:
    """A type mismatch that hides something: content other than an image under a foreign extension
    (a zip named .pdf, a program named .jpg). A PNG saved as .jpg is only sloppy, not disguised."""
    family = magic_family(head)
    return family is not None and family not in _HARMLESS_FAMILIES


def zip_encrypted(data: bytes) -> bool:
    """True when any member of a zip is encrypted (the PPAP pattern)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(info.flag_bits & 0x1 for info in archive.infolist())
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError, NotImplementedError):
        return False


# ---------------------------------------------------------------- domains


@lru_cache(maxsize=2)
def _psl(encoded_idn: bool) -> PublicSuffixList:
    """The public suffix list; with ``encoded_idn`` it also knows each IDN rule in its xn-- form, which
    takes most of its loading time and only matters for a domain with an xn-- label in it."""
    from publicsuffixlist import PSLFILE, PublicSuffixList

    if encoded_idn:
        return PublicSuffixList()
    # The rules PublicSuffixList(accept_encoded_idn=False) reads, set in place of its own parsing: reading
    # them is most of `sendguard check`'s start. tests/test_read_paths.py keeps the two the same.
    psl = PublicSuffixList(source="")
    if not hasattr(psl, "_publicsuffix") or not hasattr(psl, "_maxlabel"):  # another version: its own way
        return PublicSuffixList(accept_encoded_idn=False)
    psl._publicsuffix, psl._maxlabel = _suffix_rules(PSLFILE)
    return psl


_RULE = re.compile(r"^([^/\s]\S*)", re.MULTILINE)  # a rule is a line's first word; comments start with //
_RULES_CACHE_FORMAT = 1


def _suffix_rules(source: str) -> tuple[frozenset[str], int]:
    """The public suffix rules in the file ``source`` (lower case) and the most labels a rule has.

    Once read they are kept in the home's ``cache`` folder, marked with the file's size and time (a
    newer list is read again): reading 10,000 rules takes 10 ms, their cached copy under 2. A cache that
    cannot be read or written is passed over; a home that does not exist yet is not created for it."""
    import marshal
    import os

    from . import paths

    stat = os.stat(source)
    key = (_RULES_CACHE_FORMAT, os.path.abspath(source), stat.st_size, stat.st_mtime_ns)
    home = paths.home_path()
    cache = home / "cache" / "public_suffix_rules.marshal"
    try:
        found = marshal.loads(cache.read_bytes())
        if isinstance(found, tuple) and len(found) == 3 and found[0] == key and isinstance(found[1], frozenset):
            return found[1], int(found[2])
    except (OSError, ValueError, EOFError, TypeError):
        pass
    with open(source, encoding="utf-8", errors="replace") as fh:
        rules = frozenset(_RULE.findall(fh.read().lower()))
    most = max(rule.count(".") for rule in rules) + 1
    if home.is_dir():
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            cache.parent.mkdir(mode=0o700, exist_ok=True)
            with paths.open_private(tmp) as fh:
                fh.write(marshal.dumps((key, rules, most)))
            os.replace(tmp, cache)
        except OSError:
            tmp.unlink(missing_ok=True)
    return rules, most


@lru_cache(maxsize=16384)
def registrable(domain: str) -> tuple[str, str]:
    """(label, public suffix) of a domain: ``mail.example.co.jp`` -> (``example``, ``co.jp``)."""
    domain = domain.lower().rstrip(".")
    suffix = _psl("xn--" in domain).publicsuffix(domain) or domain.rpartition(".")[2]
    head = domain[: -len(suffix)].rstrip(".") if domain.endswith(suffix) else domain
    return head.rpartition(".")[2], suffix


def in_domain(domain: str, parent: str) -> bool:
    """``domain`` is ``parent`` or one of its subdomains."""
    domain, parent = domain.lower(), parent.lower()
    return domain == parent or domain.endswith("." + parent)


_ASCII_LOOKALIKES = (("rn", "m"), ("vv", "w"), ("cl", "d"), ("0", "o"), ("1", "l"), ("i", "l"), ("5", "s"))
# Japanese look-alikes that Unicode's confusables (confusable_homoglyphs) do not pair: hiragana and
# katakana of the same shape, small kana and their full-size kana, a few more kanji and katakana.
_KANA_LOOKALIKES = (
    ("べぺりぁぃぅぇぉっゃゅょゎゕゖ", "ベペリあいうえおつやゆよわかけ"),
    ("ァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ", "アイウエオツヤユヨワカケクシストヌハヒフヘホムラリルレロ"),
    ("才匕厶乂千", "オヒムメチ"),
)


@lru_cache(maxsize=1)
def _kana_fold() -> dict[int, str]:
    """A translate table folding kana and kanji that look alike to one form (口/ロ, 力/カ, へ/ヘ, ッ/ツ, 一/ー -> -):
    the Han and hiragana that Unicode's confusables pair with a katakana become that katakana, the dashes
    paired with the long-vowel mark ー (and ー itself) a hyphen, then the pairs above."""
    from confusable_homoglyphs.categories import alias
    from confusable_homoglyphs.confusables import confusables_data

    table: dict[int, str] = {}
    for char in map(chr, range(0x30A1, 0x30FB)):  # the katakana letters
        for glyph in confusables_data.get(char, ()):
            if len(glyph["c"]) == 1 and alias(glyph["c"]) in ("HAN", "HIRAGANA"):
                table[ord(glyph["c"])] = char
    for glyph in confusables_data.get("ー", ()):
        if len(glyph["c"]) == 1 and alias(glyph["c"]) in ("HAN", "COMMON"):
            table[ord(glyph["c"])] = "-"
    table[ord("ー")] = "-"
    for looks, like in _KANA_LOOKALIKES:
        table.update((ord(a), b) for a, b in zip(looks, like, strict=True))
    for key, value in table.items():  # one pass of translate: each entry to its final form
        while ord(value) in table and table[ord(value)] != value:
            value = table[ord(value)]
        table[key] = value
    return table


@lru_cache(maxsize=4096)
def skeleton(text: str) -> str:
    """A confusable-insensitive form: Japanese look-alikes folded to one form, Unicode homoglyphs folded
    to Latin, then common ASCII tricks."""
    text = unicodedata.normalize("NFKC", text).lower()
    if not text.isascii():
        text = text.translate(_kana_fold())
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        from confusable_homoglyphs import confusables

        found = confusables.is_confusable(ch, greedy=False, preferred_aliases=["latin"])
        if found and found[0]["homoglyphs"]:
            out.append(found[0]["homoglyphs"][0]["c"].lower())
        else:
            stripped = unicodedata.normalize("NFKD", ch)
            base = "".join(c for c in stripped if not unicodedata.combining(c))
            out.append(base or ch)
    folded = "".join(out)
    for needle, repl in _ASCII_LOOKALIKES:
        folded = folded.replace(needle, repl)
    return folded


def lookalike_of(domain: str, known: list[str]) -> str | None:
    """The internal/trusted domain that ``domain`` imitates, or None.

    Never matches a known domain itself or its subdomains. Catches homoglyphs (after IDNA decoding),
    small edit distances on the registrable label, and the same label under another suffix.
    """
    domain = domain.lower().rstrip(".")
    if any(in_domain(domain, k) for k in known):
        return None
    label, suffix = registrable(domain)
    whole = domain.replace("-", ".")
    for ref in known:
        ref_label, ref_suffix = registrable(ref)
        if not ref_label or not label:
            continue
        if skeleton(label) == skeleton(ref_label) and (label != ref_label or suffix != ref_suffix):
            return ref
        # Either distance is at least the difference in length: a pair farther apart than the limit is
        # never measured (and the distance library, a tenth of `sendguard check`'s start, not loaded)
        if len(ref_label) >= 4 and suffix == ref_suffix and label != ref_label:
            limit = 1 if len(ref_label) < 8 else 2
            if abs(len(label) - len(ref_label)) <= limit and _distance("osa", label, ref_label) <= limit:
                return ref
        # whole-domain typos across the label/suffix boundary (examplec.o.jp, example-co.jp)
        if (len(ref) >= 8 and domain != ref and abs(len(whole) - len(ref)) <= 1
                and _distance("levenshtein", whole, ref) <= 1):
            return ref
    return None


def _distance(kind: str, a: str, b: str) -> int:
    """Edit distance: ``osa`` counts a swap of two neighbours as one edit, ``levenshtein`` as two."""
    from rapidfuzz.distance import OSA, Levenshtein

    return int((OSA if kind == "osa" else Levenshtein).distance(a, b))
