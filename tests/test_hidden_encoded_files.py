"""Files encoded into a text body beyond the plain-text uuencode test_hidden_mime covers: a uuencoded block in an
HTML body (in <pre>, with <br> or one paragraph per line, HTML-escaped), and ``begin-base64 <mode> <name>`` ...
``====`` blocks (uuencode -m) in either. Each is found, named, read as an attachment is and gets the rules an
attached file gets; a block that cannot be read in full says so; hostile bodies stay within the budget."""

from __future__ import annotations

import base64
import html
import time

import pytest
from conftest import SAMPLE_POLICY
from test_hidden_mime import CARD, CSV, HEAD, uuencode
from test_rules import encrypted_zip

from sendguard import checks, extract, message, policy

PROGRAM = b"MZ\x90\x00" + b"\x00" * 200


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    path = tmp_path_factory.mktemp("encoded") / "policy.toml"
    path.write_text(SAMPLE_POLICY, encoding="utf-8")
    return policy.load(path)


def rules(result: checks.CheckResult) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in result.reasons:
        out.setdefault(r.rule, []).append(r.target)
    return out


def base64_block(name: str, data: bytes, *, mode: str = "644") -> str:
    """As ``uuencode -m`` writes it: lines of 60 base64 characters, then ``====``."""
    encoded = base64.b64encode(data).decode()
    return f"begin-base64 {mode} {name}\n" + "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60)) \
        + "====\n"


def text_message(body: str) -> bytes:
    return (HEAD + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + body).encode()


