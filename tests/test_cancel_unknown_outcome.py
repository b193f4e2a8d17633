"""A message waiting for the user because nobody can tell whether its send went out: cancelling it says
that it may have gone out; one the relay refused outright is cancelled without that warning.

The SMTP relay's connection breaks while the message is handed over (after DATA, before the relay's
reply): the relay may have it, and SMTP gives no way to ask, so the outbox puts it in
``needs_attention`` and never sends it again by itself. Cancelling it (the CLI, the API and the window
share ``Outbox.cancel``) must tell the user to look in Sent mail, as for a lost answer in ``failed``: the
CLI's ``last_error`` and the ``cancelled`` audit record's ``may_have_been_sent``.

A real relay (aiosmtpd through SendGuard's own SMTP server class), the in-process helper with its worker,
the real CLI for the cancel.
"""

from __future__ import annotations

import json

from conftest import make_message, run_cli, smtp_send, wait_for
from test_cancel_maybe_sent import cancelled_record, cancelled_with_the_warning

from sendguard.submission import SubmissionServer

POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n'


class Relay:
    """Takes the message, then either answers, refuses it, or breaks the connection before answering."""

    def __init__(self, how: str):
        self.how = how
        self.received: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        if self.how == "refuse":
            return "554 5.7.1 message refused by policy"
        self.received.append(envelope.content)
        if self.how == "drop":
            server.transport.abort()  # the relay has the message; its answer never comes
        return "250 2.0.0 queued"


def held_for_the_user(home, helper, write_policy, how: str):
    relay = Relay(how)
    server = SubmissionServer(relay, "127.0.0.1", 0)
    server.start()
    out = run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "127.0.0.1", "--port", str(server.port),
                  "--security", "none")
    assert out.returncode == 0, out.stderr
    write_policy(POLICY)
    h = helper()
    smtp_send(h.smtp.port, make_message(to="x@partner.example"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    h.outbox.confirm(item.id)
    wait_for(lambda: h.outbox.get(item.id).state == "needs_attention")
    return h, server, relay, item.id


def test_cancel_after_the_relay_connection_broke_in_data_says_it_may_have_gone_out(home, helper, write_policy):
    h, server, relay, item_id = held_for_the_user(home, helper, write_policy, "drop")
    try:
        assert len(relay.received) == 1  # the relay has it: it may well be with its recipient
        assert "may have sent it" in (h.outbox.get(item_id).last_error or "")
        cancelled_with_the_warning(item_id)
        data = cancelled_record(h, item_id)
        assert data["may_have_been_sent"] is True and data["outcome_unknown"] is True, data
        assert len(relay.received) == 1  # and nothing was sent again
    finally:
        server.stop()


def test_cancel_after_the_relay_refused_the_message_is_a_plain_cancel(home, helper, write_policy):
    h, server, relay, item_id = held_for_the_user(home, helper, write_policy, "refuse")
    try:
        assert relay.received == []
        out = run_cli("queue", "cancel", item_id, "--json")
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert shown["state"] == "cancelled"
        assert "could not tell" not in (shown["last_error"] or "")
        assert "may_have_been_sent" not in cancelled_record(h, item_id)
    finally:
        server.stop()


def test_cancel_after_a_crash_in_the_middle_of_the_send_says_it_may_have_gone_out(home, serve_process):
    """`sendguard serve` is killed just after the relay took the message; started again, it settles the
    interrupted send, but SMTP cannot be asked: the message waits for the user, and a cancel warns."""
    relay = Relay("answer")
    server = SubmissionServer(relay, "127.0.0.1", 0)
    server.start()
    try:
        out = run_cli("accounts", "add", "smtp", "--name", "corp", "--host", "127.0.0.1", "--port",
                      str(server.port), "--security", "none")
        assert out.returncode == 0, out.stderr
        (home / "policy.toml").write_text(POLICY, encoding="utf-8")
        helper = serve_process().start(crash_at="release.after_transport")
        smtp_send(helper.smtp_port, make_message(to="x@partner.example"))
        (item,) = wait_for(lambda: json.loads(run_cli("queue", "list", "--json").stdout))
        assert run_cli("queue", "confirm", item["id"]).returncode == 0
        helper.wait_dead()  # killed after the hand-over, before it could record the send
        assert len(relay.received) == 1
        serve_process().start()
        shown = wait_for(lambda: [i for i in json.loads(run_cli("queue", "list", "--json", "--all").stdout)
                                  if i["state"] == "needs_attention"], timeout=30)[0]
        assert "cannot tell whether it went out" in (shown["last_error"] or ""), shown
        cancelled_with_the_warning(item["id"])
        assert len(relay.received) == 1
    finally:
        server.stop()
