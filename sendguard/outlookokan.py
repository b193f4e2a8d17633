"""``sendguard policy import --from outlookokan DIR``: OutlookOkan's settings as a SendGuard policy.

OutlookOkan (the Outlook VSTO add-in by Noraneko) keeps its settings as CSV files without a header row
in ``%APPDATA%\\Noraneko\\OutlookOkan\\`` (UTF-8 with a byte-order mark; older copies were saved by
Excel in Shift_JIS). Each file is one list, each row one entry, columns by position:

- ``Whitelist.csv``: address or ``@domain``, skip confirmation (bool)
- ``InternalDomainList.csv``: ``@domain``
- ``AlertAddressList.csv``: address or ``@domain`` (matched as a substring), cannot send (bool)
- ``AlertKeywordAndMessageList.csv`` / ``AlertKeywordAndMessageListForSubject.csv``: keyword, message,
  cannot send (bool)
- ``AutoCcBccKeywordList.csv``: keyword, CC|BCC, address; ``AutoCcBccRecipientList.csv``: recipient
  (substring), CC|BCC, address; ``AutoCcBccAttachedFileList.csv``: CC|BCC, address
- ``NameAndDomains.csv``: company name, ``@domain``
- ``AutoDeleteRecipientList.csv``: address or ``@domain``
- ``ExternalDomainsWarningAndAutoChangeToBccSetting.csv``: count, warn, prohibit, convert to Bcc
- ``AttachmentsSetting.csv``: warn on an encrypted zip, prohibit it, ...
- ``DeferredDeliveryMinutes.csv``: address or ``@`` (everyone), minutes
- ``GeneralSetting.csv``: one row of switches (see ``_GENERAL``)

Booleans are True/False (or Yes/Y/No/N); CC/BCC are the names (or 1/0). What has a SendGuard
equivalent becomes policy keys and data files (contacts, opt-out list); everything else is listed in
the report as not mapped, with the reason. Nothing replaces the policy in force until the result
loads as the helper would load it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from . import policy
from .errors import ConfigError
from .policy_bundle import decode_settings_text

CONTACTS_FILE = "files/outlookokan-contacts.csv"
OPTOUT_FILE = "files/outlookokan-optout.txt"
_TRUE = {"true", "yes", "y"}
_FALSE = {"false", "no", "n"}
_CC_OR_BCC = {"cc": "cc", "bcc": "bcc", "1": "cc", "0": "bcc"}
_DOMAIN = re.compile(r"^[a-z0-9\u00a0-\uffff-]+(\.[a-z0-9\u00a0-\uffff-]+)+$")
# GeneralSetting.csv columns: (index, name, default)
_GENERAL = ((0, "IsDoNotConfirmationIfAllRecipientsAreSameDomain", False), (1, "IsDoDoNotConfirmationIfAllWhite", False),
            (2, "IsAutoCheckIfAllRecipientsAreSameDomain", False), (4, "IsShowConfirmationToMultipleDomain", False),
            (5, "EnableForgottenToAttachAlert", True), (6, "EnableGetContactGroupMembers", False),
            (7, "EnableGetExchangeDistributionListMembers", False), (8, "ContactGroupMembersAreWhite", True),
            (9, "ExchangeDistributionListMembersAreWhite", True), (10, "IsNotTreatedAsAttachmentsAtHtmlEmbeddedFiles", False),
            (11, "IsDoNotUseAutoCcBccAttachedFileIfAllRecipientsAreInternalDomain", False),
            (12, "IsDoNotUseDeferredDeliveryIfAllRecipientsAreInternalDomain", False),
            (13, "IsDoNotUseAutoCcBccKeywordIfAllRecipientsAreInternalDomain", False),
            (14, "IsEnableRecipientsAreSortedByDomain", False))
# files OutlookOkan has whose rules SendGuard has no equivalent for, and why
_UNMAPPED_FILES = {
    "attachmentprohibitedrecipients.csv": "SendGuard has no per-recipient ban on attachments",
    "attachmentalertrecipients.csv": "SendGuard has no per-recipient attachment warning",
    "recipientsandattachmentsname.csv": "SendGuard has no file-name-to-recipient list (contacts' company names "
                                        "are used by attachment_name_mismatch instead)",
    "keywordandrecipientslist.csv": "SendGuard has no keyword-to-recipient list",
    "forceautochangerecipientstobcc.csv": "SendGuard converts to Bcc only through many_external_recipients + auto_bcc",
    "autoaddmessage.csv": "SendGuard never changes the message text",
    "securityforreceivedmail.csv": "received mail is outside SendGuard",
    "alertkeywordofsubjectwhenopeningmail.csv": "received mail is outside SendGuard",
}


@dataclass
class Report:
    """What the import did: one line per mapped setting, one per setting it could not map (and why)."""

    mapped: list[str] = field(default_factory=list)
    not_mapped: list[str] = field(default_factory=list)


@dataclass
class _Result:
    doc: tomlkit.TOMLDocument
    files: dict[str, str]
    report: Report


class _Folder:
    def __init__(self, folder: Path):
        self.folder = folder
        self.by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
        self.used: set[str] = set()

    def rows(self, name: str) -> list[tuple[int, list[str]]]:
        """(line, cells) of each non-empty row of the file (any letter case); [] when it is absent."""
        path = self.by_name.get(name.lower())
        if path is None:
            return []
        self.used.add(name.lower())
        text = decode_settings_text(path, ("utf-8-sig", "cp932"), "not UTF-8 or Shift_JIS text (OutlookOkan saves UTF-8)")
        reader = csv.reader(io.StringIO(text))
        out = []
        try:
            for row in reader:
                cells = [c.strip() for c in row]
                if any(cells):
                    out.append((reader.line_num, cells))
        except csv.Error as exc:
            raise ConfigError(str(path), f"bad CSV: {exc}", line=reader.line_num) from None
        return out

    def path(self, name: str) -> str:
        return str(self.by_name.get(name.lower(), self.folder / name))


def _cell(cells: list[str], index: int) -> str:
    return cells[index] if index < len(cells) else ""


def _bool(folder: _Folder, name: str, line: int, column: str, value: str, default: bool) -> bool:
    if not value:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(folder.path(name), f"{column}: expected True or False, got {value!r}", line=line)


def _cc_or_bcc(folder: _Folder, name: str, line: int, value: str) -> str:
    field_name = _CC_OR_BCC.get(value.lower())
    if field_name is None:
        raise ConfigError(folder.path(name), f"CcOrBcc: expected CC or BCC, got {value!r}", line=line)
    return field_name


def _domain(entry: str) -> str | None:
    """``@example.co.jp`` / ``example.co.jp`` -> ``example.co.jp``; None when it is not a domain."""
    domain = entry.strip().lower().lstrip("@")
    return domain if _DOMAIN.match(domain) else None


def _address_pattern(entry: str) -> str:
    """OutlookOkan matches an address entry as a substring; SendGuard takes fnmatch patterns."""
    entry = entry.strip().lower()
    if entry.startswith("@") and _domain(entry):
        return f"*{entry}"
    if policy._looks_like_address(entry):
        return entry
    return f"*{entry}*"


def _address(entry: str) -> str | None:
    entry = entry.strip().lower()
    return entry if policy._looks_like_address(entry) and not entry.startswith("*") else None


def convert(folder: Path) -> _Result:
    """A policy document (and its data files) equivalent to an OutlookOkan settings folder."""
    if not folder.is_dir():
        raise ConfigError(str(folder), "not a folder (give OutlookOkan's settings folder, "
                                       "%APPDATA%\\Noraneko\\OutlookOkan)")
    src = _Folder(folder)
    known = {"whitelist.csv", "internaldomainlist.csv", "alertaddresslist.csv", "alertkeywordandmessagelist.csv",
             "alertkeywordandmessagelistforsubject.csv", "autoccbcckeywordlist.csv", "autoccbccrecipientlist.csv",
             "autoccbccattachedfilelist.csv", "nameanddomains.csv", "autodeleterecipientlist.csv",
             "externaldomainswarningandautochangetobccsetting.csv", "attachmentssetting.csv",
             "deferreddeliveryminutes.csv", "generalsetting.csv", *_UNMAPPED_FILES}
    if not known & set(src.by_name):
        raise ConfigError(str(folder), "no OutlookOkan settings here (expected files such as Whitelist.csv, "
                                       "GeneralSetting.csv, AlertAddressList.csv)")
    report = Report()
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Imported from OutlookOkan ({folder})"))
    organization = tomlkit.table()
    confirm = tomlkit.table()
    rules = tomlkit.table()
    files: dict[str, str] = {}
    steps: tuple[Callable[..., None], ...] = (
        _internal_domains, _whitelist, _name_and_domains, _general, _deferred, _external_domains, _attachments,
        _alert_addresses, _alert_keywords, _auto_cc, _auto_delete)
    for step in steps:
        step(src, organization, confirm, rules, files, report)
    for name, why in _UNMAPPED_FILES.items():
        rows = src.rows(name)
        if rows:
            report.not_mapped.append(f"{src.by_name[name].name} ({len(rows)} rows): {why}")
    for name, path in sorted(src.by_name.items()):
        if name.endswith(".csv") and name not in src.used:
            report.not_mapped.append(f"{path.name}: not an OutlookOkan file SendGuard knows; skipped")
    doc["organization"] = organization
    if confirm:
        doc["confirm"] = confirm
    doc["rules"] = rules
    return _Result(doc, files, report)


def _internal_domains(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "InternalDomainList.csv"
    domains: list[str] = []
    for line, cells in src.rows(name):
        domain = _domain(cells[0])
        if domain is None:
            report.not_mapped.append(f"{name} line {line}: {cells[0]!r} is not a domain")
        elif domain not in domains:
            domains.append(domain)
    if domains:
        organization["internal_domains"] = domains
        report.mapped.append(f"{name}: {len(domains)} domains -> [organization] internal_domains")
    else:
        organization["internal_domains"] = []
        report.not_mapped.append("internal domains: OutlookOkan takes the sender's own domain as internal; SendGuard "
                                 "needs them listed: set [organization] internal_domains in policy.toml")


def _whitelist(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "Whitelist.csv"
    trusted: list[str] = []
    for line, cells in src.rows(name):
        entry = cells[0].lower()
        skip = _bool(src, name, line, "IsSkipConfirmation", _cell(cells, 1), False)
        domain = _domain(entry) if entry.startswith("@") else None
        if domain is None:
            report.not_mapped.append(f"{name} line {line}: {cells[0]} (an address, not an @domain): SendGuard trusts "
                                     "whole domains only")
            continue
        if domain not in trusted:
            trusted.append(domain)
        if skip:
            report.not_mapped.append(f"{name} line {line}: skipping the confirmation for {cells[0]}: SendGuard "
                                     "always shows external recipients (confirm.when)")
    if trusted:
        organization["trusted_domains"] = trusted
        report.mapped.append(f"{name}: {len(trusted)} @domains -> [organization] trusted_domains (external, never "
                             "flagged new or look-alike; not pre-ticked as in OutlookOkan)")


def _name_and_domains(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "NameAndDomains.csv"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["address", "name", "company"])
    count = 0
    for line, cells in src.rows(name):
        company, domain = cells[0], _domain(_cell(cells, 1))
        if not company or domain is None:
            report.not_mapped.append(f"{name} line {line}: needs a name and an @domain")
            continue
        writer.writerow([f"*@{domain}", "", company])
        count += 1
    if count:
        files[CONTACTS_FILE] = out.getvalue()
        organization["contacts"] = [CONTACTS_FILE]
        report.mapped.append(f"{name}: {count} names -> contacts file {CONTACTS_FILE} (company per domain: used by "
                             "attachment_name_mismatch and the customer look-alike check, not by a body search)")


def _general(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "GeneralSetting.csv"
    rows = src.rows(name)
    if not rows:
        report.not_mapped.append(f"{name} is absent: SendGuard's defaults are kept (confirm.when = \"external\", "
                                 "missing_attachment = \"confirm\")")
        return
    line, cells = rows[0]
    values = {column: _bool(src, name, line, column, _cell(cells, index), default)
              for index, column, default in _GENERAL}
    if values["IsDoNotConfirmationIfAllRecipientsAreSameDomain"]:
        confirm["when"] = "external"
        report.mapped.append(f"{name}: no confirmation when all recipients are internal -> confirm.when = \"external\"")
    else:
        confirm["when"] = "always"
        report.mapped.append(f"{name}: a confirmation for every message -> confirm.when = \"always\"")
    rules["missing_attachment"] = "confirm" if values["EnableForgottenToAttachAlert"] else "allow"
    report.mapped.append(f"{name}: EnableForgottenToAttachAlert = {values['EnableForgottenToAttachAlert']} -> "
                         f"missing_attachment = \"{rules['missing_attachment']}\"")
    if values["EnableGetExchangeDistributionListMembers"]:
        report.not_mapped.append(f"{name}: EnableGetExchangeDistributionListMembers is an account setting in "
                                 "SendGuard: add the account with --expand-lists (`sendguard accounts add exchange|graph "
                                 "... --expand-lists`)")
    if _cell(cells, 3):
        report.not_mapped.append(f"{name}: LanguageCode {_cell(cells, 3)!r}: SendGuard follows the system language")
    handled = {"IsDoNotConfirmationIfAllRecipientsAreSameDomain", "EnableForgottenToAttachAlert",
               "EnableGetExchangeDistributionListMembers"}
    for _index, column, default in _GENERAL:
        if column not in handled and values[column] != default:
            report.not_mapped.append(f"{name}: {column} = {values[column]} has no SendGuard equivalent")


def _deferred(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "DeferredDeliveryMinutes.csv"
    for line, cells in src.rows(name):
        minutes = _cell(cells, 1)
        if not minutes.isdigit():
            raise ConfigError(src.path(name), f"DeferredMinutes: expected a whole number, got {minutes!r}", line=line)
        if cells[0] == "@":
            seconds = min(int(minutes) * 60, 3600)
            confirm["hold_seconds"] = seconds
            report.mapped.append(f"{name}: {minutes} min for everyone -> confirm.hold_seconds = {seconds}"
                                 + (" (SendGuard's limit is 1 hour)" if int(minutes) > 60 else ""))
        else:
            report.not_mapped.append(f"{name} line {line}: a delay for {cells[0]} only: SendGuard's undo window "
                                     "(confirm.hold_seconds) is the same for every message")


def _external_domains(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "ExternalDomainsWarningAndAutoChangeToBccSetting.csv"
    rows = src.rows(name)
    if not rows:
        return
    line, cells = rows[0]
    count = _cell(cells, 0) or "10"
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(src.path(name), f"TargetToAndCcExternalDomainsNum: expected a whole number, got {count!r}",
                          line=line)
    warn = _bool(src, name, line, "IsWarningWhenLargeNumberOfExternalDomains", _cell(cells, 1), True)
    prohibit = _bool(src, name, line, "IsProhibitedWhenLargeNumberOfExternalDomains", _cell(cells, 2), False)
    to_bcc = _bool(src, name, line, "IsAutoChangeToBccWhenLargeNumberOfExternalDomains", _cell(cells, 3), False)
    if warn or prohibit or to_bcc:
        rules["many_external_recipients"] = int(count)
        rules["auto_bcc"] = to_bcc
        report.mapped.append(f"{name}: {count} external domains -> many_external_recipients = {count} (SendGuard "
                             f"counts external addresses in To/Cc), auto_bcc = {str(to_bcc).lower()}")
    if prohibit:
        report.not_mapped.append(f"{name}: prohibiting the send at that count: SendGuard asks for Bcc instead "
                                 "(many_external_recipients has no block action)")


def _attachments(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "AttachmentsSetting.csv"
    rows = src.rows(name)
    if not rows:
        return
    line, cells = rows[0]
    warn = _bool(src, name, line, "IsWarningWhenEncryptedZipIsAttached", _cell(cells, 0), False)
    prohibit = _bool(src, name, line, "IsProhibitedWhenEncryptedZipIsAttached", _cell(cells, 1), False)
    if prohibit:
        rules["encrypted_attachment"] = "block"
    elif warn:
        rules["encrypted_attachment"] = "confirm"
    if prohibit or warn:
        report.mapped.append(f"{name}: encrypted zip -> encrypted_attachment = \"{rules['encrypted_attachment']}\" "
                             "(SendGuard also detects encrypted Office files and PDFs)")
    else:
        report.not_mapped.append(f"{name}: encrypted zips were not checked; SendGuard keeps its default "
                                 "(encrypted_attachment = \"confirm\")")
    if len([c for c in cells[2:] if c]) > 0:
        report.not_mapped.append(f"{name}: the other attachment switches (columns 3-{len(cells)}) have no SendGuard "
                                 "equivalent; SendGuard inspects every attachment it can read")


def _alert_addresses(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "AlertAddressList.csv"
    block: list[str] = []
    warn: list[str] = []
    for line, cells in src.rows(name):
        pattern = _address_pattern(cells[0])
        target = block if _bool(src, name, line, "IsCanNotSend", _cell(cells, 1), False) else warn
        if pattern not in target:
            target.append(pattern)
    tables = []
    for patterns, action, message in (
            (block, "block", "OutlookOkan: sending to this address is prohibited"),
            (warn, "confirm", "OutlookOkan: an address your organization marked for a warning")):
        if patterns:
            table = tomlkit.table()
            table["match"] = patterns
            table["action"] = action
            table["message"] = message
            tables.append(table)
    if tables:
        _append(rules, "address", tables)
        report.mapped.append(f"{name}: {len(block)} prohibited, {len(warn)} warned addresses -> [[rules.address]] "
                             "(block / confirm; an entry without @domain form matches anywhere in the address)")


def _alert_keywords(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    tables = []
    for name in ("AlertKeywordAndMessageList.csv", "AlertKeywordAndMessageListForSubject.csv"):
        count = 0
        for line, cells in src.rows(name):
            table = tomlkit.table()
            table["pattern"] = re.escape(cells[0])
            table["action"] = "block" if _bool(src, name, line, "IsCanNotSend", _cell(cells, 2), False) else "confirm"
            if _cell(cells, 1):
                table["message"] = _cell(cells, 1)
            tables.append(table)
            count += 1
        if count:
            where = "subject" if "Subject" in name else "body"
            report.mapped.append(f"{name}: {count} keywords -> [[rules.keywords]] (with their messages; SendGuard "
                                 f"looks in the subject, body and attachments, not only the {where}, ignoring case)")
    if tables:
        _append(rules, "keywords", tables)


def _auto_cc(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    tables = []

    def added(name: str, line: int, kind: str, address: str, into: dict[str, list[str]]) -> None:
        found = _address(address)
        if found is None:
            report.not_mapped.append(f"{name} line {line}: {address!r} is not an address to add")
            return
        field_name = _cc_or_bcc(src, name, line, kind)
        if found not in into[field_name]:
            into[field_name].append(found)

    def table_for(key: str, value, into: dict[str, list[str]]) -> None:
        if not into["cc"] and not into["bcc"]:
            return
        table = tomlkit.table()
        table[key] = value
        if into["cc"]:
            table["cc"] = into["cc"]
        if into["bcc"]:
            table["bcc"] = into["bcc"]
        tables.append(table)

    name = "AutoCcBccKeywordList.csv"
    by_keyword: dict[str, dict[str, list[str]]] = {}
    for line, cells in src.rows(name):
        added(name, line, _cell(cells, 1), _cell(cells, 2), by_keyword.setdefault(cells[0], {"cc": [], "bcc": []}))
    for keyword, into in by_keyword.items():
        table_for("when_keyword", re.escape(keyword), into)
    if by_keyword:
        report.mapped.append(f"{name}: {len(by_keyword)} keywords -> [[rules.auto_cc]] when_keyword (subject and body, "
                             "ignoring case)")
    name = "AutoCcBccRecipientList.csv"
    by_recipient: dict[str, dict[str, list[str]]] = {}
    for line, cells in src.rows(name):
        added(name, line, _cell(cells, 1), _cell(cells, 2),
              by_recipient.setdefault(_address_pattern(cells[0]), {"cc": [], "bcc": []}))
    for pattern, into in by_recipient.items():
        table_for("when_recipient", [pattern], into)
    if by_recipient:
        report.mapped.append(f"{name}: {len(by_recipient)} recipients -> [[rules.auto_cc]] when_recipient")
    name = "AutoCcBccAttachedFileList.csv"
    with_file: dict[str, list[str]] = {"cc": [], "bcc": []}
    rows = src.rows(name)
    for line, cells in rows:
        added(name, line, cells[0], _cell(cells, 1), with_file)
    table_for("when_attachment", True, with_file)
    if rows:
        report.mapped.append(f"{name}: {len(rows)} addresses -> [[rules.auto_cc]] when_attachment = true")
    if tables:
        _append(rules, "auto_cc", tables)


def _auto_delete(src: _Folder, organization, confirm, rules, files, report: Report) -> None:
    name = "AutoDeleteRecipientList.csv"
    entries: list[str] = []
    for line, cells in src.rows(name):
        entry = cells[0].lower()
        domain = _domain(entry) if entry.startswith("@") else None
        value = f"*@{domain}" if domain else _address(entry)
        if value is None:
            report.not_mapped.append(f"{name} line {line}: {cells[0]!r} is neither an address nor an @domain")
        elif value not in entries:
            entries.append(value)
    if entries:
        files[OPTOUT_FILE] = "\n".join(entries) + "\n"
        suppression = tomlkit.table()
        suppression["files"] = [OPTOUT_FILE]
        suppression["action"] = "remove"
        rules["suppression"] = suppression
        report.mapped.append(f"{name}: {len(entries)} entries -> [rules.suppression] {OPTOUT_FILE}, action = "
                             "\"remove\" (SendGuard tells the user whom it removed)")


def _append(rules, key: str, tables: list) -> None:
    aot = tomlkit.aot()
    for table in tables:
        aot.append(table)
    rules[key] = aot


def import_folder(folder: Path, home: Path) -> tuple[policy.Policy, Report]:
    """Convert, validate as the helper would load it, then replace the policy and write its files."""
    result = convert(folder)
    text = tomlkit.dumps(result.doc)
    with tempfile.TemporaryDirectory(prefix="sendguard-policy-") as tmpdir:
        staging = Path(tmpdir)
        for relative, content in result.files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(content, encoding="utf-8")
        (staging / "policy.toml").write_text(text, encoding="utf-8")
        loaded = policy.load(staging / "policy.toml")
        home.mkdir(parents=True, exist_ok=True)
        for relative in result.files:
            target = home / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(staging / relative, tmp)
            os.replace(tmp, target)
        tmp = home / "policy.toml.tmp"
        shutil.copyfile(staging / "policy.toml", tmp)
        os.replace(tmp, home / "policy.toml")
    return loaded, result.report
