"""The store cannot be written just when a send has gone out (read-only for the `sent` commit, as
tests/test_disk.py makes it): the helper keeps the transport's receipt in memory and commits `sent` as soon
as the store can be written again, once, with its `released` record. Meanwhile the message says that it went
out and SendGuard is recording it, never "Sending now"; it is never sent again."""

from __future__ import annotations

import time

from conftest import make_message, smtp_send, wait_for
from sqlalchemy import select
from test_disk import DiskFault

from sendguard.mailboxes import maildir
from sendguard.store import audit

POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n\n[confirm]\nwhen = "never"\n'
FAST_RETRY = "[retry]\nbase_seconds = 0.2\nmax_seconds = 1.0\ninline_wait_seconds = 0.2\n"


def test_sent_is_committed_once_the_store_is_writable_again(home, write_policy, helper, monkeypatch):
    write_policy(POLICY)
    (home / "config.toml").write_text(FAST_RETRY)
    h = helper()
    disk = DiskFault(h.store)
    released = []
    original = maildir.MaildirMailbox.release

    def release_then_read_only(self, item):
        receipt = original(self, item)
        released.append(item.outbox_id)
        disk.read_only()  # the store goes read-only right after the transport took the message
        return receipt

    monkeypatch.setattr(maildir.MaildirMailbox, "release", release_then_read_only)
    smtp_send(h.smtp.port, make_message(to="a@partner.example", message_id="<retry-sent@test>"),
              ["a@partner.example"])
    item_id = wait_for(lambda: released and released[0], timeout=30)

    def recording():
        item = h.outbox.get(item_id)
        return item if "went out" in (item.waiting_for or "") else None

    item = wait_for(recording, timeout=10)
    assert item.state == "releasing" and item.waiting_for != "Sending now"
    assert "recording" in item.waiting_for
    time.sleep(1.0)
    assert h.outbox.get(item_id).state == "releasing"  # still read-only: nothing settled, nothing re-sent

    disk.fixed()
    back = time.monotonic()
    done = wait_for(lambda: h.outbox.get(item_id).state == "sent" and h.outbox.get(item_id), timeout=10)
    assert time.monotonic() - back < 5.0
    assert done.last_error is None and done.waiting_for is None
    time.sleep(1.0)  # a second commit or a re-send would show by now
    assert released == [item_id]
    files = list((home / "sent").rglob("*"))
    assert len([f for f in files if f.is_file()]) == 1, files
    with h.store.engine.connect() as conn:
        events = [e for (e,) in conn.execute(select(audit.c.event).where(audit.c.item_id == item_id))]
    assert events.count("released") == 1 and "sent_after_settled" not in events, events
    assert h._worker.is_alive()
