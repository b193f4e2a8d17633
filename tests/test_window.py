"""The real pywebview (Qt) window under Xvfb: it appears when mail is held, queues, and confirms.

pywebview must own the main thread, so the helper and its window run in a subprocess
(``python -m desktop.window --control``); the test submits over SMTP, finds the window with
xdotool, captures the screen with ImageMagick and drives the page through ``evaluate_js``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.window, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\ntrusted_domains = ["partner.example"]\n'


def _missing() -> str | None:
    if not os.environ.get("DISPLAY"):
        return "no DISPLAY: run under xvfb-run (make test does)"
    for tool in ("xdotool", "import"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        import webview  # noqa: F401
        from qtpy import QtWebEngineWidgets  # noqa: F401
    except Exception as exc:  # ImportError, or Qt libraries missing
        return f"pywebview/Qt WebEngine not usable: {exc}"
    return None


pytestmark.append(pytest.mark.skipif(_missing() is not None, reason=str(_missing())))


def artifacts() -> Path:
    path = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class WindowProcess:
    """The helper with its window in a subprocess, driven over its JSON control channel."""

    def __init__(self, home: Path):
        env = dict(os.environ, SENDGUARD_HOME=str(home))
        env["QTWEBENGINE_CHROMIUM_FLAGS"] = (env.get("QTWEBENGINE_CHROMIUM_FLAGS", "") + " --no-sandbox").strip()
        self.stderr = open(home / "window.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "desktop.window", "--home", str(home), "--control"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=env, cwd=ROOT)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.wait("ready", timeout=60)
        self.wait("loaded", timeout=60)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def wait(self, name: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        for event in self.seen:
            if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                self.seen.remove(event)
                return event
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the window process exited ({self.proc.returncode})") from None
                continue
            if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                return event
            self.seen.append(event)
        raise AssertionError(f"no {name} event within {timeout} s; saw {[e['event'] for e in self.seen]}")

    def evaluate(self, js: str) -> Any:
        self.send({"cmd": "eval", "js": js})
        return self.wait("result")["value"]

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()


@pytest.fixture
def window(home: Path):
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    proc = WindowProcess(home)
    yield proc
    proc.stop()


def submit(port: int, subject: str, to: list[str], attachment: bool = True) -> str:
    msg = EmailMessage()
    msg["From"] = "me@example.co.jp"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("お世話になっております。見積書を添付します。")
    if attachment:
        msg.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf", filename="見積書.pdf")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("me@example.co.jp")
        for rcpt in to:
            smtp.rcpt(rcpt)
        code, reply = smtp.data(msg.as_bytes())
    assert code == 250, reply
    return reply.decode().split()[-1]


def visible_windows(window: WindowProcess) -> list[str]:
    """Visible windows titled SendGuard* of this helper (tests may share one X server under xdist)."""
    found = subprocess.run(["xdotool", "search", "--all", "--onlyvisible", "--pid", str(window.proc.pid), "--name",
                            "^SendGuard"], capture_output=True, text=True, timeout=10)
    return found.stdout.split()


def wait_until(predicate, timeout: float = 15.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def capture(path: Path) -> int:
    """Screenshot the whole X screen; return its number of distinct colours (a blank frame has a handful)."""
    subprocess.run(["import", "-window", "root", str(path)], check=True, timeout=30)
    out = subprocess.run(["convert", str(path), "-format", "%k", "info:"], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def test_window_appears_and_confirms(window: WindowProcess, home: Path) -> None:
    assert visible_windows(window) == []  # created hidden at start-up
    item_id = submit(window.ready["smtp_port"], "見積書の送付", ["x@partner.example", "boss@example.co.jp"])
    window.wait("shown", id=item_id)
    window.wait("painted", id=item_id)
    ids = wait_until(lambda: visible_windows(window))
    title = subprocess.run(["xdotool", "getwindowname", ids[0]], capture_output=True, text=True).stdout.strip()
    assert title.startswith("SendGuard")
    shot = artifacts() / "window.png"
    assert wait_until(lambda: capture(shot) > 50, timeout=5)  # text drawn, not a blank frame

    assert window.evaluate("document.querySelectorAll('input.check').length") == 3
    assert window.evaluate("SG.state().send_disabled") is True
    assert window.evaluate("document.getElementById('subject').textContent") == "見積書の送付"
    assert window.evaluate("SG.checkAll()") is True
    window.evaluate("SG.send()")
    sent = wait_until(lambda: list((home / "sent" / "new").glob("*")))
    assert len(sent) == 1 and b"x@partner.example" in sent[0].read_bytes()
    wait_until(lambda: not visible_windows(window))  # nothing else held: the window hides again


def test_held_messages_queue_one_window_with_counter(window: WindowProcess, home: Path) -> None:
    port = window.ready["smtp_port"]
    first = submit(port, "first", ["a@partner.example"], attachment=False)
    window.wait("shown", id=first)
    second = submit(port, "second", ["b@partner.example"], attachment=False)
    wait_until(lambda: window.evaluate("document.getElementById('counter').textContent") == "1 of 2")
    assert len(visible_windows(window)) == 1
    assert window.evaluate("document.body.getAttribute('data-rendered')") == first
    window.evaluate("SG.checkAll() && SG.send()")
    window.wait("shown", id=second)
    assert window.evaluate("document.getElementById('subject').textContent") == "second"
    assert window.evaluate("document.getElementById('counter').hidden") is True
    window.evaluate("SG.cancel()")  # cancel shows the result (with .eml export) until closed
    wait_until(lambda: window.evaluate("document.body.getAttribute('data-done')") == "cancelled")
    window.evaluate("document.getElementById('next').click()")
    wait_until(lambda: not visible_windows(window))
    assert len(list((home / "sent" / "new").glob("*"))) == 1


def test_every_message_gets_working_buttons_and_outside_decisions_show(window: WindowProcess, home: Path) -> None:
    """Issue #11 items 1 and 2: after one Send the next message's Cancel/Bcc still work, and a cancel
    from the command line (another process) reaches the window instead of leaving a stale message."""
    port = window.ready["smtp_port"]
    first = submit(port, "first", ["a@partner.example"], attachment=False)
    window.wait("shown", id=first)
    second = submit(port, "second", ["b@partner.example"], attachment=False)
    third = submit(port, "third", ["c@partner.example"], attachment=False)
    wait_until(lambda: window.evaluate("document.getElementById('counter').textContent") == "1 of 3")
    window.evaluate("SG.checkAll() && SG.send()")
    window.wait("shown", id=second)
    enabled = "(function(id){var e=document.getElementById(id); return !e.hidden && !e.disabled;})"
    assert window.evaluate(enabled + "('cancel')") is True
    assert window.evaluate(enabled + "('bcc')") is True
    done = subprocess.run([sys.executable, "-m", "sendguard", "queue", "cancel", second], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, SENDGUARD_HOME=str(home)), timeout=60)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: window.evaluate("document.body.getAttribute('data-done')") == "cancelled", timeout=5)
    assert window.evaluate("document.getElementById('next').textContent") == "Next message"
    window.evaluate("document.getElementById('next').click()")
    window.wait("shown", id=third)
    assert window.evaluate("document.getElementById('counter').hidden") is True


def test_without_a_tray_the_window_offers_pause_and_quit(window: WindowProcess) -> None:
    """Issue #11 item 8: Xvfb has no system tray: Pause and Quit are in the window itself."""
    item_id = submit(window.ready["smtp_port"], "tray", ["a@partner.example"], attachment=False)
    window.wait("shown", id=item_id)
    assert window.evaluate("document.getElementById('helper-controls').hidden") is False
    assert window.evaluate("document.getElementById('quit').textContent") == "Quit SendGuard"
    window.evaluate("document.getElementById('pause').click()")
    wait_until(lambda: window.evaluate("document.getElementById('pause').getAttribute('aria-pressed')") == "true")
    window.evaluate("document.getElementById('quit').click()")
    window.proc.wait(60)  # the helper ends; the message stays held for next time


