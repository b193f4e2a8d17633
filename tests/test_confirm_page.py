"""The confirmation page (/confirm/{id}) of a real helper, driven with Playwright and Debian's Chromium."""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, run_cli

pytestmark = pytest.mark.browser

POLICY = """
[organization]
internal_domains = ["example.co.jp"]
trusted_domains = ["partner.example"]
"""


def artifacts() -> Path:
    path = Path(os.environ.get("ARTIFACTS_DIR", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def english(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("LC_ALL", "LC_MESSAGES", "LANGUAGE"):
        monkeypatch.delenv(var, raising=False)
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    return home


@pytest.fixture
def make_runner(home: Path, runner):
    """A helper with the local API (conftest's ``runner`` factory), optionally with a config.toml."""

    def make(config: str = ""):
        if config:
            (home / "config.toml").write_text(config, encoding="utf-8")
        return runner()

    return make


@pytest.fixture
def helper_runner(make_runner):
    return make_runner()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    pg.errors = []  # type: ignore[attr-defined]
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))  # type: ignore[attr-defined]
    yield pg
    context.close()


def submit(runner, raw: bytes, mail_from: str, rcpts: list[str]) -> str:
    """Submit over SMTP like a mail client; return the outbox id once the check has run."""
    with smtplib.SMTP("127.0.0.1", runner.helper.smtp.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail(mail_from)
        for rcpt in rcpts:
            smtp.rcpt(rcpt)
        code, reply = smtp.data(raw)
    assert code == 250, reply
    item_id = reply.decode().split()[-1]
    deadline = time.time() + 10
    while runner.helper.outbox.get(item_id).state == "received" and time.time() < deadline:
        time.sleep(0.02)
    assert runner.helper.outbox.get(item_id).state == "awaiting_confirmation"
    return item_id


def sample(subject: str = "Quote for March", to=("x@partner.example", "y@other.example"),
           cc=("boss@example.co.jp",), attachments=(("quote.pdf", b"%PDF-1.4\n% quote\n", "application", "pdf"),
                                                    ("notes.txt", b"Meeting notes\n", "text", "plain"))):
    msg = EmailMessage()
    msg["From"] = "me@example.co.jp"
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg.set_content("Hello,\nplease find the quote attached.\n")
    for name, data, maintype, subtype in attachments:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(), [*to, *cc]


def open_page(page, runner, item_id: str, lang: str | None = None):
    url = runner.helper.confirm_url(item_id) + (f"&lang={lang}" if lang else "")
    page.goto(url)
    page.wait_for_selector("body[data-rendered]")
    return page


def wait_state(runner, item_id: str, states: tuple[str, ...], timeout: float = 10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        item = runner.helper.outbox.get(item_id)
        if item.state in states:
            return item
        time.sleep(0.05)
    raise AssertionError(f"{item_id} is {runner.helper.outbox.get(item_id).state}, wanted {states}")


def released(home: Path) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted((home / "sent" / "new").glob("*"))]


def test_check_every_box_remove_and_send(helper_runner, page, home):
    runner = helper_runner
    raw, rcpts = sample()
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    boxes = page.locator("input.check")
    assert boxes.count() == 3 + 2  # one per recipient and per attachment
    assert page.locator("[data-kind=recipient] input.check").count() == 3
    assert page.locator("[data-kind=attachment] input.check").count() == 2
    assert page.locator("#external-heading").text_content() == "External (2)"
    assert page.locator(".domain-name").all_text_contents() == ["partner.example", "other.example"]
    assert page.locator("[data-domain='partner.example'] .badge[data-flag=trusted]").count() == 1
    send = page.locator("#send")
    assert send.is_disabled()
    page.screenshot(path=str(artifacts() / "confirm-page-en.png"), full_page=True)

    # every box but one: still disabled
    for box in boxes.all()[:-1]:
        box.check()
    assert send.is_disabled()
    # remove a recipient instead of checking it
    page.locator("[data-address='y@other.example'] button.remove").click()
    assert page.locator("[data-address='y@other.example'] input.check").is_disabled()
    assert send.is_disabled()  # the last attachment is still unchecked
    boxes.last.check()
    assert send.is_enabled()
    assert page.locator("#progress").text_content() == "4 of 4 checked"
    send.click()
    page.wait_for_selector("body[data-done]")
    item = wait_state(runner, item_id, ("sent",))
    assert item.decision["removed_recipients"] == ["y@other.example"]
    [msg] = released(home)
    assert "y@other.example" not in str(msg["To"])
    assert "x@partner.example" in str(msg["To"])
    assert "boss@example.co.jp" in str(msg["Cc"])
    assert sorted(p.get_filename() for p in msg.iter_attachments()) == ["notes.txt", "quote.pdf"]
    assert page.errors == []


def test_remove_attachment_and_bcc(helper_runner, page, home):
    runner = helper_runner
    raw, rcpts = sample()
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    page.locator("[data-id='2'] button.remove").click()
    page.locator("#bcc").click()
    assert page.locator("[data-address='x@partner.example'] .field").text_content() == "Bcc"
    for box in page.locator("input.check:not(:disabled)").all():
        box.check()
    page.locator("#send").click()
    wait_state(runner, item_id, ("sent",))
    [msg] = released(home)
    assert [p.get_filename() for p in msg.iter_attachments()] == ["quote.pdf"]
    assert "x@partner.example" not in str(msg.get("To", ""))  # moved to Bcc: not in the headers


def test_keyboard_only(helper_runner, page):
    runner = helper_runner
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    for _ in range(40):  # Tab through the page, Space on each checkbox, until Send has focus
        focused = page.evaluate("[document.activeElement.id, document.activeElement.type, "
                                "document.activeElement.checked]")
        if focused[0] == "send":
            break
        if focused[1] == "checkbox" and not focused[2]:
            page.keyboard.press("Space")
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    assert page.locator("#send").is_enabled()
    page.keyboard.press("Enter")  # Enter never sends
    time.sleep(0.3)
    assert runner.helper.outbox.get(item_id).state == "awaiting_confirmation"
    assert page.locator("#alert").is_visible()
    page.keyboard.press("Space")
    wait_state(runner, item_id, ("sent",))


def test_escape_cancels_and_eml_export(helper_runner, page):
    runner = helper_runner
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    page.keyboard.press("Escape")
    page.wait_for_selector("body[data-done=cancelled]")
    assert runner.helper.outbox.get(item_id).state == "cancelled"
    with page.expect_download() as info:
        page.locator("#eml").click()
    path = info.value.path()
    assert Path(path).read_bytes() == runner.helper.outbox.get(item_id, with_bodies=True).raw


def test_japanese_from_config(make_runner, page):
    runner = make_runner('language = "ja"\n')
    raw, rcpts = sample(subject="見積書の送付")
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    assert page.locator("html").get_attribute("lang") == "ja"
    assert page.locator("#send").text_content() == "送信"
    assert page.locator("#cancel").text_content() == "キャンセル"
    assert page.locator("#external-heading").text_content().startswith("社外")
    assert page.locator("#came-from").text_content() == "SMTP 送信"  # where the message came from
    assert "確認" in page.title()
    page.screenshot(path=str(artifacts() / "confirm-page-ja.png"), full_page=True)


def test_chinese_by_query(helper_runner, page):
    runner = helper_runner
    raw, rcpts = sample()
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id, lang="zh")
    assert page.locator("#send").text_content() == "发送"
    assert page.locator("#came-from").text_content() == "SMTP 提交"
    assert page.locator("#external-heading").text_content().startswith("外部")


def test_markup_is_shown_escaped_and_rlo_is_visible(helper_runner, page):
    runner = helper_runner
    evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    msg = EmailMessage()
    msg["From"] = "me@example.co.jp"
    msg["To"] = '"<b onmouseover=alert(1)>Boss</b>" <x@partner.example>'
    msg["Subject"] = evil
    msg.set_content("<script>window.__xss=3</script>")
    msg.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream",
                       filename="invoice\u202efdp.exe")
    msg.add_attachment(b"<svg onload=alert(1)>", maintype="text", subtype="html", filename="<img src=x>.html")
    item_id = submit(runner, msg.as_bytes(), "me@example.co.jp", ["x@partner.example"])
    open_page(page, runner, item_id)
    time.sleep(0.2)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img").count() == 1  # only the (hidden, empty) preview image of the page itself
    assert page.locator("#subject").text_content() == evil
    assert page.locator("[data-kind=recipient] .name").text_content() == "<b onmouseover=alert(1)>Boss</b>"
    row = page.locator("[data-kind=attachment][data-id='1']")
    assert row.locator(".fname").text_content() == "invoice\u27e8RLO\u27e9fdp.exe"
    assert row.locator(".badge[data-flag=bidi]").count() == 1
    assert row.locator(".badge[data-flag=executable]").count() == 1
    assert "\u202e" not in page.locator("#attachments").inner_text()
    page.locator("[data-id='2'] button.open").click()  # preview shows the HTML source as text
    page.wait_for_selector("#preview-text:not([hidden])")
    assert page.locator("#preview-text").text_content() == "<svg onload=alert(1)>"
    assert page.evaluate("window.__xss") is None
    page.screenshot(path=str(artifacts() / "confirm-page-xss.png"), full_page=True)


