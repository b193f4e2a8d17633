"""The ja and zh catalogs: complete, placeholders kept, and in step with the marked strings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from sendguard import i18n

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "sendguard" / "locale"
CATALOGS = {"ja": LOCALE / "ja" / "LC_MESSAGES" / "sendguard.po",
            "zh": LOCALE / "zh_Hans" / "LC_MESSAGES" / "sendguard.po"}
PLACEHOLDER = re.compile(r"\{(\w*)\}")
CODE = re.compile(r"`[^`]+`")


def messages(lang: str) -> dict[str, str]:
    with CATALOGS[lang].open("rb") as fh:
        catalog = read_po(fh)
    return {str(m.id): str(m.string) for m in catalog if m.id}


@pytest.mark.parametrize("lang", sorted(CATALOGS))
def test_every_msgid_is_translated(lang: str) -> None:
    found = messages(lang)
    assert len(found) > 100
    empty = [msgid for msgid, text in found.items() if not text.strip()]
    assert not empty, f"untranslated in {lang}: {empty[:10]}"


@pytest.mark.parametrize("lang", sorted(CATALOGS))
def test_placeholders_and_commands_are_kept(lang: str) -> None:
    for msgid, text in messages(lang).items():
        assert sorted(PLACEHOLDER.findall(msgid)) == sorted(PLACEHOLDER.findall(text)), (lang, msgid, text)
        assert sorted(CODE.findall(msgid)) == sorted(CODE.findall(text)), (lang, msgid, text)
        text.format(**{name: "x" for name in PLACEHOLDER.findall(msgid)})  # no stray braces


def test_catalogs_cover_every_marked_string(tmp_path: Path) -> None:
    """A string marked in the code but missing from the catalogs fails here: run pybabel extract/update."""
    pot = tmp_path / "sendguard.pot"
    from babel.messages.frontend import CommandLineInterface

    CommandLineInterface().run(["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), "-k", "_", "-k", "gettext",
                                "-o", str(pot), str(ROOT)])
    with pot.open("rb") as fh:
        wanted = {str(m.id) for m in read_po(fh) if m.id}
    for lang in CATALOGS:
        missing = wanted - set(messages(lang))
        assert not missing, f"{lang} catalog lacks {sorted(missing)[:10]}"


def test_flag_and_action_names_used_by_the_cli_are_translated() -> None:
    from sendguard.checks import ATTACHMENT_FLAGS, MESSAGES, RECIPIENT_FLAGS

    for lang in CATALOGS:
        found = messages(lang)
        for name in (*RECIPIENT_FLAGS, *ATTACHMENT_FLAGS, "allow", "confirm", "approve", "block",
                     *MESSAGES.values()):
            assert found.get(name), (lang, name)


@pytest.mark.parametrize(("tag", "lang"), [("ja_JP.UTF-8", "ja"), ("zh-CN", "zh"), ("zh_Hans", "zh"),
                                           ("en_US", "en"), ("fr_FR", "en"), (None, "en")])
def test_language_tags(tag: str | None, lang: str) -> None:
    assert i18n.normalize(tag) == lang


def test_translator_uses_the_catalogs() -> None:
    assert i18n.translator("ja")("Send") == "送信"
    assert i18n.translator("zh")("Send") == "发送"
    assert i18n.translator("en")("Send") == "Send"
    message = i18n.translator("ja")("{target} is outside your organization").format(target="x@partner.example")
    assert message == "x@partner.example は社外のアドレスです"


# ---------------------------------------------------------------------- issue #11 item 19: errors in the language
def _errors_the_code_raises(home: Path) -> list[str]:
    """Real errors from the real objects (not copies of their text), so a changed message shows here."""
    from sendguard import message
    from sendguard.errors import SendGuardError
    from sendguard.instance import AlreadyRunning
    from sendguard.links import LinkSigner
    from sendguard.service import Helper

    (home / "policy.toml").write_text('[organization]\ninternal_domains = ["example.co.jp"]\n', encoding="utf-8")
    helper = Helper(home)
    out: list[str] = []

    def said(call) -> None:  # noqa: ANN001
        try:
            call()
        except SendGuardError as exc:
            out.append(str(exc))
        else:
            raise AssertionError(f"{call} raised nothing")

    try:
        raw = (b"From: a@example.co.jp\r\nTo: x@partner.example\r\nSubject: s\r\n\r\nbody\r\n")
        item = helper.outbox.submit(raw, "a@example.co.jp", ["x@partner.example"])
        assert item.state == "awaiting_confirmation"
        said(lambda: helper.outbox.get("nosuchid"))
        said(lambda: helper.outbox.confirm(item.id, removed_recipients=["y@partner.example"]))
        said(lambda: helper.outbox.confirm(item.id, removed_attachments=["a.pdf"]))
        helper.outbox.cancel(item.id)
        said(lambda: helper.outbox.cancel(item.id))
        said(lambda: helper.approvals.reject(item.id, "boss@example.co.jp", ""))
        said(lambda: message.parse(b"From: a@example.co.jp\r\nSubject: s\r\n\r\nx\r\n"))
        signer = LinkSigner("k" * 32, "approve")
        said(lambda: signer.load(signer.sign("one"), "two", 60))
        said(lambda: signer.load("garbage", "one", 60))
        out.append(str(AlreadyRunning(home, 4242)))
    finally:
        helper.store.close()
    return out


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_errors_users_meet_are_said_in_their_language(home: Path, lang: str) -> None:
    gettext = i18n.translator(lang)
    for english in _errors_the_code_raises(home):
        said = i18n.localize(english, gettext)
        assert said != english, f"no {lang} template matches {english!r} (sendguard/error_texts.py)"
        assert not re.search(r"\b(cannot|message|the|this)\b", said), (english, said)  # no English left in it


def test_localize_keeps_values_prefixes_and_unknown_text() -> None:
    ja = i18n.translator("ja")
    assert i18n.localize("message 0123abcd is sent: cannot cancel it now", ja) == \
        "メッセージ 0123abcd は「送信済み」のため、今はキャンセルできません"
    prefixed = "/home/u/policy.toml:4 [approval]: this link has already been used"
    assert i18n.localize(prefixed, ja) == "/home/u/policy.toml:4 [approval]: このリンクはすでに使用されています"
    assert i18n.localize("something SendGuard has no template for", ja) == "something SendGuard has no template for"
    assert i18n.localize("message 1 is sent: cannot cancel it now", i18n.translator("en")) == \
        "message 1 is sent: cannot cancel it now"