def test_status_line_says_what_sendguard_waits_for(home: Path) -> None:
    """Issue #16: a confirmed message the mail service does not take is not silently gone: the window's
    status line says SendGuard waits for the mail service (with its last answer), and clears once the
    message went out. The sink here is the real Maildir, made unreachable as an unmounted share is."""
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    (home / "config.toml").write_text("[retry]\nbase_seconds = 1.0\nmax_seconds = 2.0\n", encoding="utf-8")
    sink = home / "sent"
    sink.write_text("not a folder: the share is not mounted")
    window = WindowProcess(home)
    try:
        port = window.ready["smtp_port"]
        first = submit(port, "first", ["a@partner.example"], attachment=False)
        window.wait("shown", id=first)
        assert window.evaluate("document.getElementById('status').hidden") is True  # nothing waits yet
        window.evaluate("SG.checkAll() && SG.send()")
        status = window.wait("status", timeout=60)
        while [line["kind"] for line in status["lines"]] == ["sending"]:  # caught mid-send: the failure follows
            status = window.wait("status", timeout=60)
        assert [line["kind"] for line in status["lines"]] == ["retry"]
        assert first in status["lines"][0]["ids"]
        text = status["lines"][0]["text"]
        assert "wait for the mail service" in text and "cannot write to the Maildir" in text
        # the next message shows it in the window itself
        second = submit(port, "second", ["b@partner.example"], attachment=False)
        window.wait("shown", id=second)
        shown = window.evaluate("(function(){var s=document.getElementById('status');"
                                "return s.hidden ? null : s.textContent;})()")
        assert shown is not None and "cannot write to the Maildir" in shown
        assert window.evaluate("document.querySelector('#status li').getAttribute('data-kind')") == "retry"
        sink.unlink()  # the share is back
        cleared = window.wait("status", timeout=60)
        while [line["kind"] for line in cleared["lines"]] in (["retry"], ["sending"]):  # retried, then sent
            cleared = window.wait("status", timeout=60)
        assert cleared["lines"] == []
        wait_until(lambda: window.evaluate("document.getElementById('status').hidden") is True)
        assert len(list((sink / "new").glob("*"))) == 1  # sent once, when it could be
    finally:
        window.stop()
