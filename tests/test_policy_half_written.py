"""A policy file read while an editor was writing it (truncated, then written) is read again once it is
whole, even when the file system gave both writes the same modification time. The empty file read in
between is not put in force: it held no rules (a keyword that asks for approval let mail through), so
the last good policy stays until the file has content again, and the holder says why."""

from __future__ import annotations

import os
import time

import pytest
from conftest import make_message

from sendguard import checks, message, tomlfile
from sendguard.policy import Policy, PolicyHolder

FULL = ('[organization]\ninternal_domains = ["example.co.jp"]\n[approval]\napprovers = ["boss@example.co.jp"]\n'
        '[[rules.keywords]]\npattern = "社外秘"\naction = "approve"\n')
# a policy that holds mail to one domain, and the same policy edited to hold mail to another
BLOCKS_RIVAL = ('[organization]\ninternal_domains = ["example.co.jp"]\n'
                '[[rules.address]]\nmatch = ["*@rival.example"]\naction = "block"\n')
BLOCKS_OTHER = BLOCKS_RIVAL.replace("rival.example", "other.example")
# what a half-written file may read as: nothing, or only line ends, spaces or the UTF-8 BOM
EMPTY = ["", "\n", "  \r\n\t\n", "\ufeff", "\ufeff\r\n"]


def action(pol: Policy, to: str) -> str:
    raw = make_message(to=to).as_bytes()
    return checks.evaluate(message.parse(raw), pol, set()).action


def same_mtime(path, stamp: int) -> None:
    os.utime(path, ns=(stamp, stamp))


