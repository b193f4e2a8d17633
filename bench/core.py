"""Component figures: check latency, the SMTP submission handler alone in a script (durable vs a bare
sink), memory on 25 MB. The product's SMTP figure is bench/smtp_product.py (the real `sendguard serve`)."""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from typing import Any

from sendguard import checks, message, policy

POLICY = policy.build({
    "organization.internal_domains": ("example.co.jp",),
    "organization.trusted_domains": ("partner.example",),
    "rules.blocked_domains": ("rival.example",),
})


def sample(recipients: int, attachments: list[int]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Taro <taro@example.co.jp>"
    msg["To"] = ", ".join(f"User {i} <user{i}@customer{i % 40}.example>" for i in range(recipients))
    msg["Subject"] = "見積書の送付について"
    msg.set_content("いつもお世話になっております。\n見積書を添付いたします。\n" * 20)
    for index, size in enumerate(attachments):
        msg.add_attachment(os.urandom(size), maintype="application", subtype="pdf", filename=f"見積書{index}.pdf")
    return msg.as_bytes()


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _time(func: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        out.append((time.perf_counter() - start) * 1000)
    return out


def check_latency() -> dict[str, Any]:
    typical = sample(5, [1024 * 1024, 1024 * 1024])
    parsed = message.parse(typical)
    evaluate_ms = _time(lambda: checks.evaluate(parsed, POLICY), 200)
    full_ms = _time(lambda: checks.evaluate(message.parse(typical), POLICY), 30)
    plain_ms = _time(lambda: email.message_from_bytes(typical, policy=email.policy.default), 30)
    big = sample(1000, [])
    big_parsed = message.parse(big)
    big_eval = _time(lambda: checks.evaluate(big_parsed, POLICY), 30)
    big_full = _time(lambda: checks.evaluate(message.parse(big), POLICY), 15)
    ratio = statistics.median(full_ms) / statistics.median(plain_ms)
    return {
        "typical_evaluate_p50_ms": round(statistics.median(evaluate_ms), 3),
        "typical_evaluate_p95_ms": round(_p(evaluate_ms, 0.95), 3),
        "typical_parse_and_check_p50_ms": round(statistics.median(full_ms), 2),
        "plain_email_parse_p50_ms": round(statistics.median(plain_ms), 2),
        "parse_and_check_vs_plain_parse": round(ratio, 2),
        "recipients_1000_evaluate_p50_ms": round(statistics.median(big_eval), 2),
        "recipients_1000_parse_and_check_p50_ms": round(statistics.median(big_full), 2),
        "targets": {"typical_evaluate_p50_ms": "<= 1", "parse_and_check_vs_plain_parse": "<= 3",
                    "recipients_1000_evaluate_p50_ms": "<= 20"},
        "ok": statistics.median(evaluate_ms) <= 1 and ratio <= 3 and statistics.median(big_eval) <= 20,
    }


_SERVER_SCRIPT = """
import sys, tempfile, time
from pathlib import Path
from sendguard import policy
from sendguard.outbox import Outbox
from sendguard.store import Store
from sendguard.submission import SubmissionHandler, SubmissionServer

class BareSink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

if sys.argv[1] == "bare":
    handler = BareSink()
else:
    store = Store(Path(tempfile.mkdtemp()) / "bench.db")
    handler = SubmissionHandler(Outbox(store, lambda: policy.Policy()))
server = SubmissionServer(handler, "127.0.0.1", 0).start()
print(server.port, flush=True)
sys.stdin.read()
"""


def _blast(port: int, raw: bytes, total: int, clients: int) -> float:
    per = total // clients

    def worker() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for _ in range(per):
                client.sendmail("taro@example.co.jp", ["a@partner.example"], raw)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * clients / (time.perf_counter() - start)


def _rate(kind: str, raw: bytes, total: int, clients: int) -> float:
    """Messages per second accepted by a server process of ``kind``, the clients in this process."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_SCRIPT, kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        _blast(port, raw, 40, clients)  # warm up
        return _blast(port, raw, total, clients)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)


def smtp_throughput(total: int = 600, clients: int = 4, rounds: int = 3) -> dict[str, Any]:
    """Best of ``rounds`` for each server, alternating, so both see the same machine load."""
    raw = sample(3, [20_000]).replace(b"\n", b"\r\n")
    bare, durable = [], []
    for _ in range(rounds):
        bare.append(_rate("bare", raw, total, clients))
        durable.append(_rate("durable", raw, total, clients))
    ratio = max(durable) / max(bare)
    return {"component": "the submission handler and outbox in a script, not the helper as people run it "
                         "(see smtp_product)",
            "bare_sink_msgs_per_s": round(max(bare), 1), "durable_msgs_per_s": round(max(durable), 1),
            "ratio": round(ratio, 2),
            "goal": "none of its own: the SMTP goal is the product's (smtp_product), not this component's",
            "runs": {"bare": [round(x) for x in bare], "durable": [round(x) for x in durable]},
            "note": "server in its own process; each accepted message is committed (SQLite WAL, "
                    "synchronous=FULL, group commit) before its 250"}


_RSS_SCRIPT = """
import gc, os, sys, threading, time, psutil
from email.message import EmailMessage
m = EmailMessage(); m['From'] = 'a@example.co.jp'; m['To'] = 'b@partner.example'; m['Subject'] = 'big'
m.set_content('x'); m.add_attachment(os.urandom(25 * 1024 * 1024), maintype='application',
                                     subtype='octet-stream', filename='big.bin')
raw = m.as_bytes(); del m; gc.collect()
from sendguard import checks, message, policy
proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; done = []
def watch():
    while not done:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.001)
t = threading.Thread(target=watch); t.start()
result = checks.evaluate(message.parse(raw), policy.Policy())
done.append(1); t.join()
print(len(raw), peak[0] - base)
"""


def large_attachment_memory() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, check=True)
    size, growth = (int(x) for x in out.stdout.split())
    ratio = growth / size
    return {"message_bytes": size, "peak_rss_growth_bytes": growth, "growth_vs_message": round(ratio, 2),
            "target": "< 3", "ok": ratio < 3}


def run() -> dict[str, Any]:
    return {"check_latency": check_latency(), "smtp_throughput": smtp_throughput(),
            "large_attachment_memory": large_attachment_memory()}
