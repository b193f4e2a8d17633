"""HTML a mail program does not show but sends: comments (a template's leftovers), <head> with its <title>, and
<script>; not the CSS of <style>. The recipient, and anyone the mail is forwarded to, can read the source. Its text is checked
for personal data and keywords and for encoded files, as a multipart's preamble is; it is never what the message
says (preview, salutation, announced attachment, opt-out), and the body text other rules read stays as it was.
Hostile markup (thousands of unclosed comments, a huge comment, runs of '<') stays within seconds."""

from __future__ import annotations

import html
import random
import re
import time

import pytest
from conftest import SAMPLE_POLICY
from test_hidden_encoded_files import base64_block
from test_hidden_mime import CARD, CSV, HEAD, attached, uuencode
from test_rules import encrypted_zip

from sendguard import checks, detect, extract, message, notify, policy


def my_number() -> str:
    """A 12-digit number with a valid My Number check digit."""
    return next(n for n in (f"12345678901{d}" for d in range(10)) if detect.mynumber_ok(n))


MY_NUMBER = my_number()


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    path = tmp_path_factory.mktemp("html-hidden") / "policy.toml"
    path.write_text(SAMPLE_POLICY, encoding="utf-8")
    return policy.load(path)


def html_message(markup: str, *, head: str = "") -> bytes:
    return (HEAD + "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + f"<html>{head}<body><p>山田様</p>\n<p>いつもお世話になっております。</p>\n{markup}\n"
              "<p>よろしくお願いします。</p></body></html>\n").encode()


def rules(result: checks.CheckResult) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in result.reasons:
        out.setdefault(r.rule, []).append(r.target)
    return out


def evaluate(pol: policy.Policy, raw: bytes) -> checks.CheckResult:
    return checks.evaluate(message.parse(raw), pol, set())


# ---------------------------------------------------------------- ordinary bodies (also timed: see the report)

CSS = "".join(f".c{i} {{ font-family: 'Helvetica Neue', Arial, sans-serif; color: #33{i % 10}3{i % 7}3; padding: {i}px; }}\n"
              for i in range(120))


def newsletter() -> str:
    """A newsletter of about 33,000 characters: a <style> of 120 rules, a preheader hidden by CSS, 40 articles each
    wrapped in Outlook's conditional comments."""
    rows = "".join(
        "<!--[if mso]><table role=presentation width=600><tr><td><![endif]-->"
        f"<table class=c{i} width=\"100%\" cellpadding=0 cellspacing=0><tr><td class=\"c{i}\" style=\"padding:10px\">"
        f"<a href=\"https://news.example.com/article/{i}?utm_source=newsletter&amp;utm_medium=email\">"
        f"<img src=\"https://img.example.com/{i}.png\" alt=\"記事 {i}\" width=560></a>"
        f"<h2 style=\"font-size:18px\">今週のお知らせ {i}：新製品のご案内</h2>"
        "<p style=\"margin:0\">いつもご利用いただきありがとうございます。&nbsp;新しいサービスの提供を開始しました。"
        f"詳しくは<a href=\"https://news.example.com/{i}\">こちら</a>をご覧ください。</p>"
        "</td></tr></table><!--[if mso]></td></tr></table><![endif]-->\n" for i in range(40))
    return ("<!DOCTYPE html><html><head><meta charset=utf-8><title>週刊ニュースレター</title>"
            f"<style type=\"text/css\">{CSS}</style></head><body>"
            "<div style=\"display:none;max-height:0;overflow:hidden\">今週の新製品とイベントのお知らせ</div>\n"
            + rows + "<p>配信停止は<a href=\"https://news.example.com/unsubscribe\">こちら</a></p></body></html>\n")


