"""The seams between `sendguard serve` and the command line, lived with real processes.

1. A message that needs approval, confirmed with `sendguard queue confirm` (a process of its own, which reads
   policy.toml afresh) while the running helper keeps another policy in force: the helper sent it without
   any approval. It keeps the last good policy when the file is saved with a mistake, where a fresh CLI
   process has none to keep and falls back to rules without the organization's keywords; a rule added
   during the undo time (hold_seconds) is the same. The helper now checks the message again before release
   and holds it for its approvers (a retry after a failed send, which cannot be handed to them, waits for
   the user instead and is never sent as it is).
2. After `queue confirm --remove ADDR --remove-attachment NAME`, `queue list` and `queue show` (and their
   `--json`, and `approvals list --json`) still listed the removed recipient and file as if the message
   went to them, during the undo time and after it was sent. They now say they were removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import KEYWORD_APPROVAL_POLICY, make_message, run_cli, smtp_send, wait_for


def cli_json(*args: str) -> Any:
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def listed(item_id: str) -> dict[str, Any]:
    return next(i for i in cli_json("queue", "list", "--all") if i["id"] == item_id)


def user_mail(home: Path) -> list[bytes]:
    """What reached the Maildir sink, SendGuard's own notices to approvers left out."""
    found = [p.read_bytes() for p in (home / "sent" / "new").glob("*")]
    return [m for m in found if b"X-SendGuard-Notice" not in m]


@pytest.mark.parametrize("change", ["saved_with_a_mistake", "rule_added_in_the_undo_time"])
def test_a_message_confirmed_from_the_cli_is_never_sent_without_the_approval_the_helper_asks(
        home: Path, serve_process: Any, change: str) -> None:
    policy = home / "policy.toml"
    if change == "saved_with_a_mistake":
        policy.write_text(KEYWORD_APPROVAL_POLICY, encoding="utf-8")
    else:  # no keyword rule yet; a 3 s undo time to add it in
        policy.write_text(KEYWORD_APPROVAL_POLICY.split("[[rules.keywords]]")[0] + "[confirm]\nhold_seconds = 3\n",
                          encoding="utf-8")
    serve = serve_process().start()
    smtp_send(serve.smtp_port, make_message(to="x@partner.example", subject="社外秘: 見積", body="社外秘の資料です"))
    (item,) = wait_for(lambda: cli_json("queue", "list"))
    assert item["state"] == "awaiting_confirmation"
    if change == "saved_with_a_mistake":
        assert item["verdict"] == "approve"
        # the user saves policy.toml with a typo: the helper keeps the policy it has (and says so in its log)
        policy.write_text(KEYWORD_APPROVAL_POLICY.replace('action = "approve"', 'action = "aprove"'), encoding="utf-8")
        confirmed = run_cli("queue", "confirm", item["id"])
        assert confirmed.returncode == 0, confirmed.stderr
    else:
        confirmed = run_cli("queue", "confirm", item["id"])
        assert confirmed.returncode == 0, confirmed.stderr
        assert listed(item["id"])["state"] == "confirmed"  # in its undo time: the organization adds a rule
        policy.write_text(KEYWORD_APPROVAL_POLICY + "[confirm]\nhold_seconds = 3\n", encoding="utf-8")

    shown = wait_for(lambda: (i := listed(item["id"]))["state"] not in ("confirmed", "releasing") and i, timeout=30)
    assert shown["state"] == "awaiting_approval", shown
    details = cli_json("queue", "show", item["id"])
    assert details["approvers"] == ["boss@example.co.jp"]
    assert user_mail(home) == []  # nothing went out
    assert [r["id"] for r in cli_json("approvals", "list", "--as", "boss@example.co.jp")] == [item["id"]]

    approved = run_cli("approvals", "approve", item["id"], "--as", "boss@example.co.jp")
    assert approved.returncode == 0, approved.stderr
    wait_for(lambda: listed(item["id"])["state"] == "sent", timeout=30)
    assert len(user_mail(home)) == 1


