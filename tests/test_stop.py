"""Stopping the helper is bounded: a part that cannot stop in time is named and left behind, and nothing
that was committed is lost or sent twice (issue #11)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for

from sendguard import config, outbox, policy, store
from sendguard.shutdown import STOP_SECONDS
from sendguard.submission import SubmissionServer

pytestmark = pytest.mark.slow


class HungRelay:
    """An SMTP relay that takes the message in and then never answers (a server stuck mid-send)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        return "250 OK"


def states(home: Path) -> dict[str, str]:
    box = outbox.Outbox(store.Store(home / "sendguard.db"), lambda: policy.Policy())
    return {i.id: i.state for i in box.list(None)}


def test_stop_during_a_hung_send_ends_within_its_budget_and_the_send_is_never_repeated(
        home: Path, write_policy: Any, serve_process: Any) -> None:
    """SIGTERM (as a logout, or Quit, asks) while the worker waits on a relay that never answers: the
    helper used to wait 15 s for the worker, then 5 s more for the connectors. Now it ends within its
    budget, names the worker in the log, and leaves the message `releasing`; the next start settles it
    as the design says for a relay that cannot be asked (needs attention), and it is not sent again."""
    write_policy(SAMPLE_POLICY)
    relay_handler = HungRelay()
    relay = SubmissionServer(relay_handler, "127.0.0.1", 0).start()
    try:
        config.save_account(config.Account("relay", "smtp", "", {"host": "127.0.0.1", "port": relay.port,
                                                                  "security": "none"}), home / "config.toml")
        proc = serve_process().start()
        smtp_send(proc.smtp_port, make_message(to="x@partner.example"))
        item_id = wait_for(lambda: [i for i, s in states(home).items() if s == "awaiting_confirmation"])[0]
        assert run_cli("queue", "confirm", item_id).returncode == 0
        wait_for(lambda: relay_handler.messages, timeout=20)  # the worker is now inside the send
        assert states(home)[item_id] == "releasing"
        assert proc.proc is not None
        started = time.monotonic()
        proc.proc.terminate()
        code = proc.wait_dead(STOP_SECONDS + 10)
        took = time.monotonic() - started
        log = (home / "serve.log").read_text(encoding="utf-8")
        assert code == 0, log
        assert took < STOP_SECONDS + 3, (took, log)
        assert "stopping without waiting longer for the release worker" in log
        assert "SendGuard stopped." in log
        assert states(home)[item_id] == "releasing"  # committed before the send; nothing else happened to it

        serve_process().start()
        wait_for(lambda: states(home)[item_id] == "needs_attention", timeout=30)
        assert len(relay_handler.messages) == 1
    finally:
        relay_handler.release.set()
        relay.stop()


STUCK = """
import logging, sys, threading
from sendguard import shutdown
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
stuck = threading.Thread(target=threading.Event().wait, name="stuck-in-a-library")  # not a daemon
stuck.start()
print("started", flush=True)
"""


def run_python(code: str, timeout: float = 20) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_leave_ends_the_process_past_a_thread_that_would_hold_its_exit() -> None:
    """A thread the interpreter would wait for at exit (a library's, stuck on a window that is gone) is
    given its grace, named with where it waits, and the process ends without it."""
    code, out, took = run_python(STUCK + "shutdown.leave(0.3)\nprint('not reached')\n")
    assert code == 0, out
    assert "started" in out and "not reached" not in out
    assert "ending now; these threads did not finish: stuck-in-a-library (threading.py:" in out
    assert took < 10


def test_leave_returns_when_nothing_holds_the_exit() -> None:
    code, out, _took = run_python("from sendguard import shutdown\nshutdown.leave(0.3)\nprint('returned')\n")
    assert code == 0 and "returned" in out and "did not finish" not in out, out


def test_the_watchdog_ends_a_stop_stuck_where_no_budget_reaches() -> None:
    """Armed when the stop is asked for: if the process is still there after its bound, what still runs is
    named in the log and the process ends."""
    code, out, took = run_python(STUCK + "shutdown.Watchdog(0.5).arm()\nthreading.Event().wait()\n")
    assert code == 0, out
    assert "SendGuard did not stop within 0.5 s; ending now" in out
    assert "stuck-in-a-library (threading.py:" in out and "MainThread" in out
    assert took < 10


def test_a_disarmed_watchdog_does_nothing() -> None:
    code, out, _took = run_python("import time\nfrom sendguard import shutdown\nw = shutdown.Watchdog(0.3)\n"
                                  "w.arm()\nw.disarm()\ntime.sleep(0.8)\nprint('alive')\n")
    assert code == 0 and "alive" in out and "did not stop" not in out, out
