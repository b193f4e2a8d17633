"""The wrong-customer and forgotten-file rules (policy keys under [rules]), table-driven: each rule id with the cases it must catch and, next to them,
the look-alike cases it must leave alone (false positives are bugs too)."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import SAMPLE_POLICY, make_message

from sendguard import checks, message, policy
from sendguard.errors import ConfigError

PARITY_POLICY = SAMPLE_POLICY.replace("[confirm]", """contacts = ["contacts.csv"]
lists = ["lists.csv"]

[confirm]""") + """
[rules.suppression]
files = ["optout.csv"]
action = "remove"

[[rules.address]]
match = ["*@rival2.example", "ceo@partner.example"]
except = ["press@rival2.example"]
action = "block"
message = "Never mail Rival Inc."

[[rules.address]]
match = ["*@careful.example"]
action = "reconfirm"

[[rules.auto_cc]]
when_recipient = ["*@customer.example"]
bcc = ["archive@example.co.jp"]

[[rules.auto_cc]]
when_keyword = "契約書"
cc = ["legal@example.co.jp"]
"""
CONTACTS = """address,name,company
yamada@acorp.example,山田 太郎,株式会社Aコーポ
*@acorp.example,,株式会社Aコーポ
suzuki@bcorp.example,鈴木 一郎,B社
john.smith@client1.example,John Smith,Client One Inc.
"""
LISTS = """list,member
sales-ml@client.example,a@client.example
sales-ml@client.example,b@client.example
all-staff@example.co.jp,x@example.co.jp
secret-ml@client.example,
"""
OPTOUT = """address
optout@customer.example
*@unsubscribed.example
"""


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    folder = tmp_path_factory.mktemp("parity")
    (folder / "contacts.csv").write_text(CONTACTS, encoding="utf-8")
    (folder / "lists.csv").write_text(LISTS, encoding="utf-8")
    (folder / "optout.csv").write_text(OPTOUT, encoding="utf-8")
    path = folder / "policy.toml"
    path.write_text(PARITY_POLICY, encoding="utf-8")
    return policy.load(path)


def run(pol, history=None, accounts=(), known=(), headers=None, **kw):
    msg = make_message(**kw)
    for name, value in (headers or {}).items():
        msg[name] = value
    return checks.evaluate(message.parse(msg.as_bytes()), pol, set(known), history=history, accounts=accounts)


def pdf(body: bytes = b"") -> bytes:
    return b"%PDF-1.4\n" + body + b"\n%%EOF\n"


def encrypted_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "secret")
    data = bytearray(buf.getvalue())
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(sig) + offset] |= 0x01
    return bytes(data)


THREAD = checks.History(thread_domains=frozenset({"client1.example"}))
CLIENT_HISTORY = checks.History(sent_domains=("client1.example",))
BIG = b"x" * (15 * 1024 * 1024)

# (rule id, kwargs for run, fires?, action when it fires)
CASES = [
    # --- reply_new_domain
    ("reply_new_domain", dict(to=["a@client1.example", "b@other.example"], history=THREAD), True, "confirm"),
    ("reply_new_domain", dict(to=["a@client1.example", "c@example.co.jp"], history=THREAD), False, None),
    ("reply_new_domain", dict(to=["b@other.example"]), False, None),  # not a reply to released mail
    ("reply_new_domain", dict(to=["a@client1.example", "p@partner.example"], history=THREAD), False, None),
    # --- missing_attachment
    ("missing_attachment", dict(body="見積書を添付いたします。"), True, "confirm"),
    ("missing_attachment", dict(body="別添の資料をご確認ください。"), True, "confirm"),
    ("missing_attachment", dict(body="Please find attached the quote."), True, "confirm"),
    ("missing_attachment", dict(body="请查收附件。"), True, "confirm"),
    ("missing_attachment", dict(body="見積書を添付いたします。", attachments=[("q.pdf", pdf(), "application/pdf")]),
     False, None),
    ("missing_attachment", dict(body="お世話になっております。\n\n> 資料を添付します\n"), False, None),
    ("missing_attachment", dict(body="I am attaching no file; we met yesterday."), False, None),
    ("missing_attachment", dict(body="Thanks.\n--\nThis e-mail and any attachments are confidential."), False, None),
    ("missing_attachment", dict(body="よろしくお願いします。\n本メールおよび添付ファイルは機密情報を含みます。"), False,
     None),
    # --- large_attachment
    ("large_attachment", dict(attachments=[("big.bin", BIG, "application/octet-stream")]), True, "confirm"),
    ("large_attachment", dict(attachments=[("small.pdf", pdf(b"x" * 1000), "application/pdf")]), False, None),
    # --- name_mismatch
    ("name_mismatch", dict(to="鈴木 一郎 <suzuki@bcorp.example>", body="山田様\n\nいつもお世話になっております。"),
     True, "confirm"),
    ("name_mismatch", dict(to="suzuki@bcorp.example", body="Dear Mr. Yamada,\n\nThank you."), True, "confirm"),
    ("name_mismatch", dict(to="yamada@acorp.example", body="山田様\n\nいつもお世話になっております。"), False, None),
    ("name_mismatch", dict(to="山田 太郎 <t@x.example>", body="山田さん、こんにちは。"), False, None),
    ("name_mismatch", dict(to="t.yamada@x.example", body="Dear Mr Yamada,\n\nThanks."), False, None),
    ("name_mismatch", dict(to="a@x.example", body="関係者各位\n\nお知らせです。"), False, None),
    ("name_mismatch", dict(to="a@x.example", body="Dear all,\n\nNews."), False, None),
    # --- attachment_name_mismatch
    ("attachment_name_mismatch", dict(to="suzuki@bcorp.example",
                                      attachments=[("Aコーポ様_見積書.pdf", pdf(), "application/pdf")]), True, "confirm"),
    ("attachment_name_mismatch", dict(to="suzuki@bcorp.example",
                                      attachments=[("acorp_quote.xlsx", b"PK\x03\x04", "application/octet-stream")]),
     True, "confirm"),
    ("attachment_name_mismatch", dict(to="yamada@acorp.example",
                                      attachments=[("Aコーポ様_見積書.pdf", pdf(), "application/pdf")]), False, None),
    ("attachment_name_mismatch", dict(to="suzuki@bcorp.example",
                                      attachments=[("見積書.pdf", pdf(), "application/pdf")]), False, None),
    # --- lookalike_domain against contacts and the sent-to history
    ("lookalike_domain", dict(to="x@c1ient1.example", history=CLIENT_HISTORY), True, "approve"),
    ("lookalike_domain", dict(to="x@zeta-trading.example"), False, None),
    ("lookalike_domain", dict(to="x@acorq.example"), True, "approve"),  # contact acorp.example
    ("lookalike_domain", dict(to="x@client1.example", history=CLIENT_HISTORY), False, None),
    # --- unsafe_attachment / encrypted_attachment
    ("unsafe_attachment", dict(attachments=[("invoice.pdf", b"MZ\x90\x00" + b"\0" * 64, "application/pdf")]),
     True, "approve"),
    ("unsafe_attachment", dict(attachments=[("ann\u202efdp.exe", b"MZ" + b"\0" * 64, "application/octet-stream")]),
     True, "approve"),
    ("unsafe_attachment", dict(attachments=[("report.pdf", pdf(), "application/pdf")]), False, None),
    ("unsafe_attachment", dict(attachments=[("photo.jpg", b"\x89PNG\r\n\x1a\n" + b"\0" * 16, "image/jpeg")]),
     False, None),
    ("encrypted_attachment", dict(attachments=[("secret.zip", encrypted_zip(), "application/zip")]), True, "confirm"),
    ("encrypted_attachment", dict(attachments=[("s.pdf", pdf(b"trailer << /Encrypt 5 0 R >>"), "application/pdf")]),
     True, "confirm"),
    ("encrypted_attachment", dict(attachments=[("about-encrypt.pdf", pdf(b"(the /Encrypt key)"), "application/pdf")]),
     False, None),
    # --- sender_account
    ("sender_account", dict(sender="taro.private@gmail.com", to="a@example.co.jp"), True, "confirm"),
    ("sender_account", dict(sender="taro@example.co.jp", to="a@example.co.jp"), False, None),
    ("sender_account", dict(sender="me@mybiz.example", to="a@example.co.jp", accounts=("me@mybiz.example",)),
     False, None),
    # --- distribution_list
    ("distribution_list", dict(to="sales-ml@client.example"), True, "confirm"),
    ("distribution_list", dict(to="sales@client.example"), False, None),
    # --- bulk_unsubscribe
    ("bulk_unsubscribe", dict(to="me@example.co.jp", bcc=[f"u{i}@c{i}.example" for i in range(25)],
                              body="新製品のご案内です。"), True, "confirm"),
    ("bulk_unsubscribe", dict(to="me@example.co.jp", bcc=[f"u{i}@c{i}.example" for i in range(25)],
                              body="新製品のご案内です。\n配信停止はこちら: https://example.co.jp/stop"), False, None),
    ("bulk_unsubscribe", dict(to="me@example.co.jp", bcc=[f"u{i}@c{i}.example" for i in range(25)],
                              body="News", headers={"List-Unsubscribe": "<mailto:stop@example.co.jp>"}), False, None),
    ("bulk_unsubscribe", dict(to="a@partner.example", headers={"Precedence": "bulk"}), True, "confirm"),
    ("bulk_unsubscribe", dict(to=[f"u{i}@c{i}.example" for i in range(5)]), False, None),
    # --- address_rule
    ("address_rule", dict(to="boss@rival2.example"), True, "block"),
    ("address_rule", dict(to="ceo@partner.example"), True, "block"),
    ("address_rule", dict(to="press@rival2.example"), False, None),
    ("address_rule", dict(to="x@careful.example"), True, "reconfirm"),
    ("address_rule", dict(to="ceo2@partner.example"), False, None),
    # --- auto_cc
    ("auto_cc", dict(to="x@customer.example"), True, "allow"),
    ("auto_cc", dict(to="x@partner.example", subject="契約書のご送付"), True, "allow"),
    ("auto_cc", dict(to="x@partner.example"), False, None),
    ("auto_cc", dict(to="x@customer.example", bcc="archive@example.co.jp"), False, None),  # already there
    # --- suppressed
    ("suppressed", dict(to=["optout@customer.example", "ok@customer.example"]), True, "confirm"),
    ("suppressed", dict(to="anyone@unsubscribed.example"), True, "confirm"),
    ("suppressed", dict(to="ok@customer.example"), False, None),
]


@pytest.mark.parametrize("rule,kwargs,fires,action", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_table(pol, rule, kwargs, fires, action):
    result = run(pol, **kwargs)
    fired = [r for r in result.reasons if r.rule == rule]
    if not fires:
        assert not fired, [(r.rule, r.target, r.message) for r in fired]
        return
    assert fired, [(r.rule, r.target) for r in result.reasons]
    assert fired[0].action == action and fired[0].message
    assert checks.ACTION_RANK[result.action] >= checks.ACTION_RANK[action]
    assert {r.rule for r in result.reasons} <= set(checks.RULE_IDS)


def test_every_new_rule_id_has_true_and_false_cases():
    new = {"reply_new_domain", "missing_attachment", "large_attachment", "name_mismatch", "attachment_name_mismatch",
           "unsafe_attachment", "encrypted_attachment", "sender_account", "distribution_list", "bulk_unsubscribe",
           "address_rule", "auto_cc", "suppressed"}
    assert new <= set(checks.RULE_IDS)
    assert {c[0] for c in CASES if c[2]} >= new
    assert {c[0] for c in CASES if not c[2]} >= new


def test_reconfirm_ranks_between_confirm_and_approve():
    ranks = checks.ACTION_RANK
    assert ranks["allow"] < ranks["confirm"] < ranks["reconfirm"] < ranks["approve"] < ranks["block"]
    assert policy.ACTIONS == ("allow", "confirm", "reconfirm", "approve", "block")


def test_address_rule_uses_its_message_and_flags_blocked(pol):
    result = run(pol, to="boss@rival2.example")
    [reason] = [r for r in result.reasons if r.rule == "address_rule"]
    assert reason.message == "Never mail Rival Inc." and result.action == "block"
    assert "blocked" in result.recipients[0].flags


def test_auto_added_recipients_are_listed_with_the_flag(pol):
    data = run(pol, to="x@customer.example").to_json()
    [added] = [r for r in data["recipients"] if "auto_added" in r["flags"]]
    assert added["address"] == "archive@example.co.jp" and added["field"] == "bcc" and not added["external"]


def test_list_members_are_shown_under_the_list(pol):
    data = run(pol, to="sales-ml@client.example").to_json()
    members = [r for r in data["recipients"] if "list_member" in r["flags"]]
    assert [m["address"] for m in members] == ["a@client.example", "b@client.example"]
    assert all(m["list"] == "sales-ml@client.example" and m["field"] == "to" for m in members)


def test_unexpandable_list_is_blocked_under_block(tmp_path):
    (tmp_path / "lists.csv").write_text(LISTS, encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text('[organization]\ninternal_domains = ["example.co.jp"]\nlists = ["lists.csv"]\n'
                    '[rules]\ndistribution_list = "block"\n', encoding="utf-8")
    pol = policy.load(path)
    assert run(pol, to="secret-ml@client.example").action == "block"
    expanded = run(pol, to="sales-ml@client.example")
    assert expanded.action == "confirm"
    assert [r.action for r in expanded.reasons if r.rule == "distribution_list"] == ["confirm"]


def test_suppression_block_action(tmp_path):
    (tmp_path / "optout.csv").write_text(OPTOUT, encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text('[rules.suppression]\nfiles = ["optout.csv"]\naction = "block"\n', encoding="utf-8")
    result = run(policy.load(path), to="optout@customer.example")
    assert result.action == "block" and "suppressed" in result.recipients[0].flags


def test_meeting_attendees_are_recipients(pol):
    msg = EmailMessage()
    msg["From"] = "taro@example.co.jp"
    msg["To"] = "a@example.co.jp"
    msg["Subject"] = "会議"
    msg.set_content("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nORGANIZER:mailto:taro@example.co.jp\r\n"
                    "ATTENDEE;CN=Spy;ROLE=REQ-PARTICIPANT:mailto:spy@rival.example\r\n"
                    "ATTENDEE;CN=\"A\":mailto:a@example.co.jp\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
                    subtype="calendar", params={"method": "REQUEST"})
    result = checks.evaluate(message.parse(msg.as_bytes()), pol, set())
    rows = {r["address"]: r for r in result.to_json()["recipients"]}
    assert rows["spy@rival.example"]["field"] == "attendee"
    assert rows["a@example.co.jp"]["field"] == "to"
    assert result.action == "block"  # rival.example is a blocked domain


def test_reply_thread_headers_are_parsed():
    msg = make_message()
    msg["In-Reply-To"] = "<a@x.example>"
    msg["References"] = "<root@x.example> <a@x.example>"
    assert message.parse(msg.as_bytes()).in_reply_to == ("<a@x.example>", "<root@x.example>")


@pytest.mark.parametrize("files,text,where,key", [
    ({"contacts.csv": "email,who\nx@y.example,X\n"}, '[organization]\ncontacts = ["contacts.csv"]\n',
     "contacts.csv:1", "organization.contacts"),
    ({"contacts.csv": "address,name,company\nnot-an-address,X,Y\n"}, '[organization]\ncontacts = ["contacts.csv"]\n',
     "contacts.csv:2", "organization.contacts"),
    ({}, '[organization]\nlists = ["missing.csv"]\n', "policy.toml:2", "organization.lists"),
    ({"optout.csv": "a@b.example\nbroken\n"}, '[rules.suppression]\nfiles = ["optout.csv"]\n',
     "optout.csv:2", "rules.suppression.files"),
    ({}, '[rules.suppression]\naction = "delete"\n', "policy.toml:2", "rules.suppression.action"),
    ({}, '[[rules.address]]\nmatch = ["*@x.example"]\naction = "warn"\n', "policy.toml:3", "rules.address.action"),
    ({}, '[[rules.address]]\naction = "block"\n', "policy.toml", "rules.address.match"),
    ({}, '[[rules.auto_cc]]\nwhen_keyword = "("\ncc = ["a@b.example"]\n', "policy.toml:2",
     "rules.auto_cc.when_keyword"),
    ({}, '[[rules.auto_cc]]\nwhen_attachment = true\n', "policy.toml", "rules.auto_cc"),
    ({}, '[rules]\nlarge_attachment_mb = "ten"\n', "policy.toml:2", "rules.large_attachment_mb"),
])
def test_bad_data_files_and_tables_are_refused(tmp_path, files, text, where, key):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        policy.load(path)
    assert where in str(info.value) and info.value.key == key


def test_data_files_are_relative_to_the_policy_file_and_shift_jis_is_read(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "contacts.csv").write_bytes(CONTACTS.encode("cp932"))
    (sub / "policy.toml").write_text('[organization]\ncontacts = ["contacts.csv"]\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    pol = policy.load(Path("conf/policy.toml"))
    assert pol.contact_for("yamada@acorp.example").name == "山田 太郎"
    assert pol.contact_for("other@acorp.example").company == "株式会社Aコーポ"


def test_holder_reloads_when_a_data_file_changes(tmp_path):
    (tmp_path / "optout.csv").write_text("a@x.example\n", encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text('[rules.suppression]\nfiles = ["optout.csv"]\n', encoding="utf-8")
    holder = policy.PolicyHolder(path)
    assert holder.reload().suppression.matches("a@x.example")
    import os
    import time

    (tmp_path / "optout.csv").write_text("b@x.example\n", encoding="utf-8")
    later = time.time() + 5
    os.utime(tmp_path / "optout.csv", (later, later))
    assert holder.get().suppression.matches("b@x.example")


@pytest.mark.parametrize("to,history,known,similar", [
    ("x@c1ient1.example", checks.History(), {"client1.example"}, "client1.example"),  # known_domains = history
    ("x@c1ient1.example", checks.History(sent_domains=("c1ient1.example", "client1.example")), set(), None),
    ("x@exarnple.co.jp", checks.History(sent_domains=("exarnple.co.jp",)), {"exarnple.co.jp"}, "example.co.jp"),
    ("x@acorq.example", checks.History(), set(), "acorp.example"),  # a contact's domain
    ("x@acorp.example", checks.History(), set(), None),
])
def test_lookalike_references(pol, to, history, known, similar):
    """Our own domains always count; a customer's domain (contacts, sent-to) unless the domain is one."""
    result = run(pol, to=to, history=history, known=known)
    found = [r for r in result.reasons if r.rule == "lookalike_domain"]
    assert (similar in found[0].message) if similar else not found


@pytest.mark.parametrize("pattern", ["*@xn--r8jz45g.jp", "*@例え.jp", "*@ＸＮ--Ｒ８ＪＺ４５Ｇ.ＪＰ", "k＠例え.jp",
                                     "*@*.xn--r8jz45g.jp|sub"])
@pytest.mark.parametrize("to", ["k@xn--r8jz45g.jp", "k@例え.jp"])
def test_an_address_rule_written_in_punycode_or_full_width_matches(tmp_path, pattern, to):
    """A pattern is compared in the form addresses are: an admin who writes the domain in punycode, or types
    it in full width, gets the rule he wrote instead of one that silently never matches."""
    pattern, _, sub = pattern.partition("|")
    if sub:  # (a non-ASCII domain in a header is written by the test's mail library as an encoded word)
        to = "k@sub.xn--r8jz45g.jp"
    path = tmp_path / "policy.toml"
    path.write_text(f'[[rules.address]]\nmatch = ["{pattern}"]\naction = "block"\n', encoding="utf-8")
    pol = policy.load(path)
    result = checks.evaluate(message.parse(make_message(to=to).as_bytes()), pol)
    assert result.action == "block", (pattern, to, pol.address_rules)
