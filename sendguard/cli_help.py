"""``--help`` in the configured language: command docstrings, option help and click's own help words.

click renders help from English texts (docstrings, ``help=`` of options and arguments) and takes its own
words ("Usage:", "Options", ...) from the standard library's global gettext domain, which SendGuard's
catalogs (compiled in memory, the language from config.toml) cannot serve without patching click. So the
command classes here lay out the same pieces as click does, each said through SendGuard's catalogs; in
English (or without a catalog) click's own methods run unchanged.

Every SendGuard command is built on these classes: subcommands inherit them from their group
(``command_class``/``group_class``); a ``sendguard.commands`` plug-in passes ``cls=Command`` or
``cls=Group`` to its top decorator. ``tests/test_cli_help_i18n.py`` runs ``--help`` of every registered
command and fails on English left in it.

msgids: each paragraph of a help text as click shows it, with the lines of an ordinary paragraph joined
by single spaces (click rewraps those, so the source's line breaks do not matter) and a ``\\b`` block
kept line for line. ``pybabel extract`` collects them from the live command tree (``help_catalog.extract``,
named in babel.cfg), so a new command or option lands in the .pot like any marked string.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import click

from .i18n import _, translator

Gettext = Callable[[str], str]

# click's own words in the help (click marks them for the stdlib's domain; these are SendGuard's msgids)
_USAGE, _OPTIONS, _COMMANDS, _ARGUMENTS = _("Usage:"), _("Options"), _("Commands"), _("Positional arguments")
_REQUIRED, _DEFAULT, _ENVVAR = _("required"), _("default: {default}"), _("env var: {var}")
_CLICK_HELP = (_("Show this message and exit."), _("Show the version and exit."))
_TRY = _("Try '{command} {option}' for help.")

_META_KEY = "sendguard.help_gettext"


def configured_gettext() -> Gettext:
    """The configured language (config.toml); the system's when the config itself is what is wrong."""
    from . import config, paths

    try:  # read where it is: showing help or an error creates no home
        return translator(config.load(paths.home_path() / "config.toml").language)
    except Exception:  # noqa: BLE001 - a broken config must not hide the error or the help being shown
        return translator(None)


def help_gettext(ctx: click.Context) -> Gettext | None:
    """The language help is shown in, or None for English (then click renders as it always does)."""
    meta = ctx.find_root().meta
    if _META_KEY not in meta:
        gettext = configured_gettext()
        meta[_META_KEY] = None if gettext(_USAGE) == _USAGE else gettext
    found: Gettext | None = meta[_META_KEY]
    return found


# ---------------------------------------------------------------------- paragraphs (the msgids)
def _paragraphs(text: str) -> Iterator[tuple[bool, str, str]]:
    """(kept as is, indent, msgid) for each paragraph of a cleaned help text, split as click's wrap_text does."""
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            block.append(line)
            continue
        if not block:
            continue
        if block[0].strip() == "\b":
            yield True, "", "\n".join(block[1:])
        else:
            first = block[0]
            yield False, first[:len(first) - len(first.lstrip())], " ".join(part.strip() for part in block)
        block = []


def help_msgids(text: str | None) -> list[str]:
    """The msgids of one help text (a docstring, ``help=`` or ``short_help=``)."""
    if not text:
        return []
    return [msgid for _kept, _indent, msgid in _paragraphs(_shown(text)) if msgid]


def _shown(text: str) -> str:
    return inspect.cleandoc(text).partition("\f")[0]


def translate_help(text: str, gettext: Gettext) -> str:
    """A help text said paragraph by paragraph; a paragraph without a translation stays as it is."""
    out = []
    for kept, indent, msgid in _paragraphs(_shown(text)):
        said = gettext(msgid) if msgid else msgid
        out.append("\b\n" + said if kept else indent + said)
    return "\n\n".join(out)


def _width(text: str) -> int:
    """Terminal columns: Japanese and Chinese characters take two."""
    import unicodedata  # only when help is said in a language: not on the CLI's start path

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _wide(text: str) -> bool:
    return _width(text) != len(text)


