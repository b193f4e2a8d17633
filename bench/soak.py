"""Soak: a steady stream of mail through a real helper to Microsoft Graph while faults come and go.

A ``sendguard serve --no-window`` process releases every message through the Graph connector to the
stand-in Graph server (tests/fakes; real msal and requests on the wire). For ``seconds`` (default 300 for
``make bench``; ``python -m bench.soak --minutes 30`` for the long run) mail is handed in over SMTP at a
steady rate while random faults are injected: Graph down (connections dropped, or 503 everywhere, sign-in
included), the answer to a send lost after Graph sent it, throttling with Retry-After, answers slower
than the client's timeout, and the helper itself killed with SIGKILL and started again. Then the faults
stop and the helper drains.

Reported, with goals: messages in (250 given), out (distinct Message-IDs in Sent Items), duplicates
(must be 0), lost (must be 0), the helper's memory growth after warm-up, and the longest time any
message stayed in ``releasing`` (from the audit trail).
"""

from __future__ import annotations

import argparse
import email.policy
import json
import os
import random
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"duplicates": 0, "lost": 0, "memory_growth_mb_max": 60.0, "longest_releasing_s_max": 120.0}
ADDRESS = "user@contoso.example"


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# Distinct customer domains: names one letter apart (partner0/partner1) are look-alikes to the policy and
# would rightly be held for approval, which is not what this run measures.
DOMAINS = ("northwind.example", "kobayashi-shoji.example", "alpine-trading.example")


def _rcpt(n: int) -> str:
    return f"customer{n % 7}@{DOMAINS[n % 3]}"


def _message(n: int) -> tuple[str, bytes]:
    msgid = f"<soak{n}.{os.getpid()}@contoso.example>"
    msg = EmailMessage()
    msg["From"] = ADDRESS
    msg["To"] = _rcpt(n)
    msg["Subject"] = f"soak {n}"
    msg["Message-ID"] = msgid
    msg.set_content("お世話になっております。\n" * (1 + n % 20))
    if n % 5 == 0:  # a real, readable PDF (random bytes would rightly be held as unreadable)
        from tests.docmaker import pdf

        doc = pdf([f"Quotation {n}"] + ["Item line"] * (1 + n % 200))
        msg.add_attachment(doc, maintype="application", subtype="pdf", filename="q.pdf")
    return msgid, msg.as_bytes(policy=email.policy.SMTP)


class Serve:
    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.home / "runtime.json").unlink(missing_ok=True)
        log = open(self.home / "serve.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "sendguard", "serve", "--no-window", "--smtp-port",
                                      "0", "--api-port", "0"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                data = json.loads((self.home / "runtime.json").read_text())
                if data.get("pid") == self.proc.pid and data.get("smtp_port"):
                    self.smtp_port = int(data["smtp_port"])
                    return
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}; see {self.home / 'serve.log'}")
            time.sleep(0.1)
        raise RuntimeError("serve did not start within 60 s")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


