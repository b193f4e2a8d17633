"""``sendguard serve`` and ``sendguard demo`` (mounted by the core CLI through an entry point)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from sendguard import OWN_PACKAGES, paths, shutdown
from sendguard.cli_help import Command
from sendguard.i18n import _


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def quiet_logging(verbose: bool) -> None:
    """Readable run output: SendGuard's own INFO lines; libraries (SMTP commands, HTTP requests) only
    when something is wrong, unless --verbose; never colour codes."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("sendguard", "desktop", "addin"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for name in ("mail.log", "werkzeug"):  # one INFO line per SMTP command / per HTTP request
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import werkzeug.serving

        werkzeug.serving._log_add_style = False  # no ANSI colour codes in the request log
    except (ImportError, AttributeError):
        pass


LOG_FILE_BYTES = 5_000_000  # logs/sendguard.log is rotated at this size, three older files kept


def file_log(started: str) -> logging.Handler | None:
    """The running helper's log in ``SENDGUARD_HOME/logs/sendguard.log`` (private to the user, rotated):
    what it says on the console, kept for a helper started without one (autostart, the installers)."""
    from logging.handlers import RotatingFileHandler

    class PrivateRotatingFileHandler(RotatingFileHandler):
        """Each new log file 0600 from its creation, the ones begun at a rotation too (whatever the umask)."""

        def _open(self) -> Any:
            paths.private_file(Path(self.baseFilename))
            return super()._open()

    try:
        path = paths.private_file(paths.logs_dir() / "sendguard.log")
        handler = PrivateRotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=3, encoding="utf-8")
    except OSError as exc:  # a full or read-only disk: the helper runs on, its log on the console only
        logging.getLogger("desktop").warning("cannot write the log file: %s", exc)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.handle(logging.makeLogRecord({"name": "desktop", "levelno": logging.INFO, "levelname": "INFO",
                                          "msg": started}))
    logging.getLogger().addHandler(handler)
    return handler


def _wants_window(home: Any) -> bool:
    from sendguard import config as configmod

    try:
        return bool(configmod.load(home / "config.toml").window) and has_display()
    except Exception:  # noqa: BLE001 - a broken config is reported by the helper itself
        return False


def _translator(home: Any) -> Any:
    from sendguard import config as configmod
    from sendguard.i18n import translator

    try:
        return translator(configmod.load(home / "config.toml").language)
    except Exception:  # noqa: BLE001
        return translator(None)


def show_running_window(home: Any, pid: int | None) -> bool:
    """Ask the helper already running on this home to show its window (where there is no tray, starting
    SendGuard again is how the window with Pause and Quit comes back). Only a helper that has a window
    (runtime.json says so) is asked. POSIX only: Windows and macOS always have a tray or menu bar icon."""
    from sendguard import runtime

    info = runtime.read(home)
    if not pid or not hasattr(signal, "SIGUSR1") or info.get("pid") != pid or not info.get("window"):
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


@click.command(cls=Command)
@click.option("--no-window", is_flag=True, help="No desktop window: confirm in the browser or with the CLI.")
@click.option("--smtp-port", type=click.IntRange(0, 65535), default=None, help="SMTP submission port (0: any).")
@click.option("--api-port", type=click.IntRange(0, 65535), default=None, help="Local API/web port (0: any).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def serve(no_window: bool, smtp_port: int | None, api_port: int | None, verbose: bool) -> None:
    """Run the helper: SMTP submission, the outbox, the confirmation window and the local API."""
    quiet_logging(verbose)
    from sendguard.errors import SendGuardError
    from sendguard.instance import AlreadyRunning, InstanceLock

    from .runner import Runner

    home = paths.home()
    if hasattr(signal, "SIGUSR1"):  # "show your window" from a second start: not yet, nothing to show
        signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        lock = InstanceLock(home).acquire()
    except AlreadyRunning as exc:
        if not no_window and _wants_window(home) and show_running_window(home, exc.pid):
            t = _translator(home)
            click.echo(t(_("SendGuard is already running (process {pid}): its window is shown now.")).format(
                pid=exc.pid))
            return
        raise click.ClickException(str(exc)) from None
    except SendGuardError as exc:
        raise click.ClickException(str(exc)) from None
    watchdog = shutdown.Watchdog()  # armed when the stop is asked for: the process ends within its bound
    try:
        try:
            runner = Runner(home, smtp_port, api_port).start()
        except (OSError, SendGuardError) as exc:
            raise click.ClickException(str(exc)) from None
        info = runner.describe()
        file_log(f"SendGuard started (process {os.getpid()}): SMTP {info['smtp']}, web/API {info['api']}, "
                 f"release {info['transport']}")
        _serve(runner, no_window, watchdog)
    finally:
        lock.release()
    # A library's thread still waiting on the closed window would keep the interpreter from exiting.
    shutdown.leave()
    watchdog.disarm()


def _serve(runner: Any, no_window: bool, watchdog: shutdown.Watchdog) -> None:
    t = runner.helper.gettext
    info = runner.describe()
    click.echo(t(_("SendGuard is running (home {home})")).format(home=info["home"]))
    click.echo("  " + t(_("SMTP submission: {address}  (point your mail client's outgoing server here)")).format(
        address=info["smtp"]))
    click.echo("  " + t(_("Web/API: {url}  (token: `sendguard token`)")).format(url=info["api"]))
    click.echo("  " + t(_("Release: {transport}")).format(transport=info["transport"]))
    window = not no_window and runner.helper.config.window and has_display()
    if window:
        try:
            from . import window as window_mod
        except ModuleNotFoundError as exc:  # pywebview/Qt (the desktop extra) are not installed
            if (exc.name or "").partition(".")[0] in OWN_PACKAGES:
                raise
            click.echo("  " + t(_("Window: not available ({error}); confirm in the browser")).format(error=exc))
            window = False
        else:
            def started(manager: Any) -> None:
                if manager.has_tray:
                    click.echo("  " + t(_("Window: ready. Pause or quit from the SendGuard icon in the tray, "
                                        "or press Ctrl-C here.")))
                else:
                    click.echo("  " + t(_("Window: ready. This desktop has no tray: pause or quit from the "
                                        "window's menu bar, or press Ctrl-C here.")))
                    click.echo("  " + t(_("Closed, the window comes back when you start SendGuard again "
                                        "(`sendguard serve`).")))

            try:
                window_mod.run(runner, on_started=started, on_quit=watchdog.arm)  # blocks until quit
            finally:
                watchdog.arm()
                runner.stop()
                click.echo(t(_("SendGuard stopped.")))
            return
    if not window:
        click.echo("  " + t(_("No window: held messages are listed by `sendguard queue list`; "
                            "`sendguard queue show ID` prints the link to confirm one in a browser.")))
        click.echo("  " + t(_("Press Ctrl-C to stop SendGuard.")))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        watchdog.arm()
        runner.stop()
        click.echo(t(_("SendGuard stopped.")))


@click.command(cls=Command)
def demo() -> None:
    """Show the confirmation window with three sample messages (a temporary SENDGUARD_HOME)."""
    from .demo import run_demo

    run_demo()
