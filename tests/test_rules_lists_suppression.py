"""Distribution lists and the suppression list together: opted-out list members, lists inside lists,
opt-out entries written in punycode or full width, and bulk mail that goes out through a list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for
from test_rules import run
from test_rules_e2e import released

from sendguard import policy

LISTS = """list,member
news@client.example,a@client.example
news@client.example,optout@customer.example
all@client.example,a@client.example
all@client.example,board@client.example
board@client.example,
outer@client.example,inner@client.example
outer@client.example,a@client.example
inner@client.example,c@client.example
inner@client.example,a@client.example
loop1@client.example,loop2@client.example
loop2@client.example,loop1@client.example
loop2@client.example,d@client.example
"""
OPTOUT = "address\noptout@customer.example\n"


def load(folder: Path, rules: str = "", suppression: str | None = None, optout: str = OPTOUT,
         lists: str = LISTS) -> policy.Policy:
    (folder / "lists.csv").write_text(lists, encoding="utf-8")
    (folder / "optout.csv").write_text(optout, encoding="utf-8")
    text = ('[organization]\ninternal_domains = ["example.co.jp"]\nlists = ["lists.csv"]\n'
            f"[rules]\n{rules}\n")
    if suppression:
        text += f'[rules.suppression]\nfiles = ["optout.csv"]\naction = "{suppression}"\n'
    path = folder / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return policy.load(path)


def rows(result) -> dict[str, dict]:
    return {r["address"]: r for r in result.to_json()["recipients"]}


# ---------------------------------------------------------------- A: opted-out members of a list
def test_an_opted_out_list_member_is_flagged_and_blocks_under_block(tmp_path):
    result = run(load(tmp_path, suppression="block"), to="news@client.example")
    member = rows(result)["optout@customer.example"]
    assert "suppressed" in member["flags"] and member["list"] == "news@client.example"
    [reason] = [r for r in result.reasons if r.rule == "suppressed"]
    assert (reason.action, reason.target) == ("block", "optout@customer.example")
    assert result.action == "block"


def test_an_opted_out_list_member_under_remove_is_held_not_said_removed(tmp_path):
    """SendGuard cannot take a member out of a list the mail server expands: the user is asked, and told so."""
    result = run(load(tmp_path, suppression="remove"), to="news@client.example")
    assert "suppressed" in rows(result)["optout@customer.example"]["flags"]
    [reason] = [r for r in result.reasons if r.rule == "suppressed"]
    assert (reason.action, reason.target) == ("reconfirm", "optout@customer.example")
    assert "news@client.example" in reason.message and "opt-out" in reason.message
    assert "removed from this message" not in reason.message
    assert "cannot remove" in reason.message


def test_an_opted_out_recipient_addressed_directly_is_still_removed(tmp_path):
    result = run(load(tmp_path, suppression="remove"), to=["optout@customer.example", "a@client.example"])
    [reason] = [r for r in result.reasons if r.rule == "suppressed"]
    assert reason.action == "confirm" and "removed from this message" in reason.message
    assert "list" not in rows(result)["optout@customer.example"]


def test_a_suppressed_list_member_is_not_removed_from_the_released_message(home, helper):
    """Through the helper: the list goes out as written, no member is recorded as removed, and an
    opted-out recipient addressed directly is still taken out."""
    (home / "lists.csv").write_text(LISTS, encoding="utf-8")
    (home / "optout.csv").write_text(OPTOUT + "gone@client.example\n", encoding="utf-8")
    (home / "policy.toml").write_text(
        SAMPLE_POLICY.replace("[confirm]", 'lists = ["lists.csv"]\n\n[confirm]')
        + '\n[rules.suppression]\nfiles = ["optout.csv"]\naction = "remove"\n', encoding="utf-8")
    h = helper()
    smtp_send(h.smtp.port, make_message(to=["news@client.example", "gone@client.example"]))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    member = item.check.by_address["optout@customer.example"]
    assert "suppressed" in member.flags and member.list_address == "news@client.example"
    refused = run_cli("queue", "confirm", item.id)  # the user must say yes to it explicitly
    assert refused.returncode != 0 and "--reconfirmed" in refused.stderr.decode()
    assert run_cli("queue", "confirm", item.id, "--reconfirmed").returncode == 0
    wait_for(lambda: h.outbox.get(item.id).state == "sent")
    [sent] = released(home)
    assert sent["To"] == "news@client.example"
    assert sent.get_all("X-SendGuard-Envelope-To") == ["news@client.example"]
    show = json.loads(run_cli("queue", "show", item.id, "--json").stdout)
    confirmed = next(a for a in show["audit"] if a["event"] == "confirmed")
    assert confirmed["data"]["removed_recipients"] == ["gone@client.example"]


# ---------------------------------------------------------------- B: lists inside lists
def test_a_list_inside_a_list_is_expanded_and_refused_under_block(tmp_path):
    result = run(load(tmp_path, rules='distribution_list = "block"'), to="all@client.example")
    board = rows(result)["board@client.example"]
    assert board["list"] == "all@client.example" and "list_member" in board["flags"]
    lists = {r.target: r for r in result.reasons if r.rule == "distribution_list"}
    assert lists["all@client.example"].action == "confirm"
    assert lists["board@client.example"].action == "block"
    assert "cannot see" in lists["board@client.example"].message
    assert result.action == "block"


def test_members_of_a_nested_list_are_listed_under_that_list(tmp_path):
    result = run(load(tmp_path), to="outer@client.example")
    found = rows(result)
    assert found["inner@client.example"]["list"] == "outer@client.example"
    assert found["c@client.example"]["list"] == "inner@client.example"
    assert [r["address"] for r in result.to_json()["recipients"]].count("a@client.example") == 1
    assert {r.target for r in result.reasons if r.rule == "distribution_list"} == {
        "outer@client.example", "inner@client.example"}


def test_lists_that_contain_each_other_are_walked_once(tmp_path):
    result = run(load(tmp_path), to="loop1@client.example")
    addresses = [r["address"] for r in result.to_json()["recipients"]]
    assert addresses == ["loop1@client.example", "loop2@client.example", "d@client.example"]
    assert rows(result)["d@client.example"]["list"] == "loop2@client.example"


def test_an_opted_out_member_of_a_nested_list_names_its_own_list(tmp_path):
    lists = "list,member\nall@client.example,team@client.example\nteam@client.example,optout@customer.example\n"
    result = run(load(tmp_path, suppression="remove", lists=lists), to="all@client.example")
    [reason] = [r for r in result.reasons if r.rule == "suppressed"]
    assert "team@client.example" in reason.message and reason.action == "reconfirm"


# ---------------------------------------------------------------- C: opt-out entries as address rules read them
@pytest.mark.parametrize("entry", ["*@xn--r8jz45g.jp", "x@xn--r8jz45g.jp", "X@例え.JP", "*@ＸＮ--Ｒ８ＪＺ４５Ｇ.ＪＰ",
                                   "ｘ＠例え.jp"])
@pytest.mark.parametrize("to", ["x@例え.jp", "x@xn--r8jz45g.jp"])
def test_an_opt_out_entry_in_punycode_or_full_width_matches(tmp_path, entry, to):
    pol = load(tmp_path, suppression="block", optout=f"address\n{entry}\n")
    result = run(pol, to=to)
    assert result.action == "block", (entry, to, pol.suppression)
    assert "suppressed" in result.recipients[0].flags


def test_an_upper_case_opt_out_entry_matches(tmp_path):
    pol = load(tmp_path, suppression="block", optout="OptOut@Customer.EXAMPLE\n*@UNSUBSCRIBED.example\n")
    assert run(pol, to="optout@customer.example").action == "block"
    assert run(pol, to="y@unsubscribed.example").action == "block"
    assert run(pol, to="y@customer.example").action != "block"


# ---------------------------------------------------------------- D: bulk mail through a list
def bulk_lists(list_address: str, count: int) -> str:
    return "list,member\n" + "".join(f"{list_address},user{i}@client{i}.example\n" for i in range(count))


@pytest.mark.parametrize("list_address", ["news@example.co.jp", "news@client.example"])
def test_external_members_of_a_list_make_a_message_bulk(tmp_path, list_address):
    pol = load(tmp_path, lists=bulk_lists(list_address, 25))
    result = run(pol, to=list_address, body="各位\n\n新製品のご案内です。\n")
    [bulk] = [r for r in result.reasons if r.rule == "bulk_unsubscribe"]
    assert bulk.target == "25"  # the members, not the list address besides them
    # members are not shown to each other in To/Cc: no advice to use Bcc
    assert not [r for r in result.reasons if r.rule == "many_external_recipients"]


def test_a_list_with_an_opt_out_or_few_members_is_not_bulk(tmp_path):
    pol = load(tmp_path, lists=bulk_lists("news@example.co.jp", 25))
    result = run(pol, to="news@example.co.jp", body="各位\n\nご案内です。\n配信停止はこちら。\n")
    assert not [r for r in result.reasons if r.rule == "bulk_unsubscribe"]
    pol = load(tmp_path, lists=bulk_lists("news@example.co.jp", 5))
    result = run(pol, to="news@example.co.jp", body="各位\n\nご案内です。\n")
    assert not [r for r in result.reasons if r.rule == "bulk_unsubscribe"]


# ---------------------------------------------------------------- lists.csv written in punycode or full width
@pytest.mark.parametrize("written,to", [
    ("news@xn--r8jz45g.jp", "news@例え.jp"),
    ("ＮＥＷＳ＠例え.ＪＰ", "news@例え.jp"),
    ("news@例え.jp", "news@xn--r8jz45g.jp"),
])
def test_a_list_written_in_punycode_or_full_width_is_the_same_list(tmp_path, written, to):
    lists = f"list,member\n{written},optout@xn--r8jz45g.jp\n{written},a@client.example\n"
    result = run(load(tmp_path, suppression="block", optout="address\noptout@例え.jp\n", lists=lists), to=to)
    found = rows(result)
    assert found["a@client.example"]["list"] == "news@例え.jp"
    assert "suppressed" in found["optout@例え.jp"]["flags"]
    assert result.action == "block"
