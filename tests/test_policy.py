"""Table-driven policy tests: every recipient flag, attachment flag and rule id of `sendguard check --json`."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from conftest import SAMPLE_POLICY, make_message

from sendguard import checks, detect, message, policy
from sendguard.errors import ConfigError


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    path = tmp_path_factory.mktemp("p") / "policy.toml"
    path.write_text(SAMPLE_POLICY, encoding="utf-8")
    return policy.load(path)


def run(pol, known=(), **kw):
    raw = make_message(**kw).as_bytes()
    return checks.evaluate(message.parse(raw), pol, set(known))


def encrypted_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "secret")
    data = bytearray(buf.getvalue())
    # set the "encrypted" general-purpose flag bit in the local and central headers
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(sig)
        offset = 6 if sig == b"PK\x03\x04" else 8
        data[at + offset] |= 0x01
    return bytes(data)


def plain_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


RECIPIENT_CASES = [
    # (to, known domains, address, expected flags)
    ("x@partner.example", {"partner.example"}, "x@partner.example", ["external", "trusted"]),
    ("x@sub.partner.example", set(), "x@sub.partner.example", ["external", "trusted"]),
    ("x@example.co.jp", set(), "x@example.co.jp", []),
    ("x@mail.example.co.jp", set(), "x@mail.example.co.jp", []),
    ("x@customer.example", set(), "x@customer.example", ["external", "new_domain"]),
    ("x@customer.example", {"customer.example"}, "x@customer.example", ["external"]),
    ("x@exarnple.co.jp", {"exarnple.co.jp"}, "x@exarnple.co.jp", ["external", "lookalike"]),
    ("x@examp1e.co.jp", {"examp1e.co.jp"}, "x@examp1e.co.jp", ["external", "lookalike"]),
    ("x@example.com", {"example.com"}, "x@example.com", ["external", "lookalike"]),
    ("x@exаmple.co.jp", {"exаmple.co.jp"}, "x@exаmple.co.jp", ["external", "lookalike", "idn"]),
    ("x@partner-example.com", {"partner-example.com"}, "x@partner-example.com", ["external"]),
    ('"boss@example.co.jp" <x@evil.example>', {"evil.example"}, "x@evil.example",
     ["external", "display_name_mismatch"]),
    ('"x@ok.example" <x@ok.example>', {"ok.example"}, "x@ok.example", ["external"]),
    ("x@rival.example", set(), "x@rival.example", ["external", "blocked"]),
    ("x@例え.jp", {"例え.jp"}, "x@例え.jp", ["external", "idn"]),
    ("x@xn--r8jz45g.jp", {"例え.jp"}, "x@例え.jp", ["external", "idn"]),
]


@pytest.mark.parametrize("to,known,address,flags", RECIPIENT_CASES)
def test_recipient_flags(pol, to, known, address, flags):
    result = run(pol, known=known, to=to)
    [rcpt] = [r for r in result.recipients if r.recipient.address == address]
    assert rcpt.flags == flags


RULE_CASES = [
    # (kwargs, rule id, action expected for that rule, verdict)
    (dict(to="x@customer.example"), "external_recipients", "confirm", "confirm"),
    (dict(to="x@customer.example"), "new_domain", "confirm", "confirm"),
    (dict(to="x@partner.example", attachments=[("a.pdf", b"%PDF-1.4", "application/pdf")]),
     "external_attachment", "confirm", "confirm"),
    (dict(to=[f"u{i}@c{i}.example" for i in range(10)]), "many_external_recipients", "confirm", "confirm"),
    (dict(to="x@partner.example", body="カード 4111 1111 1111 1111 です"), "personal_data", "approve", "approve"),
    (dict(to="x@partner.example", body="マイナンバー 1234-5678-9018"), "personal_data", "approve", "approve"),
    (dict(to="x@partner.example", attachments=[("list.csv", b"name,card\nA,5555555555554444\n", "text/csv")]),
     "personal_data", "approve", "approve"),
    (dict(to="x@exarnple.co.jp"), "lookalike_domain", "approve", "approve"),
    (dict(to='"boss@example.co.jp" <x@evil.example>'), "display_name_mismatch", "confirm", "confirm"),
    (dict(to="x@rival.example"), "blocked_domain", "block", "block"),
    (dict(to="x@partner.example", subject="【社外秘】資料"), "keyword", "approve", "approve"),
    (dict(to="x@partner.example", attachments=[("社外秘_計画.txt", b"plan", "text/plain")]),
     "keyword", "approve", "approve"),
]


@pytest.mark.parametrize("kwargs,rule,action,verdict", RULE_CASES)
def test_rules(pol, kwargs, rule, action, verdict):
    result = run(pol, **kwargs)
    fired = [r for r in result.reasons if r.rule == rule]
    assert fired, [r.rule for r in result.reasons]
    assert fired[0].action == action
    assert fired[0].message
    assert result.action == verdict
    assert set(r.rule for r in result.reasons) <= set(checks.RULE_IDS)


def test_every_rule_id_is_covered():
    # the wrong-customer/forgotten-file rules have their own table
    from test_rules import CASES as PARITY_CASES

    assert {case[1] for case in RULE_CASES} | {case[0] for case in PARITY_CASES} == set(checks.RULE_IDS)


def test_internal_only_is_allow(pol):
    result = run(pol, to="a@example.co.jp", cc="b@dev.example.co.jp")
    assert result.action == "allow" and result.reasons == []


def test_approvers_resolved_by_route(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(SAMPLE_POLICY + '\n[[approval.route]]\nsenders = ["*@sales.example.co.jp"]\n'
                    'approvers = ["lead@example.co.jp"]\n', encoding="utf-8")
    pol = policy.load(path)
    result = run(pol, to="x@exarnple.co.jp", sender="s@sales.example.co.jp")
    assert result.action == "approve" and result.approvers == ["lead@example.co.jp"]
    result = run(pol, to="x@exarnple.co.jp")
    assert result.approvers == ["boss@example.co.jp"]


ATTACHMENT_CASES = [
    ("report.pdf", b"%PDF-1.7 ...", "application/pdf", ["external"]),
    ("setup.exe", b"MZ\x90\x00" + b"\0" * 64, "application/octet-stream", ["external", "executable"]),
    ("invoice.pdf", b"MZ\x90\x00" + b"\0" * 64, "application/pdf", ["external", "executable", "type_mismatch"]),
    ("photo.jpg", b"%PDF-1.4 not a jpeg", "image/jpeg", ["external", "type_mismatch"]),
    ("files.zip", plain_zip(), "application/zip", ["external", "archive"]),
    ("secret.zip", encrypted_zip(), "application/zip", ["external", "archive", "encrypted"]),
    ("doc.docx", plain_zip(), "application/vnd.openxmlformats", ["external"]),
    ("list.csv", b"name\n4111111111111111\n", "text/csv", ["external", "personal_data"]),
    ("memo_社外秘.txt", b"x", "text/plain", ["external", "keyword"]),
    ("ann\u202efdp.exe", b"MZ" + b"\0" * 64, "application/octet-stream", ["external", "executable"]),
]


@pytest.mark.parametrize("name,data,ctype,flags", ATTACHMENT_CASES)
def test_attachment_flags(pol, name, data, ctype, flags):
    result = run(pol, to="x@partner.example", attachments=[(name, data, ctype)])
    [att] = result.attachments
    assert att.flags == flags


def test_inline_flag_and_no_external_flag_for_inline(pol):
    msg = make_message(to="x@partner.example")
    msg.add_related(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, maintype="image", subtype="png", cid="<logo>",
                    disposition="inline")
    result = checks.evaluate(message.parse(msg.as_bytes()), pol, set())
    [att] = result.attachments
    assert att.flags == ["inline"]


def test_every_flag_is_covered():
    rflags = {f for case in RECIPIENT_CASES for f in case[3]} | {"auto_added", "list_member", "suppressed"}
    aflags = {f for case in ATTACHMENT_CASES for f in case[3]} | {"inline"}
    assert rflags == set(checks.RECIPIENT_FLAGS)
    assert aflags == set(checks.ATTACHMENT_FLAGS)


@pytest.mark.parametrize("text,kinds", [
    ("4111 1111 1111 1111", ["card_number"]),
    ("4111-1111-1111-1111", ["card_number"]),
    ("４１１１１１１１１１１１１１１１", ["card_number"]),
    ("4111 1111 1111 1112", []),  # fails Luhn
    ("1234567890123456", []),
    ("0000000000000000", []),
    ("order 20241125123456789", []),  # longer digit run, not a card
    ("123456789018", ["my_number"]),
    ("1234 5678 9018", ["my_number"]),
    ("123456789012", []),  # wrong check digit
    ("tel 0312345678", []),
    ("", []),
])
def test_personal_data_detection(text, kinds):
    assert detect.personal_data_kinds(text) == kinds


@pytest.mark.parametrize("domain,known,expected", [
    ("example.co.jp", ["example.co.jp"], None),
    ("sub.example.co.jp", ["example.co.jp"], None),
    ("exarnple.co.jp", ["example.co.jp"], "example.co.jp"),
    ("examp1e.co.jp", ["example.co.jp"], "example.co.jp"),
    ("example.jp", ["example.co.jp"], "example.co.jp"),
    ("example.com", ["example.co.jp"], "example.co.jp"),
    ("exampel.co.jp", ["example.co.jp"], "example.co.jp"),
    ("еxample.co.jp", ["example.co.jp"], "example.co.jp"),  # Cyrillic е
    ("totally-different.com", ["example.co.jp"], None),
    ("partner.example", ["example.co.jp", "partner.example"], None),
    ("google.com", ["example.co.jp"], None),
    # edits that change the length, up to the limit (1 under 8 letters, 2 from 8), and one past it
    ("exampl.co.jp", ["example.co.jp"], "example.co.jp"),
    ("examplee.co.jp", ["example.co.jp"], "example.co.jp"),
    ("exampleee.co.jp", ["example.co.jp"], None),
    ("torihikisak.com", ["torihikisaki.com"], "torihikisaki.com"),
    ("torihikisakiii.com", ["torihikisaki.com"], "torihikisaki.com"),
    ("torihikisakiiii.com", ["torihikisaki.com"], None),
    # across the label/suffix boundary: one letter more or fewer in the whole name
    ("example-co.jp", ["example.co.jp"], "example.co.jp"),
    ("exampleco.jp", ["example.co.jp"], "example.co.jp"),
])
def test_lookalike(domain, known, expected):
    assert detect.lookalike_of(domain, known) == expected


# ------------------------------------------------------------------ policy files

@pytest.mark.parametrize("text,line,key,words", [
    ('[confirm]\nwhen = "sometimes"\n', 2, "confirm.when", "not one of"),
    ('[rules]\nmany_external_recipients = "ten"\n', 2, "rules.many_external_recipients", "whole number"),
    ('[rules]\nfoo = 1\n', 2, "rules.foo", "unknown setting"),
    ('[organisation]\ninternal_domains = []\n', 1, "organisation", "unknown section"),
    ('[organization]\ninternal_domains = ["not a domain"]\n', 2, "organization.internal_domains", "not a domain"),
    ('[confirm\nwhen = "always"\n', 1, None, "TOML syntax error"),
    ('[[rules.keywords]]\npattern = "(unclosed"\n', 2, "rules.keywords.pattern", "bad regular expression"),
    ('[approval]\napprovers = ["boss"]\n', 2, "approval.approvers", "not an email address"),
])
def test_bad_policy_names_file_line_and_key(tmp_path, text, line, key, words):
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        policy.load(path)
    err = info.value
    assert err.path == str(path) and err.line == line and err.key == key
    assert words in str(err) and str(path) in str(err)


def test_last_good_policy_stays_in_force(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[confirm]\nwhen = "always"\n', encoding="utf-8")
    holder = policy.PolicyHolder(path)
    assert holder.reload().confirm_when == "always"
    path.write_text('[confirm]\nwhen = "bogus"\n', encoding="utf-8")
    import os

    os.utime(path, ns=(1, 1))
    assert holder.get().confirm_when == "always"
    assert holder.last_error is not None and "bogus" in str(holder.last_error)


def test_admin_locked_keys_override_user(tmp_path):
    admin = tmp_path / "admin.toml"
    admin.write_text('locked = ["rules.*"]\n[rules]\nexternal_attachment = "approve"\n'
                     '[confirm]\nwhen = "always"\n[approval]\napprovers = ["boss@example.co.jp"]\n', encoding="utf-8")
    user = tmp_path / "user.toml"
    user.write_text('[rules]\nexternal_attachment = "confirm"\n[confirm]\nwhen = "external"\n', encoding="utf-8")
    pol = policy.load(user, admin)
    assert pol.external_attachment == "approve"  # locked: admin wins
    assert pol.confirm_when == "external"  # not locked: the user's choice


def test_never_downgrades_confirm_but_not_approve(tmp_path):
    path = Path(tmp_path / "p.toml")
    path.write_text('[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "never"\n'
                    '[rules]\nlookalike_domain = "approve"\n[approval]\napprovers = ["boss@example.co.jp"]\n',
                    encoding="utf-8")
    pol = policy.load(path)
    assert run(pol, to="x@customer.example").action == "allow"
    assert run(pol, to="x@exarnple.co.jp").action == "approve"


def test_locked_key_the_admin_did_not_set_keeps_the_default(tmp_path):
    admin = tmp_path / "admin.toml"
    admin.write_text('locked = ["confirm.when"]\n', encoding="utf-8")
    user = tmp_path / "user.toml"
    user.write_text('[confirm]\nwhen = "never"\n', encoding="utf-8")
    assert policy.load(user, admin).confirm_when == "external"


def test_admin_policy_found_in_any_xdg_config_dir(tmp_path, monkeypatch):
    from sendguard import paths

    first, second = tmp_path / "xdg-ubuntu", tmp_path / "xdg"
    (second / "SendGuard").mkdir(parents=True)
    (second / "SendGuard" / "policy.toml").write_text("", encoding="utf-8")
    monkeypatch.delenv("SENDGUARD_ADMIN_POLICY")
    monkeypatch.setenv("XDG_CONFIG_DIRS", f"{first}:{second}")
    assert paths.admin_policy_file() == second / "SendGuard" / "policy.toml"


@pytest.mark.parametrize("rules", ['personal_data = "approve"', '[[rules.keywords]]\npattern = "x"\naction = "approve"'])
def test_approve_without_any_approver_is_refused_with_the_key(tmp_path, rules):
    """Issue #11 item 10: a rule set to approve with nobody to approve is a dead end: refused at load."""
    path = tmp_path / "p.toml"
    path.write_text(f"[organization]\ninternal_domains = [\"example.co.jp\"]\n[rules]\n{rules}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        policy.load(path)
    assert info.value.key in ("rules.personal_data", "rules.keywords")
    assert info.value.line is not None and "approvers" in str(info.value)
    path.write_text(path.read_text() + '[approval]\napprovers = ["boss@example.co.jp"]\n', encoding="utf-8")
    assert policy.load(path).approvers == ("boss@example.co.jp",)


@pytest.mark.parametrize("key", ["internal_domains", "trusted_domains"])
@pytest.mark.parametrize("suffix", ["co.jp", "*.co.jp", "ne.jp", "github.io", "com.cn"])
def test_a_public_suffix_is_refused_as_our_own_domain(tmp_path, key, suffix):
    """internal_domains = ["co.jp"] would make every company in Japan internal: their mail would pass
    unconfirmed. Refused with the file, line and key; blocked_domains may still name a whole suffix."""
    path = tmp_path / "policy.toml"
    path.write_text(f'[organization]\n{key} = ["example.co.jp", "{suffix}"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"policy.toml:2 \[organization.{key}\].*public suffix"):
        policy.load(path)
    path.write_text(f'[organization]\n{key} = ["example.co.jp"]\n[rules]\nblocked_domains = ["{suffix}"]\n',
                    encoding="utf-8")
    policy.load(path)
