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
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _LINE_COL.search(msg)
        line = int(m.group(1)) if m else None
        msg = _LINE_COL.sub("", msg).strip()
        raise ConfigError(str(path), f"TOML syntax error: {msg}", line=line) from None


def line_of(text: str, dotted_key: str) -> int | None:
    """Best-effort line number of ``dotted_key`` (``section.key``) in a TOML text."""
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
