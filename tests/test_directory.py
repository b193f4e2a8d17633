"""Distribution lists from the mail server's directory (the policy's ``distribution_list`` action): Exchange's
ExpandDL through the real exchangelib client and Microsoft Graph groups through the real msal and
requests, against the fakes in tests/fakes speaking their wire formats; then through the product (real
SMTP -> outbox -> verdict). A list that cannot be expanded, or an address the directory could not be
asked about, is said so and handled per policy: never counted as one address."""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for

from sendguard import checks, config, directory, message, policy, secrets
from sendguard.config import Account
from sendguard.directory import Directory, ListLookup, Member
from sendguard.directory.ews import EwsResolver
from sendguard.directory.graph import GraphResolver
from sendguard.mailboxes import _retry
from sendguard.mailboxes.exchange import ExchangeMailbox
from sendguard.mailboxes.graph import MsalTokenSource
from sendguard.outbox import Incoming
from tests.fakes.ews_server import FakeEWS
from tests.fakes.graph_server import FakeGraph

EWS_ADDRESS = "user@example.co.jp"
GRAPH_ADDRESS = "user@contoso.example"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(_retry, "sleep", lambda seconds: None)


# ---------------------------------------------------------------------------------------- Exchange
@pytest.fixture
def ews():
    with FakeEWS(address=EWS_ADDRESS) as server:
        server.add_list("sales@example.co.jp", [("Ichiro Sato", "sato@example.co.jp"), "kato@example.co.jp"])
        server.add_list("all-staff@example.co.jp", [("Hanako", "hanako@example.co.jp"), "sales@example.co.jp",
                                                    "taro@example.co.jp"], name="All staff")
        server.add_list("board@example.co.jp", ["ceo@example.co.jp"], hidden=True)
        yield server


def ews_account(fake: FakeEWS, **extra) -> Account:
    return Account("work", "exchange", EWS_ADDRESS, {"server": fake.url, "username": "user", "expand_lists": True,
                                                      **extra})


@pytest.fixture
def ews_resolver(ews, home):
    resolver = EwsResolver(ExchangeMailbox("work", EWS_ADDRESS, server=ews.url, username="user", password="secret"))
    yield resolver
    resolver.close()


def test_exchange_expands_a_list_and_the_lists_nested_in_it(ews, ews_resolver):
    found = ews_resolver.expand("all-staff@example.co.jp")
    assert found.is_list is True and found.expanded and found.source == "Exchange"
    assert [(m.address, m.name) for m in found.members] == [
        ("hanako@example.co.jp", "Hanako"), ("sato@example.co.jp", "Ichiro Sato"),
        ("kato@example.co.jp", "kato@example.co.jp"), ("taro@example.co.jp", "taro@example.co.jp")]
    assert ews.requests.count("ExpandDL") == 2  # the list, then the nested sales list


def test_exchange_says_a_mailbox_is_not_a_list(ews_resolver):
    assert ews_resolver.expand("hanako@example.co.jp") == ListLookup("hanako@example.co.jp", False, source="Exchange")


def test_exchange_list_with_hidden_members_is_a_list_without_members(ews_resolver):
    found = ews_resolver.expand("board@example.co.jp")
    assert found.is_list is True and found.members == ()


def test_exchange_refusing_the_expansion_is_could_not_ask(ews, ews_resolver):
    ews.fail_next("ExpandDL", "ErrorAccessDenied", message="Access is denied.")
    found = ews_resolver.expand("all-staff@example.co.jp")
    assert found.is_list is None and "ErrorAccessDenied" in found.why


def test_exchange_down_is_could_not_ask_and_is_asked_again_after_a_minute(ews, ews_resolver):
    now = [1000.0]
    cache = Directory([ews_resolver], clock=lambda: now[0])
    ews.outage.down()
    [found] = cache.lookup(["all-staff@example.co.jp"]).values()
    assert found.is_list is None and "Cannot reach the Exchange server" in found.why
    ews.outage.up()
    assert cache.lookup(["all-staff@example.co.jp"])["all-staff@example.co.jp"].is_list is None  # cached briefly
    now[0] += directory.FAILURE_TTL + 1
    assert cache.lookup(["all-staff@example.co.jp"])["all-staff@example.co.jp"].expanded


def test_exchange_down_is_asked_once_for_a_message_to_many_colleagues(ews, ews_resolver, monkeypatch):
    asked = []
    real = ews_resolver.expand
    monkeypatch.setattr(ews_resolver, "expand", lambda address: asked.append(address) or real(address))
    ews.outage.down()
    found = Directory([ews_resolver]).lookup([f"u{n}@example.co.jp" for n in range(5)])
    assert len(asked) == 1, "after the first failure the others are answered at once"
    assert {f.is_list for f in found.values()} == {None}
    assert all("Cannot reach the Exchange server" in f.why for f in found.values())


