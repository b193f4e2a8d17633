"""Issue #11 item 19: ``--help`` of every command (plug-ins included) in the configured language."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from babel.messages.pofile import read_po
from click.testing import CliRunner
from conftest import run_cli

from sendguard import cli_help, help_catalog
from sendguard.cli import main

ROOT = Path(__file__).resolve().parent.parent
CATALOGS = {"ja": ROOT / "sendguard" / "locale" / "ja" / "LC_MESSAGES" / "sendguard.po",
            "zh": ROOT / "sendguard" / "locale" / "zh_Hans" / "LC_MESSAGES" / "sendguard.po"}
CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# what stays as it is in any language: code, URLs, option names, metavars, choices, file names and paths
_KEPT = re.compile(r"`[^`]*`|\S*://\S*|--?[\w-]+|\$\w+|\b[A-Z][A-Z0-9_]+\b|\[[\w|-]+\]|\b[\w.-]+\.(?:toml|xml|json|md|zip|"
                   r"eml)\b|\S*[\\/]\S*|[\w.]+@[\w.<>]+")
_COMMAND_ROW = re.compile(r"^  [a-z][\w-]*(?=\s{2,}|$)", re.MULTILINE)
# English words no translated help keeps (click's own help words among them)
_ENGLISH = re.compile(r"\b(the|and|or|of|to|for|with|this|that|is|are|it|from|in|on|by|when|only|show|print|list|"
                      r"message|messages|exit|usage|options|commands|default|required|help|account|mail)\b",
                      re.IGNORECASE)


def _commands() -> list[list[str]]:
    return [path.split()[1:] for path, _command, _ctx in help_catalog.command_tree()]


def _english_left(text: str, path: list[str]) -> list[str]:
    text = _COMMAND_ROW.sub("", text.replace(" ".join(["sendguard", *path]), ""))
    return [line for line in text.splitlines() if _ENGLISH.search(_KEPT.sub(" ", line))]


def test_the_tree_has_every_command_and_plugin() -> None:
    paths = {" ".join(path) for path in _commands()}
    for name in ("", "queue list", "accounts add smtp", "accounts add gmail", "gmail drafts", "serve", "demo",
                 "addin certs install", "server token issue", "server releases resolve"):
        assert name in paths, name
    assert len(paths) > 50


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_every_help_text_has_a_translation(lang: str) -> None:
    """A new command, option or docstring without a ja and zh translation fails here (pybabel extract finds it)."""
    with CATALOGS[lang].open("rb") as fh:
        found = {str(m.id): str(m.string) for m in read_po(fh) if m.id}
    missing = sorted({f"{where}: {msgid!r}" for where, msgid in help_catalog.help_texts() if not found.get(msgid)})
    assert not missing, f"no {lang} translation for:\n" + "\n".join(missing)


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_help_of_every_command_is_said_in_the_language(home: Path, lang: str) -> None:
    """The real ``sendguard ... --help`` of the top, every group and every command: no English sentence left."""
    (home / "config.toml").write_text(f'language = "{lang}"\n', encoding="utf-8")
    left = {}
    for path in _commands():
        out = run_cli(*path, "--help")
        assert out.returncode == 0, (path, out.stderr.decode())
        text = out.stdout.decode()
        assert CJK.search(text.splitlines()[0]), (path, text)  # the usage line, too
        said = [line for line in text.splitlines() if CJK.search(line)]
        assert max(cli_help._width(line) for line in said) <= 80, (path, text)  # wrapped in terminal columns
        if english := _english_left(text, path):
            left[" ".join(path)] = english
    assert not left, f"English left in the {lang} help: {left}"


def test_usage_line_of_a_usage_error_in_the_language(home: Path) -> None:
    (home / "config.toml").write_text('language = "ja"\n', encoding="utf-8")
    out = run_cli("queue", "show")
    assert out.returncode == 2
    usage, hint, _blank, error = out.stderr.decode().splitlines()
    assert usage == "使い方: sendguard queue show [OPTIONS] ITEM_ID"
    assert hint == "'sendguard queue show --help' でヘルプを表示できます。"
    assert error.startswith("Error: ") and CJK.search(error)


def test_help_stays_english_without_a_language(home: Path) -> None:
    top = run_cli("--help").stdout.decode()
    assert top.startswith("Usage: sendguard [OPTIONS] COMMAND [ARGS]...\n\n  SendGuard: hold outgoing mail"), top
    assert "\nOptions:\n" in top and "\nCommands:\n" in top and "Show this message and exit." in top
    assert "Show the version and exit." in top and "queue      Held messages: list, show, confirm, cancel." in top
    confirm = run_cli("queue", "confirm", "--help").stdout.decode()
    assert "  --remove ADDR             Drop this recipient (repeatable)." in confirm
    assert not CJK.search(confirm)


def test_help_creates_no_home(tmp_path: Path) -> None:
    import os

    home = tmp_path / "not-yet"
    system = {"LANG": "ja_JP.UTF-8", "LC_ALL": "ja_JP.UTF-8"}
    out = run_cli("queue", "--help", env={**os.environ, "SENDGUARD_HOME": str(home), **system})
    assert out.returncode == 0 and out.stdout.decode().startswith("使い方:"), out.stderr  # the system's language
    assert not home.exists()


def _help(path: list[str], gettext: cli_help.Gettext | None) -> str:
    """``--help`` rendered in-process with the help language forced (None: click's own English layout)."""
    ctx = click.Context(main, info_name="sendguard", terminal_width=80)
    ctx.meta["sendguard.help_gettext"] = gettext
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None
        command, ctx = found, click.Context(found, info_name=name, parent=ctx)
    return command.get_help(ctx)


def test_the_translated_layout_is_clicks_own() -> None:
    """Said through a gettext that changes nothing, every help page is byte for byte what click renders."""
    for path in _commands():
        assert _help(path, lambda text: text) == _help(path, None), path


def test_english_help_is_rendered_by_click_itself(home: Path) -> None:
    result = CliRunner().invoke(main, ["queue", "confirm", "--help"], prog_name="sendguard", terminal_width=80)
    assert result.output == _help(["queue", "confirm"], None) + "\n"


def test_help_msgids_ignore_source_wrapping_and_keep_no_rewrap_blocks() -> None:
    doc = """First line of a paragraph
    goes on here.

    \b
    kept   as
    it is
    """
    assert cli_help.help_msgids(doc) == ["First line of a paragraph goes on here.", "kept   as\nit is"]
    said = cli_help.translate_help(doc, lambda text: {"First line of a paragraph goes on here.": "一段落目。"}.get(text, text))
    assert said == "一段落目。\n\n\b\nkept   as\nit is"
