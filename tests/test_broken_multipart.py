"""A multipart the parser cannot split is a problem the user sees, and its content is still checked."""

from __future__ import annotations

import pytest

from sendguard import message

HEAD = "From: a@example.co.jp\nTo: b@example.co.jp\nSubject: t\nMIME-Version: 1.0\n"
PARTS = ("--b\nContent-Type: text/plain\n\nTaro 4111 1111 1111 1111\n"
         '--b\nContent-Type: text/csv\nContent-Disposition: attachment; filename="list.csv"\n'
         "Content-Transfer-Encoding: base64\n\nSGFuYWtvLDU1NTUgNTU1NSA1NTU1IDQ0NDQK\n--b--\n")


@pytest.mark.parametrize("ctype, why", [
    ("multipart/mixed", "has no boundary parameter"),
    ('multipart/mixed; boundary="zz"', "never shows its boundary 'zz'"),
])
def test_a_multipart_that_cannot_be_split_is_a_problem_and_still_read(ctype, why):
    parsed = message.parse((HEAD + f"Content-Type: {ctype}\n\n" + PARTS).encode())
    assert any(why in p and "checked it as plain text" in p for p in parsed.problems), parsed.problems
    assert "4111 1111 1111 1111" in parsed.body_text
    assert "Hanako,5555 5555 5555 4444" in parsed.body_text  # the base64 part, read with the boundary used


def test_a_broken_multipart_inside_a_good_one():
    inner = 'Content-Type: multipart/alternative; boundary="nope"\n\n' + PARTS
    raw = (HEAD + 'Content-Type: multipart/mixed; boundary="o"\n\n--o\n' + inner + "--o--\n").encode()
    parsed = message.parse(raw)
    assert any("multipart/alternative part never shows its boundary 'nope'" in p for p in parsed.problems)
    assert "4111 1111 1111 1111" in parsed.body_text


def test_a_good_multipart_is_no_problem():
    parsed = message.parse((HEAD + 'Content-Type: multipart/mixed; boundary="b"\n\n' + PARTS).encode())
    assert parsed.problems == []
    assert [a.filename for a in parsed.attachments] == ["list.csv"]
