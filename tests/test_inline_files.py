"""A file sent with ``Content-Disposition: inline`` is still a file sent.

Apple Mail and iOS Mail attach a PDF (or any document) as ``inline; filename=...``; the recipient's
program lists it as an attachment. Only an image shown in the body (a signature logo, a pasted
screenshot) is body rather than a file the message sends or promises.
"""

from __future__ import annotations

import base64

import docmaker

from sendguard import checks, message, policy

PDF = docmaker.pdf(["Quotation No. 1234"])
HEAD = ("From: taro@example.co.jp\r\nTo: buyer@customer.example\r\nSubject: =?UTF-8?B?"
        + base64.b64encode("見積書の件".encode()).decode() + "?=\r\nMIME-Version: 1.0\r\n")


def _mail(part_headers: str, payload: bytes, body: str = "見積書を添付いたします。ご確認ください。") -> bytes:
    text = base64.b64encode(body.encode()).decode()
    return (HEAD + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{text}\r\n--b\r\n{part_headers}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{base64.b64encode(payload).decode()}\r\n--b--\r\n").encode()


def _check(raw: bytes, **rules: str) -> checks.CheckResult:
    pol = policy.Policy(internal_domains=("example.co.jp",), **rules)  # type: ignore[arg-type]
    return checks.evaluate(message.parse(raw), pol)


APPLE_PDF = _mail("Content-Type: application/pdf; name=\"=?UTF-8?B?6KaL56mN5pu4LnBkZg==?=\"\r\n"
                  "Content-Disposition: inline; filename=\"=?UTF-8?B?6KaL56mN5pu4LnBkZg==?=\"", PDF)


def test_a_pdf_attached_inline_is_an_external_attachment():
    result = _check(APPLE_PDF, external_attachment="block")
    [att] = result.stored().attachments
    assert att.filename == "見積書.pdf"
    assert "inline" not in att.flags and "external" in att.flags and not att.uninspected
    rules = {(r.rule, r.action) for r in result.reasons}
    assert ("external_attachment", "block") in rules
    assert result.action == "block"


def test_a_pdf_attached_inline_is_the_file_the_text_promises():
    rules = [r.rule for r in _check(APPLE_PDF).reasons]
    assert "missing_attachment" not in rules


def test_a_text_file_attached_inline_is_a_file():
    raw = _mail('Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: inline; filename="list.csv"',
                b"name,card\nTaro,4111 1111 1111 1111\n")
    result = _check(raw)
    [att] = result.stored().attachments
    assert att.filename == "list.csv" and "inline" not in att.flags and "personal_data" in att.flags
    assert "external_attachment" in [r.rule for r in result.reasons]


def test_an_image_shown_inline_stays_body():
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    raw = _mail('Content-Type: image/png\r\nContent-Disposition: inline; filename="logo.png"\r\n'
                "Content-ID: <logo@example.co.jp>", png, body="よろしくお願いいたします。")
    result = _check(raw, external_attachment="block")
    [att] = result.stored().attachments
    assert att.flags == ("inline",)
    assert result.action != "block"
