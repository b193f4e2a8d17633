"""`sendguard policy import --from outlookokan DIR`: OutlookOkan's CSV settings (no header row, UTF-8
with a byte-order mark, CRLF, CsvHelper quoting) become a SendGuard policy; what cannot be mapped is
reported, and a bad folder changes nothing."""

from __future__ import annotations

from pathlib import Path

from conftest import make_message, run_cli

from sendguard import checks, message, policy

# As OutlookOkan's SettingsWindow saves them (CsvHelper, Encoding.UTF8: BOM + CRLF).
FILES = {
    "InternalDomainList.csv": "@example.co.jp\r\n@example.com\r\n",
    "Whitelist.csv": "@partner.example,True\r\ntaro@friend.example,False\r\n",
    "AlertAddressList.csv": "ceo@rival.example,True\r\n@careful.example,False\r\n",
    "AlertKeywordAndMessageList.csv": "社外秘,\"社外秘の資料です。宛先を確認してください\",False\r\n"
                                      "極秘,極秘は送信できません,True\r\n",
    "AlertKeywordAndMessageListForSubject.csv": "至急,件名に「至急」があります,False\r\n",
    "AutoCcBccKeywordList.csv": "契約書,CC,legal@example.co.jp\r\n",
    "AutoCcBccRecipientList.csv": "@customer.example,BCC,archive@example.co.jp\r\n",
    "AutoCcBccAttachedFileList.csv": "BCC,files@example.co.jp\r\n",
    "NameAndDomains.csv": "株式会社Aコーポ,@acorp.example\r\n",
    "AutoDeleteRecipientList.csv": "optout@customer.example\r\n@unsubscribed.example\r\n",
    "ExternalDomainsWarningAndAutoChangeToBccSetting.csv": "5,True,True,True\r\n",
    "AttachmentsSetting.csv": "True,False,False\r\n",
    "DeferredDeliveryMinutes.csv": "@,2\r\nboss@example.co.jp,5\r\n",
    "GeneralSetting.csv": "False,False,False,ja-JP,False,True,False,True,True,True,False,False,False,False,False\r\n",
    "AttachmentProhibitedRecipients.csv": "@nofiles.example\r\n",
}


def okan_folder(tmp_path: Path, files: dict[str, str] = FILES, encoding: str = "utf-8-sig") -> Path:
    folder = tmp_path / "Noraneko" / "OutlookOkan"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode(encoding))
    return folder


def test_import_maps_each_setting_and_reports_the_rest(tmp_path, home):
    out = run_cli("policy", "import", "--from", "outlookokan", str(okan_folder(tmp_path)))
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    loaded = policy.load(home / "policy.toml")

    assert loaded.internal_domains == ("example.co.jp", "example.com")
    assert loaded.trusted_domains == ("partner.example",)
    assert loaded.confirm_when == "always" and loaded.hold_seconds == 120
    assert loaded.many_external_recipients == 5 and loaded.auto_bcc is True
    assert loaded.encrypted_attachment == "confirm" and loaded.missing_attachment == "confirm"
    blocked, warned = loaded.address_rules
    assert blocked.action == "block" and blocked.applies_to("ceo@rival.example")
    assert not blocked.applies_to("press@rival.example")
    assert warned.action == "confirm" and warned.applies_to("x@careful.example")
    assert [(k.pattern, k.action) for k in loaded.keywords] == [("社外秘", "confirm"), ("極秘", "block"),
                                                                ("至急", "confirm")]
    assert loaded.keywords[0].message == "社外秘の資料です。宛先を確認してください"
    assert [(r.when_keyword.pattern if r.when_keyword else None, r.when_recipient, r.when_attachment, r.cc, r.bcc)
            for r in loaded.auto_cc] == [
        ("契約書", (), False, ("legal@example.co.jp",), ()),
        (None, ("*@customer.example",), False, (), ("archive@example.co.jp",)),
        (None, (), True, (), ("files@example.co.jp",)),
    ]
    assert [(c.address, c.company) for c in loaded.contacts] == [("*@acorp.example", "株式会社Aコーポ")]
    assert loaded.suppression.addresses == {"optout@customer.example"}
    assert loaded.suppression.domains == {"unsubscribed.example"}
    assert (home / "files" / "outlookokan-contacts.csv").exists()

    assert "mapped: AutoCcBccRecipientList.csv: 1 recipients -> [[rules.auto_cc]] when_recipient" in text
    assert "not mapped: Whitelist.csv line 2: taro@friend.example (an address, not an @domain)" in text
    assert "not mapped: Whitelist.csv line 1: skipping the confirmation for @partner.example" in text
    assert "not mapped: DeferredDeliveryMinutes.csv line 2: a delay for boss@example.co.jp only" in text
    assert "not mapped: ExternalDomainsWarningAndAutoChangeToBccSetting.csv: prohibiting the send" in text
    assert "not mapped: GeneralSetting.csv: EnableGetExchangeDistributionListMembers" in text
    assert "not mapped: AttachmentProhibitedRecipients.csv (1 rows): SendGuard has no per-recipient ban" in text
    assert "imported from OutlookOkan (2 internal domains, 2 address rules, 3 keywords, 3 automatic" in text