# ------------------------------------------------------------------------------- Microsoft Graph
@pytest.fixture
def graph():
    with FakeGraph(address=GRAPH_ADDRESS) as server:
        server.add_group("sales@contoso.example", [("Ichiro Sato", "sato@contoso.example"), "kato@contoso.example"])
        server.add_group("all@contoso.example", ["hanako@contoso.example", "sales@contoso.example",
                                                 "taro@contoso.example"], name="Everyone")
        yield server


def graph_account(fake: FakeGraph, expand_lists: bool = True) -> Account:
    settings = {"tenant": fake.tenant, "client_id": fake.client_id, "authority": fake.base,
                "graph_endpoint": fake.graph_endpoint, "ca_bundle": str(fake.ca_file)}
    if expand_lists:
        settings["expand_lists"] = True
    return Account("m365", "graph", GRAPH_ADDRESS, settings)


def graph_resolver(fake: FakeGraph, home, expand_lists: bool = True) -> GraphResolver:
    account = graph_account(fake, expand_lists)
    MsalTokenSource.for_account(account).sign_in(device_code=True, echo=lambda line: None)
    return GraphResolver.for_account(account, home)


def test_graph_expands_a_group_with_nested_groups_over_several_pages(graph, home):
    graph.member_page_limit = 2
    resolver = graph_resolver(graph, home)
    found = resolver.expand("all@contoso.example")
    assert found.is_list is True and found.expanded and found.source == "Microsoft Graph"
    assert [(m.address, m.name) for m in found.members] == [
        ("hanako@contoso.example", "hanako"), ("sato@contoso.example", "Ichiro Sato"),
        ("kato@contoso.example", "kato"), ("taro@contoso.example", "taro")]
    pages = [r for r in graph.requests if r.endswith("/transitiveMembers")]
    assert len(pages) == 3, "followed @odata.nextLink"
    assert any("GroupMember.Read.All" in scope for scope in graph.token_scopes.values()), \
        "the sign-in asked for the directory permission"


def test_graph_says_a_user_is_not_a_list(graph, home):
    assert graph_resolver(graph, home).expand("hanako@contoso.example").is_list is False


def test_graph_without_the_directory_permission_says_what_is_missing(graph, home):
    found = graph_resolver(graph, home, expand_lists=False).expand("all@contoso.example")
    assert found.is_list is None
    assert "Authorization_RequestDenied" in found.why and "GroupMember.Read.All" in found.why


def test_graph_permission_not_consented_by_the_admin(graph, home):
    graph.consented = set()
    found = graph_resolver(graph, home).expand("all@contoso.example")
    assert found.is_list is None and "GroupMember.Read.All permission" in found.why


# ------------------------------------------------------------------------------- the policy engine
LISTS = {
    "all-staff@example.co.jp": ListLookup("all-staff@example.co.jp", True,
                                          (Member("hanako@example.co.jp", "Hanako"), Member("x@partner.example")),
                                          True, source="Exchange"),
    "board@example.co.jp": ListLookup("board@example.co.jp", True, (), False, source="Exchange"),
    "big@example.co.jp": ListLookup("big@example.co.jp", True, (Member("a@example.co.jp"),), False,
                                    "the nested list deep@example.co.jp could not be expanded", "Exchange"),
    "maybe@example.co.jp": ListLookup("maybe@example.co.jp", None, why="Cannot reach the Exchange server",
                                      source="Exchange"),
}


def load_policy(tmp_path, action: str = "confirm") -> policy.Policy:
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE_POLICY.replace("[rules]", f'[rules]\ndistribution_list = "{action}"'), encoding="utf-8")
    return policy.load(path)


def verdict(tmp_path, to: str, action: str = "confirm"):
    return checks.evaluate(message.parse(make_message(to=to).as_bytes()), load_policy(tmp_path, action), lists=LISTS)


@pytest.mark.parametrize("to, action, expected, says", [
    ("all-staff@example.co.jp", "confirm", "confirm", "is a distribution list (2 members, shown under it)"),
    ("all-staff@example.co.jp", "block", "confirm", "is a distribution list (2 members"),  # expanded: not refused
    ("board@example.co.jp", "block", "block", "whose members SendGuard cannot see"),
    ("big@example.co.jp", "block", "block", "could not expand in full (the nested list deep@"),
    ("maybe@example.co.jp", "block", "block", "could not ask Exchange whether maybe@example.co.jp is a distribution"),
    ("maybe@example.co.jp", "approve", "approve", "(Cannot reach the Exchange server): check who receives it"),
])
def test_directory_answers_decide_the_verdict(tmp_path, to, action, expected, says):
    result = verdict(tmp_path, to, action)
    [reason] = [r for r in result.reasons if r.rule == "distribution_list"]
    assert reason.action == expected and says in reason.message, reason.message
    assert result.action == expected or checks.ACTION_RANK[result.action] > checks.ACTION_RANK[expected]


