"""The ja and zh catalogs: complete, placeholders kept, and in step with the marked strings."""

from __future__ import annotations

import ast
import os
import re
import subprocess
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


# ------------------------------------------- item 19: every error text the commands and the policy loader raise
# The modules whose errors users and admins meet at the command line or while a policy/config file is loaded.
ERROR_MODULES = ("sendguard/cli.py", "desktop/cli.py", "addin/cli.py", "sendguard/accounts/exchange.py",
                 "sendguard/accounts/gmail.py", "sendguard/accounts/graph.py", "sendguard/accounts/smtp.py",
                 "sendguard/server_connect.py", "addin/server.py", "sendguard/policy.py", "sendguard/config.py",
                 "sendguard/policy_bundle.py", "sendguard/managed.py", "sendguard/outlookokan.py")
# Raising calls and which argument is the text the user reads.
_RAISERS = {"ClickException": 0, "UsageError": 0, "BadParameter": 0, "ConfigError": 1, "PolicyError": 1, "fail": 1,
            "decode_settings_text": 2}
# Texts that deliberately have no template, each with the reason: (file, "<name>") for a text passed in a variable.
DELIBERATE = {
    ("sendguard/policy.py", "<message>"):
        "_Validator.fail() passes on its caller's text; every caller's text is checked at its fail() call",
    ("sendguard/policy_bundle.py", "<refusal>"):
        "decode_settings_text() passes on its caller's refusal; those are checked at its calls",
    ("sendguard/cli.py", "<localize(full, _error_language())>"):
        "click's own usage error, already said in the language (click's texts have templates of their own)",
    ("addin/cli.py", "<message>"):
        "certs.install_trust() reports the system trust tool's own output (certutil, update-ca-certificates) "
        "with the command line that failed; not a SendGuard sentence",
}