def test_the_imported_policy_acts_as_outlookokan_did(tmp_path, home):
    """The rules work on real messages: the alert message is the reason line, OutlookOkan's "cannot
    send" blocks, the auto Bcc is added, the auto-deleted recipient is removed."""
    assert run_cli("policy", "import", "--from", "outlookokan", str(okan_folder(tmp_path))).returncode == 0
    loaded = policy.load(home / "policy.toml")

    def check(**kwargs):
        raw = make_message(**kwargs).as_bytes()
        return checks.evaluate(message.parse(raw), loaded)

    result = check(to=["a@customer.example", "optout@customer.example"], body="社外秘の見積です")
    keyword = [r for r in result.reasons if r.rule == "keyword"]
    assert [(r.action, r.message) for r in keyword] == [("confirm", "社外秘の資料です。宛先を確認してください")]
    flags = {r.recipient.address: r.flags for r in result.recipients}
    assert "auto_added" in flags["archive@example.co.jp"]
    assert "suppressed" in flags["optout@customer.example"]

    assert check(to="ceo@rival.example").action == "block"
    assert check(to="a@partner.example", body="極秘です").action == "block"
    # false positives next to them: another address at the same company, a word that only looks close
    assert check(to="press@rival.example").action != "block"
    assert not [r for r in check(to="a@partner.example", body="秘密ではありません").reasons if r.rule == "keyword"]


def test_shift_jis_files_from_an_older_copy_are_read(tmp_path, home):
    folder = okan_folder(tmp_path, {"InternalDomainList.csv": "@example.co.jp\r\n",
                                    "AlertKeywordAndMessageList.csv": "社外秘,社外秘です,True\r\n"}, encoding="cp932")
    out = run_cli("policy", "import-outlookokan", str(folder))
    assert out.returncode == 0, out.stderr.decode()
    loaded = policy.load(home / "policy.toml")
    assert [(k.pattern, k.action, k.message) for k in loaded.keywords] == [("社外秘", "block", "社外秘です")]
    assert "not mapped: internal domains" not in out.stdout.decode()


def test_a_bad_value_names_file_and_line_and_changes_nothing(tmp_path, home):
    (home / "policy.toml").write_text("# mine\n", encoding="utf-8")
    folder = okan_folder(tmp_path, {"InternalDomainList.csv": "@example.co.jp\r\n",
                                    "AlertAddressList.csv": "ceo@rival.example,True\r\nx@y.example,perhaps\r\n"})
    out = run_cli("policy", "import", "--from", "outlookokan", str(folder))
    assert out.returncode == 1
    err = out.stderr.decode()
    assert "AlertAddressList.csv:2: IsCanNotSend: expected True or False, got 'perhaps'" in err
    assert "Traceback" not in err
    assert (home / "policy.toml").read_text(encoding="utf-8") == "# mine\n"
    assert not (home / "files").exists()


def test_a_folder_without_outlookokan_settings_is_refused(tmp_path, home):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello", encoding="utf-8")
    out = run_cli("policy", "import", "--from", "outlookokan", str(folder))
    assert out.returncode == 1
    assert "no OutlookOkan settings here" in out.stderr.decode()


def test_no_internal_domains_is_said(tmp_path, home):
    out = run_cli("policy", "import", "--from", "outlookokan",
                  str(okan_folder(tmp_path, {"Whitelist.csv": "@partner.example,False\r\n"})))
    assert out.returncode == 0, out.stderr.decode()
    assert "not mapped: internal domains: OutlookOkan takes the sender's own domain as internal" in out.stdout.decode()