def outlook_reply() -> str:
    """A short message as Outlook writes it: Word's <style> in a comment (panose digits), conditional comments."""
    return ("<html xmlns:v=\"urn:schemas-microsoft-com:vml\"><head>"
            "<meta http-equiv=Content-Type content=\"text/html; charset=utf-8\">"
            "<meta name=Generator content=\"Microsoft Word 15 (filtered medium)\">"
            "<style><!--\n/* Font Definitions */\n@font-face\n\t{font-family:\"Cambria Math\";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\n"
            "@font-face\n\t{font-family:游ゴシック;\n\tpanose-1:2 11 4 0 0 0 0 0 0 0;}\n"
            "p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{margin:0mm;\n\ttext-align:justify;\n\tfont-size:10.5pt;}\n"
            "@page WordSection1\n\t{size:612.0pt 792.0pt;\n\tmargin:99.25pt 30.0mm 30.0mm 30.0mm;}\n--></style>"
            "<!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext=\"edit\" spidmax=\"1026\" />\n</xml><![endif]-->"
            "<!--[if gte mso 9]><xml>\n<o:shapelayout v:ext=\"edit\">\n<o:idmap v:ext=\"edit\" data=\"1\" />\n"
            "</o:shapelayout></xml><![endif]--></head>"
            "<body lang=JA link=\"#0563C1\" vlink=\"#954F72\" style='text-justify-trim:punctuation'>"
            "<div class=WordSection1><p class=MsoNormal>山田様<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>"
            "<p class=MsoNormal>いつもお世話になっております。<o:p></o:p></p>"
            "<p class=MsoNormal>お見積りの件、承知いたしました。<o:p></o:p></p></div></body></html>\n")


def gmail_reply() -> str:
    return ("<div dir=\"ltr\">山田様<div><br></div><div>いつもお世話になっております。</div>"
            "<div>承知いたしました。</div><div><br></div><div>佐藤</div></div>\n")


# ---------------------------------------------------------------- personal data and keywords

LEFTOVER = ("<!-- 前回のテンプレート\n<table><tr><td>山田 太郎</td><td>{number}</td></tr>\n"
            "<tr><td>佐藤 花子</td><td>東京都</td></tr></table>\n-->")


@pytest.mark.parametrize("number", [CARD, CARD.replace(" ", "&nbsp;"), MY_NUMBER,
                                    f"{MY_NUMBER[:4]}-<b>{MY_NUMBER[4:8]}</b>-{MY_NUMBER[8:]}"])
def test_personal_data_in_a_comment_is_found(pol, number):
    raw = html_message(LEFTOVER.format(number=number))
    parsed = message.parse(raw)
    assert "山田 太郎" not in parsed.body_text  # the recipient's program shows none of it
    result = checks.evaluate(parsed, pol, set())
    assert "personal_data" in rules(result), result.reasons
    assert result.action == "approve"


@pytest.mark.parametrize("head, markup", [
    ("<head><title>【社外秘】価格表</title></head>", ""),
    ("", "<!-- 社外秘: 転送禁止 -->"),
    ("<head><meta charset=utf-8><!-- 社外秘 --><style>p {margin: 0}</style></head>", ""),
    ("", "<script>var note = '社外秘';</script>"),
], ids=["title", "comment", "comment-in-head", "script"])
def test_a_keyword_the_recipient_does_not_see_is_found(pol, head, markup):
    parsed = message.parse(html_message(markup, head=head))
    assert "社外秘" not in parsed.body_text
    result = checks.evaluate(parsed, pol, set())
    assert rules(result).get("keyword") == ["the message body"], result.reasons


@pytest.mark.parametrize("head", [f"<head><title>{CARD}</title></head>",
                                  "<head><script>/* 4111-1111-1111-1111 */</script></head>",
                                  "<head><style>p {margin: 0}</style><!-- 4111-1111-1111-1111 --></head>"])
def test_a_card_number_in_the_head_is_found(pol, head):
    assert "personal_data" in rules(evaluate(pol, html_message("", head=head)))


@pytest.mark.parametrize("markup", [
    f'<img src="cid:list" alt="顧客 山田 太郎 {CARD}">',
    f"<img src=cid:list alt='{CARD}' width=1>",
    f'<span title="{CARD}">カード</span>',
    f"<input type=text value={MY_NUMBER[:4]}-{MY_NUMBER[4:8]}-{MY_NUMBER[8:]}>",
    f'<td aria-label="My Number {MY_NUMBER}">●●●●</td>',
], ids=["img-alt", "alt-single-quotes", "title", "input-value-bare", "aria-label"])
def test_personal_data_in_attribute_text_is_found(pol, markup):
    """Text a mail program shows only for an image it did not load (most do not, by default), on hover, to a
    screen reader or in a form field: it travels with the message, so it is checked like the source not shown."""
    parsed = message.parse(html_message(markup))
    assert CARD not in parsed.body_text and MY_NUMBER not in parsed.body_text
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set())), parsed.hidden_text


