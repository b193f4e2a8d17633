"""Reading TOML files with errors that name the file, the line and the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

_LINE_COL = re.compile(r"\(at line (\d+), column (\d+)\)")


def read(path: Path) -> tuple[dict[str, Any], str]:
    """Parse ``path``; a syntax error becomes a ConfigError with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc.strerror}") from None
    # Notepad and many Japanese editors write UTF-8 "with BOM": still UTF-8, and TOML text otherwise
    text = text.removeprefix("\ufeff")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _LINE_COL.search(msg)
        line = int(m.group(1)) if m else None
        msg = _LINE_COL.sub("", msg).strip()
        raise ConfigError(str(path), f"TOML syntax error: {msg}", line=line) from None


def line_of(text: str, dotted_key: str, entry: tuple[str, int] | None = None) -> int | None:
    """Best-effort line number of ``dotted_key`` (``section.key``) in a TOML text.

    ``entry`` = (table, n): the key is one of the n-th (from 0) ``[[table]]`` of that name; its line is
    looked for there, and is that table's header when the table lacks the key."""
    if entry is not None:
        found = _line_in_entry(text, dotted_key, *entry)
        if found is not None:
            return found
    parts = dotted_key.split(".")
    leaf = parts[-1]
    table = ".".join(parts[:-1])
    current = ""
    first_leaf: int | None = None
    key_re = re.compile(rf"^\s*[\"']?{re.escape(leaf)}[\"']?\s*=")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if header:
            current = header.group(1)
            if current == dotted_key or (not table and current == leaf):
                return number
            continue
        if key_re.match(raw):
            if current == table or (table and current.startswith(table)):
                return number
            if first_leaf is None:
                first_leaf = number
    return first_leaf


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")


def _line_in_entry(text: str, dotted_key: str, table: str, index: int) -> int | None:
    rest = dotted_key[len(table) + 1:] if dotted_key.startswith(table + ".") else ""
    key_re = re.compile(rf"^\s*[\"']?{re.escape(rest)}[\"']?\s*=") if rest and "." not in rest else None
    seen = -1
    header_line: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            if header_line is not None and not header.group(2).startswith(table + "."):
                break  # the entry ends where another table begins
            if header.group(1) == "[[" and header.group(2) == table:
                seen += 1
                if seen == index:
                    header_line = number
            continue
        if header_line is not None and key_re is not None and key_re.match(raw):
            return number
    return header_line
