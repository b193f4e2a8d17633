"""The machine-wide policy cannot be switched off or replaced from the user's environment (issue #15.7)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sendguard import paths, policy
from sendguard.errors import ConfigError

ADMIN = 'locked = ["organization.*", "confirm.when"]\n[organization]\ninternal_domains = ["example.co.jp"]\n' \
        '[confirm]\nwhen = "always"\n'
USER = '[organization]\ninternal_domains = ["evil.example"]\n[confirm]\nwhen = "never"\n'


@pytest.fixture
def no_system_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's real /etc/xdg/SendGuard stays out of the picture: the fixed folder is a temp one."""
    fixed = tmp_path / "fixed-system" / "SendGuard"
    monkeypatch.setattr(paths, "fixed_system_config_dir", lambda: fixed)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    return fixed


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_installer_marker_pins_the_admin_policy_whatever_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_policy: Path) -> None:
    admin = write(tmp_path / "etc" / "policy.toml", ADMIN)
    write(Path(sys.prefix) / paths.INSTALL_MARKER, f'admin_policy = "{admin.as_posix()}"\n')
    user = write(tmp_path / "user.toml", USER)
    for env in ("/nonexistent", str(tmp_path / "empty.toml"), ""):
        monkeypatch.setenv("SENDGUARD_ADMIN_POLICY", env)
        monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "elsewhere"))
        assert paths.admin_policy_source() == (admin, "installer")
        loaded = policy.load(user, paths.admin_policy_file())
        assert loaded.internal_domains == ("example.co.jp",) and loaded.confirm_when == "always"


def test_policy_in_the_fixed_system_folder_beats_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_policy: Path) -> None:
    fixed = write(no_system_policy / "policy.toml", ADMIN)
    monkeypatch.setenv("SENDGUARD_ADMIN_POLICY", "/nonexistent")
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "elsewhere"))
    assert paths.admin_policy_source() == (fixed, "system")


def test_environment_chooses_only_when_nothing_is_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_policy: Path) -> None:
    monkeypatch.setenv("SENDGUARD_ADMIN_POLICY", str(tmp_path / "dev.toml"))
    assert paths.admin_policy_source() == (tmp_path / "dev.toml", "environment")
    monkeypatch.delenv("SENDGUARD_ADMIN_POLICY")
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    assert paths.admin_policy_source() == (tmp_path / "xdg" / "SendGuard" / "policy.toml", "xdg")


@pytest.mark.parametrize("text, expected", [
    ("admin_policy = [", "not valid TOML"),
    ('admin_policy = "relative/policy.toml"', "expected an absolute path"),
    ("admin_policy = 3", "expected an absolute path"),
])
def test_a_broken_marker_fails_closed(text: str, expected: str, no_system_policy: Path) -> None:
    write(Path(sys.prefix) / paths.INSTALL_MARKER, text + "\n")
    with pytest.raises(ConfigError, match=expected) as info:
        paths.admin_policy_file()
    assert paths.INSTALL_MARKER in str(info.value)


def test_a_marker_written_with_a_byte_order_mark_is_read(tmp_path: Path, no_system_policy: Path) -> None:
    """Windows PowerShell 5.1 writes UTF-8 with a BOM; the marker must still pin the policy."""
    admin = tmp_path / "policy.toml"
    (Path(sys.prefix) / paths.INSTALL_MARKER).write_bytes(
        f"\ufeffadmin_policy = '{admin}'\n".encode())
    assert paths.admin_policy_source() == (admin, "installer")


def test_a_misspelt_locked_entry_is_refused_not_ignored(tmp_path):
    """``locked = ["rules.personaldata"]`` locked nothing: every user could loosen the rule the admin meant
    to fix. The file is refused with its line and the entry."""
    admin = tmp_path / "admin.toml"
    admin.write_text('locked = ["rules.blocked_domains", "rules.personaldata"]\n[rules]\npersonal_data = "block"\n',
                     encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        policy.load(None, admin)
    assert "rules.personaldata" in str(err.value) and "admin.toml:1" in str(err.value)
    admin.write_text('locked = ["rules.personal_data", "organization.*", "guard.pause"]\n[rules]\n'
                     'personal_data = "block"\n', encoding="utf-8")
    # guard.pause is no policy setting, but a name the tray and window read (docs/deploy.md)
    assert policy.load(None, admin).locked == ("rules.personal_data", "organization.*", "guard.pause")
