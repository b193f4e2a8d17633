"""A hostile subject cannot inject headers into approval mail, nor stop it (finding 5 of issue #10)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

from conftest import SAMPLE_POLICY, smtp_send, wait_for
from sqlalchemy import update

from sendguard import audit
from sendguard.store import outbox

POISON = "=?utf-8?q?poison=0D=0ABcc:_evil@attacker.example?="


def approval_mails(home: Path) -> list[email.message.EmailMessage]:
    folder = home / "sent" / "new"
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if str(msg.get("X-SendGuard-Notice", "")).startswith("approval-request"):
            found.append(msg)
    return found


def held(r: Any, subject_header: str, body: str = "社外秘の資料です。") -> str:
    raw = (f"From: taro@example.co.jp\r\nTo: a@partner.example\r\nSubject: {subject_header}\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()
    smtp_send(r.helper.smtp.port, raw, ["a@partner.example"])
    item = wait_for(lambda: next((i for i in r.helper.outbox.list(["awaiting_confirmation"])), None))
    return str(r.helper.outbox.confirm(item.id, actor="window").id)


def test_encoded_crlf_in_subject_cannot_add_a_bcc_or_block_approval_mail(runner: Any, write_policy: Any) -> None:
    write_policy(SAMPLE_POLICY)
    r = runner()
    older = held(r, "社外秘 older")
    poisoned = held(r, f"{POISON} 社外秘")
    mails = wait_for(lambda: len(approval_mails(r.home)) >= 2 and approval_mails(r.home), timeout=20)
    by_item = {str(m["X-SendGuard-Notice"]).split("item=")[1]: m for m in mails}
    assert set(by_item) == {older, poisoned}
    bad = by_item[poisoned]
    assert bad["Bcc"] is None and "evil@attacker.example" not in str(bad["To"])
    assert "\n" not in str(bad["Subject"]) and "\r" not in str(bad["Subject"])
    assert all(k.lower() != "bcc" for k in bad.keys())
    # and the transport got the approver only
    assert [m["To"] for m in mails] == ["boss@example.co.jp", "boss@example.co.jp"]


def test_one_broken_message_never_holds_up_the_other_approval_mails(home: Path, write_policy: Any) -> None:
    from conftest import make_message

    from sendguard.service import Helper

    write_policy(SAMPLE_POLICY)
    helper = Helper(home)  # not started: the rounds below are the worker's, one at a time
    try:
        ids = []
        for subject in ("社外秘 broken", "社外秘 fine"):
            item = helper.outbox.submit(make_message(subject=subject).as_bytes(), "taro@example.co.jp",
                                        ["a@partner.example"])
            ids.append(helper.outbox.confirm(item.id).id)
        broken, fine = ids
        # a message whose stored check no longer has the shape the email expects (a bug, a bad migration)
        with helper.store.transaction() as conn:
            conn.execute(update(outbox).where(outbox.c.id == broken).values(
                check_result={"recipients": [{"field": "to"}], "verdict": {"reasons": []}}))
        for _ in range(3):  # several rounds: the failure is recorded once, not per round
            helper.notify_approvals()
        assert [str(m["X-SendGuard-Notice"]).split("item=")[1] for m in approval_mails(home)] == [fine]
        failures = [rec for rec in audit.records(helper.store, broken) if rec["event"] == "approval_notice_failed"]
        assert len(failures) == 1 and "recipients[0].address is missing" in failures[0]["data"]["error"]
    finally:
        helper.stop()
