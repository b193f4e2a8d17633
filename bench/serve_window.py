"""First-message latency of the real ``sendguard serve`` window: SMTP ``250`` to a painted, visible window.

Four cases, each from the hidden window: the first message after start-up, a message after the
window was hidden for a while (idle), warm messages in a row, and messages while other mail (passed
on by the policy, released to the Maildir) is handed in back to back over another SMTP connection. The helper runs exactly as a user
starts it (``python -m sendguard serve``) under Xvfb; the benchmark watches the window's page over
the DevTools protocol (``QTWEBENGINE_REMOTE_DEBUGGING``), where the page records when it painted a
frame after becoming visible (``window.SG_PAINTED``, the page's own clock), and confirms each
message with a real click so the window hides again.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\ntrusted_domains = ["partner.example"]\n'
TARGET_P95_MS = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(predicate: Any, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s")


class _Page:
    def __init__(self, port: int):
        import websocket

        def target() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                    pages = json.loads(r.read())
            except OSError:
                return None
            return next((p for p in pages if "/confirm/_window" in p.get("url", "")), None)

        found = _until(target, 90, 0.2)
        self.ws = websocket.create_connection(found["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.n = 0

    def js(self, expression: str) -> Any:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.n:
                return reply.get("result", {}).get("result", {}).get("value")


def _submit(port: int, serial: int) -> tuple[str, float]:
    raw = (f"From: Taro <taro@example.co.jp>\r\nTo: user{serial}@customer.example\r\n"
           f"Subject: bench {serial}\r\nMessage-ID: <bench-serve-{serial}-{time.time()}@example.co.jp>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbench\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("taro@example.co.jp")
        smtp.rcpt(f"user{serial}@customer.example")
        code, reply = smtp.data(raw)
        accepted = time.time()
    if code != 250:
        raise RuntimeError(f"SMTP refused: {code} {reply!r}")
    return reply.decode().split()[-1], accepted


def _sample(page: _Page, port: int, serial: int) -> float:
    item_id, accepted = _submit(port, serial)
    painted = _until(lambda: page.js(f"window.SG_PAINTED && window.SG_PAINTED.id === {json.dumps(item_id)} "
                                     "&& window.SG_PAINTED.frame"), 30, 0.01)
    page.js("SG.checkAll() && document.getElementById('send').click()")
    _until(lambda: page.js("!document.body.hasAttribute('data-rendered')"), 30)  # confirmed, window hidden
    return float(painted) - accepted * 1000.0


class _SmtpLoad:
    """Mail the policy passes on (internal recipients only) handed in back to back over one connection
    while window samples are taken: the intake and the release worker must not starve the window."""

    def __init__(self, port: int):
        import threading

        self.port = port
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo()
            while not self._stop.is_set():
                raw = (f"From: Taro <taro@example.co.jp>\r\nTo: hanako@example.co.jp\r\nSubject: load {self.sent}\r\n"
                       f"Message-ID: <bench-load-{self.sent}-{time.time()}@example.co.jp>\r\n\r\nload\r\n").encode()
                smtp.sendmail("taro@example.co.jp", ["hanako@example.co.jp"], raw)
                self.sent += 1

    def __enter__(self) -> _SmtpLoad:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)
        self.rate = self.sent / max(1e-9, time.monotonic() - self.started)


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return {"n": len(samples), "p50_ms": round(statistics.median(samples), 1), "p95_ms": round(p95, 1),
            "max_ms": round(max(samples), 1)}


def run(starts: int = 3, warm_runs: int = 20, idle_seconds: float = 20.0, idle_runs: int = 3,
        settle_seconds: float = 5.0, load_runs: int = 10) -> dict[str, Any]:
    if not os.environ.get("DISPLAY"):
        return {"skipped": "no DISPLAY: run under xvfb-run (make bench does)"}
    first: list[float] = []
    after_idle: list[float] = []
    warm: list[float] = []
    loaded: list[float] = []
    load_rates: list[float] = []
    for start in range(starts):
        home = Path(tempfile.mkdtemp(prefix="sendguard-bench-serve-"))
        (home / "policy.toml").write_text(POLICY, encoding="utf-8")
        devtools = _free_port()
        env = dict(os.environ, SENDGUARD_HOME=str(home), XDG_DATA_HOME=str(home / "xdg"),
                   PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
                   QTWEBENGINE_REMOTE_DEBUGGING=f"127.0.0.1:{devtools}")
        env["QTWEBENGINE_CHROMIUM_FLAGS"] = (env.get("QTWEBENGINE_CHROMIUM_FLAGS", "") + " --no-sandbox").strip()
        proc = subprocess.Popen([sys.executable, "-m", "sendguard", "serve", "--smtp-port", "0", "--api-port", "0"],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            runtime = home / "runtime.json"
            _until(lambda runtime=runtime, proc=proc: runtime.exists()
                   and json.loads(runtime.read_text()).get("pid") == proc.pid, 90, 0.1)
            port = int(json.loads(runtime.read_text())["smtp_port"])
            page = _Page(devtools)
            _until(lambda page=page: page.js("typeof SG === 'object' && "
                                             "document.getElementById('loading').textContent !== ''"), 90, 0.1)
            time.sleep(settle_seconds)  # a user's first mail comes some seconds after log-in, not at once
            serial = start * 1000
            first.append(_sample(page, port, serial))
            for i in range(warm_runs if start == 0 else 3):
                warm.append(_sample(page, port, serial + 1 + i))
            for i in range(idle_runs if start == 0 else 1):
                time.sleep(idle_seconds)
                after_idle.append(_sample(page, port, serial + 100 + i))
            with _SmtpLoad(port) as load:
                time.sleep(1.0)
                for i in range(load_runs if start == 0 else 2):
                    loaded.append(_sample(page, port, serial + 200 + i))
            load_rates.append(load.rate)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            shutil.rmtree(home, ignore_errors=True)
    result: dict[str, Any] = {
        "what": "SMTP 250 -> `sendguard serve` window visible and painted (Xvfb, page clock over DevTools)",
        "first_after_start": _summary(first) | {"settle_s": settle_seconds},
        "after_idle": _summary(after_idle) | {"idle_s": idle_seconds},
        "warm": _summary(warm),
        "under_smtp_load": _summary(loaded) | {"smtp_messages_per_s": round(statistics.mean(load_rates), 1)},
        "target_p95_ms": TARGET_P95_MS,
    }
    worst = max(result[k]["p95_ms"] for k in ("first_after_start", "after_idle", "warm", "under_smtp_load"))
    result["meets_target"] = worst <= TARGET_P95_MS
    return result


if __name__ == "__main__":
    RESULTS.mkdir(exist_ok=True)
    quick = "--quick" in sys.argv
    out = run(starts=1, warm_runs=5, idle_seconds=10, idle_runs=1, load_runs=5) if quick else run()
    out["load_average"] = os.getloadavg()[0]  # figures taken on a busy machine are not the goal's figures
    (RESULTS / "serve_window.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))
    print(json.dumps(out, indent=2, ensure_ascii=False))