def html_message(markup: str) -> bytes:
    return (HEAD + "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + f"<html><body><p>資料をお送りします。</p>\n{markup}\n<p>よろしくお願いします。</p></body></html>\n").encode()


def as_html(block: str, how: str) -> str:
    """A block as a mail program's HTML editor keeps pasted text."""
    lines = block.splitlines()
    if how == "pre":  # Thunderbird's Preformat paragraph
        return "<pre>" + html.escape(block) + "</pre>"
    if how == "br":  # one paragraph, a <br> per line (and no line break in the source)
        return "<div>" + "<br>".join(html.escape(line) for line in lines) + "</div>"
    if how == "outlook":  # Outlook: a paragraph per line, spaces as &nbsp;, indented source
        return "\n".join(f'  <p class=MsoNormal>{html.escape(line).replace(" ", "&nbsp;")}<o:p></o:p></p>'
                         for line in lines)
    raise AssertionError(how)


# ---------------------------------------------------------------- uuencode in an HTML body

@pytest.mark.parametrize("how", ["pre", "br", "outlook"])
def test_a_uuencoded_locked_zip_in_an_html_body_is_ppap(pol, how):
    block = uuencode("x.zip", encrypted_zip())
    markup = as_html(block, how)
    assert html.escape(block) != block  # the block holds characters HTML escapes (< > & " ')
    parsed = message.parse(html_message(markup))
    assert [f.name for f in parsed.hidden_files] == ["x.zip"]
    assert "encrypted" in parsed.hidden_files[0].flags
    assert any("x.zip" in p and "uuencoded" in p for p in parsed.problems), parsed.problems
    result = checks.evaluate(parsed, pol, set())
    assert rules(result).get("encrypted_attachment") == ["x.zip"], result.reasons


@pytest.mark.parametrize("how", ["pre", "br", "outlook"])
def test_a_uuencoded_list_in_an_html_body_is_read(pol, how):
    parsed = message.parse(html_message(as_html(uuencode("名簿.csv", CSV, strip=True), how)))
    assert CARD in parsed.hidden_text
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_a_uuencoded_program_in_an_html_body_needs_approval(pol):
    result = checks.evaluate(message.parse(html_message(as_html(uuencode("tool.exe", PROGRAM), "pre"))), pol, set())
    assert rules(result).get("unsafe_attachment") == ["tool.exe"]
    assert result.action == "approve"


def test_the_same_file_in_both_alternatives_is_one_file(pol):
    """Thunderbird and others send the text twice (plain and HTML): one file, one reason, one problem."""
    block = uuencode("x.zip", encrypted_zip())
    raw = (HEAD + 'Content-Type: multipart/alternative; boundary="b"\n\n'
           f"--b\nContent-Type: text/plain; charset=us-ascii\n\nsee below\n{block}\n"
           f"--b\nContent-Type: text/html; charset=us-ascii\n\n<p>see below</p>{as_html(block, 'pre')}\n--b--\n").encode()
    parsed = message.parse(raw)
    assert [f.name for f in parsed.hidden_files] == ["x.zip"]
    assert len([p for p in parsed.problems if "x.zip" in p]) == 1, parsed.problems
    assert rules(checks.evaluate(parsed, pol, set())).get("encrypted_attachment") == ["x.zip"]


# ---------------------------------------------------------------- begin-base64 (uuencode -m)

@pytest.mark.parametrize("where", ["plain", "html"])
def test_a_begin_base64_locked_zip_is_ppap(pol, where):
    block = base64_block("見積.zip", encrypted_zip())
    raw = text_message("see below\n" + block) if where == "plain" else html_message(as_html(block, "br"))
    parsed = message.parse(raw)
    assert [f.name for f in parsed.hidden_files] == ["見積.zip"]
    assert any("見積.zip" in p and "begin-base64" in p for p in parsed.problems), parsed.problems
    assert rules(checks.evaluate(parsed, pol, set())).get("encrypted_attachment") == ["見積.zip"]


def test_a_begin_base64_list_and_program_are_read(pol):
    raw = text_message("two files\n" + base64_block("list.csv", CSV, mode="0600") + "\n"
                       + base64_block("invoice.pdf", PROGRAM) + "thanks\n")
    parsed = message.parse(raw)
    assert [f.name for f in parsed.hidden_files] == ["list.csv", "invoice.pdf"]
    assert CARD in parsed.hidden_text
    result = checks.evaluate(parsed, pol, set())
    assert "personal_data" in rules(result)
    assert rules(result).get("unsafe_attachment") == ["invoice.pdf"]  # a program under a document's name


def test_a_begin_base64_file_inside_a_forwarded_message(pol):
    from test_hidden_mime import attached

    inner = (b"From: a@example.co.jp\nTo: b@example.co.jp\nSubject: fwd\n\n"
             + base64_block("pw.zip", encrypted_zip()).encode())
    result = checks.evaluate(message.parse(attached(inner)), pol, set())
    assert rules(result).get("encrypted_attachment") == ["fwd.eml"]


def test_the_words_begin_base64_are_no_file():
    parsed = message.parse(text_message("begin-base64 is what uuencode -m writes.\nbegin-base64 644\n====\n"))
    assert parsed.problems == [] and parsed.hidden_files == []


# ---------------------------------------------------------------- blocks that cannot be read in full

def unread(parsed: message.ParsedMessage, name: str) -> str:
    [problem] = [p for p in parsed.problems if name in p]
    assert "could not read it" in problem, problem
    return problem


def test_a_cut_off_begin_base64_block_is_not_shown_as_checked(pol):
    block = base64_block("list.csv", CSV * 20)
    parsed = message.parse(text_message("see below\n" + block[: len(block) // 2]))
    assert "end line" in unread(parsed, "list.csv")
    assert [f.name for f in parsed.hidden_files] == ["list.csv"]
    assert CARD in parsed.hidden_text  # what could be decoded is still checked


def test_a_cut_off_uuencoded_block_is_not_shown_as_checked():
    block = uuencode("list.csv", CSV * 20)
    assert "end line" in unread(message.parse(text_message(block[: len(block) // 2])), "list.csv")


def test_a_block_cut_off_by_the_next_one_is_not_shown_as_checked():
    first = base64_block("a.csv", CSV)
    parsed = message.parse(text_message(first[: len(first) // 2] + "\n" + uuencode("b.csv", CSV)))
    assert "end line" in unread(parsed, "a.csv")
    assert "could not read" not in next(p for p in parsed.problems if "b.csv" in p)


def test_broken_base64_is_not_shown_as_checked(pol):
    lines = base64_block("list.csv", CSV * 5).splitlines(keepends=True)
    lines.insert(3, "this is no base64 at all!\n")
    parsed = message.parse(text_message("".join(lines)))
    assert "base64" in unread(parsed, "list.csv")
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_a_cut_off_locked_zip_holds_the_message(pol):
    """Its end is gone, so the zip cannot be opened (as an attached zip cut short): said, never shown as checked."""
    block = base64_block("x.zip", encrypted_zip())
    parsed = message.parse(text_message(block[:-40]))
    unread(parsed, "x.zip")
    result = checks.evaluate(parsed, pol, set())
    assert any("x.zip" in p and "could not read it" in p for p in result.stored().problems)


# ---------------------------------------------------------------- hostile bodies

def test_thousands_of_begin_lines_without_an_end_stay_fast():
    """Each block used to be searched and decoded to the end of the body: 8000 such lines took 100 s."""
    body = ("begin 644 a.txt\nM" + "0" * 60 + "\n") * 8000 + ("begin-base64 644 b.bin\n" + "A" * 60 + "\n") * 8000
    started = time.monotonic()
    parsed = message.parse(text_message(body))
    assert time.monotonic() - started < 10
    assert [f.name for f in parsed.hidden_files] == ["a.txt", "b.bin"]  # the same name and content: one file
    assert "before the next file" in unread(parsed, "a.txt")
    assert "before the next file" in unread(parsed, "b.bin")


def test_many_different_files_stay_within_the_budget():
    """Files past the message's time budget are not read, and said so: never shown as checked."""
    body = "".join(uuencode(f"f{i}.csv", CSV + str(i).encode()) for i in range(50))
    parsed = message.parse(text_message(body), budget=extract.Budget(seconds=0.0))
    assert len(parsed.hidden_files) == 50
    assert all("could not read it" in p and "longer than" in p for p in parsed.problems[:10]), parsed.problems
    assert "40 more uuencoded files" in parsed.problems[-1] and "could not read" in parsed.problems[-1]


@pytest.mark.parametrize("line", ["A" * 3_000_000, "M" + "!" * 3_000_000, " " * 3_000_000, "=" * 3_000_000])
def test_a_huge_line_is_bounded(line):
    for begin in ("begin 644 a.zip", "begin-base64 644 a.zip"):
        started = time.monotonic()
        parsed = message.parse(text_message(f"{begin}\n{line}\n"))
        assert time.monotonic() - started < 10
        assert "2 million characters" in unread(parsed, "a.zip")
    # a begin line of a million spaces and a stray carriage return (no file: the name is not one line)
    started = time.monotonic()
    message.parse(text_message("begin 644 a.zip" + " " * 1_000_000 + "\rx\n" + line + "\n"))
    assert time.monotonic() - started < 10


def test_a_body_without_begin_pays_for_no_pattern(monkeypatch):
    class Refuse:
        def finditer(self, *args, **kwargs):
            raise AssertionError("scanned a body that has no begin line")

    monkeypatch.setattr(message, "_ENCODED_MARK", Refuse())
    parsed = message.parse(text_message("The beginning of the end; it began at 10.\n" * 100))
    assert parsed.problems == []
    message.parse(html_message("<p>Begin here: <b>beginning</b></p>" * 100))


# ---------------------------------------------------------------- in the quoted message of a reply

def quoted(block: str, marks: str = "> ") -> str:
    return "".join(marks + line + "\n" for line in block.splitlines())


@pytest.mark.parametrize("marks", ["> ", ">", "> > ", ">> "])
def test_a_uuencoded_locked_zip_in_a_quoted_reply_is_ppap(pol, marks):
    """A reply quotes the earlier message, its uuencoded file included: the file goes out again with the reply
    (and a mail program that shows uuencoded files shows it as an attachment of the quoted text)."""
    body = ("承知しました。\n\n2026/12/01 10:00 Taro wrote:\n" + quoted("資料をお送りします。", marks)
            + quoted(uuencode("x.zip", encrypted_zip()), marks) + quoted("パスワードは別途お送りします。", marks))
    parsed = message.parse(text_message(body))
    assert [f.name for f in parsed.hidden_files] == ["x.zip"]
    assert "encrypted" in parsed.hidden_files[0].flags
    assert rules(checks.evaluate(parsed, pol, set())).get("encrypted_attachment") == ["x.zip"]


def test_a_begin_base64_list_in_a_quoted_reply_is_read(pol):
    body = "Thanks.\n\n> Here is the list:\n" + quoted(base64_block("list.csv", CSV))
    parsed = message.parse(text_message(body))
    assert [f.name for f in parsed.hidden_files] == ["list.csv"]
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_a_file_both_sent_and_quoted_is_one_file(pol):
    block = uuencode("x.zip", encrypted_zip())
    parsed = message.parse(text_message(block + "\n> earlier:\n" + quoted(block)))
    assert [f.name for f in parsed.hidden_files] == ["x.zip"]


def test_quoted_words_begin_are_no_file():
    parsed = message.parse(text_message("> We begin at 10 as agreed.\n> begin here\n>> begin 2028 plans\n"))
    assert parsed.hidden_files == []


@pytest.mark.parametrize("body", ["> " * 200_000 + "begin", ("> " * 50 + "begin 644 x\n") * 5_000,
                                  ">" * 300_000 + "\n> begin 644 a\n"])
def test_hostile_quoting_stays_fast(body):
    started = time.monotonic()
    message.parse(text_message(body))
    assert time.monotonic() - started < 10
