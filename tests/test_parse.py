"""MIME parsing with the standard email package: addresses, IDN, encodings, attachments."""

from __future__ import annotations

import hashlib

import pytest

from sendguard import message
from sendguard.errors import MessageError

JAPANESE = b"""From: =?ISO-2022-JP?B?GyRCOzNFRBsoQg==?= <Yamada@Example.co.jp>
To: Team: a@example.co.jp, "B" <b@xn--r8jz45g.jp>;, c@EXAMPLE.CO.JP
Cc: =?UTF-8?B?5L6L?= <d@\xe4\xbe\x8b\xe3\x81\x88.jp>
Subject: =?ISO-2022-JP?B?GyRCOCtAUT1xGyhC?=
Message-ID: <m1@example.co.jp>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=iso-2022-jp

\x1b$B$3$s$K$A$O\x1b(B
--b1
Content-Type: application/pdf
Content-Disposition: attachment; filename*=UTF-8''%E8%A6%8B%E7%A9%8D.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b1
Content-Type: application/octet-stream; name="=?ISO-2022-JP?B?GyRCO3FOQRsoQg==?=.xlsx"
Content-Disposition: attachment; filename="=?ISO-2022-JP?B?GyRCO3FOQRsoQg==?=.xlsx"
Content-Transfer-Encoding: base64

UEsDBAo=
--b1
Content-Type: image/png
Content-Disposition: inline
Content-ID: <img1>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--b1
Content-Type: message/rfc822

From: x@y.example
To: z@y.example
Subject: inner

inner body
--b1--
"""


@pytest.fixture(scope="module")
def parsed() -> message.ParsedMessage:
    return message.parse(JAPANESE, envelope_recipients=["a@example.co.jp", "hidden@bcc.example"])


def test_sender_and_iso2022jp_subject(parsed):
    assert parsed.from_address == "yamada@example.co.jp"
    assert parsed.from_name == "山田"
    assert parsed.subject == "見積書"
    assert parsed.message_id == "<m1@example.co.jp>"
    assert parsed.body_text.strip() == "こんにちは"
    assert parsed.problems == []


def test_recipients_fields_groups_idn_and_envelope_bcc(parsed):
    got = [(r.address, r.field, r.domain, r.ascii_domain, r.idn, r.display_name) for r in parsed.recipients]
    assert got == [
        ("a@example.co.jp", "to", "example.co.jp", "example.co.jp", False, ""),
        ("b@例え.jp", "to", "例え.jp", "xn--r8jz45g.jp", True, "B"),
        ("c@example.co.jp", "to", "example.co.jp", "example.co.jp", False, ""),
        ("d@例え.jp", "cc", "例え.jp", "xn--r8jz45g.jp", True, "例"),
        ("hidden@bcc.example", "bcc", "bcc.example", "bcc.example", False, ""),
    ]


def test_attachments_names_sizes_inline_and_attached_message(parsed):
    rows = [(a.id, a.filename, a.size, a.content_type, a.inline, a.is_message) for a in parsed.attachments]
    assert rows == [
        ("1", "見積.pdf", 9, "application/pdf", False, False),
        ("2", "資料.xlsx", 5, "application/octet-stream", False, False),
        ("3", "attachment-3", 8, "image/png", True, False),
        ("4", "inner.eml", rows[3][2], "message/rfc822", False, True),
    ]
    assert parsed.attachments[0].sha256 == hashlib.sha256(b"%PDF-1.4\n").hexdigest()
    assert rows[3][2] > 40


def test_bcc_header_recipients_are_bcc():
    raw = b"From: a@example.co.jp\nTo: b@example.co.jp\nBcc: c@other.example\nSubject: s\n\nx\n"
    fields = {r.address: r.field for r in message.parse(raw).recipients}
    assert fields == {"b@example.co.jp": "to", "c@other.example": "bcc"}


def test_no_recipients_is_refused_with_a_clear_message():
    with pytest.raises(MessageError, match="no recipients"):
        message.parse(b"From: a@example.co.jp\nSubject: s\n\nbody\n")


def test_eight_bit_headers_are_decoded_not_crashing():
    raw = "From: 山田 <yamada@example.co.jp>\nTo: 佐藤 <sato@partner.example>\nSubject: 件名テスト\n\n本文\n"
    parsed = message.parse(raw.encode("utf-8"))
    assert parsed.subject == "件名テスト"
    assert parsed.recipients[0].display_name == "佐藤"
    parsed = message.parse(raw.encode("cp932"))
    assert parsed.subject == "件名テスト"


def test_rfc2231_continuations_in_filename():
    raw = (b"From: a@example.co.jp\nTo: b@x.example\nSubject: s\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: text/plain\n\nhi\n--zz\n"
           b"Content-Type: application/pdf\nContent-Disposition: attachment;\n"
           b" filename*0*=UTF-8''%E9%95%B7%E3%81%84;\n filename*1*=%E5%90%8D%E5%89%8D.pdf\n\nJVBERg==\n--zz--\n")
    [att] = message.parse(raw).attachments
    assert att.filename == "長い名前.pdf"


@pytest.mark.parametrize("domain,uni,asc,idn", [
    ("EXAMPLE.com", "example.com", "example.com", False),
    ("xn--r8jz45g.jp", "例え.jp", "xn--r8jz45g.jp", True),
    ("例え.jp", "例え.jp", "xn--r8jz45g.jp", True),
    ("bücher.example", "bücher.example", "xn--bcher-kva.example", True),
])
def test_split_domain(domain, uni, asc, idn):
    assert message.split_domain(domain) == (uni, asc, idn)
