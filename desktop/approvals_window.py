"""The supervisor's Approvals window: the approval pages (``/approvals``, ``/approve/{id}``) in pywebview.

It shows the very HTML an approver gets in a browser from the emailed link. The window signs in
with a single-use link made for the user of this helper: by the helper itself when approvals run
embedded, or by the central server (``/api/v1/central/login-link``, authenticated with this
helper's token, so the window can only ever act as that user).

``open(runner)`` is called from the tray (the Qt main thread, with pywebview already running);
``python -m desktop.approvals_window [--as ADDR]`` opens it on its own beside a running helper.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from sendguard import paths, runtime
from sendguard.i18n import _, translator

log = logging.getLogger(__name__)

TITLE = _("Approvals")


def identity(helper: Any, approver: str | None = None) -> str:
    """Who decides in this window (embedded mode): the given address, $SENDGUARD_USER, the address
    of the first configured account, else the first default approver of the policy."""
    if approver:
        return approver.lower()
    if os.environ.get("SENDGUARD_USER"):
        return os.environ["SENDGUARD_USER"].lower()
    for account in helper.config.accounts:
        if account.address:
            return str(account.address).lower()
    approvers = helper.policy.get().approvers
    if approvers:
        return str(approvers[0])
    raise RuntimeError("cannot tell who approves on this machine: set SENDGUARD_USER or add an account")


def approvals_url(runner: Any, approver: str | None = None) -> str:
    """A single-use sign-in link to the approvals list for this helper's user."""
    helper = runner.helper
    if getattr(helper, "central", None) is not None:
        return str(helper.central.login_link())
    from sendguard.links import approvals_login_url

    return approvals_login_url(runner.base_url, identity(helper, approver), runner.app.config["SECRET_KEY"])


def open(runner: Any, approver: str | None = None) -> Any:  # noqa: A001 - the tray calls ``open(runner)``
    """Open the Approvals window; starts pywebview's loop when it is not running yet (then blocks)."""
    import webview

    gettext = getattr(runner.helper, "gettext", str)
    title = f"SendGuard — {gettext(TITLE)}"
    url = approvals_url(runner, approver)
    running = bool(webview.windows)
    window = webview.create_window(title, url=url, width=960, height=760, min_size=(520, 420), text_select=True)
    if not running:
        from .window import prepare_environment

        prepare_environment()
        webview.start(gui="qt", private_mode=True)
    return window


class _Attached:
    """Stands in for a Runner when the window is opened beside a helper running in another process."""

    def __init__(self) -> None:
        from sendguard.service import Helper

        self.helper = Helper(paths.home())
        self.base_url = runtime.api_base(paths.home())
        from sendguard.links import signing_key

        self.app = type("App", (), {"config": {"SECRET_KEY": signing_key()}})()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m desktop.approvals_window",
                                     description=translator()("Approvals") + " (SendGuard)")
    parser.add_argument("--as", dest="approver", default=None, help="decide as this address (embedded mode)")
    parser.add_argument("--print-url", action="store_true", help="print the sign-in link instead of a window")
    args = parser.parse_args(argv)
    attached = _Attached()
    if args.print_url:
        print(approvals_url(attached, args.approver))
        return
    open(attached, args.approver)


if __name__ == "__main__":
    main()
