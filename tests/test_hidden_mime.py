"""Content a mail program does not list yet sends: text outside the parts of a multipart (preamble,
epilogue), a uuencoded file in a text body, and what is wrong inside an attached message."""

from __future__ import annotations

import binascii
import io
import zipfile
from email.message import EmailMessage

import pytest
from conftest import SAMPLE_POLICY, make_message
from test_rules import encrypted_zip

from sendguard import checks, message, notify, policy

CARD = "4111 1111 1111 1111"
HEAD = "From: taro@example.co.jp\nTo: x@partner.example\nSubject: t\nMIME-Version: 1.0\n"
PART = "Content-Type: text/plain; charset=utf-8\n\nいつもお世話になっております。\n"


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    path = tmp_path_factory.mktemp("hidden") / "policy.toml"
    path.write_text(SAMPLE_POLICY, encoding="utf-8")
    return policy.load(path)


def evaluate(pol, raw: bytes) -> checks.CheckResult:
    return checks.evaluate(message.parse(raw), pol, set())


def rules(result: checks.CheckResult) -> set[str]:
    return {r.rule for r in result.reasons}


# ---------------------------------------------------------------- preamble and epilogue

def multipart(preamble: str = "", epilogue: str = "", inner_preamble: str = "") -> bytes:
    inner = (f'Content-Type: multipart/alternative; boundary="in"\n\n{inner_preamble}'
             f"--in\n{PART}--in\nContent-Type: text/html; charset=utf-8\n\n<p>いつも</p>\n--in--\n")
    return (HEAD + 'Content-Type: multipart/mixed; boundary="out"\n\n' + preamble
            + f"--out\n{inner}--out\n" + 'Content-Type: image/png\nContent-Disposition: attachment; '
            'filename="logo.png"\nContent-Transfer-Encoding: base64\n\niVBORw0KGgoAAAANSUhEUgAAAAEAAAAB\n--out--\n' + epilogue).encode()


@pytest.mark.parametrize("where", ["epilogue", "preamble", "inner_preamble"])
def test_a_card_number_outside_the_parts_is_found(pol, where):
    clean = evaluate(pol, multipart())
    assert "personal_data" not in rules(clean) and not clean.problems
    result = evaluate(pol, multipart(**{where: f"Taro {CARD}\n"}))
    assert "personal_data" in rules(result), [r.rule for r in result.reasons]


def test_a_keyword_in_the_epilogue_is_found(pol):
    result = evaluate(pol, multipart(epilogue="これは社外秘です。\n"))
    assert "keyword" in rules(result)


def test_the_usual_preamble_is_only_scanned():
    raw = multipart(preamble="This is a multi-part message in MIME format.\n",
                    epilogue="This is the end of the message.\n")
    parsed = message.parse(raw)
    assert parsed.problems == []
    # not what the message says: no preview, salutation or opt-out reads it
    assert "multi-part" not in parsed.body_text
    assert "multi-part" not in notify.preview_text(raw)


def test_an_opt_out_hidden_in_the_epilogue_does_not_count():
    parsed = message.parse(multipart(epilogue="配信停止はこちら unsubscribe\n"))
    assert "unsubscribe" not in parsed.body_text


def test_a_card_number_in_the_epilogue_of_an_attached_message_is_found(pol):
    result = evaluate(pol, attached(multipart(epilogue=f"Taro {CARD}\n")))
    assert any(r.rule == "personal_data" and r.target == "fwd.eml" for r in result.reasons), result.reasons


def test_a_large_message_keeps_the_epilogue_it_hides(pol):
    """A long run of base64-like lines is cut out before parsing (large messages): one in an epilogue is
    put back before it is scanned."""
    epilogue = "4111111111111111\n" * 40_000
    result = evaluate(pol, multipart(epilogue=epilogue))
    assert "personal_data" in rules(result)


# ---------------------------------------------------------------- uuencoded files in a text body

