"""Bad input: a clear one-line error (no traceback) or a held message; nothing is lost."""

from __future__ import annotations

import json
import smtplib

import pytest
from conftest import SAMPLE_POLICY, make_message, run_cli, smtp_send, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendguard import checks, message, policy
from sendguard.errors import MessageError


def nested(depth: int) -> bytes:
    inner = b"From: a@x.example\nTo: b@y.example\nSubject: level 0\n\nbottom\n"
    for level in range(1, depth + 1):
        inner = (b"From: a@x.example\nTo: b@y.example\nSubject: level %d\nMIME-Version: 1.0\n"
                 b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\nContent-Type: text/plain\n\nx\n"
                 b"--b%d\nContent-Type: message/rfc822\n\n" % (level, level, level, level)) + inner + \
            b"\n--b%d--\n" % level
    return inner


GOOD_WITH_TROUBLE = {
    "eight_bit_headers": "From: 山田 <y@example.co.jp>\nTo: 佐藤 <s@partner.example>\nSubject: 見積\n\n本文\n"
                         .encode("shift_jis"),
    "missing_from": b"To: s@partner.example\nSubject: no from\n\nbody\n",
    "invalid_from": b"From: not an address\nTo: s@partner.example\nSubject: bad from\n\nbody\n",
    "many_recipients": ("From: y@example.co.jp\nTo: " + ", ".join(f"u{i}@d{i % 50}.example" for i in range(5000))
                        + "\nSubject: many\n\nbody\n").encode(),
    "huge_header_line": b"From: y@example.co.jp\nTo: s@partner.example\nX-Long: " + b"a" * 1_000_000
                        + b"\nSubject: long\n\nbody\n",
    "broken_base64": b"From: y@example.co.jp\nTo: s@partner.example\nSubject: b64\nMIME-Version: 1.0\n"
                     b"Content-Type: multipart/mixed; boundary=q\n\n--q\nContent-Type: text/plain\n\nhi\n--q\n"
                     b"Content-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n"
                     b"Content-Transfer-Encoding: base64\n\nJVBER!!!i0x***LjQ=\n--q--\n",
    "attachment_without_filename": b"From: y@example.co.jp\nTo: s@partner.example\nSubject: nf\nMIME-Version: 1.0\n"
                                   b"Content-Type: multipart/mixed; boundary=q\n\n--q\nContent-Type: text/plain\n\n"
                                   b"hi\n--q\nContent-Type: application/octet-stream\n"
                                   b"Content-Disposition: attachment\n\nAAAA\n--q--\n",
    "nested_20_levels": nested(20),
}


@pytest.mark.parametrize("name", sorted(GOOD_WITH_TROUBLE))
def test_check_handles_troubled_messages(tmp_path, write_policy, name):
    write_policy(SAMPLE_POLICY)
    path = tmp_path / f"{name}.eml"
    path.write_bytes(GOOD_WITH_TROUBLE[name])
    out = run_cli("check", str(path), "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["recipients"]
    assert result["verdict"]["action"] in ("confirm", "approve", "block")  # external recipients: never allow
    if name == "attachment_without_filename":
        assert result["attachments"][0]["filename"] == "attachment-1"
    if name == "nested_20_levels":
        assert len(result["attachments"]) == 1 and result["attachments"][0]["content_type"] == "message/rfc822"
    if name == "many_recipients":
        assert len(result["recipients"]) == 5000
    if name in ("missing_from", "invalid_from"):
        assert any("From" in p for p in result["problems"])


@pytest.mark.parametrize("content,words", [
    (b"\x00\x01\x02 binary junk \xff\xfe", "no recipients"),
    (b"", "no recipients"),
    (b"From: a@example.co.jp\nSubject: s\n\nbody", "no recipients"),
])
def test_check_refuses_unusable_input_in_one_line(tmp_path, content, words):
    path = tmp_path / "m.eml"
    path.write_bytes(content)
    out = run_cli("check", str(path))
    assert out.returncode == 1
    err = out.stderr.decode()
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_check_unreadable_file_and_bad_policy(tmp_path, write_policy):
    out = run_cli("check", str(tmp_path / "missing.eml"))
    assert out.returncode == 1 and "cannot read" in out.stderr.decode() and out.stderr.decode().count("\n") == 1
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message().as_bytes())
    path = write_policy('[confirm]\nwhen = "maybe"\n')
    out = run_cli("check", str(eml))
    err = out.stderr.decode()
    assert out.returncode == 1 and f"{path}:2" in err and "confirm.when" in err and err.count("\n") == 1


