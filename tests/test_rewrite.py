"""Removing attachments: the rewrite removes exactly the parts the user saw, or refuses."""

from __future__ import annotations

import pytest

from sendguard import message, rewrite
from sendguard.errors import MessageError
from sendguard.rewrite import Decision


def _mail(*parts: str) -> bytes:
    head = ("From: a@example.co.jp\nTo: x@partner.example\nSubject: quote\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nPlease find it attached.\n')
    body = "".join(f"--b\n{p}\n" for p in parts)
    return (head + body + "--b--\n").encode()


PDF = 'Content-Type: application/pdf; (v2) name="quote.pdf"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK'
ZIP = ('Content-Type: application/zip; name="customers.zip"\nContent-Disposition: attachment; '
       'filename="customers.zip"\nContent-Transfer-Encoding: base64\n\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==')
NOTES = "Content-Type: text/plain\nContent-Disposition: inline; filename='notes.txt'\n\ninternal notes: do not share"


def _remove(raw: bytes, *names: str) -> list[str]:
    """Remove the named attachments as the window does (by the ids the check shows); the names left."""
    ids = {a.filename: a.id for a in message.parse(raw).attachments}
    final, _env, _bcc = rewrite.apply(raw, Decision(removed_attachments=[ids[n] for n in names]),
                                      ["x@partner.example"], set(), "<m@example.co.jp>")
    return [a.filename for a in message.parse(final).attachments]


def test_a_comment_in_content_type_still_names_the_attachment():
    names = [a.filename for a in message.parse(_mail(PDF, ZIP)).attachments]
    assert names == ["quote.pdf", "customers.zip"]


@pytest.mark.parametrize("parts, remove, left", [
    ((PDF, ZIP), "customers.zip", ["quote.pdf"]),
    ((PDF, ZIP), "quote.pdf", ["customers.zip"]),
    ((NOTES, ZIP), "customers.zip", ["notes.txt"]),
    ((NOTES, ZIP), "notes.txt", ["customers.zip"]),
    (('Content-Type: application/pdf; name=s.pdf (c)\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK', ZIP),
     "customers.zip", ["s.pdf"]),
    (("Content-Type: text/plain\nContent-Disposition: =?utf-8?q?attachment?=\n\nsecret list", ZIP),
     "customers.zip", ["attachment-1"]),
])
def test_the_removed_attachment_is_the_one_the_user_chose(parts, remove, left):
    assert _remove(_mail(*parts), remove) == left


def test_the_rewrite_refuses_output_that_lost_the_wrong_part():
    raw = _mail(PDF, ZIP)
    wrong = _mail(ZIP)  # the PDF gone, the zip (which the user removed) still there
    with pytest.raises(MessageError, match="does not hold the attachments you confirmed"):
        rewrite.verify_attachments(raw, wrong, ["2"])
    rewrite.verify_attachments(raw, _mail(PDF), ["2"])  # the right outcome passes


def test_a_rewrite_that_goes_wrong_is_refused_not_sent(monkeypatch):
    raw = _mail(PDF, ZIP)
    monkeypatch.setattr(message, "attachment_paths", lambda tree: {"1": (2,), "2": (1,)})  # swapped
    with pytest.raises(MessageError, match="does not hold the attachments you confirmed"):
        rewrite.apply(raw, Decision(removed_attachments=["2"]), ["x@partner.example"], set(), "<m@example.co.jp>")


def test_an_unknown_attachment_id_is_refused():
    with pytest.raises(MessageError, match="cannot remove attachment 7"):
        rewrite.apply(_mail(PDF, ZIP), Decision(removed_attachments=["7"]), ["x@partner.example"], set(), "<m@x>")


def test_a_structure_that_reads_two_ways_is_refused():
    raw = _mail(PDF, ZIP).replace(b'boundary="b"', b'boundary="b', 1)
    ids = [a.id for a in message.parse(raw).attachments]
    if not ids:  # nothing to remove as the check reads it: the decision names an id it never showed
        ids = ["1"]
    with pytest.raises(MessageError):
        rewrite.apply(raw, Decision(removed_attachments=ids[:1]), ["x@partner.example"], set(), "<m@x>")


def test_text_attachments_sent_with_crlf_survive_a_rewrite_written_with_lf():
    raw = _mail('Content-Type: text/csv; name="a.csv"\n\nx,y\n1,2', ZIP).replace(b"\n", b"\r\n")
    final, env, _bcc = rewrite.apply(raw, Decision(removed_recipients=["y@partner.example"]),
                                     ["x@partner.example", "y@partner.example"], set(), "<m@example.co.jp>")
    assert env == ["x@partner.example"]
    assert [a.filename for a in message.parse(final).attachments] == ["a.csv", "customers.zip"]
    assert _remove(raw, "customers.zip") == ["a.csv"]
