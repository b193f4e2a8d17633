"""The README keeps up with the product: every policy setting and every command is documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from sendguard import policy
from sendguard.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_policy_setting_is_in_the_readme(tmp_path):
    """The README's policy example is a valid policy.toml that shows every setting."""
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    example = next(b for b in blocks if "[organization]" in b)
    data = tomllib.loads(example)
    shown = {f"{section}.{key}" for section, body in data.items() for key in body}
    missing = sorted(set(policy._SCHEMA) - shown)
    assert not missing, f"document these policy settings in README.md: {missing}"
    _with_data_files(tmp_path)
    path = tmp_path / "readme-policy.toml"
    path.write_text(example, encoding="utf-8")
    policy.load(path)  # and it loads without error


def test_every_command_is_in_the_readme():
    import click

    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        assert f"sendguard {name}" in README, f"`sendguard {name}` is not in README.md"


def test_readme_quick_start_is_the_two_commands():
    block = README.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


POLICY_DOC = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
SAMPLE_FILES = {"contacts.csv": "address,name,company\n", "lists.csv": "list,member\n", "optout.csv": ""}


def _with_data_files(tmp_path: Path) -> None:
    for name, text in SAMPLE_FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")


def test_readme_policy_example_loads_with_its_data_files(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    example = next(b for b in blocks if "[organization]" in b)
    _with_data_files(tmp_path)
    path = tmp_path / "policy.toml"
    path.write_text(example, encoding="utf-8")
    loaded = policy.load(path)
    assert loaded.address_rules and loaded.auto_cc and loaded.suppression.action == "remove"


def test_docs_policy_md_shows_every_setting_and_its_examples_load(tmp_path):
    """docs/policy.md: every policy key in a TOML example; every example loads; CSV examples load too."""
    blocks = re.findall(r"```toml\n(.*?)```", POLICY_DOC, re.S)
    shown: set[str] = set()
    for block in blocks:
        data = tomllib.loads(block)
        for section, body in data.items():
            shown.update(f"{section}.{key}" for key in body)
    missing = sorted(set(policy._SCHEMA) - shown)
    assert not missing, f"document these policy settings in docs/policy.md: {missing}"
    csvs = re.findall(r"```csv\n(.*?)```", POLICY_DOC, re.S)
    files = {"contacts.csv": next(c for c in csvs if c.startswith("address,name")),
             "lists.csv": next(c for c in csvs if c.startswith("list,member")),
             "optout.csv": next(c for c in csvs if c.startswith("address\n"))}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    for index, block in enumerate(blocks):
        path = tmp_path / f"example{index}.toml"
        # a rule set to approve needs approvers (the docs say so): an example shown alone gets the
        # approvers of the [approval] example, as in a real policy file
        needs = "[approval]" not in block and '"approve"' in block
        path.write_text(('[approval]\napprovers = ["boss@example.co.jp"]\n' if needs else "") + block,
                        encoding="utf-8")
        policy.load(path)
    assert "sendguard queue confirm ID --reconfirmed" in README
