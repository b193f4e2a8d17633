"""The outbox state machine: one ``State`` enum and one table of steps, asked by every module."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sendguard.errors import StateError
from sendguard.outbox import (
    APPROVAL_OUTCOMES,
    CANCELLABLE,
    DECIDED_STATES,
    FINAL_STATES,
    HELD_STATES,
    NOT_SENT_STATES,
    STATES,
    TRANSITIONS,
    State,
)
from sendguard.store import audit, outbox

ROOT = Path(__file__).resolve().parent.parent
S = State

# The machine as the design states it: received -> awaiting_confirmation -> confirmed ->
# (awaiting_approval -> approved | rejected) -> releasing -> sent; any held state -> cancelled;
# awaiting_approval -> expired; releasing -> failed (retried) or needs_attention.
DESIGN_EDGES = {
    (S.RECEIVED, S.AWAITING_CONFIRMATION), (S.AWAITING_CONFIRMATION, S.CONFIRMED),
    (S.CONFIRMED, S.AWAITING_APPROVAL), (S.AWAITING_APPROVAL, S.APPROVED), (S.AWAITING_APPROVAL, S.REJECTED),
    (S.CONFIRMED, S.RELEASING), (S.APPROVED, S.RELEASING), (S.RELEASING, S.SENT),
    (S.AWAITING_APPROVAL, S.EXPIRED), (S.RELEASING, S.FAILED), (S.RELEASING, S.NEEDS_ATTENTION),
    *((held, S.CANCELLED) for held in (S.RECEIVED, S.AWAITING_CONFIRMATION, S.CONFIRMED, S.AWAITING_APPROVAL,
                                       S.APPROVED, S.FAILED, S.NEEDS_ATTENTION, S.RELEASING)),
}
# ... and what the design's prose adds: the policy passes a message on without the window; a failed send
# is retried; approvers change while a message waits; the user settles an interrupted send; the central
# server's signature does not cover the content; the central server hears the helper sent it.
FURTHER_EDGES = {
    (S.RECEIVED, S.CONFIRMED), (S.FAILED, S.RELEASING), (S.AWAITING_APPROVAL, S.AWAITING_APPROVAL),
    (S.NEEDS_ATTENTION, S.SENT), (S.RELEASING, S.SENT), (S.NEEDS_ATTENTION, S.FAILED), (S.FAILED, S.FAILED),
    (S.CONFIRMED, S.NEEDS_ATTENTION), (S.APPROVED, S.NEEDS_ATTENTION), (S.FAILED, S.NEEDS_ATTENTION),
    (S.APPROVED, S.SENT),
    (S.SENT, S.CANCELLED),  # a correction: the Outlook add-in stopped a send it had been cleared for
    # the sender's helper: the central server sent a message it keeps and sends itself (release = "server")
    (S.AWAITING_APPROVAL, S.SENT),
}


def edges() -> set[tuple[State, State]]:
    return {(source, t.target) for t in TRANSITIONS.values() for source in t.sources}


def test_the_table_is_the_designed_machine_and_nothing_more() -> None:
    assert edges() == DESIGN_EDGES | FURTHER_EDGES
    assert set(STATES) == {s for edge in edges() for s in edge}


def test_every_state_is_reachable_and_every_held_state_can_end() -> None:
    reach = {S.RECEIVED}
    while True:
        more = {to for (frm, to) in edges() if frm in reach} - reach
        if not more:
            break
        reach |= more
    assert reach == set(State)
    for state in HELD_STATES:
        seen, todo = {state}, [state]
        while todo:
            for frm, to in edges():
                if frm == todo[-1] and to not in seen:
                    seen.add(to)
                    todo.insert(0, to)
            todo.pop()
        assert seen & set(FINAL_STATES), state


def test_the_named_sets_come_from_the_table() -> None:
    assert set(FINAL_STATES) == {"sent", "cancelled", "rejected", "expired"}
    assert set(HELD_STATES) == set(State) - set(FINAL_STATES)
    assert set(NOT_SENT_STATES) == {"cancelled", "rejected", "expired"}
    assert set(APPROVAL_OUTCOMES) == {"approved", "rejected", "expired"}
    assert set(DECIDED_STATES) == {"approved", "rejected", "expired", "sent", "cancelled"}
    assert S.RELEASING not in CANCELLABLE  # an interrupted send has its own step (it may have gone out)
    assert TRANSITIONS["cancel_interrupted"].sources == {S.RELEASING}


def test_states_are_the_strings_stored_and_shown() -> None:
    assert [s.value for s in State] == list(STATES)
    assert State("awaiting_approval") is S.AWAITING_APPROVAL and S.SENT == "sent"
    assert json.dumps({"state": S.NEEDS_ATTENTION}) == '{"state": "needs_attention"}'
    assert f"{S.RELEASING}" == "releasing"


@pytest.fixture
def outbox_with_held(helper: Any, write_policy: Any, message_factory: Any) -> tuple[Any, str]:
    write_policy()
    h = helper()
    raw = message_factory(to="x@partner.example").as_bytes()
    item = h.outbox.submit(raw, "taro@example.co.jp", ["x@partner.example"])
    assert item.state == S.AWAITING_CONFIRMATION
    return h, item.id


def _audit_count(h: Any, item_id: str) -> int:
    with h.store.engine.connect() as conn:
        return len(conn.execute(select(audit.c.seq).where(audit.c.item_id == item_id)).all())


def test_a_step_from_a_state_it_does_not_start_from_is_refused_and_writes_nothing(outbox_with_held: Any) -> None:
    h, item_id = outbox_with_held
    before = _audit_count(h, item_id)
    with pytest.raises(StateError, match="is awaiting_confirmation: cannot approve it now"):
        h.outbox.transition(item_id, "approve", "boss@example.co.jp", {})
    # only_from narrows a step, it never widens it
    with pytest.raises(StateError, match="cannot cancel it now"):
        h.outbox.transition(item_id, "cancel", "user", {}, only_from=[S.AWAITING_APPROVAL])
    with pytest.raises(StateError):
        h.outbox.transition(item_id, "cancel_interrupted", "user", {}, only_from=[S.AWAITING_CONFIRMATION])
    assert h.outbox.get(item_id).state == S.AWAITING_CONFIRMATION
    assert _audit_count(h, item_id) == before


def test_an_unknown_step_is_refused_naming_the_steps(outbox_with_held: Any) -> None:
    h, item_id = outbox_with_held
    with pytest.raises(ValueError, match="unknown outbox transition 'sent_by_magic'.*start_release"):
        h.outbox.transition(item_id, "sent_by_magic", "user", {})
    with pytest.raises(ValueError, match="unknown outbox transition"):
        h.outbox.transition(item_id, ["awaiting_confirmation"], "user", {})  # the old (allowed, to, event) form


def test_a_step_stores_plain_strings_and_audits_from_and_to(outbox_with_held: Any) -> None:
    h, item_id = outbox_with_held
    item = h.outbox.transition(item_id, "cancel", "user", {"reason": "test"})
    assert item.state == "cancelled"
    with h.store.engine.connect() as conn:
        state = conn.execute(select(outbox.c.state).where(outbox.c.id == item_id)).scalar_one()
        record = conn.execute(select(audit.c.event, audit.c.data).where(audit.c.item_id == item_id)
                              .order_by(audit.c.seq.desc())).first()
    assert type(state) is str and state == "cancelled"
    assert record is not None and record.event == "cancelled"
    assert json.loads(record.data) == {"from": "awaiting_confirmation", "to": "cancelled", "reason": "test"}


# Tuples of strings that name another state machine's states, not the outbox's (relay rows:
# pending -> taken | cancelled | expired).
OTHER_MACHINES = {("addin/relay.py", ("cancelled", "expired"))}


def _parse(source: str) -> ast.Module:
    """ast.parse, tried again on CPython 3.11's spurious "AST constructor recursion depth mismatch" (a counter
    the interpreter shares between threads: another thread compiling at that moment, as test servers do when
    they import, trips it)."""
    for attempt in range(5):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def test_no_module_keeps_a_private_set_of_outbox_states() -> None:
    """Sets of states ("decided", "final", "wait while"...) are named once in outbox.py, from its table."""
    names = {s.value for s in State}
    found = []
    for folder in ("sendguard", "addin", "desktop"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ("sendguard/outbox.py", "sendguard/locale/markers.py"):
                continue
            for node in ast.walk(_parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Tuple | ast.List | ast.Set):
                    continue
                values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                states = tuple(v for v in values if v in names)
                if len(states) >= 2 and (rel, states) not in OTHER_MACHINES:
                    found.append(f"{rel}:{node.lineno} {states}")
    assert not found, "state sets outside outbox.py (use State and the sets in outbox.py):\n" + "\n".join(found)


def test_a_message_checked_meanwhile_by_another_process_keeps_that_outcome(home: Path, write_policy: Any,
                                                                           message_factory: Any) -> None:
    """``submit`` checks what it received; a running helper's worker may check it first: no error."""
    from sendguard.outbox import Outbox
    from sendguard.policy import load as load_policy
    from sendguard.store import Store

    policy = load_policy(write_policy())
    store = Store(home / "sendguard.db")
    other = Outbox(store, lambda: policy)  # e.g. the helper's worker, in another process
    ours_asked: list[str] = []

    def ours_policy() -> Any:
        if not ours_asked:  # between our read of the item and our step, the other one checks it
            ours_asked.append(item_id)
            assert other.process(item_id).state == S.AWAITING_CONFIRMATION
        return policy

    ours = Outbox(store, ours_policy)
    item_id = ours.receive(message_factory(to="x@partner.example").as_bytes(), "taro@example.co.jp",
                           ["x@partner.example"])
    item = ours.process(item_id)
    assert ours_asked == [item_id]
    assert item.state == S.AWAITING_CONFIRMATION
    with store.engine.connect() as conn:
        events = [r.event for r in conn.execute(select(audit.c.event).where(audit.c.item_id == item_id))]
    assert events == ["received", "verdict"]  # checked and held once
    store.close()