def test_link_is_single_use_and_scoped(helper_runner, page, browser):
    runner = helper_runner
    raw, rcpts = sample(attachments=())
    first = submit(runner, raw, "me@example.co.jp", rcpts)
    second = submit(runner, raw, "me@example.co.jp", rcpts)
    url = runner.helper.confirm_url(first)
    page.goto(url)
    page.wait_for_selector("body[data-rendered]")
    # the page session opens this message only
    other = page.request.get(f"{runner.base_url}/confirm/{second}/data")
    assert other.status == 403
    # the server, not only the page, insists on every box
    denied = page.request.post(f"{runner.base_url}/api/v1/outbox/{first}/confirm",
                               data={"checked": {"recipients": [], "attachments": []}})
    assert denied.status == 409
    assert denied.json()["error"]["code"] == "not_checked"
    # a second browser cannot reuse the link
    context = browser.new_context()
    again = context.new_page().goto(url)
    assert again.status == 403
    context.close()


def test_any_script_error_keeps_send_disabled(helper_runner, page):
    runner = helper_runner
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    page.evaluate("setTimeout(function () { throw new Error('boom'); }, 0)")
    time.sleep(0.2)
    for box in page.locator("input.check").all():
        box.check()
    assert page.locator("#send").is_disabled()
    assert page.locator("#alert").is_visible()