def test_a_keyword_in_an_image_description_is_found(pol):
    parsed = message.parse(html_message('<img src="cid:chart" alt="【社外秘】来期価格表" title="社外秘">'))
    assert rules(checks.evaluate(parsed, pol, set())).get("keyword") == ["the message body"]


def test_ordinary_attributes_raise_nothing(pol):
    markup = ('<a href="https://example.co.jp/?id=4111111111111111" title="当社サイト">サイト</a>'
              '<img src="cid:logo" alt="Example 株式会社 ロゴ" width="120"><div data-value="4111 1111 1111 1111">x</div>')
    parsed = message.parse(html_message(markup))
    assert "当社サイト" in parsed.hidden_text and "ロゴ" in parsed.hidden_text
    assert not {"personal_data", "keyword"} & set(rules(checks.evaluate(parsed, pol, set())))


def test_css_is_not_read(pol):
    """The CSS of a <style>, as Outlook writes it (in a comment) or a newsletter's template: written by a program,
    full of digits (font 'panose' numbers), and the costliest part of a newsletter to read for personal data."""
    head = ("<head><style><!--\n@font-face {font-family:游ゴシック; panose-1:2 11 4 0 0 0 0 0 0 0;}\n"
            "/* 社外秘 */ p.MsoNormal {margin:0mm;}\n--></style></head>")
    parsed = message.parse(html_message("", head=head))
    assert "panose" not in parsed.hidden_text and "panose" not in parsed.body_text
    assert "keyword" not in rules(checks.evaluate(parsed, pol, set()))


def test_a_plain_text_comment_with_angle_brackets_is_read_whole(pol):
    """A comment holds whatever was pasted: a stray '<' does not hide the text after it."""
    raw = html_message(f"<!-- <<控え>> 価格 < 100 円, card {CARD} -->")
    assert "personal_data" in rules(evaluate(pol, raw))


def test_a_card_number_in_a_comment_of_a_forwarded_message_is_found(pol):
    inner = (b"From: a@example.co.jp\nTo: b@example.co.jp\nSubject: fwd\nMIME-Version: 1.0\n"
             b"Content-Type: text/html; charset=utf-8\n\n<p>hello</p><!-- " + CARD.encode() + b" -->\n")
    result = evaluate(pol, attached(inner))
    assert rules(result).get("personal_data") == ["fwd.eml"], result.reasons


def test_a_card_number_in_a_comment_of_an_html_attachment_is_found(pol):
    """An attached HTML file is read as the body is: a browser shows its source on request."""
    page = f"<html><body><p>report</p><!-- {CARD} --></body></html>".encode()
    raw = (HEAD + 'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nsee the file\n'
           '--b\nContent-Type: text/html; name="report.html"\nContent-Disposition: attachment; filename="report.html"\n\n'
           + page.decode() + "\n--b--\n").encode()
    result = evaluate(pol, raw)
    assert rules(result).get("personal_data") == ["report.html"], result.reasons


# ---------------------------------------------------------------- encoded files in a comment

def test_a_begin_base64_locked_zip_in_a_comment_is_ppap(pol):
    parsed = message.parse(html_message("<!--\n" + base64_block("見積.zip", encrypted_zip()) + "-->"))
    assert [f.name for f in parsed.hidden_files] == ["見積.zip"]
    assert "encrypted" in parsed.hidden_files[0].flags
    assert any("見積.zip" in p and "begin-base64" in p for p in parsed.problems), parsed.problems
    assert rules(checks.evaluate(parsed, pol, set())).get("encrypted_attachment") == ["見積.zip"]


