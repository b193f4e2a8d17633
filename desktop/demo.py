"""``sendguard demo``: a throw-away helper with three sample messages, so a newcomer sees the window.

The helper runs in a temporary ``SENDGUARD_HOME`` with a sample policy and submits over SMTP, as
a mail client would: an internal message, an external one with an attachment, and a message to
many external recipients, one of them at a lookalike domain. With a display the confirmation
window opens; without one the demo prints the confirmation links and waits for Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import sys
import tempfile
import threading
from email.message import EmailMessage
from pathlib import Path

import click

DEMO_POLICY = """\
# SendGuard demo policy (a temporary home; see README for the real settings)
[organization]
internal_domains = ["example.co.jp"]
trusted_domains = ["partner.example"]

[confirm]
when = "always"            # the demo shows every message, even internal ones

[approval]
approvers = ["boss@example.co.jp"]

[rules]
many_external_recipients = 10
external_attachment = "confirm"
lookalike_domain = "approve"
"""
SENDER = "Taro Yamada <taro@example.co.jp>"


def sample_messages() -> list[EmailMessage]:
    """Internal only; external with an attachment; many external recipients with a lookalike domain."""
    internal = EmailMessage()
    internal["From"] = SENDER
    internal["To"] = "Hanako Sato <hanako@example.co.jp>"
    internal["Subject"] = "来週の定例会議について"
    internal.set_content("佐藤さん\n\n来週の定例会議は木曜 10 時からです。\n\n山田")

    external = EmailMessage()
    external["From"] = SENDER
    external["To"] = "Mr. Smith <smith@partner.example>"
    external["Cc"] = "hanako@example.co.jp"
    external["Subject"] = "お見積書の送付 / Quotation"
    external.set_content("Smith 様\n\nお見積書を添付いたします。ご査収ください。\n\n山田")
    external.add_attachment(b"%PDF-1.4\n% SendGuard demo quotation\n", maintype="application", subtype="pdf",
                            filename="御見積書_2026-03.pdf")

    many = EmailMessage()
    many["From"] = SENDER
    customers = [f"customer{i:02d}@client{i % 4}.example" for i in range(1, 12)]
    many["To"] = ", ".join([*customers[:6], "suzuki@examp1e.co.jp"])
    many["Cc"] = ", ".join(customers[6:])
    many["Subject"] = "新製品発表会のご案内"
    many.set_content("各位\n\n新製品発表会のご案内をお送りします。\n")
    return [internal, external, many]


def submit_samples(port: int) -> list[str]:
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for msg in sample_messages():
            rcpts = [a.addr_spec for h in ("To", "Cc") for a in (msg[h].addresses if msg[h] else ())]
            smtp.ehlo()
            smtp.mail("taro@example.co.jp")
            for rcpt in rcpts:
                smtp.rcpt(rcpt)
            code, reply = smtp.data(msg.as_bytes())
            if code != 250:
                raise click.ClickException(f"the demo helper refused a sample message: {code} {reply!r}")
            ids.append(reply.decode().split()[-1])
    return ids


def run_demo(window: bool | None = None) -> None:
    """Start the demo helper, submit the samples, then show the window (or print links) until quit."""
    home = Path(tempfile.mkdtemp(prefix="sendguard-demo-"))
    stop = threading.Event()

    def stopping(*_: object) -> None:
        stop.set()
        raise KeyboardInterrupt  # unwinds to the cleanup below, wherever the demo is

    # SIGTERM (a logout, `kill`) must not leave the temporary home (and its secrets.key) behind
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stopping)
    try:
        _run_demo(home, window, stop)
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(home, ignore_errors=True)
        click.echo("Demo ended; its temporary home was removed.")


def _run_demo(home: Path, window: bool | None, stop: threading.Event) -> None:
    from sendguard import OWN_PACKAGES
    from sendguard.outbox import State

    from .cli import has_display
    from .runner import Runner

    os.environ["SENDGUARD_HOME"] = str(home)
    (home / "policy.toml").write_text(DEMO_POLICY, encoding="utf-8")
    runner = Runner(home, 0, 0).start()
    try:
        assert runner.helper.smtp is not None
        click.echo(f"SendGuard demo: a temporary helper in {home}")
        click.echo(f"  SMTP {runner.helper.smtp.host}:{runner.helper.smtp.port}, web {runner.base_url}")
        ids = submit_samples(runner.helper.smtp.port)
        for item_id in ids:  # wait until each is checked (held for the window)
            runner.helper.outbox.wait(item_id, (State.RECEIVED,), 10)
        show_window = has_display() if window is None else window
        if show_window:
            try:
                from . import window as window_mod

                def started(manager: object) -> None:
                    if getattr(manager, "has_tray", False):
                        click.echo("  Three sample messages are waiting in the SendGuard window. Quit from the "
                                   "SendGuard icon in the tray, or press Ctrl-C here, to end the demo.")
                    else:
                        click.echo("  Three sample messages are waiting in the SendGuard window. Press Quit "
                                   "SendGuard in the window, or Ctrl-C here, to end the demo.")

                window_mod.run(runner, on_started=started)
                return
            except ModuleNotFoundError as exc:  # pywebview/Qt (the desktop extra) are not installed
                if (exc.name or "").partition(".")[0] in OWN_PACKAGES:
                    raise
                click.echo(f"  The window is not available ({exc}); use the links below.")
        click.echo("  No display: open these links in a browser to confirm each sample message:")
        for item_id in ids:
            item = runner.helper.outbox.get(item_id)
            click.echo(f"  - {item.subject}: {runner.helper.confirm_url(item_id)}")
        click.echo("  (each link works once; Ctrl-C ends the demo)")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        runner.stop()
