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