def uuencode(name: str, data: bytes, *, strip: bool = False) -> str:
    lines = [binascii.b2a_uu(data[i : i + 45], backtick=not strip).decode() for i in range(0, len(data), 45)]
    if strip:  # a mail server that drops trailing spaces
        lines = [line.rstrip() + "\n" for line in lines]
    return f"begin 644 {name}\n" + "".join(lines) + "`\nend\n"


CSV = ("name,card\n" + f"Taro Yamada,{CARD}\n" * 3).encode()


def text_message(body: str) -> bytes:
    return (HEAD + "Content-Type: text/plain; charset=us-ascii\n\n" + body).encode()


@pytest.mark.parametrize("strip, crlf", [(False, False), (True, False), (False, True)])
def test_a_uuencoded_file_in_the_body_is_a_problem_and_is_checked(pol, strip, crlf):
    raw = text_message("Please find the list below.\n\n" + uuencode("名簿.csv", CSV, strip=strip) + "\nThanks\n")
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    assert CARD.encode() not in raw
    parsed = message.parse(raw)
    assert any("名簿.csv" in p and "uuencoded" in p for p in parsed.problems), parsed.problems
    result = checks.evaluate(parsed, pol, set())
    assert "personal_data" in rules(result)
    assert result.action == "approve"


def test_a_uuencoded_file_with_bad_lines_is_still_read(pol):
    block = uuencode("list.csv", CSV).splitlines(keepends=True)
    block.insert(2, "this line is no uuencode at all, é\n")
    parsed = message.parse(text_message("see below\n" + "".join(block)))
    assert any("list.csv" in p for p in parsed.problems), parsed.problems
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_a_uuencoded_keyword_and_a_harmless_file(pol):
    raw = text_message(uuencode("memo.txt", "社外秘の資料\n".encode()))
    result = evaluate(pol, raw)
    assert "keyword" in rules(result)
    assert any("memo.txt" in p for p in result.message.problems)


def test_many_uuencoded_files_are_all_read_and_counted(pol):
    files = [uuencode(f"f{i}.txt", b"hello\n") for i in range(30)] + [uuencode("last.csv", CSV)]
    parsed = message.parse(text_message("".join(files)))
    assert len(parsed.problems) == 11 and "21 more uuencoded files" in parsed.problems[-1], parsed.problems
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_the_word_begin_is_no_uuencoded_file():
    parsed = message.parse(text_message("We begin at 10.\nbegin the meeting\nbegin 644\nend\n"))
    assert parsed.problems == []


# ---------------------------------------------------------------- problems inside attached messages

def attached(inner: bytes, name: str = "fwd.eml") -> bytes:
    msg = make_message(to="x@partner.example")
    msg.add_attachment(inner, maintype="message", subtype="rfc822", filename=name)
    return msg.as_bytes()


BROKEN = (b"From: a@example.co.jp\nTo: b@example.co.jp\nSubject: fwd\nMIME-Version: 1.0\n"
          b"Content-Type: multipart/mixed\n\n--b\nContent-Type: text/plain\n\nhello\n--b--\n")


def test_a_broken_multipart_inside_an_attached_message_holds_the_message(pol, helper, write_policy):
    parsed = message.parse(attached(BROKEN))
    assert any(p.startswith("in fwd.eml: ") and "has no boundary parameter" in p for p in parsed.problems), \
        parsed.problems
    # internal mail the rules alone would let go: the helper holds it for the user, saying why
    from conftest import smtp_send, wait_for

    write_policy()
    h = helper()
    msg = make_message(to="hanako@example.co.jp", subject="fwd inside")
    msg.add_attachment(BROKEN, maintype="message", subtype="rfc822", filename="fwd.eml")
    smtp_send(h.smtp.port, msg)
    [item] = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))
    assert any(p.startswith("in fwd.eml: ") for p in item.check.problems), item.check.problems