def test_members_are_shown_under_the_list_and_classified(tmp_path):
    result = verdict(tmp_path, "all-staff@example.co.jp")
    rows = {r.recipient.address: r.to_json() for r in result.recipients}
    assert rows["hanako@example.co.jp"]["list"] == "all-staff@example.co.jp"
    assert rows["hanako@example.co.jp"]["display_name"] == "Hanako"
    assert "list_member" in rows["x@partner.example"]["flags"] and rows["x@partner.example"]["external"]


def test_a_plain_mailbox_gets_no_list_reason(tmp_path):
    result = checks.evaluate(message.parse(make_message(to="hanako@example.co.jp").as_bytes()),
                             load_policy(tmp_path), lists={})
    assert not [r for r in result.reasons if r.rule == "distribution_list"]


# ------------------------------------------------------------------------------- through the product
def setup_exchange(home, fake: FakeEWS, action: str = "confirm") -> None:
    account = ews_account(fake)
    config.save_account(account, home / "config.toml")
    secrets.put(account.secret_key("password"), "secret")
    (home / "policy.toml").write_text(SAMPLE_POLICY.replace("[rules]", f'[rules]\ndistribution_list = "{action}"'),
                                      encoding="utf-8")


def test_smtp_mail_to_an_exchange_list_shows_its_members(home, helper, ews):
    setup_exchange(home, ews)
    h = helper()
    smtp_send(h.smtp.port, make_message(to="all-staff@example.co.jp"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    rows = item.check.by_address
    assert {a for a, r in rows.items() if r.list_address == "all-staff@example.co.jp"} == {
        "hanako@example.co.jp", "sato@example.co.jp", "kato@example.co.jp", "taro@example.co.jp"}
    [reason] = [r for r in item.verdict.reasons if r.rule == "distribution_list"]
    assert reason.target == "all-staff@example.co.jp" and "4 members" in reason.message


def test_block_refuses_a_list_exchange_will_not_expand_and_one_it_could_not_ask(home, helper, ews):
    setup_exchange(home, ews, action="block")
    h = helper()
    smtp_send(h.smtp.port, make_message(to="board@example.co.jp"))
    item = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))[0]
    assert item.verdict.action == "block"
    ews.outage.down()
    smtp_send(h.smtp.port, make_message(to="new-team@example.co.jp", subject="2"))
    second = wait_for(lambda: [i for i in h.outbox.list(["awaiting_confirmation"]) if i.subject == "2"])[0]
    [reason] = [r for r in second.verdict.reasons if r.rule == "distribution_list"]
    assert reason.action == "block" and "could not ask Exchange" in reason.message


def test_intake_never_waits_for_the_directory_before_the_250(home, ews):
    """The SMTP intake checks only with answers already known; the worker asks the directory."""
    from sendguard.service import Helper

    setup_exchange(home, ews)
    h = Helper(home)
    try:
        raw = make_message(to="all-staff@example.co.jp").as_bytes()
        [(item_id, state)] = h.outbox.receive_many([Incoming(raw, "taro@example.co.jp",
                                                             ["all-staff@example.co.jp"])], check=True)
        assert state == "received" and "ExpandDL" not in ews.requests
        assert h.outbox.process(item_id).state == "awaiting_confirmation"
        assert "ExpandDL" in ews.requests
        [(_, again)] = h.outbox.receive_many([Incoming(raw, "taro@example.co.jp", ["all-staff@example.co.jp"])],
                                             check=True)
        assert again == "awaiting_confirmation", "a known answer is used at intake"
    finally:
        h.stop()


def test_expand_lists_must_be_true_or_false(home):
    (home / "config.toml").write_text('[[accounts]]\nname = "w"\nkind = "exchange"\naddress = "a@example.co.jp"\n'
                                      'expand_lists = "yes"\n', encoding="utf-8")
    with pytest.raises(Exception, match="expand_lists is true or false"):
        config.load(home / "config.toml")


def test_sendguard_check_asks_the_directory_as_the_helper_does(home, ews, tmp_path):
    setup_exchange(home, ews)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(to="sales@example.co.jp").as_bytes())
    out = run_cli("check", str(eml), "--json")
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    members = sorted(r["address"] for r in result["recipients"] if r.get("list") == "sales@example.co.jp")
    assert members == ["kato@example.co.jp", "sato@example.co.jp"]


