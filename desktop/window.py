"""The confirmation window: pywebview (Qt backend) on the main thread, the helper in background threads.

One window is created hidden at start-up and loads the confirmation page once
(``{base_url}/confirm/_window``, the same HTML/JS as the browser page). When a message enters
``awaiting_confirmation`` the helper pushes its data into the page (``SG.show``) and shows the
window; held messages queue up behind it, one at a time, with a counter. The page's buttons call
back through the pywebview bridge (``Bridge``), which goes through the local HTTP API in-process
with the API token, exactly as the browser page does with its session.

``python -m desktop.window --control`` runs the same window with a line-based JSON control channel
on stdin/stdout; the tests and the latency benchmark drive it that way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sendguard import i18n, shutdown
from sendguard.i18n import _
from sendguard.outbox import Item, State

log = logging.getLogger(__name__)

TITLE = "SendGuard"
PREWARM_MS = 400  # how long the window stays mapped off screen at start-up (first paint and compositor set-up)
SYNC_SECONDS = 0.3  # how often the window re-reads the outbox (changes from other processes show within 1 s)
STATUS_SECONDS = 1.0  # how often the status line (what SendGuard waits for) is brought up to date
ANSWER_SECONDS = 1.0  # at Quit, how long calls from the page get to be answered before the window goes
CLOSE_SECONDS = 3.0  # then how long Qt gets to take the window down and end its loop
HIDDEN_TITLE = _("SendGuard keeps running")
HIDDEN_TEXT = _("Held mail stays held. This desktop has no tray: start SendGuard again (`sendguard serve`) to show "
                "its window, with Pause and Quit.")
WINDOW_STRINGS = (_("Confirm before sending"), _("Held for approval"), _("Released after approval"),
                  _("{subject} waits for approval by {approvers}."), _("{subject} was approved and sent."),
                  _("Save the message as"))


def prepare_environment() -> None:
    """Qt WebEngine refuses to start its sandbox as root; say so once instead of failing."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags = os.environ.get("QTWEBENGINE_CHROMIUM_FLAGS", "")
        if "--no-sandbox" not in flags:
            os.environ["QTWEBENGINE_CHROMIUM_FLAGS"] = (flags + " --no-sandbox").strip()


def _seconds(ms: Any) -> float | None:
    return float(ms) / 1000.0 if isinstance(ms, (int, float)) else None


class Bridge:
    """What the page may ask of the helper (``window.pywebview.api.*``). Attributes stay private.

    pywebview runs each call in a thread of its own, which afterwards hands the answer back to the page
    through the Qt main thread and waits for it without a time limit; the interpreter waits for these
    threads at exit. Each method therefore first tells the manager its thread (``answering``), so that
    Quit takes the window down only once the calls in flight have been answered."""

    def __init__(self, manager: ConfirmWindows):
        self._manager = manager

    def confirm(self, item_id: str, decision: dict[str, Any]) -> dict[str, Any]:
        self._manager.answering()
        body = dict(decision) if isinstance(decision, dict) else {}
        body["actor"] = "window"
        return self._manager.decide(item_id, "confirm", body)

    def cancel(self, item_id: str) -> dict[str, Any]:
        self._manager.answering()
        return self._manager.decide(item_id, "cancel", {"reason": "cancelled in the window"})

    def preview(self, item_id: str, att_id: str) -> dict[str, Any]:
        self._manager.answering()
        return self._manager.api("GET", f"/confirm/{item_id}/attachments/{att_id}/preview")

    def save_eml(self, item_id: str) -> bool:
        self._manager.answering()
        return self._manager.save_eml(item_id)

    def finished(self, item_id: str, state: str) -> bool:
        self._manager.answering()
        self._manager.events.put(("finished", item_id))
        return True

    def pause(self, paused: bool) -> dict[str, Any]:
        """Pause or resume releasing (the window's menu bar, where there is no tray)."""
        self._manager.answering()
        return self._manager.set_paused(bool(paused))

    def quit(self) -> bool:
        self._manager.answering()
        self._manager.quit()
        return True

    def painted(self, item_id: str, times: dict[str, Any] | None = None) -> bool:
        """The page became visible and painted a frame (``times``: the page's own clock, ms)."""
        self._manager.answering()
        times = times if isinstance(times, dict) else {}
        self._manager.emit("painted", id=item_id, visible_at=_seconds(times.get("visible")),
                           frame_at=_seconds(times.get("frame")))
        return True


