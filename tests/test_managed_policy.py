"""Policy from device management (issue #15.3): Group Policy registry values on Windows, a configuration
profile's managed preferences on macOS; both locked over the machine policy file and the user's file;
``doctor`` shows where each value came from. Also checks the ADMX/ADML templates and the profile."""

from __future__ import annotations

import json
import plistlib
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_message

from sendguard import checks, managed, message, paths, policy
from sendguard.cli import main as cli
from sendguard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import build_installer as bi  # noqa: E402

ADMX = ROOT / "packaging/windows/admx"
NS = {"p": "http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions"}

MACHINE_FILE = 'locked = ["rules.blocked_domains"]\n[organization]\ninternal_domains = ["file.example"]\n' \
               '[rules]\nblocked_domains = ["rival.example"]\n'
USER_FILE = '[organization]\ninternal_domains = ["user.example"]\n[confirm]\nwhen = "never"\ncountdown_seconds = 3\n'
# as Group Policy writes them from SendGuard.admx: REG_MULTI_SZ, REG_SZ, REG_DWORD
GPO = {"organization": {"internal_domains": ["example.co.jp", "example.com"]},
       "confirm": {"when": "always", "countdown_seconds": 5},
       "rules": {"auto_bcc": 1}}


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    registry: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(managed, "PLATFORM", "win32")
    monkeypatch.setattr(managed, "REGISTRY_READER", lambda: registry)
    return registry


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    admin = tmp_path / "machine.toml"
    admin.write_text(MACHINE_FILE, encoding="utf-8")
    user = tmp_path / "user.toml"
    user.write_text(USER_FILE, encoding="utf-8")
    return user, admin


def test_group_policy_values_are_locked_over_both_files(windows: dict, files: tuple[Path, Path]) -> None:
    user, admin = files
    before = policy.load(user, admin)
    assert before.internal_domains == ("user.example",) and before.confirm_when == "never"
    windows.update(GPO)
    after = policy.load(user, admin)
    assert after.internal_domains == ("example.co.jp", "example.com")
    assert after.confirm_when == "always" and after.countdown_seconds == 5 and after.auto_bcc is True
    assert after.blocked_domains == ("rival.example",)  # the file's own lock still holds
    for key in ("organization.internal_domains", "confirm.when", "rules.auto_bcc", "rules.blocked_domains"):
        assert after.is_locked(key)
    # what the user sees: an external recipient must be confirmed although the user said "never"
    parsed = message.parse(make_message(to="x@partner.example").as_bytes(), "taro@example.co.jp",
                           ["x@partner.example"])
    assert checks.evaluate(parsed, after, set(), str).action != "allow"


def test_policy_holder_notices_a_group_policy_change(windows: dict, files: tuple[Path, Path]) -> None:
    user, admin = files
    holder = policy.PolicyHolder(user, admin)
    assert holder.get().confirm_when == "never"
    windows.update(GPO)
    assert holder.get().confirm_when == "always"


@pytest.mark.parametrize("registry, key, expected", [
    ({"confirm": {"when": "sometimes"}}, "confirm.when", "sometimes"),
    ({"confirm": {"bogus": 1}}, "confirm.bogus", "unknown policy value"),
    ({"rules": {"auto_bcc": "yes"}}, "rules.auto_bcc", "REG_DWORD"),
])
def test_a_bad_group_policy_value_is_refused_naming_the_registry(
        windows: dict, files: tuple[Path, Path], registry: dict, key: str, expected: str) -> None:
    windows.update(registry)
    with pytest.raises(ConfigError) as info:
        policy.load(*files)
    assert "HKLM\\Software\\Policies\\SendGuard" in str(info.value) and key in str(info.value)
    assert expected in str(info.value)


def test_macos_profile_values_are_locked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         files: tuple[Path, Path]) -> None:
    """The profile build_installer makes, as macOS lays it out in /Library/Managed Preferences."""
    monkeypatch.setattr(managed, "PLATFORM", "darwin")
    monkeypatch.setattr(managed, "MAC_MANAGED_DIR", tmp_path / "Managed Preferences")
    profile = plistlib.loads(bi.mobileconfig(
        '[organization]\ninternal_domains = ["example.co.jp"]\n[approval]\napprovers = ["boss@example.co.jp"]\n'
        '[[approval.route]]\nsenders = ["*@sales.example.co.jp"]\napprovers = ["lead@example.co.jp"]\n'))
    assert profile["PayloadType"] == "Configuration" and profile["PayloadScope"] == "System"
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == managed.MAC_DOMAIN
    managed.MAC_MANAGED_DIR.mkdir()
    (managed.MAC_MANAGED_DIR / f"{managed.MAC_DOMAIN}.plist").write_bytes(plistlib.dumps(payload))
    loaded = policy.load(*files)
    assert loaded.internal_domains == ("example.co.jp",) and loaded.approvers == ("boss@example.co.jp",)
    assert loaded.approvers_for("a@sales.example.co.jp") == ("lead@example.co.jp",)
    assert loaded.confirm_when == "never"  # not in the profile: the user's choice stands
    assert loaded.is_locked("approval.route")