def test_countdown_holds_send(make_runner, page, home):
    (home / "policy.toml").write_text(POLICY + "\n[confirm]\ncountdown_seconds = 2\n", encoding="utf-8")
    runner = make_runner()
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    for box in page.locator("input.check").all():
        box.check()
    assert page.locator("#send").is_disabled()
    assert "Send in" in page.locator("#send").text_content()
    from playwright.sync_api import expect

    expect(page.locator("#send")).to_be_enabled(timeout=5000)


def test_500_recipients_scroll_and_stay_fast(helper_runner, page):
    runner = helper_runner
    to = ",\r\n ".join(f"user{i}@d{i % 9}.customer{i % 3}.example" for i in range(500))
    raw = (f"From: me@example.co.jp\r\nTo: {to}\r\nSubject: Newsletter\r\nMessage-ID: <many@example.co.jp>\r\n\r\n"
           "hello\r\n").encode()
    item_id = submit(runner, raw, "me@example.co.jp", ["user0@d0.customer0.example"])
    started = time.perf_counter()
    open_page(page, runner, item_id)
    elapsed = time.perf_counter() - started
    assert page.locator("[data-kind=recipient] input.check").count() == 500
    assert page.evaluate("document.getElementById('main').scrollHeight > document.getElementById('main')"
                         ".clientHeight")
    assert elapsed < 3.0, f"500 recipients took {elapsed:.2f} s to render"
    started = time.perf_counter()
    assert page.evaluate("SG.checkAll()") is True
    assert time.perf_counter() - started < 1.0
    page.screenshot(path=str(artifacts() / "confirm-page-500.png"))


# ---------------------------------------------------------------------- issue #11: one test per item
def _tick_and_send(page) -> None:
    for box in page.locator("input.check:not(:disabled)").all():
        box.check()
    page.locator("#send").click()


