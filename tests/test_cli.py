"""The command line as a user meets it: help, doctor, token, accounts, config errors."""

from __future__ import annotations

import json
import os

from conftest import run_cli

from sendguard import config


def test_python_dash_m_and_help_list_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("serve", "check", "queue", "approvals", "accounts", "audit", "token", "doctor", "demo",
                    "server"):
        assert command in out.stdout.decode()


def test_token_is_stable_and_kept_in_the_keyring(home):
    first = run_cli("token").stdout.strip()
    assert len(first) >= 32 and run_cli("token").stdout.strip() == first
    assert first.decode() not in "".join(p.read_text(errors="ignore") for p in home.rglob("*") if p.is_file()
                                         and p.suffix in (".toml", ".json"))


def test_doctor_reports_secrets_store_and_display(home):
    env = dict(os.environ)
    env.pop("PYTHON_KEYRING_BACKEND")  # as on a headless Linux box: no OS keyring
    env.pop("DISPLAY", None)
    out = run_cli("doctor", "--json", env=env)
    assert out.returncode == 0, out.stderr
    report = {r["check"]: r for r in json.loads(out.stdout)}
    assert "encrypted file" in report["secrets"]["detail"]
    assert "no display" in report["display"]["detail"]
    assert "Maildir" in report["transport"]["detail"]


def test_smtp_account_add_list_remove_keeps_password_out_of_files(home):
    out = run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "smtp.example.co.jp", "--username", "taro",
                  "--password-stdin", input=b"s3cret-pass\n")
    assert out.returncode == 0, out.stderr
    listed = json.loads(run_cli("accounts", "list", "--json").stdout)
    assert listed == [{"name": "corp", "kind": "smtp", "address": "", "host": "smtp.example.co.jp", "port": 587,
                       "security": "starttls", "username": "taro"}]
    assert "s3cret-pass" not in (home / "config.toml").read_text()
    assert run_cli("accounts", "remove", "corp").returncode == 0
    assert json.loads(run_cli("accounts", "list", "--json").stdout) == []
    missing = run_cli("accounts", "remove", "corp")
    assert missing.returncode == 1 and b"no account named 'corp'" in missing.stderr


def test_bad_config_is_refused_with_file_line_and_key(home):
    (home / "config.toml").write_text('[smtp]\nport = "twenty"\n', encoding="utf-8")
    out = run_cli("accounts", "list")
    err = out.stderr.decode()
    assert out.returncode == 1 and "config.toml:2" in err and "smtp.port" in err and "Traceback" not in err
    (home / "config.toml").write_text("[smtp]\nport = 99999\n", encoding="utf-8")
    err = run_cli("accounts", "list").stderr.decode()
    assert "out of range" in err and "smtp.port" in err


def test_config_accounts_round_trip_keeps_comments(home):
    path = home / "config.toml"
    path.write_text('# my settings\nlanguage = "ja"\n', encoding="utf-8")
    config.save_account(config.Account("relay", "smtp", "", {"host": "h", "port": 25}), path)
    text = path.read_text()
    assert text.startswith("# my settings") and "[[accounts]]" in text
    cfg = config.load(path)
    assert cfg.language == "ja" and cfg.accounts[0].settings == {"host": "h", "port": 25}


def test_queue_show_unknown_id_is_one_line(home):
    out = run_cli("queue", "show", "nope")
    assert out.returncode == 1
    assert out.stderr.decode() == "Error: no message 'nope' in the outbox (see `sendguard queue list`)\n"
