"""What the content and name rules read in words and names: a body that says there is no attachment,
salutations that name nobody in particular, kana/kanji look-alike domains and company names of several
words in file names. Each case goes through checks.evaluate, next to the look-alike cases to leave alone."""

from __future__ import annotations

import pytest
from test_rules import CONTACTS, LISTS, OPTOUT, PARITY_POLICY, pdf, run

from sendguard import policy

EXTRA_CONTACTS = """*@ロゴス.jp,,ロゴス
*@カネコ.jp,,カネコ
*@キヤノン.jp,,キヤノン
*@ベリー.jp,,ベリー
*@ロッテ.jp,,ロッテ
*@acme-widgets.example,,Acme Widgets Inc.
*@gj-holdings.example,,Global Japan K.K.
"""


@pytest.fixture(scope="module")
def pol(tmp_path_factory) -> policy.Policy:
    folder = tmp_path_factory.mktemp("words")
    (folder / "contacts.csv").write_text(CONTACTS + EXTRA_CONTACTS, encoding="utf-8")
    (folder / "lists.csv").write_text(LISTS, encoding="utf-8")
    (folder / "optout.csv").write_text(OPTOUT, encoding="utf-8")
    path = folder / "policy.toml"
    path.write_text(PARITY_POLICY, encoding="utf-8")
    return policy.load(path)


def fired(pol, rule, **kwargs):
    return [r for r in run(pol, **kwargs).reasons if r.rule == rule]


# --------------------------------------------------------------- missing_attachment: "添付なし"

@pytest.mark.parametrize("body", [
    "田中さん\n\n議事録は本文に記載します（添付なし）\n",
    "議事録は本文に記載します（添付はありません。）",
    "議事録は本文に記載します（添付ファイルはありません。）",
    "添付なしで失礼します。日程は以下のとおりです。",
    "【添付】なし",
    "添付：なし",
    "今回は資料の添付は不要です。",
    "添付資料はございません。",
    "There is no attachment this time.",
    "Sent without attachments, the figures are below.",
    "Attachments: none",
    "本次邮件没有附件。",
    "本郵件無附件。",
    "附件：无",
])
def test_a_body_saying_there_is_no_attachment_does_not_fire(pol, body):
    assert not fired(pol, "missing_attachment", to="tanaka@example.co.jp", subject="ご連絡", body=body)


@pytest.mark.parametrize("body", [
    "見積書を添付します。",
    "添付ファイルをご確認ください。",
    "前回は添付なしで失礼しました。改めて資料を添付します。",  # the second mention counts
    "資料は添付ないし郵送にてお送りします。",  # ないし: "or"
    "Please do not forget to open the attached file.",
    "Please see the attachment; no changes since last week.",
    "附件无法打开的话请告诉我，请查收附件。",
])
def test_a_body_announcing_an_attachment_still_fires(pol, body):
    assert fired(pol, "missing_attachment", to="tanaka@example.co.jp", subject="ご連絡", body=body)


def test_no_attachment_words_are_fine_when_a_file_is_attached(pol):
    assert not fired(pol, "missing_attachment", to="tanaka@example.co.jp", body="添付します。",
                     attachments=[("q.pdf", pdf(), "application/pdf")])


# --------------------------------------------------------------- name_mismatch: generic salutations

YAMADA = "山田 太郎 <yamada@acorp.example>"


@pytest.mark.parametrize("salutation", [
    "経理ご担当様", "経理ご担当者様", "Aコーポ 経理ご担当者様", "お取引先様", "ご関係者様", "株主様", "お客様",
    "会員様", "会員の皆様", "営業部御中", "取引先各位", "関係者各位",
    "Hi guys,", "Hi all,", "Hello team,", "Hi everyone,", "Dear colleagues,", "Hi folks,", "Dear Sales Team,",
])
def test_salutations_naming_nobody_in_particular_are_ignored(pol, salutation):
    body = f"{salutation}\n\nいつもお世話になっております。"
    assert not fired(pol, "name_mismatch", to=YAMADA, body=body)


@pytest.mark.parametrize("salutation", [
    "鈴木様", "鈴木部長", "Dear Mr Tanaka,", "阿部様", "服部様", "小室様", "皆川様",
    "Dear Mr. All,",  # a title before it: a person's name, however it reads
    "Hi John and team,",
])
def test_real_names_still_fire_when_nobody_in_to_bears_them(pol, salutation):
    body = f"{salutation}\n\nいつもお世話になっております。"
    assert fired(pol, "name_mismatch", to=YAMADA, body=body)


def test_a_real_name_of_a_recipient_does_not_fire(pol):
    assert not fired(pol, "name_mismatch", to=YAMADA, body="経理ご担当 山田様\n\nいつもお世話になっております。")


@pytest.mark.parametrize("salutation", ["経理担当の山田様", "ABC商事の山田様", "営業部の山田太郎様", "Aコーポの山田さん"])
def test_a_recipient_named_after_a_role_or_company_and_no_does_not_fire(pol, salutation):
    """The person is the part after the last の (経理担当の山田様 greets 山田), not the whole phrase."""
    assert not fired(pol, "name_mismatch", to=YAMADA, body=f"{salutation}\n\nいつもお世話になっております。")


