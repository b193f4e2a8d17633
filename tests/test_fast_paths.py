"""The shortcuts taken for speed give exactly what the general code gives.

Intake checks every message before its ``250``; a few of its steps take shortcuts for the common case
(``sendguard.message._simple_addresses`` for plain address headers, ``sendguard.message._single_part``
for the header block of a single-part message, the digit-first patterns of ``sendguard.detect`` for card
and My Number numbers). A wrong shortcut would let a recipient or a card
number slip past the policy, so each is compared here with the code it stands in for, over generated
input built to hit the edges (quotes, comments, groups, odd spaces, separators, digits glued together).
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sendguard import detect, message

# ------------------------------------------------------------------ address headers

_WORDS = st.sampled_from(["taro", "Hanako", "jiro.s", "a", "x-y", "o'neil", "T.", "=", "?", "~", "ab_c", "9"])
_SPECIALS = st.sampled_from([" ", "\t", ",", "<", ">", "@", ".", '"', "(", ")", ":", ";", "[", "]", "\\",
                             "\r\n ", "\u00e9", "=?", "  ", ""])


@st.composite
def _address(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(_WORDS, min_size=1, max_size=3)))
    domain = ".".join(draw(st.lists(st.sampled_from(["example", "co", "jp", "partner", "x-1"]),
                                    min_size=1, max_size=3)))
    return f"{local}@{domain}"


@st.composite
def _element(draw: st.DrawFn) -> str:
    addr = draw(_address())
    space = draw(st.sampled_from(["", " ", "  ", "\t", " \t "]))
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return f"{space}{addr}{space}"
    if shape == 1:
        return f"{space}<{addr}>{space}"
    name = draw(st.sampled_from([" ", "  ", "\t"])).join(draw(st.lists(_WORDS, min_size=1, max_size=3)))
    return f"{space}{name}{draw(st.sampled_from(['', ' ', '  ']))}<{addr}>{space}"


@st.composite
def _header_value(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_element(), min_size=1, max_size=4))
    value = ",".join(parts)
    for _ in range(draw(st.integers(0, 2))):  # now and then something the shortcut must not take
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(_SPECIALS) + value[at:]
    return value


@settings(max_examples=3000, deadline=None)
@given(_header_value())
@example("Hanako <hanako@partner.example>, jiro@example.co.jp")
@example("a@b,")
@example("Taro  Yamada\t<t@x.example>")
@example("T. Yamada <t@x.example>")
@example("a.@b")
@example('"Yamada, Taro" <t@x.example>')
@example("team: a@b, c@d;")
@example("a@b (Taro)")
def test_plain_address_headers_read_as_the_email_package_reads_them(value: str) -> None:
    simple = message._simple_addresses(value)
    if simple is not None:
        assert simple == email.utils.getaddresses([value])


def test_the_shortcut_is_taken_for_the_common_shapes() -> None:
    # (a test that could not fail if the shortcut were never taken would prove nothing above)
    for value in ("Hanako <hanako@partner.example>, jiro@example.co.jp", "<a@b.example>", "T. Y <t@x.jp>",
                  "a@b.c,\td@e.f"):
        assert message._simple_addresses(value) is not None, value
    for value in ('"Yamada, Taro" <t@x.jp>', "a@b (c)", "g: a@b;", "a@b,", "=?utf-8?q?x?= <a@b>", "\u5c71 <a@b>",
                  "a @b", "a@b c@d"):
        assert message._simple_addresses(value) is None, value


@settings(max_examples=500, deadline=None)
@given(st.lists(_header_value(), min_size=1, max_size=3), st.sampled_from(["To", "Cc", "From"]))
def test_parsed_recipients_are_the_same_either_way(values: list[str], name: str) -> None:
    raw = "".join(f"{name}: {v}\r\n" for v in values) + "Subject: s\r\n\r\nbody\r\n"
    msg = email.message_from_string(raw, policy=email.policy.compat32)
    general = [pair for v in msg.get_all(name) or [] for pair in email.utils.getaddresses([message._unfold(v)])]
    if all("=?" not in v for v in msg.get_all(name) or []):
        assert message._header_addresses(msg, name) == general
        assert message._header_addresses(msg, name, message.header_index(msg)) == general  # as ``parse`` reads


# ------------------------------------------------------------------ card and My Number numbers

# the patterns as first written, looking behind before the first digit at every position
_CARD_BEFORE = re.compile(r"(?<![\d-])(?<!\d )(?:\d[ -]?){12,18}\d(?!\d)(?![ -]\d)")
_MYNUMBER_BEFORE = re.compile(r"(?<![\d-])(?<!\d )(\d{4})([ -]?)(\d{4})\2(\d{4})(?!\d)(?![ -]\d)")

_NUMBERISH = st.lists(st.sampled_from(list("0123456789 -\n a") + ["\u0661", "\uff11", "--", "  ", "4111", "1234",
                                                                    "5678 ", "0000-"]),
                      max_size=40).map("".join)


@settings(max_examples=3000, deadline=None)
@given(_NUMBERISH)
@example("4111 1111 1111 1111")
@example("1-4111111111111111")
@example("9 4111111111111111")
@example("123456789012 -4")
@example("1234-5678-9012")
def test_digit_first_patterns_match_what_the_first_ones_matched(text: str) -> None:
    assert [(m.span(), m.groups()) for m in detect._CARD_RE.finditer(text)] == \
        [(m.span(), m.groups()) for m in _CARD_BEFORE.finditer(text)]
    assert [(m.span(), m.groups()) for m in detect._MYNUMBER_RE.finditer(text)] == \
        [(m.span(), m.groups()) for m in _MYNUMBER_BEFORE.finditer(text)]


# ------------------------------------------------------------------ which parts are attachments

_CONTENT_TYPES = ["", "text/plain", "text/plain; charset=utf-8", "text/html; NAME=a.html", "message/rfc822",
                  "application/pdf", 'application/pdf; name="a.pdf"', "image/png; name*=utf-8''%E3%81%82.png",
                  'text/plain; name=" "', "Message/RFC822; charset=x", "multipart/mixed; boundary=b"]
_DISPOSITIONS = [None, "", "inline", "attachment", 'attachment; filename="a.txt"', "INLINE; filename=b", "inline; size=3"]


@pytest.mark.parametrize(("content_type", "disposition"), itertools.product(_CONTENT_TYPES, _DISPOSITIONS))
def test_body_parts_are_told_from_attachments_as_before(content_type: str, disposition: str | None) -> None:
    head = (f"Content-Type: {content_type}\r\n" if content_type else "") + \
        (f"Content-Disposition: {disposition}\r\n" if disposition is not None else "")
    part = email.message_from_string(head + "\r\nx\r\n", policy=email.policy.compat32)
    assert message._is_attachment(part) == message._is_attachment_in_full(part)


# ------------------------------------------------------------------ the sender's own text

_BODY_PIECES = st.sampled_from([
    "いつもお世話になっております。", "\n", "\r\n", " ", "> quoted", "| quoted", "-- ", "--", "-----Original Message-----",
    "---- 元のメッセージ ----", "On Mon, 1 Dec 2026, Taro wrote:", "ON MON TARO WROTE:", "From: a@b", "FROM:\tx",
    "from:x", "差出人: 山田", "发件人: 李", "山田さんは書きました:", "2026/12/01 のメッセージ", "資料を添付します", "Attached",
    "ATTACHMENT", "find attached", "附件", "İ", "ſ", "K", "wrote", "fro", "m:", "添付なし", "機密", "CONFIDENTIAL",
])


@settings(max_examples=2000, deadline=None)
@given(st.lists(_BODY_PIECES, max_size=12).map("".join))
def test_bodies_passed_over_by_the_quick_look_hold_nothing_the_patterns_find(body: str) -> None:
    from sendguard.rules import content

    if content._QUOTE_START.search(body) is not None:
        assert any(mark in body.lower() for mark in content._QUOTE_MARKS), body
    _regex, words = content._attachment_regex(())
    lowered_words = [w.lower() for w in content.ATTACHMENT_WORDS]
    lowered = body.lower()
    assert (words.search(lowered) is not None) == any(w in lowered for w in lowered_words)


# ------------------------------------------------------------------ the header block of a single part

# mostly the shapes the quick read takes, now and then one it must leave to the email package
_CLEAN_NAMES = st.sampled_from(["From", "To", "Cc", "Subject", "Content-Type", "Content-Transfer-Encoding", "X-a",
                                "MIME-Version"])
_ODD_NAMES = st.sampled_from(["From ", "", " To", "To ", "Re:ply", "Sub\x0cject", "\u00c4", "x\ty"])
_CLEAN_PIECES = st.sampled_from([
    "taro@example.co.jp", "Taro <taro@example.co.jp>", " ", "\t", "", "text/plain; charset=utf-8", "8bit",
    "multipart/mixed; boundary=b", "message/rfc822", "message/delivery-status", "multipart/alternative",
    "text/html", "=?utf-8?b?6YCx5qyh?=", ":", "a:b", "From x", "~!#"])
_ODD_PIECES = st.sampled_from(["\r", "\n", "\r\n", "\r\n ", "\n\t", "\r\n\r\n", "\x0b", "\x0c", "\x1c", "\x85",
                               "\u2028", "\u00e9", "\x00", "\x7f"])
_BODIES = st.sampled_from([b"", b"body\r\n", b"line\nline\r\n", b"\r\n\r\n", b"\xe3\x81\x82\r\n",
                           b"--b\r\nX: y\r\n\r\nz\r\n--b--\r\n", b"\r", b"From me\r\n", b"a\rb\r\n",
                           b"\x0c\x1c\x85\r\n", b"x" * 9000 + b"\r\n"])


@st.composite
def _value(draw: st.DrawFn) -> str:
    odd = draw(st.integers(0, 29)) == 0
    return "".join(draw(st.lists(st.one_of(_CLEAN_PIECES, _ODD_PIECES) if odd else _CLEAN_PIECES, max_size=4)))


@st.composite
def _raw_message(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(_ODD_NAMES if draw(st.integers(0, 19)) == 0 else _CLEAN_NAMES)
        lines.append(f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{draw(_value())}")
        if draw(st.booleans()):  # folded
            lines[-1] += draw(st.sampled_from(["\r\n ", "\n\t", "\r\n\t ", "\r\n  "])) + draw(_value())
    if draw(st.integers(0, 9)) == 0:  # now and then a line that is no field, or a unix From line first
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["no field", "From a@b Mon", " lead", ""])))
    end = draw(st.sampled_from(["\r\n", "\n"]))
    head = "".join(line + (draw(st.sampled_from(["\r\n", "\n", "\r"])) if draw(st.integers(0, 19)) == 0 else end)
                   for line in lines)
    separator = draw(st.sampled_from([end] * 6 + ["", "\r", " \r\n"]))
    return head.encode("utf-8", "surrogatepass") + separator.encode() + draw(_BODIES)


def _as_parsed(msg: email.message.Message) -> dict[str, object]:
    state = dict(vars(msg))
    state["defects"] = [(type(d), str(d)) for d in msg.defects]
    return state


@settings(max_examples=3000, deadline=None)
@given(_raw_message())
@example(b"From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\nbody\r\n")
@example(b"Subject: a\r\n \r\n\r\nbody")
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
@example(b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n")
@example(b"From a@b Mon Dec  1 00:00:00 2026\nSubject: x\n\nbody\n")
@example(b"Subject: x\r\nX: \x0c\r\n\r\nbody")
@example(b"Subject: x\r\n\r\n" + b"y" * 8190 + b"\r\n\r\n")
def test_a_single_part_read_at_once_is_what_the_email_package_reads(raw: bytes) -> None:
    reference = email.message_from_bytes(raw, policy=email.policy.compat32)
    quick = message._single_part(raw)
    if quick is not None:
        assert _as_parsed(quick) == _as_parsed(reference), raw
        assert quick.as_bytes() == reference.as_bytes()
    tree = message.check_tree(raw)
    assert (tree.is_multipart(), str(tree) if tree.is_multipart() else _as_parsed(tree)) == \
        (reference.is_multipart(), str(reference) if reference.is_multipart() else _as_parsed(reference))


def test_the_common_message_takes_the_quick_read() -> None:
    """(else the test above compares nothing)"""
    raw = b"From: Taro <taro@example.co.jp>\r\nTo: hanako@partner.example\r\nSubject: =?utf-8?b?6YCx5qyh?=\r\n" \
          b"Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xe3\x81\x82\r\n"
    assert message._single_part(raw) is not None


# ------------------------------------------------------------------ the text rules' first looks

_LINES = st.sampled_from([
    "山田様", "山田 太郎 様、", "経理ご担当 様", "ABC商事の田中様", "田中さん、鈴木さん", "各位", "王先生：", "尊敬的李女士",
    "Dear Mr. Smith,", "DEAR ms jones", "Hi team,", "hello  John!", "Attn: Sales", "attention: Bob", "HIya Bob",
    "Dear", "dear\tAnn", "いつもお世話になっております。", "> 山田様", "| quoted", "  > Dear Bob", "", " ", "\u3000",
    "ｻﾏ", "Ｄｅａｒ Ｂｏｂ", "殿", "田中 殿", "x" * 90 + "様", "佐藤部長", "please find attached", "添付をご確認ください",
    "confidential", "On Mon, Taro wrote:", "-- ", "a|b", "a > b", "Kind regards,", "ﬁ", "İ", "ǅear Bob",
])


@settings(max_examples=2000, deadline=None)
@given(st.lists(_LINES, max_size=10), st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x0c"]))
def test_lines_passed_over_by_the_salutation_look_hold_no_salutation(lines: list[str], end: str) -> None:
    """``names.salutation_names`` tries its patterns only on lines holding a title or a greeting: the same
    names as trying them on every line."""
    from sendguard.rules import names

    body = end.join(lines)
    every_line = re.compile("")
    quick = names.salutation_names(body)
    saved = names._MAYBE_SALUTATION
    names._MAYBE_SALUTATION = every_line
    try:
        assert quick == names.salutation_names(body), body
    finally:
        names._MAYBE_SALUTATION = saved


@settings(max_examples=2000, deadline=None)
@given(st.lists(_LINES, max_size=10), st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x0c"]))
def test_the_sender_s_own_text_is_the_same_with_or_without_lines_to_leave_out(lines: list[str], end: str) -> None:
    """``content.own_text`` skips its line-by-line pass when no line can be left out."""
    from sendguard.rules import content

    body = end.join(lines)
    cut = content._QUOTE_START.search(body)
    kept = body[: cut.start()] if cut else body
    disclaimer = content._DISCLAIMER.search(kept.lower()) is not None
    expected = "\n".join(line for line in kept.splitlines() if not line.lstrip().startswith((">", "|"))
                         and not (disclaimer and content._DISCLAIMER.search(line.lower())))
    assert content.own_text(body) == expected, body


def test_the_common_opening_lines_are_passed_over() -> None:
    """(else the first test above compares nothing)"""
    from sendguard.rules import names

    assert names._MAYBE_SALUTATION.search("いつもお世話になっております。") is None
    assert names._MAYBE_SALUTATION.search("山田様") is not None