def run(seconds: float | None = None, rate: float = 4.0, seed: int | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from sendguard import config as config_mod
    from sendguard import secrets
    from sendguard.mailboxes.graph import MsalTokenSource
    from tests.fakes.graph_server import FakeGraph

    seconds = float(seconds if seconds is not None else os.environ.get("SENDGUARD_SOAK_SECONDS", 300))
    rng = random.Random(seed if seed is not None else int(time.time()))
    tmp = Path(tempfile.mkdtemp(prefix="sendguard-soak-"))
    home = tmp / "home"
    home.mkdir()
    env = dict(os.environ, SENDGUARD_HOME=str(home), SENDGUARD_ADMIN_POLICY=str(tmp / "admin.toml"),
               PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring", XDG_DATA_HOME=str(tmp / "xdg"),
               LANG="en_US.UTF-8")
    env.pop("SENDGUARD_CRASH_AT", None)
    os.environ.update({k: env[k] for k in ("SENDGUARD_HOME", "PYTHON_KEYRING_BACKEND", "XDG_DATA_HOME")})
    faults: dict[str, int] = defaultdict(int)
    accepted: dict[str, float] = {}  # Message-ID -> when the 250 came
    refused = 0
    last_refusal = ""
    with FakeGraph(address=ADDRESS) as fake:
        (home / "policy.toml").write_text('[organization]\ninternal_domains = ["contoso.example"]\n'
                                          '[confirm]\nwhen = "never"\n')
        (home / "config.toml").write_text("[retry]\nbase_seconds = 0.5\nmax_seconds = 8\n"
                                          "inline_wait_seconds = 1\n")
        account = config_mod.Account("m365", "graph", ADDRESS, {
            "tenant": fake.tenant, "client_id": fake.client_id, "authority": fake.base,
            "graph_endpoint": fake.graph_endpoint, "ca_bundle": str(fake.ca_file), "timeout": 3})
        config_mod.save_account(account, home / "config.toml")
        MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
        _ = secrets  # the keyring file now holds the sign-in the serve process reads
        serve = Serve(home, env)
        serve.start()
        warm_rss = 0.0
        n = 0
        started = time.monotonic()
        next_fault = started + rng.uniform(5, 15)
        fault_until = 0.0
        active: str | None = None
        try:
            while (now := time.monotonic()) - started < seconds:
                if not warm_rss and now - started > min(30.0, seconds / 4):
                    warm_rss = _rss_mb(serve.proc.pid) if serve.proc else 0.0
                if active and now >= fault_until:
                    fake.outage.up()
                    active = None
                if active is None and now >= next_fault:
                    active = rng.choice(["down_drop", "down_503", "drop_after", "throttle", "slow", "kill9"])
                    faults[active] += 1
                    fault_until = now + rng.uniform(1, 6)
                    next_fault = fault_until + rng.uniform(5, 20)
                    if active == "down_drop":
                        fake.outage.down("drop")
                    elif active == "down_503":
                        fake.outage.down("503", retry_after=1)
                    elif active == "drop_after":
                        fake.fail_next("POST /v1.0/me/sendMail", "drop_after", times=rng.randint(1, 3))
                    elif active == "throttle":
                        fake.fail_next("POST /v1.0/me/sendMail", "429", times=rng.randint(3, 8),
                                       retry_after=rng.randint(1, 3))
                    elif active == "slow":
                        fake.outage.slow(4.0)
                    elif active == "kill9":
                        serve.kill9()
                        time.sleep(rng.uniform(0.2, 2))
                        serve.start()
                        warm_rss = 0.0 if now - started < seconds / 2 else warm_rss
                msgid, raw = _message(n)
                try:
                    with smtplib.SMTP("127.0.0.1", serve.smtp_port, timeout=30) as client:
                        client.sendmail(ADDRESS, [_rcpt(n)], raw)
                    accepted[msgid] = time.monotonic()
                    n += 1
                except (OSError, smtplib.SMTPException) as exc:
                    refused += 1
                    last_refusal = repr(exc)[:300]  # the client keeps it and tries again (the same message next turn)
                time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - now)))
            fake.outage.up()
            fake.failures.clear()
            end_rss = _rss_mb(serve.proc.pid) if serve.proc else 0.0
            drain_deadline = time.monotonic() + 180
            while time.monotonic() < drain_deadline:
                sent_ids = {s.internet_message_id for s in fake.sends}
                if set(accepted) <= sent_ids:
                    break
                time.sleep(1)
            drain_s = time.monotonic() - (drain_deadline - 180)
        finally:
            serve.stop()
        sends = [s.internet_message_id for s in fake.sends]
    longest, stuck = _longest_releasing(home)
    held = _held_for_user(home)
    distinct = set(sends)
    result = {
        "seconds": seconds, "rate_per_s": rate, "faults": dict(faults),
        "messages_in": len(accepted), "smtp_refused_then_retried": refused, "last_refusal": last_refusal,
        "messages_out": len(distinct & set(accepted)),
        "duplicates": len(sends) - len(distinct),
        # held where the user sees it (the window, `queue list`) is not lost, but this run expects none
        "held_for_user": len(set(accepted) & held),
        "lost": len(set(accepted) - distinct - held),
        "still_releasing_at_end": stuck,
        "memory_rss_mb": {"after_warmup": round(warm_rss, 1), "end": round(end_rss, 1)},
        "memory_growth_mb": round(end_rss - warm_rss, 1) if warm_rss else None,
        "longest_releasing_s": round(longest, 1),
        "drain_after_faults_s": round(drain_s, 1),
        "goals": GOALS,
    }
    result["pass"] = (result["messages_in"] > 0 and result["duplicates"] == GOALS["duplicates"] and result["lost"] == GOALS["lost"]
                      and result["held_for_user"] == 0
                      and (result["memory_growth_mb"] or 0) <= GOALS["memory_growth_mb_max"]
                      and result["longest_releasing_s"] <= GOALS["longest_releasing_s_max"])
    return result


def _longest_releasing(home: Path) -> tuple[float, int]:
    """Longest stay in ``releasing`` by the audit trail (entered -> left), and how many never left."""
    from datetime import datetime

    from sendguard import audit
    from sendguard.store import Store

    store = Store(home / "sendguard.db")
    try:
        entered: dict[str, float] = {}
        longest = 0.0
        for r in audit.records(store):
            data = r["data"] if isinstance(r["data"], dict) else json.loads(r["data"] or "{}")
            ts = datetime.fromisoformat(r["ts"]).timestamp()
            if data.get("to") == "releasing":
                entered[r["item_id"]] = ts
            elif data.get("from") == "releasing" and r["item_id"] in entered:
                longest = max(longest, ts - entered.pop(r["item_id"]))
        return longest, len(entered)
    finally:
        store.close()


def _held_for_user(home: Path) -> set[str]:
    """Message-IDs still held for the user to decide (not lost: the window and `queue list` show them)."""
    from sqlalchemy import select

    from sendguard.store import Store, outbox

    store = Store(home / "sendguard.db")
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.message_id).where(outbox.c.state.in_(
                ["received", "awaiting_confirmation", "awaiting_approval", "needs_attention"]))).all()
        return {r[0] for r in rows}
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="how long (default 5, or SENDGUARD_SOAK_SECONDS)")
    parser.add_argument("--rate", type=float, default=4.0, help="messages per second handed in")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    result = run(args.minutes * 60 if args.minutes else None, args.rate, args.seed)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
