"""Another local user cannot read mail bodies from SENDGUARD_HOME (finding 9 of issue #10), nor the mail
the helper releases into a Maildir."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_message, run_cli, smtp_send, wait_for

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


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_released_mail_and_runtime_json_are_the_users_alone(home: Path, serve_process: Any, umask_022: None) -> None:
    """`sendguard serve` under umask 022: the Maildir copy of a released message (an approval request
    mailed by the helper holds its signed approval link) and runtime.json are 0600, as the database."""
    (home / "policy.toml").write_text('[organization]\ninternal_domains = ["example.co.jp"]\n', encoding="utf-8")
    serve = serve_process().start()
    try:
        smtp_send(serve.smtp_port, make_message(to="hanako@example.co.jp", subject="internal"))
        sent = wait_for(lambda: list((home / "sent" / "new").glob("sendguard-*")), timeout=30)
        modes = {p.name: oct(mode(p)) for p in [home / "runtime.json", *sent]}
    finally:
        serve.stop()
    assert set(modes.values()) == {oct(0o600)}, modes


def test_a_maildir_outside_home_gets_private_files_even_over_an_old_temporary_file(tmp_path: Path,
                                                                                   umask_022: None) -> None:
    from sendguard.mailboxes.base import ReleaseItem
    from sendguard.mailboxes.maildir import MaildirMailbox

    box = MaildirMailbox(tmp_path / "elsewhere" / "Maildir")
    stale = box.path / "tmp" / f"sendguard-0123456789abcdef.{os.getpid()}"  # left by a crash, under umask 022
    for sub in ("tmp", "new", "cur"):
        (box.path / sub).mkdir(parents=True)
    stale.write_bytes(b"half a message")
    os.chmod(stale, 0o644)
    raw = make_message().as_bytes()
    receipt = box.release(ReleaseItem("0123456789abcdef", "<x@example.co.jp>", raw, "taro@example.co.jp",
                                      ("a@partner.example",)))
    assert mode(Path(receipt.detail["path"])) == 0o600


def test_runtime_json_is_private_even_over_an_old_temporary_file(home: Path, umask_022: None) -> None:
    from sendguard import runtime

    (home / "runtime.tmp").write_text("{}", encoding="utf-8")
    os.chmod(home / "runtime.tmp", 0o644)
    runtime.write(home, smtp_port=1, api_port=2)
    assert mode(home / "runtime.json") == 0o600
    assert runtime.read(home)["api_port"] == 2


def test_config_toml_written_by_the_cli_is_the_users_alone(tmp_path: Path, umask_022: None) -> None:
    """config.toml names the user's accounts, mailboxes and server: written by `accounts add` (or
    `server connect`) into a fresh home under umask 022, it is 0600 from the start."""
    from sendguard import config

    path = tmp_path / "config.toml"
    config.save_account(config.Account("box", "smtp", "taro@example.co.jp", {"host": "mail.example.co.jp"}), path)
    assert mode(path) == 0o600
    assert config.remove_account("box", path) and mode(path) == 0o600
