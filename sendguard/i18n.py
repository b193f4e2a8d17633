"""Translations (Babel/gettext catalogs under ``sendguard/locale``): English, Japanese, Chinese.

Catalogs are kept as ``.po`` files and compiled in memory on first use, so a source checkout needs no
build step. The language comes from config (``language = "ja"``), else from the OS locale.
"""

from __future__ import annotations

import gettext
import io
import locale
import os
import re
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


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=1)
def _templates() -> tuple[tuple[re.Pattern[str], str], ...]:
    """Each error template (``error_texts.TEMPLATES``) as a pattern that finds its values in a message."""
    from .error_texts import TEMPLATES

    out = []
    for template in TEMPLATES:
        pattern, seen, last = [], set(), 0
        for m in _PLACEHOLDER.finditer(template):
            pattern.append(re.escape(template[last:m.start()]))
            name = m.group(1)
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
            seen.add(name)
            last = m.end()
        pattern.append(re.escape(template[last:]))
        out.append((re.compile("".join(pattern), re.DOTALL), template))
    return tuple(out)


def localize(text: str, gettext: Callable[[str], str]) -> str:
    """Say a message from SendGuard's core (built in English, its values in it) in ``gettext``'s language.

    The message is recognised by its template in ``error_texts``; the template is translated and the
    values put back (values that are words of their own, such as states and actions, translated too).
    A prefix such as ``file:line [key]: `` is kept as it is. Anything not recognised stays as it is.
    """
    if gettext("Send") == "Send":  # English (or no catalog): nothing to do
        return text
    return _localize(text, gettext, 0)


def _localize(text: str, gettext: Callable[[str], str], depth: int) -> str:
    for pattern, template in _templates():
        m = pattern.fullmatch(text)
        if m is None:
            continue
        translated = gettext(template)
        if translated == template:
            return text
        values = {name: _value(name, value, gettext, depth) for name, value in m.groupdict().items()}
        try:
            return translated.format(**values)
        except (KeyError, IndexError, ValueError):  # a broken translation: the English text beats none
            return text
    if depth > 0:
        return gettext(text) if text else text  # a value that is a word of its own (a state, an action)
    # "path:line [key]: detail": keep the prefix, say the detail in the language
    start = 0
    while (cut := text.find(": ", start)) != -1:
        rest = _localize(text[cut + 2:], gettext, 1) if _recognised(text[cut + 2:]) else None
        if rest is not None:
            return text[:cut + 2] + rest
        start = cut + 2
    return text


def _value(name: str, value: str, gettext: Callable[[str], str], depth: int) -> str:
    if name == "verb":
        from .error_texts import VERBS

        said = gettext(VERBS.get(value, value))
        return value if said.startswith("(verb)") else said
    return _localize(value, gettext, depth + 1) if depth < 2 else value


def _recognised(text: str) -> bool:
    return any(pattern.fullmatch(text) for pattern, _template in _templates())