def test_decided_elsewhere_reaches_the_open_page(helper_runner, page):
    """Item 2: a cancel from another process (the CLI) shows on the open page, not a stale Send."""
    runner = helper_runner
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    done = run_cli("queue", "cancel", item_id)
    assert done.returncode == 0, done.stderr
    page.wait_for_selector("body[data-done=cancelled]", timeout=5_000)
    assert "Decided elsewhere" in page.locator("#done-text").text_content()
    assert not page.locator("#send").is_visible()


def test_held_for_approval_shows_whom_and_what_next(make_runner, page, home):
    """Item 3: Send on a message that needs approval ends on a result screen, not a silent close."""
    (home / "policy.toml").write_text(POLICY + '[approval]\napprovers = ["boss@example.co.jp"]\n'
                                      '[rules]\npersonal_data = "approve"\n', encoding="utf-8")
    runner = make_runner()
    msg = EmailMessage()
    msg["From"] = "me@example.co.jp"
    msg["To"] = "x@partner.example"
    msg["Subject"] = "card"
    msg.set_content("4111 1111 1111 1111")
    item_id = submit(runner, msg.as_bytes(), "me@example.co.jp", ["x@partner.example"])
    open_page(page, runner, item_id)
    _tick_and_send(page)
    page.wait_for_selector("body[data-done=awaiting_approval]")
    text = page.locator("#done-text").text_content()
    assert "Held for approval by boss@example.co.jp" in text
    assert f"sendguard queue show {item_id}" in text and "expires" in text


def test_tab_moves_row_to_row_and_delete_removes(helper_runner, page):
    """Item 5: Tab never lands on Remove (Tab+Space removed a recipient); Delete is the removal key."""
    runner = helper_runner
    raw, rcpts = sample()
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    page.locator(".row input.check").first.focus()
    for _ in range(5):
        page.keyboard.press("Space")
        page.keyboard.press("Tab")
    assert page.locator(".row.removed").count() == 0
    assert page.locator(".row input.check:checked").count() == 5
    page.locator(".row input.check").first.focus()
    page.keyboard.press("Delete")
    assert page.locator(".row.removed").count() == 1
    page.keyboard.press("Delete")  # focus stayed on the row: Delete again restores it
    assert page.locator(".row.removed").count() == 0


def test_excerpt_keeps_line_breaks(helper_runner, page):
    """Item 6: the message excerpt is shown with its lines, not run together."""
    runner = helper_runner
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    assert page.locator("#body").text_content() == "Hello,\nplease find the quote attached."


def test_blocked_message_offers_only_cancel_and_eml(make_runner, page, home):
    """Item 7: a blocked message says so and why, with no Send (which only failed afterwards)."""
    (home / "policy.toml").write_text(POLICY + '[rules]\nblocked_domains = ["rival.example"]\n', encoding="utf-8")
    runner = make_runner()
    raw, rcpts = sample(to=("ceo@rival.example",), cc=(), attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    assert not page.locator("#send").is_visible()
    assert not page.locator("#bcc").is_visible()
    assert page.locator("#cancel").is_enabled()
    assert page.locator("#save-eml").is_visible()
    assert "Blocked by policy" in page.locator("#alert").text_content()
    assert "rival.example" in page.locator("#alert").text_content()
    assert page.locator("input.check:not(:disabled)").count() == 0


def test_undo_countdown_after_send(make_runner, page, home):
    """Item 9: with hold_seconds, Send shows a countdown with Undo; Undo keeps the message unsent."""
    (home / "policy.toml").write_text(POLICY + "[confirm]\nhold_seconds = 30\n", encoding="utf-8")
    runner = make_runner()
    raw, rcpts = sample(attachments=())
    item_id = submit(runner, raw, "me@example.co.jp", rcpts)
    open_page(page, runner, item_id)
    _tick_and_send(page)
    page.wait_for_selector(f"body[data-undo='{item_id}']")
    assert "Sending in" in page.locator("#done-text").text_content()
    page.locator("#undo").click()
    page.wait_for_selector("body[data-done=cancelled]")
    assert runner.helper.outbox.get(item_id).state == "cancelled"
    assert released(home) == []