def test_the_cache_stays_bounded(monkeypatch):
    class Plain:
        source, domain = "Exchange", "example.co.jp"

        def expand(self, address):
            return ListLookup(address, False, source=self.source)

        def close(self):
            pass

    monkeypatch.setattr(directory, "MAX_CACHED", 10)
    now = [0.0]
    cache = Directory([Plain()], clock=lambda: now[0])
    for n in range(100):
        now[0] += 1
        cache.lookup([f"u{n}@example.co.jp"])
    assert len(cache._cache) <= 10
    assert "u99@example.co.jp" in cache._cache, "the newest answer is kept"


# ------------------------------------------------------------------- lists Outlook marks as such
def test_a_list_outlook_marks_is_never_one_address_even_without_a_directory(runner, write_policy):
    """The add-in reports Office.js recipientType "distributionList" as {"list": true}: with no account
    that can expand it, the list is one SendGuard cannot see (block refuses it); the note never goes out."""
    import requests

    write_policy(SAMPLE_POLICY.replace("[rules]", '[rules]\ndistribution_list = "block"'))
    r = runner()
    r.app.config["API_TOKEN"] = "tok"
    payload = {"source": "api", "from": {"address": "taro@example.co.jp", "name": "Taro"},
               "to": [{"address": "all-staff@example.co.jp", "name": "All staff", "list": True},
                      {"address": "hanako@example.co.jp", "name": "Hanako"}],
               "subject": "全社連絡", "body": "よろしくお願いします。", "attachments": []}
    created = requests.post(f"{r.base_url}/api/v1/checks", json=payload, timeout=30,
                            headers={"Authorization": "Bearer tok"}).json()
    [reason] = [x for x in created["verdict"]["reasons"] if x["rule"] == "distribution_list"]
    assert reason["target"] == "all-staff@example.co.jp" and reason["action"] == "block"
    assert "members SendGuard cannot see (Outlook marks it as a distribution list" in reason["message"]
    assert created["verdict"]["action"] == "block"

    payload["to"][0].pop("list")  # false-positive guard: the same address unmarked is one internal address
    plain = requests.post(f"{r.base_url}/api/v1/checks", json=payload, timeout=30,
                          headers={"Authorization": "Bearer tok"}).json()
    assert not [x for x in plain["verdict"]["reasons"] if x["rule"] == "distribution_list"]


def test_the_client_note_is_removed_before_release():
    from sendguard import compose, rewrite

    raw, sender, rcpts = compose.from_fields({"from": {"address": "taro@example.co.jp"},
                                              "to": [{"address": "ml@example.co.jp", "list": True}],
                                              "subject": "s", "body": "b"})
    assert message.parse(raw).marked_lists == ("ml@example.co.jp",)
    final, _env, _bcc = rewrite.apply(raw, rewrite.Decision(), rcpts, set(), "<x@y>")
    assert message.LISTS_HEADER.encode() not in final and message.parse(final).marked_lists == ()


def test_an_account_that_cannot_be_set_up_makes_every_lookup_say_why(home):
    broken = Account("work", "exchange", EWS_ADDRESS, {"expand_lists": True})  # neither server nor autodiscover
    found = directory.for_accounts([broken], home)
    assert found is not None
    [answer] = found.lookup(["all-staff@example.co.jp"]).values()
    assert answer.is_list is None and "the account work cannot be used" in answer.why and "server URL" in answer.why


def test_accounts_add_graph_expand_lists_asks_for_the_directory_permission(graph, home):
    from click.testing import CliRunner

    from sendguard.accounts.graph import add_command

    result = CliRunner().invoke(add_command, [
        "--address", GRAPH_ADDRESS, "--tenant", graph.tenant, "--client-id", graph.client_id, "--authority",
        graph.base, "--graph-endpoint", graph.graph_endpoint, "--ca-bundle", str(graph.ca_file), "--expand-lists"])
    assert result.exit_code == 0, result.output
    (account,) = config.load(home / "config.toml").accounts
    assert account.settings["expand_lists"] is True
    assert any("GroupMember.Read.All" in scope for scope in graph.token_scopes.values())
    found = directory.for_accounts([account], home).lookup(["all@contoso.example"])["all@contoso.example"]
    assert found.expanded and len(found.members) == 4


def test_accounts_add_exchange_expand_lists_is_saved(ews, home):
    from click.testing import CliRunner

    from sendguard.accounts.exchange import add_command

    result = CliRunner().invoke(add_command, ["--address", EWS_ADDRESS, "--server", ews.url, "--username", "user",
                                              "--password-stdin", "--expand-lists"], input="secret\n")
    assert result.exit_code == 0, result.output
    (account,) = config.load(home / "config.toml").accounts
    assert account.settings["expand_lists"] is True
    found = directory.for_accounts([account], home).lookup(["sales@example.co.jp"])["sales@example.co.jp"]
    assert [m.address for m in found.members] == ["sato@example.co.jp", "kato@example.co.jp"]
