"""Central server on PostgreSQL: ``POST /api/v1/checks`` throughput and the approver's list with 10,000 items.

The server runs as ``sendguard server`` (gunicorn, gthread workers) on a fresh database in the
cluster ``tools/with-postgres.sh`` started (``SENDGUARD_TEST_DATABASE_URL``). The load generator is
a separate process (``python -m bench.central_server --loadgen``): asyncio, raw HTTP/1.1 keep-alive
connections, so it spends little CPU of its own; both share this machine's cores. Each check is
a ``message/rfc822`` body (external recipient, attachment) with a helper token: the server parses
it, reads the domain history from PostgreSQL and runs the policy.

For the approval list, 10,000 messages awaiting approval by one approver are inserted directly,
then ``GET /api/v1/approvals`` is timed as the approver's helper calls it: the first page
(``limit=100``, what the Approvals window shows) and the whole list.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
TARGET_RPS = 500
TARGET_LIST_MS = 100
PENDING = 10_000
POLICY = """
[organization]
internal_domains = ["example.co.jp"]
trusted_domains = ["partner.example"]

[approval]
approvers = ["boss@example.co.jp"]

[[rules.keywords]]
pattern = "社外秘"
action = "approve"
"""


def _message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Taro Yamada <taro@example.co.jp>"
    msg["To"] = "Client <x@client.example>, Hanako <hanako@example.co.jp>"
    msg["Cc"] = "y@partner.example"
    msg["Subject"] = "見積書の送付"
    msg.set_content("いつもお世話になっております。見積書を添付いたします。\n" * 5)
    msg.add_attachment(b"%PDF-1.4\n" + b"0" * 4000, maintype="application", subtype="pdf", filename="見積.pdf")
    return msg.as_bytes()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------- load generator (own process)
async def _worker(host: str, port: int, request: bytes, until: float, latencies: list[float],
                  errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.decode("latin-1").strip())
                continue
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _load(host: str, port: int, token: str, seconds: float, connections: int) -> dict[str, Any]:
    body = _message()
    request = (f"POST /api/v1/checks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: message/rfc822\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
               ).encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*[_worker(host, port, request, until, latencies, errors) for _ in range(connections)])
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": round(elapsed, 2), "errors": len(errors),
            "first_errors": errors[:3], "latencies_ms": [round(x * 1000, 3) for x in latencies]}


def loadgen_main(argv: list[str]) -> None:
    host, port, token, seconds, connections = argv[0], int(argv[1]), argv[2], float(argv[3]), int(argv[4])
    print(json.dumps(asyncio.run(_load(host, port, token, seconds, connections))))


# ---------------------------------------------------------------------- the benchmark
def _fresh_database(base: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text

    name = "sgbench_" + uuid.uuid4().hex[:10]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return base.rsplit("/", 1)[0] + "/" + name, drop


def _seed_pending(url: str, count: int) -> None:
    """``count`` messages awaiting approval by boss@example.co.jp (as helpers would have submitted them)."""
    from sqlalchemy import insert

    from sendguard.store import Store, outbox

    store = Store(url)
    now = time.time()
    check = {"recipients": [{"address": "x@client.example", "display_name": "Client", "field": "to",
                             "domain": "client.example", "external": True, "flags": ["external", "new_domain"]}],
             "attachments": [{"id": "1", "filename": "見積.pdf", "size": 4000, "content_type": "application/pdf",
                              "sha256": "0" * 64, "flags": ["external"]}],
             "verdict": {"action": "approve", "approvers": ["boss@example.co.jp"],
                         "reasons": [{"rule": "keyword", "action": "approve", "target": "body",
                                      "message": "Keyword “社外秘” found in the message body"}]}}
    rows = [dict(id=f"b{n:07d}", state="awaiting_approval", source="central", owner=f"user{n % 200}@example.co.jp",
                 envelope_from=f"user{n % 200}@example.co.jp", envelope_to=["x@client.example"],
                 message_id=f"<b{n}@example.co.jp>", sender=f"user{n % 200}@example.co.jp",
                 subject=f"社外秘 見積 {n}", check_result=check, approvers=["boss@example.co.jp"],
                 release_after=0.0, expires_at=now + 86400 + n, attempts=0, created_at=now, updated_at=now,
                 purged=0) for n in range(count)]
    with store.transaction() as conn:
        for start in range(0, count, 1000):
            conn.execute(insert(outbox), rows[start:start + 1000])
    store.close()


def _start_server(url: str, home: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    ready = home / "ready.json"
    env = dict(os.environ, SENDGUARD_HOME=str(home), XDG_DATA_HOME=str(home / "xdg"),
               PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring")
    log = open(home / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "sendguard", "server", "--database", url, "--bind", "127.0.0.1:0",
                             "--ready-file", str(ready), "--workers", str(workers), "--threads", "4",
                             "--policy", str(home / "policy.toml")],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import requests

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            base = json.loads(ready.read_text())["url"]
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, str(base)
        except (OSError, ValueError, KeyError, requests.RequestException):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {home / 'server.log'}")


def run(seconds: float = 10.0, connections: int = 16, workers: int = 3) -> dict[str, Any]:
    base = os.environ.get("SENDGUARD_TEST_DATABASE_URL")
    if not base:
        return {"skipped": "SENDGUARD_TEST_DATABASE_URL is not set: run through tools/with-postgres.sh (make bench)"}
    import requests

    from addin.server import issue_token, migrate
    from sendguard.store import Store

    url, drop = _fresh_database(base)
    result: dict[str, Any] = {"cores": os.cpu_count(), "server": f"gunicorn gthread, {workers} workers x 4 threads",
                              "load_generator": f"separate asyncio process, {connections} keep-alive connections"}
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        home = Path(tmp)
        (home / "policy.toml").write_text(POLICY, encoding="utf-8")
        proc = None
        try:
            migrate(url)
            store = Store(url)
            taro, boss = issue_token(store, "taro@example.co.jp"), issue_token(store, "boss@example.co.jp")
            store.close()
            _seed_pending(url, PENDING)
            proc, server = _start_server(url, home, workers)
            port = int(server.rsplit(":", 1)[1])
            # warm up every worker (imports, pools) before measuring
            for _ in range(30):
                requests.post(f"{server}/api/v1/checks", data=_message(), timeout=10,
                              headers={"Authorization": f"Bearer {taro}", "Content-Type": "message/rfc822"})
            load = subprocess.run([sys.executable, "-m", "bench.central_server", "--loadgen", "127.0.0.1", str(port),
                                   taro, str(seconds), str(connections)], cwd=ROOT, capture_output=True, text=True,
                                  timeout=seconds + 60)
            data = json.loads(load.stdout)
            lat = data.pop("latencies_ms")
            rps = data["requests"] / data["seconds"]
            result["checks"] = {
                **{k: v for k, v in data.items() if k != "first_errors" or v},
                "requests_per_second": round(rps, 1), "target_rps": TARGET_RPS, "ok": rps >= TARGET_RPS
                and data["errors"] == 0,
                "latency_ms": {"p50": _pct(lat, 0.50), "p90": _pct(lat, 0.90), "p99": _pct(lat, 0.99),
                               "max": max(lat)} if lat else {},
            }
            result["approval_list"] = _time_list(server, boss)
        finally:
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(20)
            drop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "central_server.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


def _time_list(server: str, token: str) -> dict[str, Any]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    out: dict[str, Any] = {"pending_for_approver": PENDING, "target_ms": TARGET_LIST_MS}
    for name, params, runs in (("first_page_100", {"limit": "100"}, 30), ("all_10000", {}, 8)):
        times = []
        count = 0
        for _ in range(runs):
            start = time.perf_counter()
            response = session.get(f"{server}/api/v1/approvals", params=params, timeout=60)
            times.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
            count = len(response.json())
        out[name] = {"items": count, "median_ms": round(statistics.median(times), 1),
                     "p95_ms": round(_pct(times, 0.95), 1)}
    out["ok"] = out["first_page_100"]["median_ms"] < TARGET_LIST_MS
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen_main(sys.argv[2:])
    else:
        print(json.dumps(run(), indent=2, ensure_ascii=False))
