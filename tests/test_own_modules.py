"""SendGuard's own modules are never treated as optional: a broken import of one is a bug that shows,
while a missing third-party package of an extra is said clearly."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sendguard import cli


def test_a_broken_own_module_is_not_hidden_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.PluginGroup, "LAZY", {"broken": "sendguard.no_such_module:group"})
    result = CliRunner().invoke(cli.main, ["broken"])
    assert isinstance(result.exception, ModuleNotFoundError), result.output
    assert result.exception.name == "sendguard.no_such_module"


def test_a_missing_third_party_package_is_said_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.PluginGroup, "LAZY", {"extra": "some_uninstalled_extra_pkg:group"})
    result = CliRunner().invoke(cli.main, ["extra"])
    assert result.exit_code == 1
    assert "`sendguard extra` is not available: No module named 'some_uninstalled_extra_pkg'" in result.output
    assert "Install SendGuard with its extras" in result.output


def test_every_web_blueprint_is_registered() -> None:
    from addin import BLUEPRINTS, create_app

    app = create_app(None, {"SECRET_KEY": "x"})
    assert {bp.import_name for bp in app.blueprints.values()} >= set(BLUEPRINTS)