def test_a_uuencoded_file_inside_an_attached_message(pol):
    inner = (b"From: a@example.co.jp\nTo: b@example.co.jp\nSubject: fwd\n\n"
             + uuencode("list.csv", CSV).encode())
    parsed = message.parse(attached(inner))
    assert any(p.startswith("in fwd.eml: ") and "list.csv" in p for p in parsed.problems), parsed.problems
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_a_message_in_a_zip_brings_its_problems():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("fwd.eml", BROKEN)
    msg = make_message(to="x@partner.example", attachments=[("pack.zip", buf.getvalue(), "application/zip")])
    parsed = message.parse(msg.as_bytes())
    assert any(p.startswith("in pack.zip: in fwd.eml: ") and "no boundary" in p for p in parsed.problems), \
        parsed.problems


def test_an_attached_message_without_sender_or_recipients_is_no_problem():
    """Its headers say nothing about what the outer message carries: only its content counts."""
    inner = EmailMessage()
    inner["Subject"] = "draft"
    inner.set_content("no numbers here")
    parsed = message.parse(attached(inner.as_bytes()))
    assert parsed.problems == []


@pytest.mark.parametrize("name, data, rule", [
    ("tool.exe", b"MZ\x90\x00" + b"\x00" * 200, "unsafe_attachment"),
    ("invoice.pdf", b"MZ\x90\x00" + b"\x00" * 200, "unsafe_attachment"),  # a program under a document's name
    ("見積.zip", encrypted_zip(), "encrypted_attachment"),  # PPAP, uuencoded
])
def test_a_uuencoded_program_or_locked_file_gets_the_rule_an_attached_one_gets(pol, name, data, rule):
    """Uuencoding a program (or a password-protected zip) into the body must not lower what the policy asks
    for it: the same rule as for the file attached, with the policy's action (approval for a program under
    SAMPLE_POLICY's defaults), not only the confirmation every uuencoded file gets."""
    attached = checks.evaluate(message.parse(make_message(to="x@partner.example", attachments=[
        (name, data, "application/octet-stream")]).as_bytes()), pol, set())
    [expected] = [r for r in attached.reasons if r.rule == rule]
    result = evaluate(pol, text_message("see below\n" + uuencode(name, data)))
    [found] = [r for r in result.reasons if r.rule == rule]
    assert found.action == expected.action and found.target == name
    assert policy.ACTIONS.index(result.action) >= policy.ACTIONS.index(expected.action)


def test_a_locked_zip_uuencoded_in_a_forwarded_message_is_a_locked_attachment(pol):
    """As a password-protected file attached to the forwarded message would be: the .eml carries it."""
    inner = (b"From: a@example.co.jp\nTo: b@example.co.jp\nSubject: fwd\n\n"
             + uuencode("pw.zip", encrypted_zip()).encode())
    result = evaluate(pol, attached(inner))
    assert [r.target for r in result.reasons if r.rule == "encrypted_attachment"] == ["fwd.eml"]


@pytest.mark.parametrize("how", ["attached", "uuencoded"])
def test_a_program_inside_a_forwarded_message_is_a_program_sent(pol, how):
    """As for a zip (a program inside is a program sent): forwarding a program inside an .eml must not
    lower the approval the policy asks for it to the confirmation of an ordinary attachment."""
    program = b"MZ\x90\x00" + b"\x00" * 200
    if how == "attached":
        inner = make_message(to="b@example.co.jp", attachments=[("tool.exe", program, "application/octet-stream")])
        inner_bytes = inner.as_bytes()
    else:
        inner_bytes = (b"From: a@example.co.jp\nTo: b@example.co.jp\nSubject: fwd\n\n"
                       + uuencode("tool.exe", program).encode())
    result = evaluate(pol, attached(inner_bytes))
    assert [(r.target, r.action) for r in result.reasons if r.rule == "unsafe_attachment"] == [("fwd.eml", "approve")]
    assert "executable" in result.attachments[0].flags
