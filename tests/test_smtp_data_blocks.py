"""The SMTP session reads a message's text in blocks (``SMTPSession.smtp_DATA``): over a real connection it
answers exactly as aiosmtpd's own line-by-line DATA does and hands the handler the same bytes, however the
text is cut into packets: dot-stuffing, the closing line split anywhere, lines at and past the length limit,
more than the size limit, both at once (the first one crossed decides), bare CR or LF, an empty message, and
commands that follow the closing line in the same packet."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendguard.submission import SMTPSession

LINE_LIMIT = 64  # smaller than aiosmtpd's 1001, so that examples cross it often (commands stay shorter)


class Base(SMTP):
    line_length_limit = LINE_LIMIT


class Blocks(SMTPSession):
    line_length_limit = LINE_LIMIT


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        self.seen.append((envelope.content, envelope.original_content))  # type: ignore[attr-defined]
        return "250 2.0.0 kept"


async def _conversation(cls: type[SMTP], packets: list[bytes], size_limit: int, decode: bool) -> tuple[bytes, list]:
    """Everything the server said, and what its handler was given, for this DATA text sent in these
    packets (each written on its own, with a pause, so that the server reads them apart)."""
    handler = Recorder()
    server = await asyncio.get_running_loop().create_server(
        lambda: cls(handler, data_size_limit=size_limit, decode_data=decode, hostname="test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heard = b""

    async def answer() -> None:
        nonlocal heard
        heard += await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        while heard.endswith(b"\r\n") and heard.rsplit(b"\r\n", 2)[-2][3:4] == b"-":  # a multi-line reply
            heard += await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)

    try:
        await answer()  # greeting
        for command in (b"EHLO x\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<d@e.f>\r\n", b"DATA\r\n"):
            writer.write(command)
            await answer()
        try:
            for packet in [*packets, b"NOOP\r\nQUIT\r\n"]:
                writer.write(packet)
                await writer.drain()
                await asyncio.sleep(0.003)
        except ConnectionError:  # the server hung up (text read as commands: too many bad ones)
            heard += b"<closed while sending>"
        try:
            heard += await asyncio.wait_for(reader.read(), 5)  # until the server closes after QUIT
        except ConnectionError:
            heard += b"<reset>"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    return heard, handler.seen


def _both(text: bytes, cuts: list[int], size_limit: int, decode: bool = False) -> None:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    packets = [text[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]
    theirs = asyncio.run(_conversation(Base, packets, size_limit, decode))
    ours = asyncio.run(_conversation(Blocks, packets, size_limit, decode))
    assert ours == theirs


_lines = st.lists(st.one_of(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"..\r", b"a\rb", b"a\nb", b"\r", b"x\r\n.", b"..."]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r\n", b"")),
    st.sampled_from([LINE_LIMIT - 3, LINE_LIMIT - 2, LINE_LIMIT - 1, LINE_LIMIT, LINE_LIMIT + 1, LINE_LIMIT + 2,
                     3 * LINE_LIMIT]).map(lambda n: b"y" * n),
), max_size=12)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lines, st.lists(st.integers(min_value=0, max_value=2000), max_size=5),
       st.sampled_from([0, 60, 200, 1 << 20]), st.sampled_from([b"", b"NOOP\r\n"]))
def test_any_text_in_any_packets_is_answered_as_aiosmtpd_answers_it(lines: list[bytes], cuts: list[int],
                                                                  size_limit: int, after: bytes) -> None:
    text = b"".join(line + b"\r\n" for line in lines) + b".\r\n" + after
    _both(text, cuts, size_limit)


@pytest.mark.parametrize("text", [
    b".\r\n",  # an empty message
    b"..\r\n...\r\n.\r\n",  # dot-stuffed lines: one dot each comes off
    b"Subject: x\r\n\r\nbody\r\n.\r\n",
    b"y" * 3000 + b"\r\n.\r\n",  # one line far over the limit, over several reads
    b"y" * (LINE_LIMIT - 2) + b"\r\n" + b"y" * (LINE_LIMIT - 1) + b"\r\n.\r\n",  # at the limit, then just over
    b"a\r\n" * 100 + b".\r\n",  # over a small size limit
    b"a\r\n" * 10 + b"y" * 500 + b"\r\n" + b"a\r\n" * 100 + b".\r\n",  # the long line comes first
])
@pytest.mark.parametrize("size_limit", [0, 100])
def test_text_cut_at_every_byte(text: bytes, size_limit: int) -> None:
    """The same text cut into two packets at every place (the closing line and CRLF split every way)."""
    step = 1 if len(text) < 200 else 97
    for cut in range(1, len(text), step):
        _both(text, [cut], size_limit)


def test_decoded_text_and_8bit() -> None:
    """aiosmtpd's ``decode_data``: text handed over as str, as aiosmtpd hands it."""
    text = "件名: テスト\r\n\r\n本文です\r\n..dot\r\n.\r\n".encode()
    _both(text, [5, 17], 0, decode=True)
    _both(text, [], 1 << 20, decode=False)


def test_a_large_message_in_many_reads() -> None:
    rng = random.Random(7)
    lines = [bytes(rng.choice(b"abc.\r") for _ in range(rng.randrange(0, LINE_LIMIT - 2))).replace(b"\r", b"")
             for _ in range(3000)]
    text = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    _both(text, [rng.randrange(len(text)) for _ in range(20)], 1 << 20)