def test_a_uuencoded_list_in_a_comment_is_read_as_written(pol):
    """A comment holds the lines as they were pasted, '<' and '>' included (no HTML escaping)."""
    block = uuencode("名簿.csv", CSV)
    assert "<" in block or ">" in block or "&" in block
    parsed = message.parse(html_message(f"<!-- {block} -->"))
    assert [f.name for f in parsed.hidden_files] == ["名簿.csv"]
    assert any("名簿.csv" in p and "checked its content" in p for p in parsed.problems), parsed.problems
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_a_cut_off_block_in_a_comment_is_not_shown_as_checked():
    block = base64_block("list.csv", CSV * 20)
    parsed = message.parse(html_message("<!--\n" + block[: len(block) // 2] + "-->"))
    [problem] = [p for p in parsed.problems if "list.csv" in p]
    assert "could not read it" in problem and "end line" in problem


# ---------------------------------------------------------------- never what the message says

def test_hidden_html_is_no_preview_and_says_nothing(pol):
    markup = ("<!-- 資料を添付します。配信停止はこちら unsubscribe 4111 1111 1111 1111 -->"
              "<script>document.write('添付ファイル')</script>")
    raw = html_message(markup, head="<head><title>添付のご案内</title><style>p {color: red}</style></head>")
    parsed = message.parse(raw)
    for hidden in ("添付", "unsubscribe", "color", "4111"):
        assert hidden not in parsed.body_text
        assert hidden not in notify.preview_text(raw)
    assert "山田様" in notify.preview_text(raw)
    result = checks.evaluate(parsed, pol, set())
    assert "missing_attachment" not in rules(result)  # the announced file is in a comment: nobody reads it
    assert "personal_data" in rules(result)
    assert "missing_attachment" in rules(evaluate(pol, html_message("<p>資料を添付します。</p>")))  # (when shown)


def test_the_body_text_of_ordinary_html_is_unchanged():
    markup = ("<head><title>t</title>\n<style>p {margin:0}</style></head><body><p>山田様</p><!-- x -->"
              "<div>4111&nbsp;1111<span>&nbsp;1111</span> 1111</div><table><tr><td>a</td><td>b</td></tr></table>")
    text, unshown = extract.html_parts(markup)
    assert text == extract.html_to_text(markup) == old_html_to_text(markup)
    assert extract.unshown_text(unshown).split() == ["t", "x"]  # the title and the comment, not the CSS


def test_ordinary_html_raises_nothing(pol):
    for markup in (newsletter(), outlook_reply()):
        raw = (HEAD + "Content-Type: text/html; charset=utf-8\n\n" + markup).encode()
        parsed = message.parse(raw)
        assert parsed.problems == [] and parsed.hidden_files == []
        assert parsed.hidden_text  # the title, Outlook's conditional comments: read, found harmless
        assert not {"personal_data", "keyword"} & set(rules(checks.evaluate(parsed, pol, set())))


def test_html_with_nothing_unshown_pays_for_nothing(monkeypatch):
    def refuse(source: str) -> str:
        raise AssertionError("read unshown text of a body that has none")

    monkeypatch.setattr(extract, "unshown_text", refuse)
    parsed = message.parse(html_message("<div>見積書を添付いたします。<br></div>" * 50))
    assert parsed.hidden_text == "" and parsed.problems == []


# ---------------------------------------------------------------- the body text is exactly the old one

def old_html_to_text(markup: str) -> str:
    """html_to_text before the hidden parts were kept (a regex pass each; quadratic on some hostile markup)."""
    markup = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)
    markup = re.sub(r"(?s)<!--.*?-->", "", markup)
    markup = re.sub(r"(?i)<\s*/?\s*(?:p|div|br|tr|li|h[1-6]|table|section|article|blockquote|pre|hr|dd|dt|ul|ol)"
                    r"\b[^>]*>", "\n", markup)
    markup = re.sub(r"(?i)<\s*/?\s*(?:td|th)\b[^>]*>", "\t", markup)
    markup = re.sub(r"(?s)<[^>]*>", "", markup)
    return extract.normalize_spaces(html.unescape(markup))


TOKENS = ["<", ">", "/", " ", "\n", "<!--", "-->", "--", "!", "<script>", "</script>", "</SCRIPT >", "<script",
          "</script", "<style type=x>", "</style>", "<head>", "</head>", "<header>", "<title>", "</title>", "<p>",
          "</p>", "< p >", "< / div>", "<br/>", "<td>", "</th >", "<tr", "<span>", "</span>", "&nbsp;", "&amp;",
          "&lt;", "4111", "1111", "社外秘", "x", "\xa0", "\u3000", "<ſcript>", "</ſcript>", "<scrİpt>", "<Style>",
          "</STYLE>", "<HEAD >", "<!-->", "<!--->", "<h1>", "<h7>", "<pre>", "</pre>", "\t", "'", '"']


def test_the_body_text_is_the_old_one_for_any_markup():
    """Random tag soup and the documents above read exactly as before, the shown text as the old regexes gave it."""
    rng = random.Random(20240601)
    samples = [newsletter(), outlook_reply(), gmail_reply(), "", "<", "<!--", "-->", "<script>", "</script>",
               "<!-- a --><!-- b", "<script>a</style><style>b</script>", "<head><!-- </head> -->x</head>y"]
    samples += ["".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 60))) for _ in range(3000)]
    for markup in samples:
        assert extract.html_to_text(markup) == old_html_to_text(markup), repr(markup)


