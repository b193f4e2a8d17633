"""``sendguard serve`` and ``sendguard demo`` (mounted by the core CLI through an entry point)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import click

from sendguard import paths


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command()
@click.option("--no-window", is_flag=True, help="No desktop window: confirm in the browser or with the CLI.")
@click.option("--smtp-port", type=click.IntRange(0, 65535), default=None, help="SMTP submission port (0: any).")
@click.option("--api-port", type=click.IntRange(0, 65535), default=None, help="Local API/web port (0: any).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def serve(no_window: bool, smtp_port: int | None, api_port: int | None, verbose: bool) -> None:
    """Run the helper: SMTP submission, the outbox, the confirmation window and the local API."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sendguard.errors import SendGuardError

    from .runner import Runner

    try:
        runner = Runner(paths.home(), smtp_port, api_port).start()
    except (OSError, SendGuardError) as exc:
        raise click.ClickException(str(exc)) from None
    info = runner.describe()
    click.echo(f"SendGuard is running (home {info['home']})")
    click.echo(f"  SMTP submission: {info['smtp']}  (point your mail client's outgoing server here)")
    click.echo(f"  Web/API:         {info['api']}  (token: `sendguard token`)")
    click.echo(f"  Release:         {info['transport']}")
    window = not no_window and runner.helper.config.window and has_display()
    if window:
        try:
            from . import window as window_mod
        except ImportError as exc:
            click.echo(f"  Window:          not available ({exc}); confirm in the browser")
            window = False
        else:
            try:
                window_mod.run(runner)  # blocks on the main thread until quit
            finally:
                runner.stop()
            return
    if not window:
        click.echo("  No window: held messages are listed by `sendguard queue list`; "
                   "`sendguard queue show ID` prints the link to confirm one in a browser.")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        runner.stop()
        click.echo("SendGuard stopped.")


@click.command()
def demo() -> None:
    """Show the confirmation window with three sample messages (a temporary SENDGUARD_HOME)."""
    from .demo import run_demo

    run_demo()
