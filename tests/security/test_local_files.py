"""Another local user cannot read mail bodies from SENDGUARD_HOME (finding 9 of issue #10)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import make_message, run_cli

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_other_local_users_cannot_read_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "fresh-home"
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    old = os.umask(0o022)
    try:
        out = run_cli("check", "-", input=make_message().as_bytes())
        assert out.returncode == 0, out.stderr
        from sendguard.service import Helper

        helper = Helper(home)
        helper.outbox.submit(make_message().as_bytes(), "taro@example.co.jp", ["a@partner.example"])
        helper.stop()
    finally:
        os.umask(old)
    assert mode(home) == 0o700
    files = [p for p in home.iterdir() if p.name.startswith("sendguard.db")]
    assert files and all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}


def test_an_open_home_is_closed_at_start_and_doctor_says_so(home: Path) -> None:
    os.chmod(home, 0o755)
    (home / "sendguard.db").write_bytes(b"")
    os.chmod(home / "sendguard.db", 0o644)
    report = {r["check"]: r for r in json.loads(run_cli("doctor", "--json").stdout)}  # doctor only looks
    assert report["home"]["status"] != "ok" and "readable by other local users" in report["home"]["detail"]
    assert run_cli("queue", "list").returncode == 0  # any start closes it
    assert mode(home) == 0o700 and mode(home / "sendguard.db") == 0o600
    again = {r["check"]: r for r in json.loads(run_cli("doctor", "--json").stdout)}
    assert again["home"]["status"] == "ok"


def test_doctor_says_the_file_keyring_protects_nothing_locally(home: Path) -> None:
    env = dict(os.environ)
    env.pop("PYTHON_KEYRING_BACKEND")  # headless Linux: the encrypted-file fallback
    report = {r["check"]: r for r in json.loads(run_cli("doctor", "--json", env=env).stdout)}
    assert "protects nothing" in report["secrets"]["detail"] + report["secrets"].get("fix", "")
