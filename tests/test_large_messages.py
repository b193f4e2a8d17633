"""Large messages: long encoded runs are cut out before parsing (speed), and nothing the check reads
may differ from what it reads in a small message: the same attachments, sizes, hashes and text."""

from __future__ import annotations

import base64

import pytest

from sendguard import message, rewrite
from sendguard.rewrite import Decision

CARD = "4111111111111111"  # passes the Luhn check
HEAD = "From: a@example.co.jp\nTo: b@example.co.jp\nSubject: t\nMIME-Version: 1.0\n"


def _b64(data: bytes) -> str:
    return "\n".join(base64.encodebytes(data).decode().split())


def _csv(rows: int = 40000) -> bytes:
    return "".join(f"row{i},{CARD},lorem ipsum lorem ipsum\r\n" for i in range(rows)).encode()


def _multipart(*parts: str) -> bytes:
    body = "".join(f"--b\n{p}\n" for p in parts)
    return (HEAD + 'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nsee attached\n'
            + body + "--b--\n").encode()


SEVEN_BIT_CSV = _multipart('Content-Type: text/csv; name="cards.csv"\nContent-Disposition: attachment; '
                           'filename="cards.csv"\n\ncard_number\n' + "\n".join([CARD] * 32000))
PLAIN_BODY = (HEAD + "\nCard numbers for the campaign:\n" + "\n".join([CARD] * 32000) + "\n").encode()
_encoded = _b64(_csv()).split("\n")
SPLIT_RUN = _multipart('Content-Type: text/csv; name="customers.csv"\nContent-Transfer-Encoding: base64\n\n'
                       + "\n".join(_encoded[:5000] + [_encoded[5000] + " "] + _encoded[5001:]))
FORWARDED = _multipart("Content-Type: message/rfc822\n\n" + HEAD.replace("b@", "c@")
                       + 'Content-Type: multipart/mixed; boundary="i"\n\n--i\nContent-Type: text/plain\n\nlist\n'
                       '--i\nContent-Type: text/csv; name="customers.csv"\nContent-Transfer-Encoding: base64\n\n'
                       + _b64(_csv()) + "\n--i--\n")
ONE_RUN = _multipart('Content-Type: text/csv; name="customers.csv"\nContent-Transfer-Encoding: base64\n\n' + _b64(_csv()))
UNNAMED = _multipart("Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + _b64(_csv()))
SAMPLES = {"unnamed octet-stream": UNNAMED, "7bit csv": SEVEN_BIT_CSV, "plain body": PLAIN_BODY, "split run": SPLIT_RUN, "forwarded": FORWARDED,
           "one run": ONE_RUN}


def _seen(parsed: message.ParsedMessage) -> tuple[object, ...]:
    return (parsed.body_text, [(a.filename, a.size, a.sha256, a.text, a.flags, a.uninspected)
                               for a in parsed.attachments])


@pytest.mark.parametrize("name", SAMPLES)
def test_a_large_message_is_read_as_a_small_one_would_be(name, monkeypatch):
    raw = SAMPLES[name]
    assert len(raw) >= message._ELIDE_MIN_BYTES
    elided = message.parse(raw)
    monkeypatch.setattr(message, "_ELIDE_MIN_BYTES", 1 << 40)
    assert _seen(elided) == _seen(message.parse(raw))


@pytest.mark.parametrize("name", SAMPLES)
def test_the_content_of_a_large_message_is_checked_never_its_placeholders(name):
    parsed = message.parse(SAMPLES[name])
    texts = [parsed.body_text] + [a.text for a in parsed.attachments]
    assert any(CARD in t for t in texts)
    assert not any("SENDGUARD-ELIDED" in t for t in texts)


@pytest.mark.parametrize("name", SAMPLES)
def test_a_large_message_can_be_rewritten(name):
    final, env, _bcc = rewrite.apply(SAMPLES[name], Decision(removed_recipients=["x@other.example"]),
                                     ["b@example.co.jp", "x@other.example"], set(), "<m@example.co.jp>")
    assert env == ["b@example.co.jp"]
    assert _seen(message.parse(final))[1] == _seen(message.parse(SAMPLES[name]))[1]
