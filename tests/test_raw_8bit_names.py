"""File names written as raw 8-bit bytes (no RFC 2231/2047), as older Japanese mail programs and some
scanners and phones write them, are read in the charset they were written in, never as '����.pdf'."""

from __future__ import annotations

import re

import pytest

from sendguard import checks, message, policy

DISPOSITION = "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="
TYPE_ONLY = "Content-Type: application/octet-stream; name="


def _mail(name: bytes, header: str = DISPOSITION) -> bytes:
    return (b"From: sato@example.co.jp\r\nTo: yamada@acorp.example\r\nSubject: quote\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
            b"--XX\r\n" + header.encode() + b'"' + name + b'"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--XX--\r\n")


@pytest.mark.parametrize("codec", ["cp932", "utf-8", "euc-jp"])
@pytest.mark.parametrize("header", [DISPOSITION, TYPE_ONLY])
def test_a_raw_8bit_file_name_is_read(codec, header):
    raw = _mail("御見積書_社外秘.xlsx".encode(codec), header)
    [att] = message.parse(raw).attachments
    assert att.filename == "御見積書_社外秘.xlsx"


def test_a_keyword_in_a_raw_shift_jis_file_name_is_found():
    pol = policy.Policy(internal_domains=("example.co.jp",),
                        keywords=(policy.Keyword("社外秘", "block", re.compile("社外秘"), ""),))
    result = checks.evaluate(message.parse(_mail("御見積書_社外秘.xlsx".encode("cp932"))), pol)
    assert result.action == "block"
    assert "keyword" in result.stored().attachments[0].flags
