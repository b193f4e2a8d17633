"""The command line as a newcomer meets it (issue #11, items 11-19): one test per defect found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_message, run_cli, smtp_send, wait_for
from test_central_server import pg_url  # noqa: F401 - the PostgreSQL fixture

POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n'


def _eml(tmp_path: Path, **kwargs: object) -> Path:
    path = tmp_path / "m.eml"
    path.write_bytes(make_message(**kwargs).as_bytes())  # type: ignore[arg-type]
    return path


# ---------------------------------------------------------------------- 11: check = the helper's verdict
def test_check_applies_the_locked_admin_confirm_always(home: Path, tmp_path: Path) -> None:
    admin = Path(os.environ["SENDGUARD_ADMIN_POLICY"])
    admin.write_text('locked = ["confirm.when"]\n[confirm]\nwhen = "always"\n', encoding="utf-8")
    (home / "policy.toml").write_text(POLICY + '[confirm]\nwhen = "never"\n', encoding="utf-8")
    eml = _eml(tmp_path, to="hanako@example.co.jp")  # internal only: allowed, unless "always"
    out = run_cli("check", str(eml), "--json")
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)["verdict"]
    assert verdict["action"] == "confirm"
    assert [r["rule"] for r in verdict["reasons"]] == ["confirm_always"]
    text = run_cli("check", str(eml)).stdout.decode()
    assert "Verdict: CONFIRM" in text


def test_check_speaks_the_configured_language(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text('language = "ja"\n', encoding="utf-8")
    out = run_cli("check", str(_eml(tmp_path)))
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    assert "社外の宛先" in text and "判定" in text
    assert "External recipients" not in text and "Verdict" not in text


def test_unknown_language_is_refused_with_the_list(home: Path) -> None:
    (home / "config.toml").write_text('language = "ko"\n', encoding="utf-8")
    out = run_cli("queue", "list")
    err = out.stderr.decode()
    assert out.returncode == 1 and "config.toml:1" in err and "'ko'" in err and "en, ja, zh" in err


def test_errors_are_said_in_the_configured_language(home: Path, tmp_path: Path) -> None:
    """Item 19: the core's errors, not only the CLI's own lines, come through the catalogs."""
    (home / "config.toml").write_text('language = "ja"\n', encoding="utf-8")
    missing = run_cli("queue", "cancel", "0123456789abcdef")
    assert missing.returncode == 1
    assert "送信トレイにメッセージ '0123456789abcdef' はありません" in missing.stderr.decode()
    nobody = tmp_path / "nobody.eml"
    nobody.write_bytes(b"From: taro@example.co.jp\r\nSubject: x\r\n\r\nbody\r\n")
    out = run_cli("check", str(nobody))
    assert out.returncode == 1 and "メールに宛先がありません" in out.stderr.decode()
    gone = run_cli("accounts", "remove", "nosuch")
    assert gone.returncode == 1 and "nosuch' という名前のアカウントはありません" in gone.stderr.decode()
    (home / "config.toml").write_text('language = "zh"\n', encoding="utf-8")
    assert "发件箱中没有邮件" in run_cli("queue", "cancel", "0123456789abcdef").stderr.decode()


# ---------------------------------------------------------------------- 12: queue errors and flags
@pytest.fixture
def held(helper, home: Path) -> str:
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example"))
    return str(wait_for(lambda: next(iter(h.outbox.list(["awaiting_confirmation"])), None)).id)


def test_queue_errors_are_one_clear_line(held: str, tmp_path: Path) -> None:
    out = run_cli("queue", "export", held, "--out", str(tmp_path / "missing" / "x.eml"))
    err = out.stderr.decode()
    assert out.returncode == 1 and "Traceback" not in err and "does not exist" in err
    assert run_cli("queue", "cancel", held).returncode == 0
    again = run_cli("queue", "cancel", held).stderr.decode()
    assert "cannot cancel it now" in again and "cancelled it now" not in again
    resolve = run_cli("queue", "resolve", held, "--sent").stderr.decode()
    assert "cannot mark as sent it now" in resolve or "cannot mark as sent" in resolve
    both = run_cli("queue", "resolve", held, "--sent", "--resend")
    assert both.returncode == 2 and b"not both" in both.stderr
    bogus = run_cli("queue", "list", "--state", "bogus")
    assert bogus.returncode == 2 and b"awaiting_confirmation" in bogus.stderr


# ---------------------------------------------------------------------- 13: accounts add
def test_accounts_add_refuses_blanks_and_silent_replacement(home: Path) -> None:
    blank = run_cli("accounts", "add", "smtp", "--host", "")
    assert blank.returncode == 1 and b"--host must not be empty" in blank.stderr
    assert run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "a.example").returncode == 0
    again = run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "b.example")
    assert again.returncode == 1 and b"already exists" in again.stderr and b"--replace" in again.stderr
    listed = json.loads(run_cli("accounts", "list", "--json").stdout)
    assert [a["host"] for a in listed] == ["a.example"]
    assert run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "b.example", "--replace").returncode == 0
    assert [a["host"] for a in json.loads(run_cli("accounts", "list", "--json").stdout)] == ["b.example"]


def test_an_account_changed_while_the_helper_runs_says_it_applies_from_the_next_start(serve_process,
                                                                                        home: Path) -> None:
    """The helper reads its accounts at start: adding or removing one while it runs says so, with its
    process, instead of leaving the user to believe the change is in force."""
    quiet = run_cli("accounts", "add", "smtp", "--name", "early", "--host", "a.example")
    assert quiet.returncode == 0 and b"next start" not in quiet.stdout  # nothing runs: nothing to say
    serve = serve_process().start()
    added = run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "a.example")
    assert added.returncode == 0, added.stderr
    assert f"(process {serve.proc.pid}) uses this change from its next start".encode() in added.stdout
    removed = run_cli("accounts", "remove", "corp")
    assert removed.returncode == 0 and b"next start" in removed.stdout


# ---------------------------------------------------------------------- 14: central server commands
def test_server_connect_says_what_went_wrong(home: Path) -> None:
    out = run_cli("server", "connect", "http://127.0.0.1:9/", "--token", "x", timeout=60)
    err = out.stderr.decode()
    assert out.returncode == 1 and "cannot reach" in err and "stays held" not in err
    assert not (home / "config.toml").exists()


def test_server_connect_with_a_wrong_token_names_the_server_token(home: Path, tmp_path: Path,
                                                                  pg_url: str) -> None:  # noqa: F811
    """Item 14: a refused token is the server's helper token, never "get it with `sendguard token`"."""
    from test_central_server import SERVER_POLICY, ThreadServer

    policy = tmp_path / "server-policy.toml"
    policy.write_text(SERVER_POLICY, encoding="utf-8")
    server = ThreadServer(pg_url, policy)
    try:
        server.token("taro@example.co.jp")  # the server knows a token for this user; this is not it
        out = run_cli("server", "connect", server.url, "--token", "not-the-token")
        err = out.stderr.decode()
        assert out.returncode == 1, err
        assert f"{server.url} refused this token" in err
        assert "`sendguard server token issue --user ADDR`" in err and "not the local API token" in err
        assert "get the token with `sendguard token`" not in err and "stays held" not in err
        assert not (home / "config.toml").exists()  # nothing changed
        (home / "config.toml").write_text('language = "ja"\n', encoding="utf-8")
        err = run_cli("server", "connect", server.url, "--token", "not-the-token").stderr.decode()
        assert "はこのトークンを拒否しました" in err and "`sendguard server token issue --user ADDR`" in err
        assert "[server]" not in (home / "config.toml").read_text()
    finally:
        server.stop()