def test_doctor_shows_where_each_value_came_from(windows: dict, files: tuple[Path, Path], home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    user, admin = files
    (home / "policy.toml").write_text(USER_FILE, encoding="utf-8")
    monkeypatch.setenv("SENDGUARD_ADMIN_POLICY", str(admin))
    monkeypatch.setattr(paths, "fixed_system_config_dir", lambda: home / "no-system-policy")
    windows.update({"confirm": {"when": "always"}})
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    machine = next(r for r in report if r["check"] == "machine policy")
    assert str(admin) in machine["detail"] and "HKLM\\Software\\Policies\\SendGuard" in machine["detail"]
    values = {r["key"]: r for r in report if r["check"] == "policy value"}
    assert values["confirm.when"]["value"] == "always"
    assert values["confirm.when"]["source"].startswith("Group Policy HKLM\\Software\\Policies\\SendGuard")
    assert values["confirm.countdown_seconds"]["source"] == f"user policy {home / 'policy.toml'}"
    assert values["organization.internal_domains"]["value"] == ["user.example"]
    assert values["rules.blocked_domains"]["source"] == f"machine policy {admin} (locked)"
    text = CliRunner().invoke(cli, ["doctor"]).output
    assert 'confirm.when = "always": Group Policy' in text


# --------------------------------------------------------------------------- the templates themselves
def _strings(adml: Path) -> tuple[set[str], set[str]]:
    root = ET.parse(adml).getroot()
    strings = {s.get("id") for s in root.iterfind(".//p:stringTable/p:string", NS)}
    presentations = {p.get("id") for p in root.iterfind(".//p:presentationTable/p:presentation", NS)}
    return strings, presentations  # type: ignore[return-value]


def test_admx_covers_every_registry_key_and_each_adml_every_string() -> None:
    admx = ET.parse(ADMX / "SendGuard.admx").getroot()
    assert admx.tag == f"{{{NS['p']}}}policyDefinitions"
    text = (ADMX / "SendGuard.admx").read_text(encoding="utf-8")
    wanted_strings = set(re.findall(r"\$\(string\.([A-Za-z0-9_]+)\)", text))
    wanted_presentations = set(re.findall(r"\$\(presentation\.([A-Za-z0-9_]+)\)", text))
    seen: dict[str, str] = {}
    categories = {c.get("name") for c in admx.iterfind(".//p:categories/p:category", NS)}
    for pol in admx.iterfind(".//p:policies/p:policy", NS):
        assert pol.get("class") == "Machine"
        section = pol.get("key", "").removeprefix("Software\\Policies\\SendGuard\\")
        assert section in categories
        assert pol.find("p:parentCategory", NS).get("ref") == section  # type: ignore[union-attr]
        names = [pol.get("valueName")] + [e.get("valueName") for e in pol.iterfind("p:elements/*", NS)]
        (name,) = [n for n in names if n]
        dotted = f"{section}.{name}"
        kind = managed.REGISTRY_KEYS[dotted]
        elements = [e.tag.split("}")[1] for e in pol.iterfind("p:elements/*", NS)]
        assert elements == {"list": ["multiText"], "number": ["decimal"], "choice": ["enum"], "flag": []}[kind]
        if kind == "choice":
            offered = [v.text for v in pol.iterfind(".//p:item/p:value/p:string", NS)]
            assert offered == list(policy._SCHEMA[dotted][2])
        seen[dotted] = kind
    assert seen == managed.REGISTRY_KEYS
    for lang in ("en-US", "ja-JP"):
        strings, presentations = _strings(ADMX / lang / "SendGuard.adml")
        assert wanted_strings <= strings, (lang, wanted_strings - strings)
        assert wanted_presentations <= presentations, (lang, wanted_presentations - presentations)
    ja = (ADMX / "ja-JP" / "SendGuard.adml").read_text(encoding="utf-8")
    assert "社内ドメイン" in ja and "承認者" in ja


def test_every_registry_key_is_a_policy_setting() -> None:
    for dotted in managed.REGISTRY_KEYS:
        assert dotted in policy._SCHEMA, dotted