def test_a_policy_read_half_written_is_read_again_when_whole(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(FULL, encoding="utf-8")
    holder = PolicyHolder(path)
    assert [k.pattern for k in holder.get().keywords] == ["社外秘"]
    stamp = path.stat().st_mtime_ns
    path.write_text("", encoding="utf-8")  # the editor has truncated the file ...
    same_mtime(path, stamp + 1000)
    assert [k.pattern for k in holder.get().keywords] == ["社外秘"]  # ... a message checked right then: kept
    path.write_text(FULL.replace("社外秘", "極秘"), encoding="utf-8")  # ... then writes it, in the same tick
    same_mtime(path, stamp + 1000)
    assert [k.pattern for k in holder.get().keywords] == ["極秘"]
    assert holder.last_error is None


@pytest.mark.parametrize("empty", EMPTY)
@pytest.mark.parametrize("keep_mtime", [True, False])
def test_a_policy_emptied_while_in_force_keeps_the_last_good_one(tmp_path, empty, keep_mtime):
    path = tmp_path / "policy.toml"
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")
    holder = PolicyHolder(path)
    assert action(holder.get(), "x@rival.example") == "block"
    stamp = path.stat().st_mtime_ns
    path.write_bytes(empty.encode("utf-8"))
    same_mtime(path, stamp if keep_mtime else stamp + 10**9)
    kept = holder.get()
    assert action(kept, "x@rival.example") == "block"  # the rule is still in force ...
    assert kept.load_error == ""  # ... as it was, not every message held
    assert holder.last_error is not None
    assert holder.last_error.path == str(path) and "empty" in str(holder.last_error)
    assert holder.get() is kept  # not read again until the file changes
    path.write_text(BLOCKS_OTHER, encoding="utf-8")
    same_mtime(path, stamp + 2 * 10**9)
    now = holder.get()
    assert action(now, "x@rival.example") != "block" and action(now, "x@other.example") == "block"
    assert holder.last_error is None


@pytest.mark.parametrize("empty", EMPTY)
def test_a_helper_started_with_an_empty_policy_uses_the_defaults(tmp_path, empty):
    path = tmp_path / "policy.toml"
    path.write_bytes(empty.encode("utf-8"))
    holder = PolicyHolder(path)
    assert holder.reload() == Policy(source=str(path))
    assert holder.last_error is None
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")  # and the policy written later is read
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert action(holder.get(), "x@rival.example") == "block"


def test_an_empty_policy_created_where_there_was_none_is_the_defaults(tmp_path):
    path = tmp_path / "policy.toml"
    holder = PolicyHolder(path)
    assert holder.reload().source == "(embedded defaults)"
    path.write_text("", encoding="utf-8")
    assert holder.get() == Policy(source=str(path)) and holder.last_error is None


def test_a_policy_emptied_on_purpose_applies_after_a_restart_or_with_a_comment(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")
    holder = PolicyHolder(path)
    holder.reload()
    path.write_text("", encoding="utf-8")
    assert action(holder.get(), "x@rival.example") == "block"
    assert "restart" in str(holder.last_error) and "comment" in str(holder.last_error)
    assert action(PolicyHolder(path).reload(), "x@rival.example") != "block"  # a restarted helper
    path.write_text("# no rules for now\n", encoding="utf-8")  # what the message says to do
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert action(holder.get(), "x@rival.example") != "block" and holder.last_error is None


@pytest.mark.parametrize("how", ["emptied", "removed"])
def test_an_emptied_or_removed_machine_policy_keeps_the_last_good_one(tmp_path, how):
    user, admin = tmp_path / "policy.toml", tmp_path / "admin.toml"
    user.write_text('[organization]\ninternal_domains = ["example.co.jp"]\n', encoding="utf-8")
    admin.write_text('locked = ["rules.address"]\n[[rules.address]]\nmatch = ["*@rival.example"]\n'
                     'action = "block"\n', encoding="utf-8")
    holder = PolicyHolder(user, admin)
    assert action(holder.get(), "x@rival.example") == "block"
    if how == "emptied":
        stamp = admin.stat().st_mtime_ns
        admin.write_text("", encoding="utf-8")
        same_mtime(admin, stamp)
    else:
        admin.unlink()
    assert action(holder.get(), "x@rival.example") == "block"
    assert holder.last_error is not None and holder.last_error.path == str(admin)


def test_a_policy_written_while_it_was_read_is_read_again(tmp_path, monkeypatch):
    """The editor's write may land between the read of the empty file and the look at its size and time:
    the holder must not take the whole file's size and time for the content it read."""
    path = tmp_path / "policy.toml"
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")
    holder = PolicyHolder(path)
    holder.reload()
    read = tomlfile.read

    def read_then_write(p):
        found = read(p)
        if p == path and not path.read_text(encoding="utf-8"):
            path.write_text(BLOCKS_OTHER, encoding="utf-8")  # the editor writes just after the read
        return found

    monkeypatch.setattr(tomlfile, "read", read_then_write)
    path.write_text("", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    holder.get()  # reads the empty file
    assert action(holder.get(), "x@other.example") == "block"


def test_a_policy_removed_while_in_force_keeps_the_last_good_one(tmp_path):
    """An editor that saves by moving the old file aside and writing a new one leaves no policy file for a
    moment; a message checked then must not go out on the built-in rules."""
    path = tmp_path / "policy.toml"
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")
    holder = PolicyHolder(path)
    assert action(holder.get(), "x@rival.example") == "block"
    path.rename(tmp_path / "policy.toml~")  # the editor's backup ...
    kept = holder.get()
    assert action(kept, "x@rival.example") == "block"  # ... a message checked right then: still held
    assert kept.load_error == ""
    assert holder.last_error is not None and holder.last_error.path == str(path)
    assert "gone" in str(holder.last_error) and "restart" in str(holder.last_error)
    assert holder.get() is kept
    new = tmp_path / "policy.toml.new"  # ... then the new text, moved into place
    new.write_text(BLOCKS_OTHER, encoding="utf-8")
    new.rename(path)
    now = holder.get()
    assert action(now, "x@rival.example") != "block" and action(now, "x@other.example") == "block"
    assert holder.last_error is None


def test_a_policy_removed_on_purpose_applies_after_a_restart(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")
    holder = PolicyHolder(path)
    holder.reload()
    path.unlink()
    assert action(holder.get(), "x@rival.example") == "block"
    restarted = PolicyHolder(path)
    assert restarted.reload().source == "(embedded defaults)" and restarted.last_error is None
    assert action(restarted.get(), "x@rival.example") != "block"


def test_a_policy_that_was_empty_may_be_removed(tmp_path):
    """Only a file that held rules is kept: one that was empty (the defaults) is the defaults gone or not."""
    path = tmp_path / "policy.toml"
    path.write_text("", encoding="utf-8")
    holder = PolicyHolder(path)
    holder.reload()
    path.unlink()
    assert holder.get().source == "(embedded defaults)" and holder.last_error is None


def test_the_running_helper_holds_mail_by_the_last_policy_while_the_file_is_replaced(home, serve_process):
    """The journey: `sendguard serve` runs (a blocked message waits in the window with verdict block), the user saves policy.toml with an editor that moves the old
    file aside first, and mail submitted over SMTP in that moment is still checked by the rules in force;
    the saved file then applies to the next message."""
    import json
    import smtplib

    from conftest import run_cli, wait_for

    path = home / "policy.toml"
    path.write_text(BLOCKS_RIVAL, encoding="utf-8")
    helper = serve_process().start()

    def send(to: str) -> str:
        with smtplib.SMTP("127.0.0.1", helper.smtp_port, timeout=30) as client:
            reply = client.send_message(make_message(to=to), "taro@example.co.jp", [to])
        assert reply == {}
        items = json.loads(run_cli("queue", "list", "--json", "--all").stdout)
        return str(next(i["verdict"] for i in items if to in json.dumps(i)))

    assert send("a@rival.example") == "block"
    path.rename(home / "policy.toml~")
    assert send("b@rival.example") == "block"  # no file right now: the rules last read still hold
    path.write_text(BLOCKS_OTHER, encoding="utf-8")
    wait_for(lambda: send(f"c{time.monotonic_ns()}@other.example") == "block", timeout=20)
    assert send("d@rival.example") != "block"
