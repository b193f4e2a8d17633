"""Whom a message addresses: salutations (山田様, 山田さん, Dear Mr Yamada) and the names behind
recipients and companies, compared after Unicode normalisation. Pure functions."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

_JA_TITLES = "様|さま|サマ|さん|殿|先生|くん|君|部長|課長|社長|係長|主任|専務|常務"
_ZH_TITLES = "先生|女士|小姐|经理|經理|总|老师|老師"
_EN_GREETING = r"^(?:dear|hi|hello|attn\.?:?|attention:?)"
_JA_HONORIFIC = re.compile(rf"^(.{{1,40}}?)\s*(?:{_JA_TITLES})(?=$|[\s、，,。:：!！])")
_ZH_HONORIFIC = re.compile(rf"^(?:尊敬的|亲爱的|親愛的)?\s*(.{{1,12}}?)\s*(?:{_ZH_TITLES})(?=$|[\s、，,。:：!！])")
_EN_SALUTATION = re.compile(
    _EN_GREETING + r"\s+(?P<title>(?:mr|mrs|ms|miss|mx|dr|prof|professor)\.?\s+)?"
    r"(?P<name>[^\W\d_][\w'’.-]*(?:\s+[^\W\d_][\w'’-]*){0,2}?)(?:[-\s]?(?:san|sama|sensei))?\s*[,:!]?\s*$",
    re.IGNORECASE,
)
# salutations that name nobody in particular
_GENERIC = {
    "各位", "皆様", "皆さま", "みなさま", "皆さん", "みなさん", "ご担当者", "担当者", "ご担当", "ご担当者各位", "関係者",
    "関係者各位", "お客", "お客さま", "お客様", "会員", "会員の皆", "株主", "社員", "メンバー", "チーム", "各位殿",
    "all", "team", "sir", "sirs", "madam", "sir or madam", "sir/madam", "colleagues", "customer", "customers",
    "everyone", "friends", "partner", "partners", "valued customer", "members", "hiring manager", "there", "folks",
    "guys", "everybody", "people", "ladies", "gentlemen", "staff", "valued", "you all", "y'all",
    "各位同事", "大家", "同事们", "客户",
}
# a Japanese addressee ending in one of these is a role or a group (経理ご担当, お取引先, ご関係者, 会員の皆);
# none ends a common surname. 部 and 室 do (阿部, 服部, 小室), so they are not endings here.
_GENERIC_ENDINGS = (
    "各位", "担当", "担当者", "御中", "皆", "関係者", "責任者", "取引先", "得意先", "客", "会員", "株主", "社員", "職員",
    "役員", "一同", "各社", "事務局", "窓口", "メンバー", "チーム",
)
# an English salutation ending in one of these greets a group (Dear Sales Team, Hi support desk)
_GROUP_WORDS = {
    "team", "teams", "staff", "department", "dept", "members", "colleagues", "customers", "partners", "everyone", "all",
    "folks", "guys", "committee", "group", "office", "desk", "support",
}
_COMPANY_WORDS = re.compile(
    r"株式会社|有限会社|合同会社|合資会社|（株）|\(株\)|㈱|（有）|\(有\)|㈲|御中|様|"
    r"\b(?:inc|co|corp|corporation|ltd|llc|gmbh|company|kk|k\.k|limited|plc)\b\.?|[,.]",
    re.IGNORECASE,
)
_HEAD_LINES = 6
# What every line the three patterns above can read holds: one of their titles, or at its start a greeting
# and a space. A line without any (most of a body's first lines) is not tried against them.
_MAYBE_SALUTATION = re.compile(rf"{_JA_TITLES}|{_ZH_TITLES}|{_EN_GREETING}\s", re.IGNORECASE)
_LATIN_WORD = re.compile(r"[a-z0-9]+")


def norm(text: str) -> str:
    """NFKC, lower case, no spaces (全角 and 半角 alike, 山田 太郎 == 山田太郎)."""
    return re.sub(r"[\s\u3000・･]+", "", unicodedata.normalize("NFKC", text)).lower()


def words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w]+", unicodedata.normalize("NFKC", text).lower()) if len(w) >= 2]


def salutation_names(body: str) -> list[list[str]]:
    """The names the opening lines address, each as a list of candidate spellings (empty: none).

    Only the first few non-empty, unquoted lines are read: that is where a salutation stands.
    """
    found: list[list[str]] = []
    seen = 0
    for raw in body.splitlines():
        line = unicodedata.normalize("NFKC", raw).strip()
        if not line or line.startswith((">", "|")):
            continue
        seen += 1
        if seen > _HEAD_LINES:
            break
        if len(line) > 80 or not _MAYBE_SALUTATION.search(line):
            continue
        for part in re.split(r"[、，,]\s*(?=\S+\s*(?:様|さん|殿))", line):
            names = _japanese(part) or _chinese(part) or _english(part)
            if names:
                found.append(names)
    return found


def _japanese(line: str) -> list[str]:
    match = _JA_HONORIFIC.match(line)
    if not match:
        return []
    head = match.group(1).strip()
    if norm(head) in _GENERIC or norm(head).endswith(_GENERIC_ENDINGS):
        return []
    chunks = head.split()
    candidates = [chunks[-1]]
    if len(chunks) >= 2:
        candidates.append(chunks[-2] + chunks[-1])
    # 経理担当の山田様, ABC商事の田中様: the person comes after the last の that follows a role or a
    # company (one written with a kanji, katakana or Latin letter: a name written in hiragana may hold の)
    role, particle, person = chunks[-1].rpartition("の")
    if particle and len(role) >= 2 and len(person) >= 2 and not _hiragana_only(role):
        candidates.insert(0, person)
    return [norm(c) for c in candidates if norm(c) and norm(c) not in _GENERIC]


def _hiragana_only(text: str) -> bool:
    return all("\u3041" <= c <= "\u309f" for c in text)


def _chinese(line: str) -> list[str]:
    match = _ZH_HONORIFIC.match(line)
    if not match or match.group(1).isascii():
        return []
    name = norm(match.group(1))
    return [name] if name and name not in _GENERIC else []


def _english(line: str) -> list[str]:
    match = _EN_SALUTATION.match(line)
    if not match:
        return []
    name = match.group("name").strip().rstrip(".").lower()
    parts = name.split()
    # after Mr/Ms/Dr comes a person's name, whatever the words; "John and team" names John
    if not match.group("title") and (name in _GENERIC or parts[0] in _GENERIC or (
            parts[-1] in _GROUP_WORDS and "and" not in parts)):
        return []
    return [w for w in words(name) if w not in ("san", "sama")]


def names_match(candidates: Iterable[str], known: Iterable[str], local_part: str = "") -> bool:
    """True when a salutation candidate is one of the known names of a recipient.

    Known names are display names and contact names; CJK names match when one contains the other
    (山田 in 山田太郎), Latin ones word by word or inside the address's local part (yamada in t.yamada).
    """
    known_norm = [norm(k) for k in known if k]
    known_words = {w for k in known for w in words(k)}
    local = local_part.lower()
    for cand in candidates:
        if not cand:
            continue
        if cand.isascii():
            if cand in known_words or (len(cand) >= 3 and cand in local):
                return True
            continue
        if any(cand in k or (len(k) >= 2 and k in cand) for k in known_norm):
            return True
    return False


def company_tokens(company: str, domain_label: str) -> list[str]:
    """How a file name might name a company: its name without 株式会社/Inc., and its domain label.

    A Latin name of several words is given as its words joined by single spaces (``acme widgets``): a
    file name may join them with spaces, ``_``, ``-`` or nothing, but names the company only with all of them.
    """
    out = []
    bare = _COMPANY_WORDS.sub(" ", unicodedata.normalize("NFKC", company)).lower()
    name = norm(bare)
    if len(name) >= 2:
        latin = _LATIN_WORD.findall(bare) if bare.isascii() else []
        out.append(" ".join(latin) if len(latin) > 1 else name)
    label = domain_label.lower()
    if len(label) >= 3 and label not in MAILBOX_PROVIDERS:
        out.append(label)
    return list(dict.fromkeys(out))


# the names (registrable labels) of services that give mailboxes to anyone: a contact at gmail.com or
# docomo.ne.jp tells nothing of a company, and "Outlook_設定手順.pdf" or "gmail_export.csv" names none
MAILBOX_PROVIDERS = frozenset({
    "gmail", "googlemail", "yahoo", "ymail", "hotmail", "outlook", "live", "msn", "icloud", "aol", "proton",
    "protonmail", "gmx", "yandex", "zoho", "fastmail", "tutanota", "docomo", "ezweb", "softbank", "ymobile",
    "rakuten", "nifty", "biglobe", "ocn", "plala", "excite", "livedoor", "163", "126", "qq", "naver",
})


def filename_forms(filename: str) -> tuple[str, str]:
    """(NFKC lower case with separators, the same without spaces) of a file name, for token_in."""
    spaced = unicodedata.normalize("NFKC", filename).lower()
    return spaced, norm(filename)


@lru_cache(maxsize=4096)
def _word(token: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9]){re.escape(token)}(?![a-z0-9])")


def token_in(token: str, forms: tuple[str, str]) -> bool:
    """``token`` in a file name's forms; an ASCII token must stand as its own word (acorp_quote)."""
    if token.isascii():
        return _word(token).search(forms[0]) is not None
    return token in forms[1]


def names_in_filename(token: str, filename: str) -> bool:
    """``token`` appears in the file name; an ASCII token must stand as its own word (acorp_quote)."""
    if token.isascii():
        spaced = unicodedata.normalize("NFKC", filename).lower()
        return re.search(rf"(?<![a-z0-9]){re.escape(token)}(?![a-z0-9])", spaced) is not None
    return token in norm(filename)