def test_a_request_from_another_machine_enters_waiting_for_approval_with_its_record(home: Path,
                                                                                     message_factory: Any) -> None:
    """The central server keeps a helper's message through the outbox, not raw SQL of its own."""
    from sqlalchemy.exc import IntegrityError

    from sendguard.checks import StoredCheck
    from sendguard.outbox import Outbox
    from sendguard.policy import Policy
    from sendguard.store import Store

    store = Store(home / "sendguard.db")
    box = Outbox(store, Policy)
    raw = message_factory(to="a@partner.example").as_bytes()
    check = StoredCheck.unreadable("example")

    def take(item_id: str) -> Any:
        return box.take_for_approval(
            item_id, raw, owner="taro@example.co.jp", sender="taro@example.co.jp", envelope_from="taro@example.co.jp",
            recipients=["a@partner.example"], message_id="<m@x>", subject="s", source="central", check=check,
            decision=None, approvers=["boss@example.co.jp"], expires_at=123.0, actor="taro@example.co.jp",
            audit_data={"approvers": ["boss@example.co.jp"]})

    item = take("helper-1")
    assert (item.state, item.approvers, item.check, item.expires_at) == (
        S.AWAITING_APPROVAL, ["boss@example.co.jp"], check, 123.0)
    with store.engine.connect() as conn:
        events = [r.event for r in conn.execute(select(audit.c.event).where(audit.c.item_id == "helper-1"))]
    assert events == [TRANSITIONS["request_approval"].event]
    with pytest.raises(IntegrityError):
        take("helper-1")  # the same id again: the caller answers it as a retry
    assert box.get("helper-1", with_bodies=True).final_raw == raw
    store.close()


def test_outbox_module_shows_every_state_and_step_as_the_table_has_them() -> None:
    """A reader of outbox.py alone finds every state and every allowed transition (the table lives in
    states.py for the CLI's fast start; the docstring's copy must not drift from it)."""
    import textwrap

    from sendguard import outbox, states

    doc = outbox.__doc__ or ""
    assert textwrap.indent(states.table_text(), "    ") in doc, "outbox.py's docstring: copy states.table_text()"
    assert all(s.value in doc.split("The steps")[0] for s in State)