def test_check_reads_stdin_and_same_json_as_file(tmp_path, write_policy):
    write_policy(SAMPLE_POLICY)
    raw = make_message(to="x@partner.example").as_bytes()
    (tmp_path / "m.eml").write_bytes(raw)
    a = json.loads(run_cli("check", "-", "--json", input=raw).stdout)
    b = json.loads(run_cli("check", str(tmp_path / "m.eml"), "--json").stdout)
    assert a == b
    assert set(a) == {"message_id", "from", "subject", "recipients", "attachments", "verdict", "force_bcc"}


def test_check_human_output_in_japanese(tmp_path, write_policy):
    write_policy(SAMPLE_POLICY)
    (tmp_path / "m.eml").write_bytes(make_message(to="x@partner.example").as_bytes())
    env = dict(__import__("os").environ, LANG="ja_JP.UTF-8")
    out = run_cli("check", str(tmp_path / "m.eml"), env=env)
    assert out.returncode == 0
    text = out.stdout.decode()
    assert "partner.example" in text
    assert "社外" in text  # translated group heading


@pytest.mark.parametrize("name", ["eight_bit_headers", "missing_from", "broken_base64", "nested_20_levels",
                                  "attachment_without_filename"])
def test_troubled_messages_over_smtp_are_held_not_lost(home, helper, write_policy, name):
    write_policy(SAMPLE_POLICY)
    h = helper()
    # mail clients send CRLF lines; smtplib passes bytes through as they are
    smtp_send(h.smtp.port, GOOD_WITH_TROUBLE[name].replace(b"\n", b"\r\n"), to_addrs=["s@partner.example"])
    [item] = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))
    stored = h.outbox.get(item.id, with_bodies=True).raw
    assert stored.replace(b"\r\n", b"\n").rstrip(b"\n") == GOOD_WITH_TROUBLE[name].rstrip(b"\n")


def test_non_mime_bytes_over_smtp_are_held(home, helper, write_policy):
    write_policy(SAMPLE_POLICY)
    h = helper()
    smtp_send(h.smtp.port, b"just some words, no headers at all", to_addrs=["s@partner.example"])
    [item] = wait_for(lambda: h.outbox.list(["awaiting_confirmation"]))
    assert item.check.problems


def test_overlong_line_is_refused_at_smtp_with_a_reason(helper):
    """RFC 5321 lines are at most 1000 octets: the client gets a clear 500 and keeps its message."""
    h = helper()
    raw = GOOD_WITH_TROUBLE["huge_header_line"].replace(b"\n", b"\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        smtp_send(h.smtp.port, raw, to_addrs=["s@partner.example"])
    assert info.value.smtp_code == 500 and b"Line too long" in info.value.smtp_error
    assert h.outbox.list(None) == []


def test_invalid_envelope_recipient_is_refused_with_a_reason(helper):
    h = helper()
    with smtplib.SMTP("127.0.0.1", h.smtp.port) as client:
        client.ehlo()
        client.mail("a@example.co.jp")
        code, text = client.rcpt("not-an-address")
    assert code == 553 and b"not a valid address" in text


# ------------------------------------------------------------------ property-based

addresses = st.builds(
    lambda local, dom, tld: f"{local}@{dom}.{tld}",
    st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    st.sampled_from(["com", "jp", "co.jp", "example", "net"]),
)
EXTERNAL_POLICY = policy.build({"organization.internal_domains": ("example.co.jp",),
                                "confirm.when": "external"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_parse_never_raises_unhandled_on_random_bytes(data):
    try:
        result = message.parse(data, envelope_recipients=["x@partner.example"])
    except MessageError:
        return
    checks.evaluate(result, EXTERNAL_POLICY)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to=st.lists(addresses, min_size=1, max_size=5),
    subject=st.text(max_size=60),
    body=st.text(max_size=300),
    names=st.lists(st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and "\x00" not in s), max_size=3),
)
def test_external_recipient_is_never_allow_when_confirm_external(to, subject, body, names):
    def printable(text: str) -> str:  # header values cannot hold line breaks of any kind
        return "".join(ch for ch in text if ch.isprintable())

    try:
        msg = make_message(to=to, subject=printable(subject), body=body,
                           attachments=[(printable(n) or "x", b"data", "application/octet-stream") for n in names])
        raw = msg.as_bytes()
    except (ValueError, UnicodeError):  # the generator made a value the email package refuses
        return
    result = checks.evaluate(message.parse(raw), EXTERNAL_POLICY)
    if any(not a.endswith("@example.co.jp") and not a.endswith(".example.co.jp") for a in to):
        assert result.action != "allow"