def test_server_token_issue_reads_the_database_from_config(home: Path, tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    (home / "config.toml").write_text(f'[server]\ndatabase = "sqlite:///{db}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "SENDGUARD_DATABASE_URL"}
    out = run_cli("server", "token", "issue", "--user", "taro@example.co.jp", env=env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) >= 20
    listed = run_cli("server", "token", "list", "--json", env=env)
    assert json.loads(listed.stdout)[0]["user"] == "taro@example.co.jp"


# ---------------------------------------------------------------------- 15: one helper per home
def test_second_helper_on_one_home_says_who_holds_it(serve_process, home: Path) -> None:
    first = serve_process().start()
    second = subprocess.run([sys.executable, "-m", "sendguard", "serve", "--no-window", "--smtp-port", "0",
                             "--api-port", "0"], capture_output=True, cwd=ROOT, timeout=60)
    assert second.returncode == 1
    assert f"process {first.proc.pid}".encode() in second.stderr and b"already running" in second.stderr
    doctor = json.loads(run_cli("doctor", "--json").stdout)
    helper = next(f for f in doctor if f["check"] == "helper")
    assert str(first.proc.pid) in helper["detail"]


# ---------------------------------------------------------------------- 16: addin manifest
def test_addin_manifest_uses_the_configured_port_and_refuses_a_missing_folder(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text("[api]\nport = 9443\n", encoding="utf-8")
    missing = run_cli("addin", "manifest", "--out", str(tmp_path / "nope"))
    assert missing.returncode == 1 and b"no such folder" in missing.stderr
    assert not (tmp_path / "nope").exists()
    out = run_cli("addin", "manifest", "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["origin"] == "https://localhost:9443"


# ---------------------------------------------------------------------- 17: demo and SIGTERM
def test_demo_removes_its_home_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("DISPLAY", None)  # the no-window demo prints links and waits
    proc = subprocess.Popen([sys.executable, "-m", "sendguard", "demo"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: list(tmp_path.glob("sendguard-demo-*/sendguard.db")), timeout=60)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.glob("sendguard-demo-*")) == [], proc.stdout.read() if proc.stdout else ""


# ---------------------------------------------------------------------- 18: doctor
def test_doctor_is_read_only_and_finds_problems(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh-home"
    env = dict(os.environ, SENDGUARD_HOME=str(fresh))
    out = run_cli("doctor", env=env)
    assert out.returncode == 0, out.stdout
    assert not fresh.exists()  # nothing created: no home, no database, no secrets
    admin = Path(os.environ["SENDGUARD_ADMIN_POLICY"])
    admin.write_text('locked = ["confirm.when", "rules.*"]\n[confirm]\nwhen = "always"\n', encoding="utf-8")
    fresh.mkdir()
    (fresh / "policy.toml").write_text('[confirm]\nwhen = "sometimes"\n', encoding="utf-8")
    out = run_cli("doctor", "--json", env=env)
    assert out.returncode == 1
    report = {f["check"]: f for f in json.loads(out.stdout)}
    assert "confirm.when, rules.*" in report["admin policy"]["detail"] and str(admin) in report["admin policy"]["detail"]
    assert report["policy"]["status"] == "fail" and "confirm.when" in report["policy"]["detail"]
    assert report["policy"]["fix"]
    assert report["helper"]["status"] == "warn" and "sendguard serve" in report["helper"]["fix"]
    assert sorted(p.name for p in fresh.iterdir()) == ["policy.toml"]


# ---------------------------------------------------------------------- 20: make run and its log
def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    plan = subprocess.run(["make", "-n", "run", f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    installs = [line for line in plan.stdout.splitlines() if "pip install" in line and " -e " in line]
    assert installs and all("[desktop]" in line and "dev" not in line for line in installs), plan.stdout


def test_serve_log_is_quiet_and_plain(serve_process, home: Path) -> None:
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    serve = serve_process().start()
    smtp_send(serve.smtp_port, make_message(to="x@partner.example"))
    assert run_cli("queue", "list").returncode == 0
    import urllib.request

    urllib.request.urlopen(f"http://127.0.0.1:{serve.api_port}/healthz", timeout=10).read()
    time.sleep(1)
    serve.stop()
    log = (home / "serve.log").read_text(encoding="utf-8", errors="replace")
    assert "SendGuard is running" in log
    assert "\x1b[" not in log  # no raw colour codes
    assert "mail.log" not in log and "EHLO" not in log and "RCPT" not in log  # no line per SMTP command
    assert "GET /healthz" not in log  # no line per HTTP request
    # the same kept in the home for a helper started without a console (DESIGN §5: logs), the user's alone
    kept = home / "logs" / "sendguard.log"
    assert kept.stat().st_mode & 0o777 == 0o600 and (home / "logs").stat().st_mode & 0o777 == 0o700
    text = kept.read_text(encoding="utf-8")
    assert f"SendGuard started (process {serve.proc.pid})" in text and "\x1b[" not in text
    assert "EHLO" not in text and "GET /healthz" not in text
