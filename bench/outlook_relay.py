"""Outlook send check through the central server's relay: from pressing Send to ``event.completed``.

Where a central server serves the add-in (no browser calls loopback), each send goes add-in ->
server (Office sign-in, ``/relay/api/v1/checks``) -> the user's helper over its own long poll ->
the helper's outbox -> status back to the server -> the add-in's long poll. The goal is the same as
for the direct path (bench/outlook_send.py): 1 s at the 95th percentile for a message the policy
allows, well inside Outlook's 5 s "taking longer than expected" notice.

The real ``sendguard server`` (gunicorn) runs on a fresh database in the cluster
``tools/with-postgres.sh`` started, with a stand-in for the tenant's signing keys (JWKS); the user's
helper is a desktop Runner connected to it; the real launchevent.js runs under node against the
stand-in Outlook of tests/js/harness.js with a signed Office SSO token. Office.js calls take 40 ms
(Outlook on the web / new Outlook, where the relay is used).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.central_server import _fresh_database, _pct

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"
TARGET_P95_MS = 1000
NOTICE_THRESHOLD_MS = 5000
SAMPLES = 20
USER = "taro@example.co.jp"
AUDIENCE = "api://sendguard.example.co.jp/bench"
ISSUER = "https://login.microsoftonline.com/bench-tenant/v2.0"
HELPER_POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n\n[confirm]\nwhen = "external"\n'
SERVER_POLICY = '[approval]\napprovers = ["boss@example.co.jp"]\n'

DRIVER = r"""
const { fakeOutlook, loadAddin, pressSend } = require(process.env.SG_HARNESS);
(async () => {
  const times = [];
  const parts = {};  // time per kind of request: session, check, poll
  const fetchImpl = (url, options) => {
    const kind = /addin\/session/.test(url) ? "session" : /\/checks/.test(url) ? "check" : "poll";
    const started = process.hrtime.bigint();
    return fetch(url, options).then((r) => {
      (parts[kind] = parts[kind] || []).push(Number(process.hrtime.bigint() - started) / 1e6);
      return r;
    });
  };
  for (let i = 0; i < Number(process.env.SG_SAMPLES); i++) {
    const outlook = fakeOutlook({
      latencyMs: 40, ssoToken: process.env.SG_SSO,
      from: { emailAddress: process.env.SG_FROM, displayName: "Taro" },
      to: [{ emailAddress: "hanako@example.co.jp", displayName: "Hanako" }], cc: [], attachments: [],
      subject: "Lunch", body: "See you at noon.",
    });
    loadAddin(outlook.office, { apiBase: process.env.SG_API, sso: true, fetchImpl });
    const started = process.hrtime.bigint();
    const completed = await pressSend(outlook.state, { timeoutMs: 60000 });
    times.push(Number(process.hrtime.bigint() - started) / 1e6);
    if (!completed.allowEvent) throw new Error("not allowed: " + JSON.stringify(completed));
    if (outlook.state.overLimit.length) throw new Error("over the call limit: " + outlook.state.overLimit);
  }
  process.stdout.write(JSON.stringify({ times, parts }));
})().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
"""


class _Tenant:
    """The tenant's signing key and its JWKS document, as far as Office SSO goes."""

    def __init__(self) -> None:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "bench", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/keys"

    def token(self, user: str) -> str:
        import jwt

        now = int(time.time())
        return jwt.encode({"aud": AUDIENCE, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 3600,
                           "preferred_username": user}, self.key, algorithm="RS256", headers={"kid": "bench"})


def _server(url: str, home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    ready = home / "ready.json"
    (home / "policy.toml").write_text(SERVER_POLICY, encoding="utf-8")
    log = open(home / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "sendguard", "server", "--database", url, "--bind", "127.0.0.1:0",
                             "--ready-file", str(ready), "--workers", "2", "--threads", "16",
                             "--policy", str(home / "policy.toml")],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


def run() -> dict[str, Any]:
    base = os.environ.get("SENDGUARD_TEST_DATABASE_URL")
    if not base:
        return {"skipped": "SENDGUARD_TEST_DATABASE_URL is not set: run through tools/with-postgres.sh (make bench)"}
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules").exists():
        return {"skipped": "node or tests/js/node_modules missing (make setup installs them)"}
    from addin.server import migrate
    from desktop.runner import Runner

    url, drop = _fresh_database(base)
    tenant = _Tenant()
    saved = {k: os.environ.get(k) for k in ("SENDGUARD_HOME", "XDG_DATA_HOME", "PYTHON_KEYRING_BACKEND")}
    proc = runner = None
    with tempfile.TemporaryDirectory(prefix="sg-bench-relay-") as tmp:
        server_home, helper_home = Path(tmp) / "server", Path(tmp) / "helper"
        server_home.mkdir()
        helper_home.mkdir()
        try:
            migrate(url)
            env = dict(os.environ, SENDGUARD_HOME=str(server_home), XDG_DATA_HOME=str(server_home / "xdg"),
                       PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
                       SENDGUARD_SERVER_SSO_JWKS_URL=tenant.jwks_url, SENDGUARD_SERVER_SSO_AUDIENCE=AUDIENCE,
                       SENDGUARD_SERVER_SSO_ISSUER=ISSUER)
            proc, server = _server(url, server_home, env)
            token = subprocess.run([sys.executable, "-m", "sendguard", "server", "token", "issue", "--database", url,
                                    "--user", USER], env=env, cwd=ROOT, capture_output=True, text=True,
                                   check=True).stdout.strip().splitlines()[-1]
            # the user's helper, connected to the server (its token in its own keyring)
            os.environ.update(SENDGUARD_HOME=str(helper_home), XDG_DATA_HOME=str(helper_home / "xdg"),
                              PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring")
            from sendguard import central, secrets

            (helper_home / "config.toml").write_text(f'[server]\nurl = "{server}"\n', encoding="utf-8")
            (helper_home / "policy.toml").write_text(HELPER_POLICY, encoding="utf-8")
            secrets.put(central.TOKEN_KEY, token)
            runner = Runner(helper_home, smtp_port=0, api_port=0).start()
            node_env = dict(os.environ, SG_HARNESS=str(JS_DIR / "harness.js"), SG_API=f"{server}/relay",
                            SG_SSO=tenant.token(USER), SG_FROM=USER, SG_SAMPLES=str(SAMPLES + 1))
            done = subprocess.run([node, "-e", DRIVER], cwd=JS_DIR, env=node_env, capture_output=True, text=True,
                                  timeout=600)
            if done.returncode != 0:
                log = (server_home / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"node driver failed: {done.stderr.strip()[-2000:]}\nserver log: {log}")
            measured = json.loads(done.stdout)
            times = measured["times"][1:]  # the first send opens connections and warms the workers
            parts = {kind: values[1:] for kind, values in measured["parts"].items()}
        finally:
            if runner is not None:
                runner.stop()
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(20)
            tenant.httpd.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            drop()
    p95 = _pct(times, 0.95)
    return {"samples": len(times), "office_call_ms": 40, "target_p95_ms": TARGET_P95_MS,
            "outlook_notice_threshold_ms": NOTICE_THRESHOLD_MS, "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(p95, 1), "max_ms": round(max(times), 1), "within_target": p95 <= TARGET_P95_MS,
            "requests": {kind: {"count": len(values), "p50_ms": round(statistics.median(values), 1),
                                "p95_ms": round(_pct(values, 0.95), 1)} for kind, values in parts.items() if values},
            "load_average_1min": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