# no line starts with a closing mark, none ends with an opening one (kinsoku)
_NO_START, _NO_END = set("、。，．,.)）」』】〕：:；;！？!?・ー…"), set("(（「『【〔")
_TOKEN = re.compile(r"\s+|[^\s\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]+|.")


def _wrap(text: str, width: int, indent: str = "", subsequent: str = "") -> str:
    """Like click's wrap_text (paragraphs, ``\\b`` blocks kept) but in terminal columns, breaking between CJK
    characters where click breaks only at spaces."""
    out = []
    for kept, first_indent, paragraph in _paragraphs(text):
        if kept:
            out.append("\n".join(indent + line for line in paragraph.splitlines()))
            continue
        units: list[str] = []
        for token in _TOKEN.findall(paragraph):
            if units and not (token.isspace() or units[-1].isspace()) and (
                    token[0] in _NO_START or units[-1][-1] in _NO_END):
                units[-1] += token
            else:
                units.append(token)
        lines, line, space = [], indent + first_indent, ""
        for unit in units:
            if unit.isspace():
                space = " " if line.strip() else ""
                continue
            if line.strip() and _width(line + space + unit) > width:
                lines.append(line.rstrip())
                line, space = subsequent + first_indent, ""
            line += space + unit
            space = ""
        lines.append(line.rstrip())
        out.append("\n".join(lines))
    return "\n\n".join(out)


class _WideFormatter(click.HelpFormatter):
    """click's formatter, wrapping text with Japanese or Chinese in it by terminal columns."""

    def write_text(self, text: str) -> None:
        if not _wide(text):
            return super().write_text(text)
        indent = " " * self.current_indent
        self.write(_wrap(text, self.width, indent, indent) + "\n")
        return None

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        if not any(_wide(second) for _first, second in rows):
            return super().write_dl(rows, col_max, col_spacing)
        first_col = min(max((len(first) for first, _second in rows), default=0), col_max) + col_spacing
        for first, second in rows:
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n" + " " * (first_col + self.current_indent))
            lines = _wrap(second, max(self.width - first_col - 2, 10)).splitlines() or [""]
            self.write(lines[0] + "\n")
            for line in lines[1:]:
                self.write(f"{'':>{first_col + self.current_indent}}{line}\n")
        return None


class HelpContext(click.Context):
    """A click context whose help, when said in a language, wraps Japanese and Chinese by terminal columns."""

    def make_formatter(self) -> click.HelpFormatter:
        if help_gettext(self) is None:
            return super().make_formatter()
        return _WideFormatter(width=self.terminal_width, max_width=self.max_content_width)


def _short_help(command: click.Command, limit: int, gettext: Gettext) -> str:
    """The command list's one line: its first translated sentence, shortened to ``limit`` columns."""
    source = command.short_help or command.help
    msgids = help_msgids(source)
    said = gettext(msgids[0]) if msgids else ""
    if not msgids or said == msgids[0]:  # no translation: click's English short help
        return command.get_short_help_str(limit)
    if command.short_help or _width(said) <= limit:
        return said
    for stop in ("。", ". "):  # the first sentence
        head, found, _rest = said.partition(stop)
        if found and _width(head + found) <= limit:
            return (head + found).strip()
    for stop in (": ", "："):  # what comes before the colon: "Settle an interrupted send"
        head, found, _rest = said.partition(stop)
        balanced = head.count("(") == head.count(")") and head.count("（") == head.count("）")
        if found and balanced and 10 <= _width(head) <= limit:
            return head
    cut = ""
    for ch in said:
        if _width(cut + ch) > limit - 3:
            break
        cut += ch
    return cut.rstrip() + "..."


