"""The help texts of every registered command, for the catalogs: a babel extraction method and the tests.

``babel.cfg`` names ``extract`` for this file, so ``pybabel extract`` (sendguard/locale/README.md) writes each
docstring paragraph and ``help=`` text of the live command tree (``sendguard.commands`` plug-ins included)
into the .pot, as ``cli_help`` splits them for display. Nothing in SendGuard imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from .cli import main
from .cli_help import help_msgids


def command_tree(root: click.Command = main) -> Iterator[tuple[str, click.Command, click.Context]]:
    """Every registered command (plug-ins included) with its path, e.g. ``sendguard queue list``."""
    yield from _walk(root, click.Context(root, info_name="sendguard"))


def _walk(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command, click.Context]]:
    yield ctx.command_path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx))


def help_texts(root: click.Command = main) -> Iterator[tuple[str, str]]:
    """(where, msgid) for every help text of every registered command and of its parameters."""
    for path, command, ctx in command_tree(root):
        for text in (command.help, command.short_help, command.epilog):
            for msgid in help_msgids(text):
                yield path, msgid
        for param in command.get_params(ctx):
            for msgid in help_msgids(getattr(param, "help", None)):
                yield f"{path} {param.opts[0] if param.opts else param.name}", msgid


def extract(fileobj: Any, keywords: Any, comment_tags: Any, options: Any) -> Iterator[tuple[Any, ...]]:
    """A babel extraction method (babel.cfg): this file's marked strings, then every command's help texts."""
    from babel.messages.extract import extract_python

    yield from extract_python(fileobj, keywords, comment_tags, options)
    seen: set[str] = set()
    for where, msgid in help_texts():
        if msgid not in seen:
            seen.add(msgid)
            yield 0, "_", msgid, [f"help: {where}"]
