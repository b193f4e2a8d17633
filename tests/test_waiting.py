"""What SendGuard waits for (``sendguard.waiting``): the lines the window's status line and the tray show.

Real helper, real Maildir sink made unreachable (replaced by a file, as an unmounted share), and a real
interrupted send (the process killed with SIGKILL right after ``releasing`` was committed).
"""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import make_message, wait_for
from test_faults import interrupted_send

from sendguard.central import CentralClient, CentralSync
from sendguard.i18n import translator
from sendguard.service import Helper
from sendguard.waiting import waiting

POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "never"\n'
SENDER = "taro@example.co.jp"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_interrupted_send_waits_for_its_mail_service_and_says_so(home: Path) -> None:
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    item_id = interrupted_send(home, "<w1@example.co.jp>", SENDER)
    (home / "sent").write_text("not a folder")  # the sink cannot be asked whether it went out
    helper = Helper(home)
    try:
        steady, ahead = helper.outbox.clock, [1000.0]
        helper.outbox.clock = lambda: steady() + ahead[0]  # the dead sender's lease is over: SendGuard asks now
        helper.outbox.reconcile_due()
        assert helper.outbox.get(item_id).state == "releasing"
        lines = waiting(helper.outbox, translator("en"))
        assert [w.kind for w in lines] == ["reconcile"]
        assert lines[0].ids == (item_id,)
        assert "waiting for maildir account local to say whether they went out" in lines[0].text
        assert "never sent twice" in lines[0].text
        ja = waiting(helper.outbox, translator("ja"))[0].text
        assert "中断された送信 1 件" in ja and "maildir account local" in ja
        helper.paused = True
        assert [w.kind for w in waiting(helper.outbox, translator("en"), paused=True)] == ["reconcile", "paused"]
        (home / "sent").unlink()  # back: the sink says it never got it, so it is sent (once)
        ahead[0] += 1000.0  # past the back-off
        helper.outbox.reconcile_due()
        assert waiting(helper.outbox, translator("en"))[0].kind == "retry"  # failed, due again at once
        helper.outbox.release_due()
        assert helper.outbox.get(item_id).state == "sent"
        assert waiting(helper.outbox, translator("en")) == []
    finally:
        helper.stop()


def test_held_for_approval_waits_for_an_unreachable_central_server(home: Path) -> None:
    (home / "policy.toml").write_text(POLICY.replace('"never"', '"external"') + '[approval]\napprovers = '
                                      '["boss@example.co.jp"]\n[rules]\npersonal_data = "approve"\n', encoding="utf-8")
    helper = Helper(home)
    try:
        raw = bytes(make_message(to="hanako@example.co.jp", sender=SENDER, body="4111 1111 1111 1111"))
        item = helper.outbox.submit(raw, SENDER, ["hanako@example.co.jp"])
        item = helper.outbox.confirm(item.id, actor="user")
        assert item.state == "awaiting_approval"

        assert waiting(helper.outbox, translator("en"), central=None) == []
        url = f"http://127.0.0.1:{_closed_port()}"  # the central server is down
        sync = CentralSync(helper.outbox, CentralClient(url, "helper-token")).start()
        try:
            wait_for(lambda: sync.last_error, timeout=30)
            lines = waiting(helper.outbox, translator("en"), central=sync)
        finally:
            sync.stop()
        assert [w.kind for w in lines] == ["central"]
        assert lines[0].ids == (item.id,)
        assert url in lines[0].text and "They stay held; nothing is lost." in lines[0].text
    finally:
        helper.stop()
