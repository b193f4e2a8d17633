"""Translations (Babel/gettext catalogs under ``sendguard/locale``): English, Japanese, Chinese.

Catalogs are kept as ``.po`` files and compiled in memory on first use, so a source checkout needs no
build step. The language comes from config (``language = "ja"``), else from the OS locale.
"""

from __future__ import annotations

import gettext
import io
import locale
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "sendguard"
LANGUAGES = ("en", "ja", "zh")
_CATALOG_NAME = {"en": None, "ja": "ja", "zh": "zh_Hans"}


def normalize(tag: str | None) -> str:
    """Map a locale tag (``ja_JP.UTF-8``, ``zh-CN``, ``en``) to one of LANGUAGES (default en)."""
    tag = (tag or "").lower().replace("-", "_")
    for lang in LANGUAGES:
        if tag == lang or tag.startswith(lang + "_"):
            return lang
    return "en"


def system_language() -> str:
    for var in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE"):
        value = os.environ.get(var)
        if value and value not in ("C", "POSIX", "C.UTF-8"):
            return normalize(value.split(":")[0])
    try:
        return normalize(locale.getlocale()[0])
    except ValueError:
        return "en"


@lru_cache(maxsize=8)
def translations(lang: str) -> gettext.NullTranslations:
    name = _CATALOG_NAME.get(normalize(lang))
    if not name:
        return gettext.NullTranslations()
    po = LOCALE_DIR / name / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not po.exists():  # a build without this catalog: English rather than a crash
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo  # only when a translation is used: CLI start stays fast
    from babel.messages.pofile import read_po

    with po.open("rb") as fh:
        catalog = read_po(fh, locale=name)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def translator(lang: str | None = None) -> Callable[[str], str]:
    """A gettext function for ``lang`` (or the system language)."""
    return translations(normalize(lang) if lang else system_language()).gettext


def catalog_messages(lang: str) -> dict[str, str]:
    """msgid -> msgstr for one catalog (used by the UI and by the completeness test)."""
    name = _CATALOG_NAME[normalize(lang)]
    po = LOCALE_DIR / str(name) / "LC_MESSAGES" / f"{DOMAIN}.po"
    from babel.messages.pofile import read_po

    with po.open("rb") as fh:
        catalog = read_po(fh, locale=name)
    return {str(m.id): str(m.string) for m in catalog if m.id and isinstance(m.id, str)}


def _(message: str) -> str:
    """Mark a string for extraction; translated later where the language is known."""
    return message
