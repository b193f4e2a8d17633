"""The stored check result: ``checks.StoredCheck`` owns the JSON of ``sendguard check --json`` (written by
``to_json``, read back by ``from_json``); the outbox, the API, the pages and the CLI read its fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_message
from test_rules import CONTACTS, LISTS, OPTOUT, PARITY_POLICY

from sendguard import checks, message, policy
from sendguard.checks import StoredCheck, Verdict
from sendguard.errors import CheckFormatError

TOP_KEYS = ["message_id", "from", "subject", "recipients", "attachments", "verdict", "force_bcc"]
RECIPIENT_KEYS = {"address", "display_name", "field", "domain", "external", "flags"}
ATTACHMENT_KEYS = {"id", "filename", "size", "content_type", "sha256", "flags"}


@pytest.fixture(scope="module")
def pol(tmp_path_factory: Any) -> policy.Policy:
    folder = tmp_path_factory.mktemp("stored")
    for name, text in (("contacts.csv", CONTACTS), ("lists.csv", LISTS), ("optout.csv", OPTOUT)):
        (folder / name).write_text(text, encoding="utf-8")
    path = folder / "policy.toml"
    path.write_text(PARITY_POLICY, encoding="utf-8")
    return policy.load(path)


CASES = {
    "external with attachments": dict(to="a@partner.example", cc="b@example.co.jp",
                                      attachments=[("見積.pdf", b"%PDF-1.4 x", "application/pdf"),
                                                   ("a.exe", b"MZ\x90\x00", "application/octet-stream")]),
    "list members, auto Bcc, opt-out": dict(to=["sales-ml@client.example", "x@customer.example",
                                                "optout@customer.example"]),
    "many external, force Bcc": dict(to=[f"p{i}@partner{i}.example" for i in range(12)]),
    "blocked": dict(to="ceo@partner.example"),
    "internal only": dict(to="colleague@example.co.jp", body="no attachment here"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_check_reads_back_as_it_was_written(pol: policy.Policy, case: str) -> None:
    raw = make_message(**CASES[case]).as_bytes()
    result = checks.evaluate(message.parse(raw), pol, ())
    written = result.to_json()
    assert list(written)[:7] == TOP_KEYS
    for row in written["recipients"]:
        assert RECIPIENT_KEYS <= set(row) <= RECIPIENT_KEYS | {"list"}
    for row in written["attachments"]:
        assert ATTACHMENT_KEYS <= set(row) <= ATTACHMENT_KEYS | {"ref", "uninspected"}
    assert set(written["verdict"]) == {"action", "approvers", "reasons"}
    stored = StoredCheck.from_json(json.loads(json.dumps(written)))  # as a JSON column gives it back
    assert stored == result.stored()
    assert stored.to_json() == written
    assert stored.verdict.action == result.action and stored.sender == result.message.sender


def test_the_typed_fields_answer_what_readers_asked_the_json(pol: policy.Policy) -> None:
    raw = make_message(to=["sales-ml@client.example", "x@customer.example", "optout@customer.example"],
                       attachments=[("見積.pdf", b"%PDF-1.4 x", "application/pdf")]).as_bytes()
    stored = checks.evaluate(message.parse(raw), pol, ()).stored()
    rows = stored.by_address
    assert rows["a@client.example"].list_address == "sales-ml@client.example"
    assert "auto_added" in rows["archive@example.co.jp"].flags and rows["archive@example.co.jp"].field == "bcc"
    assert "suppressed" in rows["optout@customer.example"].flags
    assert "x@customer.example" in stored.external_addresses
    assert stored.attachment("1") is not None and stored.attachment("1").filename == "見積.pdf"
    assert stored.attachment("99") is None
    assert {r.rule for r in stored.verdict.reasons_at("block", "approve")} <= {r.rule for r in stored.verdict.reasons}


def test_an_unreadable_message_keeps_its_own_shape() -> None:
    stored = StoredCheck.unreadable("no recipients")
    assert not stored.readable and stored.verdict == Verdict("confirm")
    assert stored.to_json() == {"recipients": [], "attachments": [], "force_bcc": False, "problems": ["no recipients"],
                                "verdict": {"action": "confirm", "approvers": [], "reasons": []}}
    assert StoredCheck.from_json(stored.to_json()) == stored
    # rows stored before force_bcc was always written read the same
    old = {"verdict": {"action": "confirm", "approvers": [], "reasons": []}, "problems": ["x"], "recipients": [],
           "attachments": []}
    assert StoredCheck.from_json(old) == StoredCheck.unreadable("x")


@pytest.mark.parametrize("data, where", [
    ("not an object", "the result must be an object, not str"),
    ({"recipients": {"a": 1}}, "recipients must be a list, not dict"),
    ({"recipients": [{"address": 7}]}, "recipients[0].address must be a string, not int"),
    ({"recipients": [{"field": "to"}]}, "recipients[0].address is missing"),
    ({"attachments": [{"filename": "a.pdf"}]}, "attachments[0].id is missing"),
    ({"recipients": [{"address": "a@b.example", "flags": ["ok", 3]}]}, "recipients[0].flags must be a list of strings"),
    ({"attachments": [{"id": "1", "size": "big"}]}, "attachments[0].size must be a number, not str"),
    ({"attachments": [{"id": "1", "size": True}]}, "attachments[0].size must be a number, not bool"),
    ({"verdict": {"action": "shrug"}}, "verdict.action must be one of allow, confirm, reconfirm, approve, block"),
    ({"verdict": {"action": "approve", "reasons": [{"rule": ["x"]}]}}, "verdict.reasons[0].rule must be a string"),
    ({"force_bcc": "yes"}, "force_bcc must be true or false, not str"),
    ({"from": 5}, "from must be a string, not int"),
])
def test_a_wrong_shape_is_refused_naming_the_key(data: Any, where: str) -> None:
    with pytest.raises(CheckFormatError) as info:
        StoredCheck.from_json(data)
    assert str(info.value).startswith("check result: ") and where in str(info.value), str(info.value)


def test_check_json_on_the_command_line_is_the_stored_shape(tmp_path: Path, write_policy: Any) -> None:
    from conftest import run_cli

    write_policy()
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(to="a@partner.example").as_bytes())
    out = run_cli("check", str(eml), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert list(data)[:7] == TOP_KEYS and StoredCheck.from_json(data).to_json() == data


def test_a_damaged_stored_check_fails_only_what_acts_on_that_message(helper: Any, write_policy: Any) -> None:
    from sqlalchemy import update

    from sendguard.store import outbox

    write_policy()
    h = helper()
    ids = [h.outbox.submit(make_message(to="a@partner.example", subject=s).as_bytes(), "taro@example.co.jp",
                           ["a@partner.example"]).id for s in ("broken", "fine")]
    with h.store.transaction() as conn:  # a bug or a bad migration left a row without an address
        conn.execute(update(outbox).where(outbox.c.id == ids[0]).values(
            check_result={"recipients": [{"field": "to"}], "verdict": {"reasons": []}}))
    listed = {i.id: i.summary() for i in h.outbox.list()}  # the listing still shows both
    assert listed[ids[0]]["recipients"] == [] and listed[ids[1]]["recipients"][0]["address"] == "a@partner.example"
    with pytest.raises(CheckFormatError, match=r"recipients\[0\]\.address is missing"):
        h.outbox.confirm(ids[0])
    assert h.outbox.get(ids[0]).state == "awaiting_confirmation"  # held, not sent
    assert h.outbox.confirm(ids[1]).state in ("confirmed", "sent", "releasing")
