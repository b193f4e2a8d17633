"""The tray menu's status lines (issue #16): what SendGuard waits for, atop the menu and in the tooltip.

Real Qt objects on the offscreen platform. A test machine has no tray host, so Qt's availability probe
is answered "yes" (the menu and icon are built exactly as on a desktop that has a tray).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

QtWidgets = pytest.importorskip("qtpy.QtWidgets", reason="Qt is not installed")


@pytest.fixture
def tray(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from desktop import tray as traymod
    from sendguard.i18n import translator
    from sendguard.service import Helper

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # for this process's QApplication only
    _app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["sendguard-test"])
    monkeypatch.setattr(QtWidgets.QSystemTrayIcon, "isSystemTrayAvailable", staticmethod(lambda: True))
    helper = Helper(home)
    runner = SimpleNamespace(helper=helper)
    icon = traymod.Tray(runner, translator("en"), on_open=lambda: None, on_quit=lambda: None)
    assert icon.icon is not None
    yield icon
    icon.icon.hide()
    helper.store.close()


def _texts(tray) -> list[str]:  # noqa: ANN001
    return [a.text() for a in tray.menu.actions() if not a.isSeparator()]


def test_status_lines_come_first_greyed_and_go_away(tray) -> None:  # noqa: ANN001
    plain = _texts(tray)
    assert plain[0] == "Open confirmations"
    lines = ["1 message(s) wait for the mail service to take them (trying again in 4 s). Last answer: 503",
             "Paused: confirmed messages are not released until you resume."]
    tray.set_status(lines)
    actions = [a for a in tray.menu.actions() if not a.isSeparator()]
    assert [a.text() for a in actions[:2]] == lines and not any(a.isEnabled() for a in actions[:2])
    assert tray.menu.actions()[2].isSeparator()  # set apart from the commands
    assert _texts(tray)[2:] == plain
    assert "trying again in 4 s" in tray.icon.toolTip()
    tray.set_status(["x" * 300])  # a long line is cut in the menu, whole in its tooltip
    first = tray.menu.actions()[0]
    assert len(first.text()) == 118 and first.toolTip() == "x" * 300
    tray.set_status([])
    assert _texts(tray) == plain and not tray.menu.actions()[0].isSeparator()
    assert "trying again" not in tray.icon.toolTip()