class ConfirmWindows:
    """Keeps the queue of messages awaiting confirmation and drives the one window."""

    def __init__(self, runner: Any, emit: Callable[..., None] | None = None):
        self.runner = runner
        self.gettext = runner.helper.gettext
        self.window: Any = None
        self.tray: Any = None
        self.ui: Any = None  # MainThread invoker, when Qt is up
        self.pending: list[str] = []  # ids awaiting confirmation, oldest first
        self.current: str | None = None
        self.current_state: str | None = None  # the state of ``current`` the page was last told about
        self.deciding: set[str] = set()  # decided in this window: the page shows the outcome until "finished"
        self.visible = False
        self.quitting = False
        self.on_quit: Callable[[], None] | None = None  # told when quitting starts (the stop's watchdog)
        self.loop_ended = threading.Event()  # Qt's loop is over (``run`` sets it)
        self._answering: set[threading.Thread] = set()  # threads running a call from the page
        self._answering_lock = threading.Lock()
        self._quit_started = False
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._emit = emit
        self._token: str | None = None
        self._thread: threading.Thread | None = None
        self._synced_at = 0.0
        self._status_at = 0.0
        self._told_hidden = False
        self.status: list[dict[str, Any]] = []  # what SendGuard waits for, as last shown (sendguard.waiting)

    @property
    def has_tray(self) -> bool:
        return self.tray is not None and getattr(self.tray, "icon", None) is not None

    def set_paused(self, paused: bool) -> dict[str, Any]:
        from .tray import pause_locked

        if paused and pause_locked(self.runner):
            return {"paused": False, "locked": True}
        self.runner.helper.paused = paused
        log.info("guard %s", "paused" if paused else "resumed")
        self._status_at = 0.0  # the status line says so at the next turn
        return {"paused": paused, "locked": False}

    # ------------------------------------------------------------------ plumbing
    def emit(self, event: str, **data: Any) -> None:
        if self._emit is not None:
            self._emit(event, t=time.time(), **data)

    def api(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Call the helper's own HTTP API in-process (same checks as over the wire), as the API principal."""
        if self._token is None:
            from sendguard.links import api_token

            self._token = api_token()
        client = self.runner.app.test_client()
        response = client.open(path, method=method, json=body,
                               headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"})
        return {"status": response.status_code, "body": response.get_json(silent=True)}

    def decide(self, item_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send the user's decision through the API; the page keeps showing the outcome until finished."""
        self.deciding.add(item_id)
        result = self.api("POST", f"/api/v1/outbox/{item_id}/{action}", body)
        if result["status"] >= 400:
            self.deciding.discard(item_id)
            error = (result.get("body") or {}).get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):  # said in the user's language
                error["message"] = i18n.localize(error["message"], self.gettext)
        return result

    def on_item(self, item: Item) -> None:
        """Outbox listener (runs in the helper's threads): only queue the change."""
        self.events.put(("item", item))

    def start(self, window: Any) -> None:
        self.window = window
        window.events.closing += self._on_closing
        self.runner.helper.outbox.listeners.append(self.on_item)
        for item in sorted(self.runner.helper.outbox.list([State.AWAITING_CONFIRMATION]), key=lambda i: i.created_at):
            self.pending.append(item.id)
        self._thread = threading.Thread(target=self._loop, name="sendguard-window", daemon=True)
        self._thread.start()

    def _on_closing(self) -> bool:
        if self.quitting:
            return True
        # The close button hides the window: the message stays held, the window stays warm.
        self.visible = False
        self.current = None
        threading.Thread(target=self.window.hide, daemon=True).start()
        if not self.has_tray and not self._told_hidden:
            # no tray to bring it back from: say how (starting SendGuard again shows this window)
            self._told_hidden = True
            t = self.gettext
            title, text = t(HIDDEN_TITLE), t(HIDDEN_TEXT)
            self.emit("notification", title=title, text=text)
            from .tray import notify_without_tray

            notify_without_tray(title, text)
        return False

    def _show_idle(self) -> None:
        """Show the window with no message in it (asked for from the tray, or by starting SendGuard again
        where there is no tray): what SendGuard waits for, Pause and Quit."""
        self.window.evaluate_js("SG.idle()")
        self._update_status()
        self.window.set_title(f"{TITLE} — {self.gettext('Waiting for messages…')}")
        self.window.show()
        self.visible = True
        if self.ui is not None:
            self.ui.call(self._raise)
        self.emit("shown", id=None)

    # ------------------------------------------------------------------ the loop
    def _warm_api(self) -> None:
        """Take the first-call costs of the helper's API (token from the keyring, the Flask client, the
        outbox listing) at start-up instead of on the first message."""
        try:
            self.api("GET", "/api/v1/outbox?state=awaiting_confirmation")
        except Exception:  # warming is best effort; a real call reports its own errors
            log.debug("warming the API failed", exc_info=True)

    def _loop(self) -> None:
        self._warm_api()
        self.window.events.loaded.wait(30)
        try:
            self.window.evaluate_js("SG.warm(200)")
            if not self.has_tray:  # no tray on this desktop: the window carries Pause and Quit itself
                self.window.evaluate_js(f"SG.controls({json.dumps({'paused': bool(self.runner.helper.paused)})})")
        except Exception:
            log.exception("the confirmation page did not load")
        self._prewarm_show()
        self.emit("loaded")
        self._present_next()
        while not self.quitting:
            try:
                kind, value = self.events.get(timeout=SYNC_SECONDS)
            except queue.Empty:
                kind, value = "sync", None
            try:
                if kind not in ("stop", "item") and time.monotonic() - self._synced_at >= SYNC_SECONDS:
                    self._sync()  # (a change made here syncs in _item_changed: once, not twice)
                if kind != "stop" and time.monotonic() - self._status_at >= STATUS_SECONDS:
                    self._update_status()
                if kind == "item":
                    self._item_changed(value)
                elif kind == "finished":
                    self._finished(value)
                elif kind == "open":
                    self.current = None
                    if self.pending:
                        self._present_next(force=True)
                    else:
                        self._show_idle()
                elif kind == "eval":
                    self.emit("result", value=self.window.evaluate_js(value))
                elif kind == "stop":
                    return
            except Exception as exc:  # keep the window alive; the page fails closed on its own
                log.exception("window update failed")
                self.emit("error", message=str(exc))

    def _item_changed(self, item: Item) -> None:
        self._sync()
        self._notify(item)
        self._tray_count()

    def _sync(self) -> None:
        """Bring the window in line with the outbox, whoever changed it (this process, the CLI, the
        browser page, an approver, expiry, another process): the database is the truth, read every
        ``SYNC_SECONDS`` and at once on a change made in this process."""
        self._synced_at = time.monotonic()
        waiting = sorted(self.runner.helper.outbox.list([State.AWAITING_CONFIRMATION]), key=lambda i: i.created_at)
        ids = [i.id for i in waiting]
        added = [i for i in ids if i not in self.pending]
        before = list(self.pending)
        self.pending = [i for i in self.pending if i in ids] + added
        if self.current is not None:
            state = self.current_state
            try:
                state = self.runner.helper.outbox.get(self.current).state
            except Exception:  # gone from the store: the page keeps what it shows
                log.warning("message %s on screen is no longer in the outbox", self.current)
            if state != self.current_state:
                result = self.api("GET", f"/api/v1/outbox/{self.current}")
                if result["status"] == 200:
                    self.current_state = state
                    self.window.evaluate_js(f"SG.changed({json.dumps(result['body'], ensure_ascii=False)})")
                    self.emit("changed", id=self.current, state=state)
        if self.current is None and added:
            self._present_next()
        elif self.pending != before:
            self._update_counter()
            self._tray_count()

    def _update_status(self) -> None:
        """Tell the page and the tray what SendGuard is waiting on (a mail service, the central server,
        the user), when that changed."""
        from sendguard.waiting import waiting

        self._status_at = time.monotonic()
        helper = self.runner.helper
        lines = [w.to_json() for w in waiting(helper.outbox, self.gettext, getattr(helper, "sync", None),
                                              bool(helper.paused))]
        shown = [(line["kind"], line["text"]) for line in lines]
        if shown == [(line["kind"], line["text"]) for line in self.status]:
            return
        self.status = lines
        self.window.evaluate_js(f"SG.status({json.dumps(lines, ensure_ascii=False)})")
        self.emit("status", lines=lines)
        if self.has_tray and self.ui is not None:
            self.ui.call(lambda: self.tray.set_status([line["text"] for line in lines]))

    def _finished(self, item_id: str) -> None:
        """The page is done with ``item_id`` (its result was read or the undo ran out): show the next one."""
        self.deciding.discard(item_id)
        if self.current != item_id:
            return
        self.current = None
        self.current_state = None
        self._sync()
        self.pending = [i for i in self.pending if i != item_id]
        self._present_next()
        self._tray_count()

    def _present_next(self, force: bool = False) -> None:
        if not self.pending:
            if self.visible:
                self.window.hide()
                self.visible = False
                self.window.evaluate_js("SG.idle()")
                self.emit("hidden")
            self.current = None
            self.current_state = None
            return
        item_id = self.pending[0]
        self.emit("picked", id=item_id)
        result = self.api("GET", f"/confirm/{item_id}/data")
        self.emit("fetched", id=item_id)
        if result["status"] != 200:
            log.warning("cannot show %s: %s", item_id, result["body"])
            self.pending.remove(item_id)
            self._present_next(force)
            return
        payload = result["body"]
        payload["queue"] = {"index": 1, "total": len(self.pending)}
        rendered = self.window.evaluate_js(f"SG.show({json.dumps(payload, ensure_ascii=False)})")
        self.current = item_id
        self.current_state = payload["item"]["state"]
        self.window.set_title(self._title())
        self.emit("rendered", id=item_id, rows=rendered)
        if not self.visible or force:
            self.window.show()
            self.visible = True
            if self.ui is not None:
                self.ui.call(self._raise)
        self.emit("shown", id=item_id)

    def _prewarm_show(self) -> None:
        """Map the window once, off screen, at start-up: the first show of a never-shown Qt WebEngine
        view sets up its surfaces and compositor (hundreds of ms), which must not fall on the first
        message. Nothing appears on screen; the window is hidden again before any message is shown."""
        if self.ui is None or self.pending:
            return
        done = threading.Event()

        def step() -> None:
            from qtpy import QtCore
            from webview.platforms.qt import BrowserView

            view = BrowserView.instances.get(self.window.uid)
            if view is None:
                done.set()
                return
            where = view.pos()
            view.move(-20000, -20000)
            view.show()

            def back() -> None:
                view.hide()
                view.move(where)
                done.set()

            QtCore.QTimer.singleShot(PREWARM_MS, back)

        self.ui.call(step)
        done.wait(5)

    def _raise(self) -> None:
        from webview.platforms.qt import BrowserView

        view = BrowserView.instances.get(self.window.uid)
        if view is not None:
            view.raise_()
            view.activateWindow()

    def _title(self) -> str:
        title = f"{TITLE} — {self.gettext('Confirm before sending')}"
        return f"{title} ({len(self.pending)})" if len(self.pending) > 1 else title

    def _update_counter(self) -> None:
        if self.current is None:
            return
        # the message on screen counts as one, waiting or not
        total = len(self.pending) + (0 if self.current in self.pending else 1)
        self.window.evaluate_js(f"SG.counter(1, {total})")
        self.window.set_title(self._title())

    def _tray_count(self) -> None:
        if self.tray is not None and self.ui is not None:
            count = len(self.pending) + len(self.runner.helper.outbox.list([State.AWAITING_APPROVAL]))
            self.ui.call(lambda: self.tray.set_count(count))

    def _notify(self, item: Item) -> None:
        t = self.gettext
        if item.state == State.AWAITING_APPROVAL:
            title = t("Held for approval")
            text = t("{subject} waits for approval by {approvers}.").format(
                subject=item.subject or item.id, approvers=", ".join(item.approvers) or "?")
        elif item.state == State.SENT and item.approval:
            title = t("Released after approval")
            text = t("{subject} was approved and sent.").format(subject=item.subject or item.id)
        else:
            return
        self.emit("notification", title=title, text=text, id=item.id)
        if self.tray is not None and self.ui is not None:
            self.ui.call(lambda: self.tray.notify(title, text))
        else:
            from .tray import notify_without_tray

            notify_without_tray(title, text)

    def save_eml(self, item_id: str) -> bool:
        import webview

        item = self.runner.helper.outbox.get(item_id, with_bodies=True)
        if not item.raw:
            return False
        chosen = self.window.create_file_dialog(webview.FileDialog.SAVE, save_filename=f"sendguard-{item_id}.eml")
        if not chosen:
            return False
        path = Path(chosen if isinstance(chosen, str) else chosen[0])
        path.write_bytes(item.raw)
        return True

    def answering(self) -> None:
        """A call from the page runs in the current thread (see ``Bridge``)."""
        with self._answering_lock:
            self._answering = {t for t in self._answering if t.is_alive()}
            self._answering.add(threading.current_thread())

    def unanswered(self) -> list[threading.Thread]:
        """Threads of calls from the page that have not handed their answer back yet (the caller left out)."""
        me = threading.current_thread()
        with self._answering_lock:
            return [t for t in self._answering if t is not me and t.is_alive()]

    def quit(self) -> None:
        """End the window, and so ``run``, soon. Returns at once, from any thread: the page's Quit (a
        pywebview call thread), the tray's menu or a signal handler (both on the Qt main thread)."""
        with self._answering_lock:
            if self._quit_started:
                return
            self._quit_started = True
        self.quitting = True
        self.events.put(("stop", None))
        if self.on_quit is not None:
            self.on_quit()
        threading.Thread(target=self._close_when_answered, name="sendguard-quit", daemon=True).start()

    def _close_when_answered(self) -> None:
        """Take the window down once the calls from the page in flight (Quit's own included) have been
        answered. Destroying it sooner ends Qt's loop under them: a call that had found the window but
        not yet asked Qt to run its answer then waits for good, and the process with it (issue #11)."""
        deadline = time.monotonic() + ANSWER_SECONDS
        for thread in self.unanswered():
            thread.join(max(0.0, deadline - time.monotonic()))
        late = self.unanswered()
        if late:
            log.warning("closing the window with %d call(s) from the page not answered yet: %s", len(late),
                        ", ".join(t.name for t in late))
        window = self.window
        if window is None or self.loop_ended.is_set():
            return
        try:
            window.destroy()
        except Exception:
            log.exception("the window could not be closed")
        if not self.loop_ended.wait(CLOSE_SECONDS) and self.ui is not None:
            log.warning("the window did not close within %.0f s; ending its loop", CLOSE_SECONDS)
            from qtpy import QtWidgets

            self.ui.call(QtWidgets.QApplication.quit)


def run(runner: Any, emit: Callable[..., None] | None = None, on_started: Callable[[ConfirmWindows], None]
        | None = None, on_quit: Callable[[], None] | None = None) -> None:
    """Show windows for ``runner`` until the user quits; blocks on the main thread. ``on_quit`` is called
    (from any thread) when quitting starts."""
    prepare_environment()
    import webview
    from qtpy import QtWebEngineWidgets, QtWidgets  # noqa: F401  (WebEngine must load before the QApplication)

    from .tray import MainThread, Tray

    existing = QtWidgets.QApplication.instance()
    app = existing if isinstance(existing, QtWidgets.QApplication) else QtWidgets.QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    app.setApplicationName(TITLE)
    manager = ConfirmWindows(runner, emit)
    manager.on_quit = on_quit
    manager.ui = MainThread()
    manager.tray = Tray(runner, manager.gettext, on_open=lambda: manager.events.put(("open", None)),
                        on_quit=manager.quit)
    lang = i18n.normalize(runner.helper.config.language) if runner.helper.config.language else i18n.system_language()
    window = webview.create_window(
        f"{TITLE} — {manager.gettext('Confirm before sending')}", url=f"{runner.base_url}/confirm/_window?lang={lang}",
        js_api=Bridge(manager), hidden=True, width=960, height=760, min_size=(520, 420), text_select=True)
    manager.window = window  # a quit that comes before ``started`` still has a window to take down

    def started() -> None:
        # pywebview sets its own SIGINT handler (ending Qt's loop at once, calls from the page in flight or
        # not) when it starts the loop: Ctrl-C, too, goes through quit. Posted now, run once the loop runs.
        manager.ui.call(lambda: signal.signal(signal.SIGINT, on_signal))
        manager.start(window)
        from sendguard import runtime

        info = runtime.read(runner.home)  # a second start on this home may ask this window to show itself
        runtime.write(runner.home, **{**info, "window": True})
        if on_started is not None:
            on_started(manager)

    # Ctrl-C and SIGTERM end the helper cleanly (held mail stays held; callers' cleanup runs). Python
    # handles signals only between bytecodes, so a timer hands it the main thread now and then.
    from qtpy import QtCore

    def on_signal(*_args: Any) -> None:
        manager.quit()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGUSR1"):  # SendGuard started again on this home: show the window (where no tray can)
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: manager.events.put(("open", None)))
    ticker = QtCore.QTimer()
    ticker.timeout.connect(lambda: None)
    ticker.start(200)
    try:
        webview.start(started, gui="qt", private_mode=True)
    finally:
        manager.loop_ended.set()
        ticker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    manager.quitting = True
    manager.events.put(("stop", None))


# ---------------------------------------------------------------------- control mode (tests, benchmark)
def _control(manager: ConfirmWindows, out: Callable[..., None]) -> None:
    """stdin lines: {"cmd": "eval", "js": "..."} | {"cmd": "open"} | {"cmd": "quit"}."""
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        if cmd.get("cmd") == "eval":
            manager.events.put(("eval", cmd.get("js", "")))
        elif cmd.get("cmd") == "open":
            manager.events.put(("open", None))
        elif cmd.get("cmd") == "quit":
            break
    manager.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the SendGuard helper with its confirmation window.")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--api-port", type=int, default=0)
    parser.add_argument("--control", action="store_true",
                        help="JSON events on stdout and commands on stdin (tests and benchmarks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from .runner import Runner

    started = time.time()
    runner = Runner(args.home, args.smtp_port, args.api_port).start()
    lock = threading.Lock()

    def out(event: str, **data: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps({"event": event, **data}, ensure_ascii=False, default=str) + "\n")
            sys.stdout.flush()

    def on_started(manager: ConfirmWindows) -> None:
        assert runner.helper.smtp is not None
        out("ready", smtp_port=runner.helper.smtp.port, api_port=runner.api_port, base_url=runner.base_url,
            pid=os.getpid(), started=started)
        if args.control:
            threading.Thread(target=_control, args=(manager, out), daemon=True).start()

    try:
        run(runner, emit=out if args.control else None, on_started=on_started)
    finally:
        runner.stop()
    shutdown.leave()


if __name__ == "__main__":
    main()
