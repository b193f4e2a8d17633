"""Checks at SMTP intake in the checking process (sendguard/checker.py), as a mail merge meets them.

Messages sent together over several connections go to the child process; every one must end up stored
once, with the verdict the helper itself would have given, whatever happens to the child meanwhile.
"""

from __future__ import annotations

import os
import signal
import smtplib
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE_POLICY, make_message, smtp_send, wait_for

from sendguard import checker as checkermod

CARD = "ご請求先のカード番号は 4111 1111 1111 1111 です。"

# (recipients, body): a new domain, a trusted one, a card number, a blocked domain, a keyword, internal only
VARIETY = [
    (["a@newcustomer.example"], "ご確認ください。"),
    (["b@partner.example"], "いつもお世話になっております。"),
    (["c@partner.example"], CARD),
    (["d@rival.example"], "ご確認ください。"),
    (["e@partner.example"], "社外秘の資料です。"),
    (["f@example.co.jp"], "社内連絡です。"),
]


def burst(port: int, messages: list[tuple[list[str], bytes]], connections: int = 4) -> list[BaseException]:
    """Send the messages over ``connections`` SMTP connections at once (each its share, in order)."""
    errors: list[BaseException] = []

    def send(share: list[tuple[list[str], bytes]]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                for rcpts, raw in share:
                    client.sendmail("taro@example.co.jp", rcpts, raw)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(messages[i::connections],)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def messages(n: int, tag: str) -> list[tuple[list[str], bytes]]:
    out = []
    for i in range(n):
        rcpts, body = VARIETY[i % len(VARIETY)]
        msg = make_message(to=rcpts, subject=f"{tag} {i}", body=body)
        out.append((rcpts, msg.as_bytes()))
    return out


def checker_ready(h: Any) -> checkermod.CheckerProcess[Any]:
    """Send messages together until the checking process is up (it starts on the first such batch)."""
    def up() -> bool:
        if h.checker is not None and h.checker.ready():
            return True
        burst(h.smtp.port, messages(8, "warm-up"))
        return False

    wait_for(up, timeout=60, interval=0.2)
    return h.checker  # type: ignore[no-any-return]


def stored_by_subject(h: Any, tag: str) -> dict[str, Any]:
    return {i.subject: i for i in h.outbox.list(limit=100_000) if (i.subject or "").startswith(tag)}


def expected_check(h: Any, raw: bytes, rcpts: list[str]) -> tuple[bool, Any]:
    """The verdict the helper reaches in its own process for this message."""
    verdict = h.outbox.verdict_at_intake(raw, "taro@example.co.jp", rcpts, h.outbox.policy())
    return verdict.hold, verdict.values["check_result"]


def test_messages_sent_together_are_checked_in_the_checking_process_with_the_helpers_own_verdicts(
        helper, write_policy):
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    before = checker.taken_there
    sent = messages(60, "together")
    assert burst(h.smtp.port, sent) == []
    stored = wait_for(lambda: (s := stored_by_subject(h, "together")) and len(s) == 60 and s)
    assert checker.taken_there - before >= 30, "most of a burst is taken in by the child"
    assert checker.taken_back == 0
    for rcpts, raw in sent:
        subject = make_subject(raw)
        item = stored[subject]
        hold, check = expected_check(h, raw, rcpts)
        if hold:
            assert item.state == "awaiting_confirmation", (subject, item.state)
            assert item.check.to_json() == check, subject
        else:  # passed on: the worker sends it
            wait_for(lambda s=subject: h.outbox.get(stored[s].id).state == "sent")
    actions = {make_subject(raw): stored[make_subject(raw)].check.verdict.action for _, raw in sent}
    assert [actions[f"together {i}"] for i in range(6)] == ["confirm", "confirm", "approve", "block", "approve", "allow"]
    assert len({i.id for i in stored.values()}) == 60  # each once


def test_large_messages_among_small_ones_in_a_burst_are_each_stored_once_and_checked(helper, write_policy):
    """Small messages go to the checking process straight from their SMTP session, large ones through the
    intake thread (submission.DIRECT_HAND_OVER_BYTES): both ways end stored once, with the helper's verdict."""
    from sendguard import submission

    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    before = checker.taken_there
    filler = ("資料の続きです。\n" * (submission.DIRECT_HAND_OVER_BYTES // 20)).encode()
    sent = messages(12, "mixed")
    for i in (2, 7):  # two of them large, one with a card number in its attachment
        rcpts, _ = VARIETY[i % len(VARIETY)]
        data = filler + (CARD.encode() if i == 2 else b"")
        msg = make_message(to=rcpts, subject=f"mixed {i}", body="資料をお送りします。")
        msg.add_attachment(data, maintype="text", subtype="plain", filename="資料.txt", cte="base64")
        sent[i] = (rcpts, msg.as_bytes().replace(b"\n", b"\r\n"))  # (smtplib sends bytes as they are)
    assert len(sent[2][1]) > submission.DIRECT_HAND_OVER_BYTES
    assert burst(h.smtp.port, sent) == []
    stored = wait_for(lambda: (s := stored_by_subject(h, "mixed")) and len(s) == 12 and s)
    assert len({i.id for i in stored.values()}) == 12
    assert checker.taken_there > before
    for rcpts, raw in sent:
        item = stored[make_subject(raw)]
        hold, check = expected_check(h, raw, rcpts)
        if hold:
            assert item.check is not None and item.check.to_json() == check, make_subject(raw)
    verdict = stored["mixed 2"].check.verdict  # the card number in the large file: personal data
    assert verdict.action == "approve" and "personal_data" in [r.rule for r in verdict.reasons]


def make_subject(raw: bytes) -> str:
    import email
    import email.policy

    return str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])


def test_a_policy_edited_while_the_checking_process_runs_holds_the_very_next_messages(helper, write_policy):
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker_ready(h)
    write_policy(SAMPLE_POLICY.replace('blocked_domains = ["rival.example"]',
                                       'blocked_domains = ["rival.example", "partner.example"]'))
    sent = [(["x@partner.example"], make_message(to="x@partner.example", subject=f"edited {i}").as_bytes())
            for i in range(12)]
    assert burst(h.smtp.port, sent) == []
    stored = wait_for(lambda: (s := stored_by_subject(h, "edited")) and len(s) == 12 and s)
    assert {i.check.verdict.action for i in stored.values()} == {"block"}
    assert h.checker.taken_there > 0


def test_the_checking_process_killed_in_a_burst_loses_nothing_takes_nothing_twice_and_comes_back(
        helper, write_policy, monkeypatch):
    monkeypatch.setattr(checkermod, "RESTART_SECONDS", 0.5)
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    pid = checker._proc.pid  # type: ignore[union-attr]
    sent = messages(240, "killed")
    errors: list[BaseException] = []
    sender = threading.Thread(target=lambda: errors.extend(burst(h.smtp.port, sent)))
    sender.start()
    wait_for(lambda: len(stored_by_subject(h, "killed")) >= 20, interval=0.01)
    wait_for(checker.busy, interval=0.001)  # it holds messages whose verdicts are not in
    os.kill(pid, signal.SIGKILL)
    sender.join(120)
    assert errors == []  # every message got its 250
    stored = wait_for(lambda: (s := stored_by_subject(h, "killed")) and len(s) == 240 and s)
    assert len({i.id for i in stored.values()}) == 240
    for rcpts, raw in sent:  # every one checked, by the child or by the helper
        item = stored[make_subject(raw)]
        hold, check = expected_check(h, raw, rcpts)
        if hold:
            assert item.check.to_json() == check
    # it comes back by itself for the next messages sent together
    def back() -> bool:
        proc = checker._proc
        if checker.ready() and proc is not None and proc.pid != pid:
            return True
        burst(h.smtp.port, messages(4, "again"))
        return False

    wait_for(back, timeout=60, interval=0.3)


def test_after_a_release_to_a_new_domain_the_checking_process_stops_calling_it_new(helper, write_policy):
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker_ready(h)
    smtp_send(h.smtp.port, make_message(to="first@fresh.example", subject="fresh first"))
    first = wait_for(lambda: stored_by_subject(h, "fresh first").get("fresh first"))
    first = wait_for(lambda: (i := h.outbox.get(first.id)).state == "awaiting_confirmation" and i)
    assert "new_domain" in [r.rule for r in first.check.verdict.reasons]
    h.outbox.confirm(first.id, actor="taro@example.co.jp")
    wait_for(lambda: h.outbox.get(first.id).state == "sent")
    sent = [(["next@fresh.example"], make_message(to="next@fresh.example", subject=f"fresh next {i}").as_bytes())
            for i in range(8)]
    assert burst(h.smtp.port, sent) == []
    stored = wait_for(lambda: (s := stored_by_subject(h, "fresh next")) and len(s) == 8 and s)
    for item in stored.values():
        assert "new_domain" not in [r.rule for r in item.check.verdict.reasons], item.subject


@pytest.mark.parametrize("language", ["ja"])
def test_the_checking_process_words_its_verdicts_in_the_users_language(home: Path, helper, write_policy,
                                                                        language):
    (home / "config.toml").write_text(f'language = "{language}"\n', encoding="utf-8")
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker_ready(h)
    sent = [(["y@newcustomer.example"], make_message(to="y@newcustomer.example", subject=f"lang {i}").as_bytes())
            for i in range(8)]
    assert burst(h.smtp.port, sent) == []
    stored = wait_for(lambda: (s := stored_by_subject(h, "lang")) and len(s) == 8 and s)
    for rcpts, raw in sent:
        _hold, check = expected_check(h, raw, rcpts)
        assert stored[make_subject(raw)].check.to_json() == check


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no thread may fail
def test_stopping_the_helper_in_a_burst_keeps_every_accepted_message_and_stops_cleanly(home: Path, write_policy):
    from sendguard.service import Helper
    from sendguard.store import Store

    write_policy(SAMPLE_POLICY)
    h = Helper(home).start(smtp=True, smtp_port=0)
    checker_ready(h)
    accepted: list[str] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", h.smtp.port, timeout=30) as client:
                for i in range(200):
                    subject = f"stopping {n}-{i}"
                    client.sendmail("taro@example.co.jp", ["a@newcustomer.example"],
                                    make_message(to="a@newcustomer.example", subject=subject).as_bytes())
                    with lock:
                        accepted.append(subject)
        except (smtplib.SMTPException, OSError):
            pass  # the helper stopped: this client keeps its message and would retry

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in senders:
        t.start()
    wait_for(lambda: len(accepted) >= 40 and h.checker.busy(), interval=0.001)
    h.stop()  # raises nothing
    for t in senders:
        t.join(60)
    store = Store(home / "sendguard.db")
    try:
        from sendguard.outbox import Outbox

        stored = {i.subject for i in Outbox(store, lambda: None).list(limit=100_000)}  # type: ignore[arg-type, return-value]
    finally:
        store.close()
    assert set(accepted) <= stored  # every 250 kept its promise


def test_a_checking_process_that_dies_after_its_commit_leaves_every_message_stored_once(
        helper, write_policy, monkeypatch):
    """Killed between its commit and its answer (each time it starts again): the helper takes the
    messages in again under the ids it gave them, so those already committed are not stored twice."""
    monkeypatch.setattr(checkermod, "RESTART_SECONDS", 0.2)
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker_ready(h)
    monkeypatch.setenv("SENDGUARD_CRASH_AT", "checker.committed")  # for the processes started from now on
    checker = h.checker
    os.kill(checker._proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    wait_for(lambda: not checker.ready())
    wait_for(lambda: checker.ready() or burst(h.smtp.port, messages(4, "restart")) and False, timeout=60,
             interval=0.3)
    back = checker.taken_back
    sent = messages(120, "once")
    assert burst(h.smtp.port, sent) == []
    # (a message the policy passes on gets its subject when the worker has checked it)
    wait_for(lambda: len(stored_by_subject(h, "once")) == 120)
    stored = [i for i in h.outbox.list(limit=100_000) if (i.subject or "").startswith("once")]
    assert sorted(i.subject for i in stored) == sorted(make_subject(raw) for _, raw in sent)  # each once
    assert checker.taken_back > back  # the child did die after committing, and its messages came back


def test_a_store_failure_in_the_checking_process_is_named_in_the_451_as_the_helpers_own(helper, write_policy):
    import sqlite3

    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    database = h.outbox.store.engine.url.database
    with sqlite3.connect(database) as conn:  # every new message is refused by the database itself
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused'); END")
    before = checker.taken_there
    errors = burst(h.smtp.port, messages(24, "refused"))
    assert len(errors) == 4  # each connection stopped at its first message
    for exc in errors:
        assert isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code == 451, exc
        assert b"IntegrityError" in exc.smtp_error, exc.smtp_error  # was: RuntimeError, from the child
    assert stored_by_subject(h, "refused") == {}
    with sqlite3.connect(database) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert burst(h.smtp.port, messages(24, "accepted")) == []  # every one has its 250 once the store takes it
    assert checker.taken_there > before


def test_an_answer_the_helper_cannot_read_hands_the_childs_messages_back_and_nobody_waits_for_ever(
        helper, write_policy, monkeypatch):
    """What comes from the checking process and is no answer (a pipe closed under the read at a stop, a
    message that does not unpickle) ends the child, and the helper takes in what it held. Before, the thread
    collecting the answers died of it: the senders waited for a 250 that never came."""
    import asyncio
    import multiprocessing

    from sendguard.items import new_id
    from sendguard.outbox import Incoming

    monkeypatch.setattr(checkermod, "RESTART_SECONDS", 0.5)
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        raw = make_message(to="a@partner.example", subject="unreadable answer").as_bytes()
        item_id = new_id()
        reader, writer = multiprocessing.Pipe(duplex=False)
        with checker._lock:  # the pipe from the child, as the collecting thread reads it, with one message held
            checker._from_child = reader
            checker._held[10**9] = ((Incoming(raw, "taro@example.co.jp", ["a@partner.example"], "smtp"),
                                     (loop, future)), item_id, 0.0)
        before = checker.taken_back
        writer.send_bytes(b"this is not an answer")
        checker._collect(reader)  # returns: it took the child's messages back
        assert checker.taken_back == before + 1
        assert h.outbox.get(item_id).subject == "unreadable answer"  # stored by the helper itself
        loop.run_until_complete(asyncio.wait_for(future, 5))
        assert future.result() == (item_id, "awaiting_confirmation")  # the sender gets its 250
    finally:
        loop.close()

    def back() -> bool:  # and the checking process comes back for the messages that follow
        if checker.ready():
            return True
        assert burst(h.smtp.port, messages(8, "after")) == []
        return False

    wait_for(back, timeout=60, interval=0.3)


def _collecting_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sendguard-checker-collect" and t.is_alive()]


def test_the_answers_are_read_in_the_smtp_sessions_loop_not_in_a_thread_of_their_own(helper, write_policy):
    """Each answer settles its senders' 250 in the loop that sends it: no thread wakes for it and waits for the
    interpreter to hand the answer on (the loop watches the child's pipe, where the system lets it)."""
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    wait_for(lambda: checker._watched is not None, timeout=10)
    assert _collecting_threads() == []
    batch = messages(24, "in the loop")
    assert burst(h.smtp.port, batch) == []
    wait_for(lambda: len(stored_by_subject(h, "in the loop")) == 24)
    assert checker.taken_there >= 1 and checker.taken_back == 0


def test_a_loop_that_cannot_watch_a_pipe_leaves_the_answers_to_a_thread(helper, write_policy, monkeypatch):
    """Windows' proactor loop watches no pipes: there the answers are read by a thread, as before."""
    import asyncio

    from sendguard import submission

    class NoPipes(asyncio.SelectorEventLoop):
        def add_reader(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("this loop watches sockets only")

    monkeypatch.setattr(submission, "new_event_loop", lambda starttls=False: NoPipes())
    write_policy(SAMPLE_POLICY)
    h = helper()
    checker = checker_ready(h)
    assert checker._watched is None
    wait_for(lambda: len(_collecting_threads()) == 1, timeout=10)
    assert burst(h.smtp.port, messages(24, "thread")) == []
    wait_for(lambda: len(stored_by_subject(h, "thread")) == 24)
    assert checker.taken_back == 0
