"""``python -m sendguard``: the same as the ``sendguard`` command."""

from .cli import main

main(prog_name="sendguard")