def test_what_was_removed_at_send_is_listed_as_removed_not_as_a_recipient(home: Path, serve_process: Any) -> None:
    (home / "policy.toml").write_text('[organization]\ninternal_domains = ["example.co.jp"]\n\n'
                                      '[confirm]\nhold_seconds = 2\n', encoding="utf-8")
    serve = serve_process().start()
    smtp_send(serve.smtp_port, make_message(
        to=["x@partner.example", "wrong@other.example"], cc="hanako@example.co.jp", subject="見積",
        attachments=[("見積.pdf", b"%PDF-1.4\n", "application/pdf"), ("顧客一覧.csv", b"a,b\n", "text/csv")]))
    (item,) = wait_for(lambda: cli_json("queue", "list"))
    confirmed = run_cli("queue", "confirm", item["id"], "--remove", "wrong@other.example",
                        "--remove-attachment", "顧客一覧.csv")
    assert confirmed.returncode == 0, confirmed.stderr

    def check_listings() -> None:
        line = run_cli("queue", "list", "--all").stdout.decode()
        assert "x@partner.example, hanako@example.co.jp" in line and "wrong@other.example" not in line, line
        rows = {r["address"]: r for r in listed(item["id"])["recipients"]}
        assert rows["wrong@other.example"]["removed"] is True
        assert "removed" not in rows["x@partner.example"] and "removed" not in rows["hanako@example.co.jp"]
        files = {a["filename"]: a for a in listed(item["id"])["attachments"]}
        assert files["顧客一覧.csv"]["removed"] is True and "removed" not in files["見積.pdf"]
        shown = run_cli("queue", "show", item["id"]).stdout.decode()
        # "    [To] wrong@other.example  (new_domain, removed)"
        rows_shown = {x.split()[1]: x for x in shown.splitlines() if x.startswith("    [")}
        assert "removed" in rows_shown["wrong@other.example"], shown
        assert "removed" not in rows_shown["x@partner.example"] + rows_shown["hanako@example.co.jp"], shown
        (csv,) = [x for x in shown.splitlines() if x.startswith("    顧客一覧.csv")]
        (pdf,) = [x for x in shown.splitlines() if x.startswith("    見積.pdf")]
        assert "removed" in csv and "removed" not in pdf, shown
        shown_json = cli_json("queue", "show", item["id"])
        assert [r["address"] for r in shown_json["recipients"] if r.get("removed")] == ["wrong@other.example"]

    check_listings()  # in the undo time
    wait_for(lambda: listed(item["id"])["state"] == "sent", timeout=30)
    check_listings()  # and for good, once sent
    (mail,) = user_mail(home)
    assert b"wrong@other.example" not in mail and "顧客一覧".encode() not in mail


def test_a_retried_send_the_policy_now_holds_for_approval_is_not_sent_even_when_resent(home: Path, helper: Any,
                                                                                         monkeypatch: Any) -> None:
    """The same, for a message whose first send failed: a retry goes nowhere without the approval, and the
    user's `queue resolve --resend` does not send it either."""
    from sendguard.mailboxes.errors import TransientError

    (home / "policy.toml").write_text(KEYWORD_APPROVAL_POLICY.split("[[rules.keywords]]")[0], encoding="utf-8")
    h = helper()
    real = h.mailbox_for
    monkeypatch.setattr(h.outbox, "mailbox_for", lambda item: (_ for _ in ()).throw(TransientError("down")))
    smtp_send(h.smtp.port, make_message(to="x@partner.example", subject="社外秘: 見積", body="社外秘の資料です"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    h.outbox.confirm(item.id)
    wait_for(lambda: h.outbox.get(item.id).state == "failed")
    (home / "policy.toml").write_text(KEYWORD_APPROVAL_POLICY, encoding="utf-8")  # the keyword rule comes in
    monkeypatch.setattr(h.outbox, "mailbox_for", real)  # the mail service is back
    h.outbox.transition(item.id, "resolve_resend", "test", release_after=0.0)  # due now
    wait_for(lambda: h.outbox.get(item.id).state == "needs_attention")
    assert "needs approval" in (h.outbox.get(item.id).last_error or "")
    out = run_cli("queue", "resolve", item.id, "--resend")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: h.outbox.get(item.id).state == "needs_attention")
    assert user_mail(home) == []
