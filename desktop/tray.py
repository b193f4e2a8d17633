"""The tray icon (Qt ``QSystemTrayIcon``) and desktop notifications.

The icon shows how many messages are held, and its menu opens the confirmation window, opens
the approvals window (when that module is installed), pauses the guard (unless the admin policy
locks ``guard.pause``) and quits. Without a system tray (a bare X server, some Wayland desktops)
the helper runs on; notifications then go through ``notify-send`` when it exists, else the log.
Everything here runs on the Qt main thread; other threads call in through ``MainThread.call``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from qtpy import QtCore, QtGui, QtWidgets

from sendguard.i18n import _

log = logging.getLogger(__name__)
PAUSE_LOCK_KEY = "guard.pause"  # (policy.LOCKABLE_OUTSIDE_POLICY)


class MainThread(QtCore.QObject):
    """Runs callables on the Qt main thread (create it there; ``call`` from any thread)."""

    _run = QtCore.Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self._run.connect(self._execute)

    def _execute(self, func: Callable[[], Any]) -> None:
        try:
            func()
        except Exception:
            log.exception("UI callback failed")

    def call(self, func: Callable[[], Any]) -> None:
        self._run.emit(func)


def icon_pixmap(count: int, size: int = 64) -> QtGui.QPixmap:
    """A shield-blue square with a check mark, and a red badge with the held count."""
    pixmap = QtGui.QPixmap(size, size)
    pixmap.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(QtGui.QColor("#1f6feb"))
    painter.setPen(QtCore.Qt.PenStyle.NoPen)
    painter.drawRoundedRect(4, 4, size - 8, size - 8, 12, 12)
    pen = QtGui.QPen(QtGui.QColor("white"), size / 10)
    painter.setPen(pen)
    painter.drawPolyline(QtGui.QPolygonF([QtCore.QPointF(size * .28, size * .52), QtCore.QPointF(size * .44, size * .68),
                                          QtCore.QPointF(size * .72, size * .34)]))
    if count > 0:
        painter.setPen(QtCore.Qt.PenStyle.NoPen)
        painter.setBrush(QtGui.QColor("#d1242f"))
        radius = size * .24
        painter.drawEllipse(QtCore.QPointF(size - radius, radius), radius, radius)
        painter.setPen(QtGui.QColor("white"))
        font = painter.font()
        font.setBold(True)
        font.setPixelSize(int(radius * (1.2 if count < 10 else .9)))
        painter.setFont(font)
        painter.drawText(QtCore.QRectF(size - 2 * radius, 0, 2 * radius, 2 * radius),
                         QtCore.Qt.AlignmentFlag.AlignCenter, str(count) if count < 100 else "99+")
    painter.end()
    return pixmap


def open_approvals(runner: Any) -> None:
    """The supervisor's Approvals window."""
    from . import approvals_window  # imported when first opened: most users never approve anything

    approvals_window.open(runner)


def pause_locked(runner: Any) -> bool:
    """The admin policy may forbid pausing: ``locked = ["guard.pause"]`` (or a pattern matching it)."""
    try:
        return bool(runner.helper.policy.get().is_locked(PAUSE_LOCK_KEY))
    except Exception:
        return True  # cannot tell: do not offer to pause


def _add_action(menu: QtWidgets.QMenu, text: str) -> QtGui.QAction:
    action = menu.addAction(text)
    if action is None:  # Qt always returns the new action; its type stubs allow None
        raise RuntimeError(f"Qt did not add the menu entry {text!r}")
    return action