def _sample(node: ast.expr, assigned: dict[str, ast.expr], depth: int = 0) -> list[str] | str:
    """The texts an expression can produce, each value as ``{}``; "<name>" for a text that comes in a variable."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        out = [""]
        for part in node.values:
            piece = part.value if isinstance(part, ast.Constant) else "{}"
            out = [text + str(piece) for text in out]
        return out
    if isinstance(node, ast.Name):
        if node.id in assigned and depth < 3:
            return _sample(assigned[node.id], assigned, depth + 1)
        return f"<{node.id}>"
    if isinstance(node, ast.IfExp | ast.BinOp):
        parts = ((node.body, node.orelse) if isinstance(node, ast.IfExp) else (node.left, node.right))
        left, right = (_sample(part, assigned, depth) for part in parts)
        if isinstance(left, str) or isinstance(right, str):
            return left if isinstance(left, str) else right
        return left + right if isinstance(node, ast.IfExp) else [a + b for a in left for b in right]
    return f"<{ast.unparse(node)}>"


def _raised_texts() -> list[tuple[str, int, list[str] | str]]:
    found = []
    for module in ERROR_MODULES:
        tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
        scope: dict[int, tuple[ast.Call, dict[str, ast.expr]]] = {}
        for body in (tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))):  # innermost wins
            assigned = {n.targets[0].id: n.value for n in ast.walk(body) if isinstance(n, ast.Assign)
                        and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}
            scope.update({id(n): (n, assigned) for n in ast.walk(body) if isinstance(n, ast.Call)})
        for node, assigned in scope.values():
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            index = _RAISERS.get(name)
            if index is None or len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Call) and getattr(arg.func, "id", "") == "str" or isinstance(arg, ast.Attribute):
                continue  # str(exc) / exc.detail: another error's text passed on (its own template applies)
            found.append((module, node.lineno, _sample(arg, assigned)))
    return found


def test_every_error_text_of_the_commands_and_policy_loading_has_a_template() -> None:
    """Static: each text those modules raise is recognised by a template of error_texts (or is listed above)."""
    ja = i18n.translator("ja")
    raised = _raised_texts()
    assert len(raised) > 100
    unmatched, used = [], set()
    for module, line, texts in raised:
        if isinstance(texts, str):  # a text that comes in a variable
            if (module, texts) in DELIBERATE:
                used.add((module, texts))
            else:
                unmatched.append(f"{module}:{line}: {texts} (build the text here, or list it in DELIBERATE)")
            continue
        for text in texts:
            sample = text.replace("{}", "'v'")
            if i18n.localize(sample, ja) == sample:
                unmatched.append(f"{module}:{line}: {text!r}")
    assert not unmatched, "no template in sendguard/error_texts.py for:\n" + "\n".join(unmatched)
    assert used == set(DELIBERATE), f"stale DELIBERATE entries: {set(DELIBERATE) - used}"


# English words a translated error line has no business keeping (option names, keys and values aside)
_ENGLISH = re.compile(r"\b(is|not|the|of|cannot|expected|got|write|unknown|must|say|either|both|folder|known|"
                      r"range|which|needs|first)\b")
_EML = b"From: taro@example.co.jp\r\nTo: x@partner.example\r\nSubject: s\r\n\r\nbody\r\n"


def _error_line(out: subprocess.CompletedProcess[bytes]) -> str:
    assert out.returncode != 0, out.stdout
    lines = [line for line in out.stderr.decode().splitlines() if line.startswith("Error: ")]
    assert lines, out.stderr.decode()
    return lines[-1].removeprefix("Error: ")


@pytest.mark.parametrize(("lang", "system", "word"), [("ja", "ja_JP.UTF-8", "指定"), ("zh", "zh_CN.UTF-8", "请")])
def test_command_and_policy_file_errors_are_said_in_the_language(home: Path, tmp_path: Path, lang: str,
                                                                  system: str, word: str) -> None:
    """Item 19: real commands, real policy.toml/config.toml mistakes; the error line keeps no English sentence."""
    from conftest import run_cli

    (home / "config.toml").write_text(f'language = "{lang}"\n', encoding="utf-8")
    eml = tmp_path / "m.eml"
    eml.write_bytes(_EML)
    said: dict[str, str] = {}
    for name, policy in (("enum", '[confirm]\nwhen = "sometimes"\n'),
                         ("address", '[approval]\napprovers = ["taro.example.co.jp"]\n'),
                         ("section", "[bogus]\nx = 1\n"),
                         ("type", "[confirm]\nhold_seconds = \"ten\"\n")):
        (home / "policy.toml").write_text(policy, encoding="utf-8")
        said[name] = _error_line(run_cli("check", str(eml)))
        assert said[name].startswith(f"{home / 'policy.toml'}:"), said[name]  # file and line kept as they are
    (home / "policy.toml").write_text('[organization]\ninternal_domains = ["example.co.jp"]\n', encoding="utf-8")
    said["resolve"] = _error_line(run_cli("queue", "resolve", "0123456789abcdef", "--sent", "--resend"))
    said["smtp"] = _error_line(run_cli("accounts", "add", "smtp", "--host", "relay.example.co.jp", "--username", "u"))
    said["bundle"] = _error_line(run_cli("policy", "import", str(tmp_path)))
    said["server"] = _error_line(run_cli("server", "token", "issue", "--user", "taro@example.co.jp"))
    okan = tmp_path / "okan"  # OutlookOkan's settings folder: none there, then a bad True/False cell
    okan.mkdir()
    said["okan"] = _error_line(run_cli("policy", "import-outlookokan", str(okan)))
    (okan / "ExternalDomainsWarningAndAutoChangeToBccSetting.csv").write_text("10,maybe\n", encoding="utf-8")
    said["okan_cell"] = _error_line(run_cli("policy", "import", "--from", "outlookokan", str(okan)))
    # config.toml itself wrong: said in the system's language
    (home / "config.toml").write_text("[api]\nport = 70000\n", encoding="utf-8")
    said["config"] = _error_line(run_cli("queue", "list", env={**os.environ, "LANG": system}))
    for name, text in said.items():
        assert not _ENGLISH.search(text.replace(str(tmp_path), "")), (lang, name, text)  # paths aside
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text), (lang, name, text)
    assert word in said["resolve"] and "--sent" in said["resolve"] and "--resend" in said["resolve"]
    assert "'sometimes'" in said["enum"] and "'taro.example.co.jp'" in said["address"]
    assert "70000" in said["config"] and "config.toml:2 [api.port]" in said["config"]


def test_policy_errors_stay_english_without_a_language(home: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    (home / "policy.toml").write_text('[confirm]\nwhen = "sometimes"\n', encoding="utf-8")
    eml = tmp_path / "m.eml"
    eml.write_bytes(_EML)
    assert "'sometimes' is not one of" in _error_line(run_cli("check", str(eml)))


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_click_usage_errors_are_said_in_the_language(home: Path, lang: str) -> None:
    """Item 19: the texts click builds itself (a bad choice, an unknown command or option, a missing or extra
    argument) are said in the configured language too, with the same exit status; English stays English."""
    from conftest import run_cli

    commands = {"choice": ("queue", "list", "--state", "bogus"), "command": ("queue", "frobnicate"),
                "option": ("queue", "list", "--bogus"), "missing": ("queue", "show"),
                "extra": ("queue", "show", "a", "b"), "root option": ("--bogus",)}
    english = {name: run_cli(*args) for name, args in commands.items()}
    (home / "config.toml").write_text(f'language = "{lang}"\n', encoding="utf-8")
    for name, args in commands.items():
        out = run_cli(*args)
        assert out.returncode == 2 == english[name].returncode, (name, out.stderr)
        line = _error_line(out)
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", line), (lang, name, line)
        assert not re.search(r"\b(Invalid|No such|Missing|unexpected|is not one of)\b", line), (lang, name, line)
        assert _error_line(english[name]) != line
    assert "'bogus'" in _error_line(run_cli(*commands["choice"])) and "ITEM_ID" in _error_line(
        run_cli(*commands["missing"]))