def _param_record(param: click.Parameter, ctx: click.Context, gettext: Gettext) -> tuple[str, str] | None:
    """An option's or argument's help row with its help (and click's bracketed extras) translated."""
    shown = copy.copy(param)  # the command's own parameter stays English
    if param.help:
        shown.help = translate_help(param.help, gettext)
    record = shown.get_help_record(ctx)
    if record is None or not isinstance(param, click.Option):
        return record
    spec, text = record
    extra = param.get_help_extra(ctx)
    if not extra:
        return record
    items = []
    if "envvars" in extra:
        items.append(gettext(_ENVVAR).format(var=", ".join(extra["envvars"])))
    if "default" in extra:
        items.append(gettext(_DEFAULT).format(default=extra["default"]))
    if "range" in extra:
        items.append(extra["range"])
    if "required" in extra:
        items.append(gettext(extra["required"]))
    base = text.rpartition("  [")[0] if shown.help else ""
    joined = "; ".join(items)
    return spec, f"{base}  [{joined}]" if base else f"[{joined}]"


# ---------------------------------------------------------------------- the command classes
class _HelpInLanguage(click.Command):
    """click's help layout, each text said in the configured language."""

    context_class = HelpContext

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        gettext = help_gettext(ctx)
        if gettext is None:
            return super().format_usage(ctx, formatter)
        pieces = self.collect_usage_pieces(ctx)
        formatter.write_usage(ctx.command_path, " ".join(pieces), prefix=gettext(_USAGE) + " ")
        return None

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        gettext = help_gettext(ctx)
        if gettext is None or self.help is None or self.deprecated:
            return super().format_help_text(ctx, formatter)
        text = translate_help(self.help, gettext)
        if text:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(text)
        return None

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        gettext = help_gettext(ctx)
        if gettext is None:
            return super().format_arguments(ctx, formatter)
        args = [param for param in self.get_params(ctx) if isinstance(param, click.Argument)]
        if any(arg.help is not None for arg in args):
            rows = [record for arg in args if (record := _param_record(arg, ctx, gettext)) is not None]
            with formatter.section(gettext(_ARGUMENTS)):
                formatter.write_dl(rows)
        return None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        gettext = help_gettext(ctx)
        if gettext is None:
            return super().format_options(ctx, formatter)
        rows = [record for param in self.get_params(ctx) if not isinstance(param, click.Argument)
                and (record := _param_record(param, ctx, gettext)) is not None]
        if rows:
            with formatter.section(gettext(_OPTIONS)):
                formatter.write_dl(rows)
        if isinstance(self, click.Group):  # click.Group.format_options lists the commands after the options
            self.format_commands(ctx, formatter)
        return None

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        gettext = help_gettext(ctx)
        if gettext is None or not self.epilog:
            return super().format_epilog(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(translate_help(self.epilog, gettext))
        return None


class Command(_HelpInLanguage):
    """A SendGuard command: its help in the configured language."""


class Group(_HelpInLanguage, click.Group):
    """A SendGuard command group: its help and its command list in the configured language."""

    command_class = Command
    group_class: type[click.Group] | type[type] | None = type  # subgroups are of the group's own class

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        gettext = help_gettext(ctx)
        if gettext is None:
            return super().format_commands(ctx, formatter)
        commands = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _command in commands)
            rows = [(name, _short_help(command, limit, gettext)) for name, command in commands]
            with formatter.section(gettext(_COMMANDS)):
                formatter.write_dl(rows)
        return None


class UsageError(click.UsageError):
    """click's usage error, its usage line and its "Try ... --help" line said in the configured language."""

    def show(self, file: IO[Any] | None = None) -> None:
        gettext = None if self.ctx is None else help_gettext(self.ctx)
        if self.ctx is None or gettext is None:
            return super().show(file)
        command = self.ctx.command
        hint = ""
        if command.get_help_option(self.ctx) is not None:
            option = max(command.get_help_option_names(self.ctx), key=len)
            hint = gettext(_TRY).format(command=self.ctx.command_path, option=option) + "\n"
        click.echo(f"{self.ctx.get_usage()}\n{hint}", file=file, err=True, color=self.ctx.color)
        # "Error: " stays as click writes it: scripts and tests look for it
        click.echo(f"Error: {self.format_message()}", file=file, err=True, color=self.ctx.color)
        return None
