"""Shared fixtures: an isolated SENDGUARD_HOME per test, helpers on port 0, message builders."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "test-artifacts"))

# Debian's Chromium for Playwright (never a downloaded browser); the flags keep it off the network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

SAMPLE_POLICY = """
[organization]
internal_domains = ["example.co.jp"]
trusted_domains = ["partner.example"]

[confirm]
when = "external"

[approval]
approvers = ["boss@example.co.jp"]

[rules]
many_external_recipients = 10
external_attachment = "confirm"
personal_data = "approve"
lookalike_domain = "approve"
blocked_domains = ["rival.example"]

[[rules.keywords]]
pattern = "社外秘"
action = "approve"
"""

# an internal domain, one approver, and the keyword 社外秘 that asks for approval: no other rule
KEYWORD_APPROVAL_POLICY = """
[organization]
internal_domains = ["example.co.jp"]

[approval]
approvers = ["boss@example.co.jp"]

[[rules.keywords]]
pattern = "社外秘"
action = "approve"
"""


@pytest.fixture(autouse=True)
def sg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own home, keyring file and admin-policy path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    monkeypatch.setenv("SENDGUARD_ADMIN_POLICY", str(tmp_path / "admin-policy.toml"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.delenv("SENDGUARD_CRASH_AT", raising=False)
    return home


@pytest.fixture(autouse=True)
def default_retry_policy() -> Iterator[None]:
    """A helper started in a test sets the process-wide retry policy from its config.toml: reset it."""
    yield
    from sendguard.mailboxes import _retry

    _retry.configure()


_CENTRAL_SERVICES: list[Any] = []


@pytest.fixture(autouse=True)
def _record_central_services(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Note every central-server service a test makes, so that its database fixture can stop the service's
    background rounds before dropping the database (``stop_central_rounds``). Left running, they log a
    traceback every round, and Python 3.11's traceback carets parse source with ``ast`` in their thread,
    which races the main thread's ``ast.parse`` (a SystemError in an unrelated test)."""
    try:
        from addin.server import CentralService
    except ImportError:  # a build without the web parts
        yield
        return
    original = CentralService.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _CENTRAL_SERVICES.append(self)

    monkeypatch.setattr(CentralService, "__init__", init)
    yield
    stop_central_rounds()  # the test's own (no database fixture stopped them)


def stop_central_rounds() -> None:
    """Stop the background rounds of the central services made so far (database fixtures call it first)."""
    while _CENTRAL_SERVICES:
        service = _CENTRAL_SERVICES.pop()
        service.notices.stop()
        service.releaser.stop()


@pytest.fixture
def home(sg_env: Path) -> Path:
    return sg_env


@pytest.fixture
def write_policy(home: Path) -> Callable[[str], Path]:
    def write(text: str = SAMPLE_POLICY) -> Path:
        path = home / "policy.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def make_message(
    to: str | list[str] = "a@partner.example",
    cc: str | list[str] | None = None,
    bcc: str | list[str] | None = None,
    sender: str = "Taro Yamada <taro@example.co.jp>",
    subject: str = "見積書の送付",
    body: str = "いつもお世話になっております。",
    attachments: list[tuple[str, bytes, str]] | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    if cc:
        msg["Cc"] = cc if isinstance(cc, str) else ", ".join(cc)
    if bcc:
        msg["Bcc"] = bcc if isinstance(bcc, str) else ", ".join(bcc)
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    for name, data, ctype in attachments or []:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


@pytest.fixture
def message_factory() -> Callable[..., EmailMessage]:
    return make_message


def smtp_send(port: int, msg: EmailMessage | bytes, to_addrs: list[str] | None = None,
              sender: str = "taro@example.co.jp") -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        if isinstance(msg, bytes):
            return client.sendmail(sender, to_addrs or [], msg)
        return client.send_message(msg, to_addrs=to_addrs)


@pytest.fixture
def helper(home: Path) -> Iterator[Callable[..., Any]]:
    """Start an in-process core helper (SMTP on port 0); stopped after the test."""
    from sendguard.service import Helper

    started: list[Helper] = []

    def start(**kwargs: Any) -> Helper:
        h = Helper(home, **kwargs).start(smtp=True, smtp_port=0)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


@pytest.fixture
def runner(home: Path) -> Iterator[Callable[..., Any]]:
    """Start a desktop Runner (helper + local API on port 0, no window)."""
    from desktop.runner import Runner

    started: list[Runner] = []

    def start(**kwargs: Any) -> Runner:
        r = Runner(home, smtp_port=0, api_port=0, **kwargs).start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


class ServeProcess:
    """`sendguard serve --no-window` as a real subprocess (for kill -9 tests)."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, crash_at: str | None = None, wait: bool = True) -> ServeProcess:
        env = dict(self.env)
        if crash_at:
            env["SENDGUARD_CRASH_AT"] = crash_at
        (self.home / "runtime.json").unlink(missing_ok=True)
        log = open(self.home / "serve.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sendguard", "serve", "--no-window", "--smtp-port", "0", "--api-port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if wait:
            wait_for(lambda: self.runtime().get("pid") == self.proc.pid if self.proc else False, timeout=30)
        return self

    def runtime(self) -> dict[str, Any]:
        try:
            return json.loads((self.home / "runtime.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    @property
    def smtp_port(self) -> int:
        return int(self.runtime()["smtp_port"])

    @property
    def api_port(self) -> int:
        return int(self.runtime()["api_port"])

    def wait_dead(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def serve_process(home: Path) -> Iterator[Callable[[], ServeProcess]]:
    procs: list[ServeProcess] = []

    def make() -> ServeProcess:
        p = ServeProcess(home, dict(os.environ))
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


def run_cli(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m sendguard ARGS` as a user would."""
    return subprocess.run([sys.executable, "-m", "sendguard", *args], input=input, capture_output=True,
                          env=env or dict(os.environ), cwd=ROOT, timeout=timeout)