# ---------------------------------------------------------------- hostile markup

@pytest.mark.parametrize("markup", [
    "<!--" * 50_000,  # thousands of unclosed comments: 54 s
    "<" + " " * 20_000 + "x",  # one '<' and a run of spaces: 44 s
    "<" + " " * 10_000 + "/" + " " * 10_000 + "x>",
    "<" * 200_000,  # 27 s
    "<script>" * 25_000,  # 24 s
    "<style><script>" * 15_000 + "</script>",
    "<p " * 50_000,  # 12 s
    "<head>" * 50_000 + "</head>",
    "<head><style>" * 30_000 + "</head>",
    "<img alt=" * 50_000 + ">",
    "<img alt='" * 50_000 + ">",
    '<p title="' + "=" * 100_000 + '">',
], ids=["unclosed-comments", "lt-spaces", "lt-spaces-slash", "lt", "unclosed-script", "mixed-unclosed", "unclosed-p",
        "heads", "styles-in-head", "alt-runs", "alt-quote-runs", "equals-in-a-title"])
def test_hostile_markup_is_read_in_linear_time(markup):
    started = time.monotonic()
    parsed = message.parse(html_message(markup))
    assert time.monotonic() - started < 5
    assert parsed.body_text.split()[:2] == ["山田様", "いつもお世話になっております。"]


def test_a_huge_comment_is_read_up_to_the_limit(pol):
    filler = "顧客一覧 " * (message.TEXT_SCAN_LIMIT // 2)
    started = time.monotonic()
    parsed = message.parse(html_message(f"<!-- {CARD}\n{filler}\n{MY_NUMBER} -->"))
    assert time.monotonic() - started < 10
    assert len(parsed.hidden_text) <= message.TEXT_SCAN_LIMIT
    assert CARD in parsed.hidden_text and MY_NUMBER not in parsed.hidden_text  # past the limit
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_an_unclosed_comment_is_read_to_the_end(pol):
    """A comment with no end hides the rest of the page in a mail program; the shown text (as before) had its text
    up to the next '>' taken for a tag, so nothing checked it."""
    started = time.monotonic()
    parsed = message.parse(html_message(f"<!-- {CARD} " + "x" * 1_000_000))
    assert time.monotonic() - started < 5
    assert CARD not in parsed.body_text
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))


def test_many_comments_stay_bounded(pol):
    comments = "".join(f"<!-- row {i} --><p>{i}</p>" for i in range(100_000))
    started = time.monotonic()
    parsed = message.parse(html_message(comments + f"<!-- {CARD} -->"))
    assert time.monotonic() - started < 10
    assert len(parsed.hidden_text) <= message.TEXT_SCAN_LIMIT
    assert "row 99999" in parsed.hidden_text
    assert "personal_data" in rules(checks.evaluate(parsed, pol, set()))
