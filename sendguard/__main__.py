"""``python -m sendguard``: the same as the ``sendguard`` command."""

from .cli import main

if __name__ == "__main__":  # not when a process of ours is started from it (checker.py)
    main(prog_name="sendguard")