class Tray:
    """The tray icon; build it on the Qt main thread after the QApplication exists."""

    def __init__(self, runner: Any, gettext: Callable[[str], str], on_open: Callable[[], None],
                 on_quit: Callable[[], None]):
        self.runner = runner
        self._ = gettext
        self.icon: QtWidgets.QSystemTrayIcon | None = None
        self.count = 0
        self.pause_action: Any = None
        self.status: list[str] = []  # what SendGuard waits for (sendguard.waiting), shown atop the menu
        self._status_actions: list[Any] = []
        if not QtWidgets.QSystemTrayIcon.isSystemTrayAvailable():
            log.info("no system tray on this desktop: running without a tray icon")
            return
        t = gettext
        self.icon = QtWidgets.QSystemTrayIcon(QtGui.QIcon(icon_pixmap(0)))
        menu = QtWidgets.QMenu()
        self._open_action = _add_action(menu, t("Open confirmations"))
        self._open_action.triggered.connect(on_open)
        approvals = _add_action(menu, t("Open approvals"))
        approvals.triggered.connect(lambda: open_approvals(runner))
        self.pause_action = menu.addAction(t("Pause guard"))
        self.pause_action.setCheckable(True)
        self.pause_action.setChecked(bool(runner.helper.paused))
        if pause_locked(runner):
            self.pause_action.setEnabled(False)
            self.pause_action.setToolTip(t("Your administrator does not allow pausing SendGuard"))
        self.pause_action.toggled.connect(self.set_paused)
        menu.addSeparator()
        _add_action(menu, t("Quit SendGuard")).triggered.connect(on_quit)
        self.menu = menu  # keep a reference: Qt does not own it
        self.icon.setContextMenu(menu)
        self.icon.activated.connect(lambda reason: on_open()
                                    if reason == QtWidgets.QSystemTrayIcon.ActivationReason.Trigger else None)
        self.set_count(0)
        self.icon.show()

    def set_paused(self, paused: bool) -> None:
        if paused and pause_locked(self.runner):
            if self.pause_action is not None:
                self.pause_action.setChecked(False)
            return
        self.runner.helper.paused = bool(paused)
        log.info("guard %s", "paused" if paused else "resumed")
        self.set_count(self.count)

    def set_status(self, lines: list[str]) -> None:
        """Lines saying what SendGuard waits for (a mail service, the central server, the user): shown as
        the first, greyed entries of the menu and in the tooltip; none when nothing waits."""
        self.status = list(lines)
        if self.icon is None:
            return
        for action in self._status_actions:
            self.menu.removeAction(action)
        self._status_actions = []
        for line in self.status:
            action = QtGui.QAction(line if len(line) <= 120 else line[:117] + "…", self.menu)
            action.setEnabled(False)
            action.setToolTip(line)
            self.menu.insertAction(self._open_action, action)
            self._status_actions.append(action)
        if self.status:
            self._status_actions.append(self.menu.insertSeparator(self._open_action))
        self.set_count(self.count)

    def set_count(self, count: int) -> None:
        self.count = count
        if self.icon is None:
            return
        self.icon.setIcon(QtGui.QIcon(icon_pixmap(count)))
        tip = self._("SendGuard: {count} held").format(count=count)
        if self.runner.helper.paused:
            tip += " — " + self._("paused")
        if self.status:
            tip += "\n" + "\n".join(self.status)
        self.icon.setToolTip(tip)

    def notify(self, title: str, text: str) -> None:
        if self.icon is not None and self.icon.supportsMessages():
            self.icon.showMessage(title, text, QtWidgets.QSystemTrayIcon.MessageIcon.Information, 8000)
            return
        notify_without_tray(title, text)


def notify_without_tray(title: str, text: str) -> None:
    tool = shutil.which("notify-send")
    if tool:
        try:
            subprocess.Popen([tool, "--app-name=SendGuard", title, text], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            return
        except OSError:
            pass
    log.info("notification: %s: %s", title, text)


# Marked for extraction: the tray's words.
TRAY_STRINGS = (_("Open confirmations"), _("Open approvals"), _("Pause guard"), _("Quit SendGuard"),
                _("Your administrator does not allow pausing SendGuard"), _("SendGuard: {count} held"),
                _("paused"))
