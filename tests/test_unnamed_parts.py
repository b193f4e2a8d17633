"""Parts that are files without saying so (no name, no disposition) are listed and inspected."""

from __future__ import annotations

import base64
import binascii

import pytest

from sendguard import extract, message, rewrite
from sendguard.rewrite import Decision

CSV = b"name,card\nTaro,4111 1111 1111 1111\n"
HEAD = "From: a@example.co.jp\nTo: x@partner.example\nSubject: t\nMIME-Version: 1.0\n"


def _with(part: str) -> bytes:
    return (HEAD + 'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhello\n'
            f"--b\n{part}\n--b--\n").encode()


B64 = base64.b64encode(CSV).decode()
PDF = base64.b64encode(b"%PDF-1.4\nsecret\n").decode()
UU = "begin 644 customers.csv\n" + binascii.b2a_uu(CSV).decode() + "`\nend"


@pytest.mark.parametrize("raw, ctype", [
    (_with(f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n{B64}"),
     "application/octet-stream"),
    (_with(f"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n{PDF}"), "application/pdf"),
    (_with("Content-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo="), "image/png"),
    (_with(f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: x-uuencode\n\n{UU}"),
     "application/octet-stream"),
    ((HEAD + f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n{B64}\n").encode(),
     "application/octet-stream"),
], ids=["octet-stream", "pdf", "png", "x-uuencode", "whole message"])
def test_an_unnamed_file_is_listed(raw, ctype):
    [att] = message.parse(raw).attachments
    assert (att.id, att.filename, att.content_type) == ("1", "attachment-1", ctype)
    assert att.size > 0


@pytest.mark.parametrize("cte, body", [("base64", B64), ("x-uuencode", UU)])
def test_an_unnamed_file_is_read(cte, body):
    raw = _with(f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: {cte}\n\n{body}")
    [att] = message.parse(raw).attachments
    assert "4111 1111 1111 1111" in att.text and not att.uninspected


def test_a_file_that_is_nothing_but_a_file_is_read():
    raw = (HEAD + f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n{B64}\n").encode()
    assert "4111 1111 1111 1111" in message.parse(raw).attachments[0].text


def test_an_unnamed_pdf_is_inspected_as_a_pdf():
    raw = _with(f"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n{PDF}")
    [att] = message.parse(raw).attachments
    assert att.text or att.uninspected  # read, or said to be unreadable: never passed over in silence


def test_an_unnamed_file_can_be_removed():
    raw = _with(f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n{B64}")
    final, _env, _bcc = rewrite.apply(raw, Decision(removed_attachments=["1"]), ["x@partner.example"], set(), "<m@x>")
    assert message.parse(final).attachments == []


def test_binary_is_not_read_as_text_but_text_of_no_known_type_is():
    assert extract.looks_like_text(CSV)
    assert extract.looks_like_text("氏名,カード\n".encode("cp932"))
    assert not extract.looks_like_text(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    assert not extract.looks_like_text(b"MZ\x90\x00\x03\x00")
    assert not extract.looks_like_text(b"")


LOGO_MAIL = (
    b"From: taro@example.co.jp\r\nTo: x@partner.example\r\nSubject: =?utf-8?b?6KaL56mN5pu4?=\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=\"r\"\r\n\r\n"
    b"--r\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "<p>見積書を添付します。</p><img src=\"cid:logo@x\">".encode() + b"\r\n"
    b"--r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64) + b"\r\n--r--\r\n")


def test_a_signature_logo_is_listed_but_is_not_the_promised_file():
    """An image the HTML shows by Content-ID, with no disposition (as some clients write a signature
    logo), is listed, flagged inline, and does not stand for the file the text promises: the
    forgotten-attachment rule still fires and the logo is not an 'external attachment'."""
    from sendguard import checks, policy

    parsed = message.parse(LOGO_MAIL)
    [logo] = parsed.attachments
    assert logo.content_type == "image/png" and logo.inline
    result = checks.evaluate(parsed, policy.Policy(internal_domains=("example.co.jp",)))
    rules = [r.rule for r in result.reasons]
    assert "missing_attachment" in rules and "external_attachment" not in rules
    assert "inline" in result.stored().attachments[0].flags