@pytest.mark.parametrize("salutation", ["経理担当の鈴木様", "ABC商事の鈴木様", "きのした様", "ゆきの様"])
def test_another_person_after_a_role_and_no_still_fires(pol, salutation):
    """経理担当の鈴木様 to 山田 is the wrong person; a name written in hiragana is not cut at its の."""
    assert fired(pol, "name_mismatch", to=YAMADA, body=f"{salutation}\n\nいつもお世話になっております。")


# --------------------------------------------------------------- lookalike_domain: kana and kanji look-alikes

@pytest.mark.parametrize("to,similar", [
    ("x@口ゴス.jp", "ロゴス.jp"),  # kanji 口 for katakana ロ
    ("x@力ネコ.jp", "カネコ.jp"),  # kanji 力 for katakana カ
    ("x@キャノン.jp", "キヤノン.jp"),  # small ャ for ヤ
    ("x@ロツテ.jp", "ロッテ.jp"),  # large ツ for small ッ
    ("x@べりー.jp", "ベリー.jp"),  # hiragana べ and り for katakana
    ("x@ベリ一.jp", "ベリー.jp"),  # kanji 一 for the long-vowel mark
    ("x@べり一.jp", "ベリー.jp"),
])
def test_kana_and_kanji_look_alikes_are_lookalikes_of_the_contact(pol, to, similar):
    result = run(pol, to=to)
    found = [r for r in result.reasons if r.rule == "lookalike_domain"]
    assert found and similar in found[0].message, [(r.rule, r.message) for r in result.reasons]
    assert "lookalike" in result.recipients[0].flags


@pytest.mark.parametrize("to", ["x@ロゴス.jp", "x@カネコ.jp", "x@キヤノン.jp", "x@ソニー.jp", "x@ロゴ.jp"])
def test_the_known_domain_itself_and_other_kana_domains_are_not_lookalikes(pol, to):
    assert not fired(pol, "lookalike_domain", to=to)


# --------------------------------------------------------------- attachment_name_mismatch: several words

@pytest.mark.parametrize("filename", [
    "Acme Widgets quotation.pdf", "Acme_Widgets_quotation.pdf", "AcmeWidgets_quotation.pdf",
    "Acme-Widgets-quotation.pdf", "見積_acme widgets.pdf", "Global Japan quote.pdf", "global-japan_quote.pdf",
])
def test_a_company_of_several_words_is_found_however_they_are_joined(pol, filename):
    found = fired(pol, "attachment_name_mismatch", to="suzuki@bcorp.example",
                  attachments=[(filename, pdf(), "application/pdf")])
    assert found and found[0].target == filename


@pytest.mark.parametrize("filename", [
    "Acme_quote.pdf", "widgets_catalogue.pdf", "Global_report.pdf", "Japan_sales.pdf", "global japanese.pdf",
    "acmewidget.pdf",
])
def test_a_word_of_a_company_name_alone_does_not_fire(pol, filename):
    assert not fired(pol, "attachment_name_mismatch", to="suzuki@bcorp.example",
                     attachments=[(filename, pdf(), "application/pdf")])


def test_a_company_of_several_words_among_the_recipients_is_fine(pol):
    assert not fired(pol, "attachment_name_mismatch", to="sales@acme-widgets.example",
                     attachments=[("Acme Widgets quotation.pdf", pdf(), "application/pdf")])


# --------------------------------------------------------------- attachment_name_mismatch: mailbox providers

@pytest.fixture(scope="module")
def with_private_contacts(tmp_path_factory) -> policy.Policy:
    """Contacts with a company, and people known only by an address at gmail.com or docomo.ne.jp."""
    folder = tmp_path_factory.mktemp("providers")
    (folder / "contacts.csv").write_text(CONTACTS + "hanako@gmail.com,佐藤 花子,\nichiro@docomo.ne.jp,田中 一郎,\n"
                                         "taro@outlook.jp,山本 太郎,\n", encoding="utf-8")
    (folder / "lists.csv").write_text(LISTS, encoding="utf-8")
    (folder / "optout.csv").write_text(OPTOUT, encoding="utf-8")
    path = folder / "policy.toml"
    path.write_text(PARITY_POLICY, encoding="utf-8")
    return policy.load(path)


@pytest.mark.parametrize("filename", ["gmail_export.csv", "Outlook_設定手順.pdf", "docomo_料金明細.pdf"])
def test_a_file_named_for_a_mailbox_provider_names_no_company(with_private_contacts, filename):
    assert not fired(with_private_contacts, "attachment_name_mismatch", to="suzuki@bcorp.example",
                     attachments=[(filename, pdf(), "application/pdf")])


def test_a_company_contact_still_names_its_company(with_private_contacts):
    assert fired(with_private_contacts, "attachment_name_mismatch", to="suzuki@bcorp.example",
                 attachments=[("acorp_quote.pdf", pdf(), "application/pdf")])
