"""Content inspection (the policy's `[inspection]` and personal-data rules): personal data and keywords inside the files people send, and
files that cannot be read are said to be so (fail closed), never shown as checked."""

from __future__ import annotations

import zlib
from email.message import EmailMessage

import docmaker
import pytest
from conftest import SAMPLE_POLICY, make_message

from sendguard import checks, extract, message, policy

MY_NUMBER = "123456789018"  # valid check digit
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    path = tmp_path_factory.mktemp("inspect") / "policy.toml"
    path.write_text(SAMPLE_POLICY, encoding="utf-8")
    return policy.load(path)


def check(pol, attachments, **kw):
    raw = make_message(to="x@partner.example", attachments=attachments, **kw).as_bytes()
    return checks.evaluate(message.parse(raw), pol, set())


def attached_message(inner: bytes) -> EmailMessage:
    msg = make_message(to="x@partner.example")
    msg.add_attachment(inner, maintype="message", subtype="rfc822", filename="fwd.eml")
    return msg


OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600

# (case id, attachment (name, data, content type), expected flags among personal_data/keyword/encrypted,
#  uninspected?)
CASES = [
    ("xlsx-numeric-my-number", ("名簿.xlsx", docmaker.xlsx(["氏名"], [[("s", "0"), ("n", MY_NUMBER)]]),
                                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
     {"personal_data"}, False),
    ("xlsx-scientific-my-number", ("a.xlsx", docmaker.xlsx([], [[("n", "1.23456789018E+11")]]),
                                   "application/octet-stream"), {"personal_data"}, False),
    ("xlsx-inline-keyword", ("b.xlsx", docmaker.xlsx([], [[("inline", "社外秘")]]), "application/octet-stream"),
     {"keyword"}, False),
    ("xlsx-shared-card", ("c.xlsx", docmaker.xlsx([CARD], [[("s", "0")]]), "application/octet-stream"),
     {"personal_data"}, False),
    ("xlsx-harmless-numbers", ("d.xlsx", docmaker.xlsx(["qty"], [[("s", "0"), ("n", "12345")], [("n", "123456")]]),
                               "application/octet-stream"), set(), False),
    ("xlsx-adjacent-cells-not-joined", ("e.xlsx", docmaker.xlsx([], [[("n", "123456"), ("n", "789018")]]),
                                        "application/octet-stream"), set(), False),
    ("docx-card-split-in-runs", ("見積.docx", docmaker.docx([["4111 ", "1111 ", "1111 1111"]]),
                                 "application/octet-stream"), {"personal_data"}, False),
    ("docx-harmless", ("f.docx", docmaker.docx([["見積金額 1,234,567 円"]]), "application/octet-stream"), set(), False),
    ("pptx-keyword", ("g.pptx", docmaker.pptx(["計画", "社外秘の数字"]), "application/octet-stream"), {"keyword"}, False),
    ("pdf-plain-card", ("h.pdf", docmaker.pdf(["Card " + CARD]), "application/pdf"), {"personal_data"}, False),
    ("pdf-flate-my-number", ("i.pdf", docmaker.pdf(["My Number " + MY_NUMBER], flate=True), "application/pdf"),
     {"personal_data"}, False),
    ("pdf-harmless", ("j.pdf", docmaker.pdf(["Invoice 2024-0042 total 120000"], flate=True), "application/pdf"),
     set(), False),
    ("zip-csv-card", ("k.zip", docmaker.zipped({"list.csv": f"name,card\nA,{CARD}\n".encode()}), "application/zip"),
     {"personal_data"}, False),
    ("zip-in-zip-xlsx", ("l.zip", docmaker.zipped({"inner.zip": docmaker.zipped(
        {"m.xlsx": docmaker.xlsx([], [[("n", MY_NUMBER)]])})}), "application/zip"), {"personal_data"}, False),
    ("zip-harmless", ("m.zip", docmaker.zipped({"readme.txt": b"hello"}), "application/zip"), set(), False),
    ("sjis-csv-without-charset", ("n.csv", "区分,内容\n社外秘,計画\n".encode("cp932"), "application/octet-stream"),
     {"keyword"}, False),
    ("sjis-csv-harmless", ("o.csv", "区分,内容\n公開,計画\n".encode("cp932"), "application/octet-stream"), set(),
     False),
    ("damaged-pdf", ("p.pdf", b"%PDF-1.4\n1 0 obj << /Length 99 >> stream\n" + zlib.compress(b"x")[:3],
                     "application/pdf"), set(), True),
    ("old-excel", ("q.xls", OLE, "application/vnd.ms-excel"), set(), True),
    ("image", ("r.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "image/png"), set(), False),
]


@pytest.mark.parametrize("name,att,flags,uninspected", CASES, ids=[c[0] for c in CASES])
def test_inspection_table(pol, name, att, flags, uninspected):
    result = check(pol, [att])
    [res] = result.attachments
    assert {f for f in res.flags if f in ("personal_data", "keyword", "encrypted")} == flags
    data = result.to_json()
    if uninspected:
        assert res.attachment.uninspected
        assert any(att[0] in p and "could not be inspected" in p for p in data["problems"]), data.get("problems")
    else:
        assert not res.attachment.uninspected, res.attachment.uninspected
        assert "problems" not in data


def test_attached_message_and_its_attachments_are_inspected(pol):
    inner = docmaker.eml("名簿", "see attached", [("x.xlsx", docmaker.xlsx([], [[("n", MY_NUMBER)]]),
                                                    "application/octet-stream")])
    result = checks.evaluate(message.parse(attached_message(inner).as_bytes()), pol, set())
    [res] = result.attachments
    assert "personal_data" in res.flags
    assert any(r.rule == "personal_data" and r.target == "fwd.eml" for r in result.reasons)
    harmless = docmaker.eml("hello", "no numbers here")
    result = checks.evaluate(message.parse(attached_message(harmless).as_bytes()), pol, set())
    assert "personal_data" not in result.attachments[0].flags


def test_encrypted_member_of_an_attached_zip_is_flagged(pol):
    inner = docmaker.eml("fwd", "pw later", [("s.zip", _encrypted_zip(), "application/zip")])
    result = checks.evaluate(message.parse(attached_message(inner).as_bytes()), pol, set())
    assert "encrypted" in result.attachments[0].flags
    assert any(r.rule == "encrypted_attachment" for r in result.reasons)


def _encrypted_zip() -> bytes:
    data = bytearray(docmaker.zipped({"a.txt": b"secret"}))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(sig) + offset] |= 0x01
    return bytes(data)


def test_html_body_card_number_written_with_nbsp(pol):
    msg = EmailMessage()
    msg["From"] = "taro@example.co.jp"
    msg["To"] = "x@partner.example"
    msg["Subject"] = "hi"
    msg.set_content("see html")
    msg.add_alternative("<p>カード番号: 4111&nbsp;1111&nbsp;<span>1111</span>&#160;1111</p>", subtype="html")
    result = checks.evaluate(message.parse(msg.as_bytes()), pol, set())
    assert any(r.rule == "personal_data" for r in result.reasons)


def test_undeclared_shift_jis_body_is_read(pol):
    raw = (b"From: taro@example.co.jp\r\nTo: x@partner.example\r\nSubject: test\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n") + \
        "これは社外秘の資料です。\r\n".encode("cp932")
    result = checks.evaluate(message.parse(raw), pol, set())
    assert any(r.rule == "keyword" for r in result.reasons)


def test_zip_bomb_stops_at_the_budget_and_says_so():
    bomb = docmaker.zipped({"big.txt": b"0" * (8 * 1024 * 1024)})
    raw = make_message(to="x@partner.example", attachments=[("bomb.zip", bomb, "application/zip")]).as_bytes()
    parsed = message.parse(raw, budget=extract.Budget(bytes_left=1024 * 1024))
    assert "MB of content" in parsed.attachments[0].uninspected


def test_time_budget_fails_closed():
    raw = make_message(to="x@partner.example", attachments=[
        ("a.pdf", docmaker.pdf(["x"] * 5, pages=30), "application/pdf")]).as_bytes()
    parsed = message.parse(raw, budget=extract.Budget(seconds=0.0))
    assert "longer than" in parsed.attachments[0].uninspected


def test_content_not_handed_over_is_not_shown_as_checked(pol):
    msg = make_message(to="x@example.co.jp")
    msg.add_attachment(b"", maintype="application", subtype="pdf", filename="q.pdf")
    msg.get_payload()[-1].set_param("size", "12345", header="Content-Disposition")
    result = checks.evaluate(message.parse(msg.as_bytes()), pol, set())
    assert result.attachments[0].attachment.size == 12345
    assert "not handed" in result.to_json()["problems"][0]


def test_uninspectable_attachment_holds_internal_mail(home, helper, write_policy):
    from conftest import smtp_send, wait_for

    write_policy()
    h = helper()
    smtp_send(h.smtp.port, make_message(to="hanako@example.co.jp", attachments=[("q.xls", OLE, "application/vnd.ms-excel")]))
    [item] = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))
    assert any("q.xls" in p for p in item.check.problems)


@pytest.mark.parametrize("shift", range(-4, 5))
def test_xlsx_cell_across_a_read_chunk_boundary_is_found(pol, shift):
    """Worksheets are read 1 MiB at a time: a value whose tags straddle the cut is still seen."""
    head = '<?xml version="1.0" encoding="UTF-8"?><worksheet><sheetData><row r="1">'
    cell = f'<c r="A2"><v>{MY_NUMBER}</v></c>'
    pad_cell = '<c r="B1" t="inlineStr"><is><t>x</t></is></c>'
    room = extract._CHUNK - len(head) - len('</row><row r="2"><c r="A2"><v>') + shift
    cells = pad_cell * (room // len(pad_cell))
    filler = " " * (room - len(cells))  # whitespace between tags is allowed
    sheet = head + cells + filler + "</row><row r=\"2\">" + cell + "</row></sheetData></worksheet>"
    book = docmaker.zipped({"[Content_Types].xml": docmaker.CONTENT_TYPES.encode(),
                            "xl/worksheets/sheet1.xml": sheet.encode()})
    result = check(pol, [("big.xlsx", book, "application/octet-stream")])
    assert "personal_data" in result.attachments[0].flags
