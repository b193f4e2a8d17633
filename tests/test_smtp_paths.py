"""The SMTP session's fast reading of MAIL FROM/RCPT TO paths gives exactly what aiosmtpd's own parser gives."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sendguard.submission import SMTPSession

ATOM = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_local = st.text(alphabet=ATOM + '."\\ ()', min_size=0, max_size=12)
_domain = st.text(alphabet="abcXZ09-.[]: ", min_size=0, max_size=14)
_rest = st.text(alphabet="SIZE=10 BODY8BITMIME()\t<>@x", max_size=16)


def _read(cls: type[SMTP], limit: int, arg: str) -> object:
    """What the session makes of ``arg``: its result, or the error it raises (aiosmtpd's parser has
    inputs it fails on; the fast path must fail on the same ones, not differently)."""
    session = object.__new__(cls)
    session.local_part_limit = limit
    try:
        return session._getaddr(arg)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc)


@settings(max_examples=3000, deadline=None)
@given(_local, _domain, _rest, st.sampled_from(["<", "", " <", "<<"]), st.sampled_from([">", "", ">>"]),
       st.sampled_from([0, 5, 64]))
@example("taro", "example.co.jp", " SIZE=2048", "<", ">", 64)
@example("a.b+c", "ex-ample.com", "", "<", ">", 0)
@example("taro", "example.co.jp", " (comment) SIZE=1", "<", ">", 64)
@example("averylonglocalpart", "example.com", "", "<", ">", 5)
def test_plain_paths_read_as_aiosmtpd_reads_them(local: str, domain: str, rest: str, opening: str, closing: str,
                                                  limit: int) -> None:
    arg = f"{opening}{local}@{domain}{closing}{rest}"
    assert _read(SMTPSession, limit, arg) == _read(SMTP, limit, arg)


@given(st.text(max_size=30))
@settings(max_examples=1000, deadline=None)
def test_any_argument_reads_as_aiosmtpd_reads_it(arg: str) -> None:
    assert _read(SMTPSession, 64, arg) == _read(SMTP, 64, arg)
