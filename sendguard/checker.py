"""Intake in a process of its own, so that SMTP intake scales past one core.

Reading a message, running the policy over it and committing it is most of what a submitted message
costs. Done in the helper's process it competes with the SMTP sessions for the interpreter lock, and each
of its waits on the disk hands the lock over and waits to get it back. When messages come in together (a
mail merge, several clients), the helper hands them to a child process as they arrive; the child checks
and commits whatever it has been given in one transaction (one fsync) and answers, and only then does the
helper say ``250``: the promise is the same, a message is durable and checked before its ``250``.

The child does exactly what the helper would: it runs the same ``Outbox.prepare_intake`` and
``commit_intake`` with the helper's own policy object (sent along whenever the helper's changes), its
language, its user's accounts, the same store and audit key, the helper's clock and the ids the helper
gave the messages.

The helper never depends on the child: until it is ready, when it dies, is slow or answers what cannot be
read, the messages it holds are taken in by the helper itself (under the same ids: one the child had
committed already is kept, never stored twice) and the child is started again a while later.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import select
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import faults
from .errors import StoreUnavailable
from .items import new_id
from .outbox import Incoming, Intake, Outbox

log = logging.getLogger(__name__)

ANSWER_SECONDS = 10.0  # a message the child has not answered in this time is taken in by the helper
RESTART_SECONDS = 5.0  # after a failure the child is started again no sooner than this

W = TypeVar("W")  # what the caller keeps with each message (the SMTP session's future)

# what the helper does with the child's outcome for some of its messages: the stored (id, state) of each,
# or the error that stored none of them
Settle = Callable[[list[tuple[Incoming, W]], list[tuple[str, str]] | None, BaseException | None], None]


class CheckerProcess(Generic[W]):
    """The helper's side: the child, the messages it holds, and what takes its answers (the SMTP sessions'
    event loop, see ``attach``; a thread of its own where that loop cannot watch a pipe).

    ``take_in(entries, ids)`` is the helper's own intake (it also answers the senders), used for messages
    the child could not take; ``settle(entries, stored, error)`` answers the senders of messages the
    child took in. ``settle`` is called where the answers are read; ``take_in`` where the failure is found
    (a failure the loop reads, a dead child or a late answer, is handed to a thread of its own first, so
    that the loop never waits for the store on it; the caller's at ``close`` and at a failed hand-over).
    """

    def __init__(self, outbox: Outbox, database: Path, language: str | None,
                 take_in: Callable[[list[tuple[Incoming, W]], list[str]], None], settle: Settle[W]):
        self.outbox = outbox
        self.database = database
        self.language = language
        self.take_in = take_in
        self.settle = settle
        self._lock = threading.Lock()
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        # handed over, no answer yet: number -> (entry, its id, when)
        self._held: dict[int, tuple[tuple[Incoming, W], str, float]] = {}
        self._next = 0
        self._sent_policy: object = None
        self._sent_accounts: tuple[str, ...] | None = None
        self._starting = False
        self._failed_at = -RESTART_SECONDS
        self._closed = False
        self.taken_there = 0  # messages the child took in
        self.taken_back = 0  # messages handed to the child that the helper took in after all
        # the SMTP sessions' event loop, which reads the child's answers where it can watch a pipe (see
        # ``attach``); the answers' pipe while that loop watches it (its descriptor, to stop watching it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: tuple[Connection, int] | None = None

    # ------------------------------------------------------------------ life
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the child's answers in this event loop (the SMTP sessions' own), not in a thread of their own.

        An answer then settles its senders' ``250`` in the loop that sends it: no thread wakes up for it,
        none waits for the interpreter to hand it the answer and none wakes the loop again. A loop that
        cannot watch a pipe (Windows' proactor loop) leaves it to the thread. Called from the loop."""
        if self._loop is None:
            self._loop = loop

    def ready(self) -> bool:
        return self._to_child is not None

    def busy(self) -> bool:
        """Does the child hold messages it has not answered yet?"""
        return bool(self._held)

    def start(self) -> None:
        """Start the child in the background (its imports take a while); meanwhile the helper takes in."""
        with self._lock:
            if (self._closed or self._starting or self._to_child is not None
                    or time.monotonic() - self._failed_at < RESTART_SECONDS):
                return
            self._starting = True
        threading.Thread(target=self._spawn, name="sendguard-checker-start", daemon=True).start()

    def _spawn(self) -> None:
        try:
            audit_key = self.outbox.store.audit_key  # the chain the child appends to is the helper's
            context = multiprocessing.get_context("spawn")  # alike on every OS; never a fork of a threaded process
            requests_out, requests_in = context.Pipe(duplex=False)
            answers_out, answers_in = context.Pipe(duplex=False)
            proc = context.Process(target=child_main, args=(requests_out, answers_in, str(self.database),
                                                            self.language, audit_key),
                                   name="sendguard-checker", daemon=True)
            proc.start()
            requests_out.close()
            answers_in.close()
            if not answers_out.poll(60) or answers_out.recv() != "ready":
                raise RuntimeError("the checking process did not start")
        except Exception as exc:  # noqa: BLE001 - intake goes on in the helper's own process
            log.warning("intake stays in the helper's process: %s", exc)
            with self._lock:
                self._starting, self._failed_at = False, time.monotonic()
            return
        with self._lock:
            self._starting = False
            if self._closed:
                _end(proc, requests_in, answers_out)
                return
            self._to_child, self._from_child, self._proc = requests_in, answers_out, proc
            self._sent_policy, self._sent_accounts = None, None
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._watch_in_loop, answers_out)
                return
            except RuntimeError:  # the loop has been closed: the SMTP server is stopping
                pass
        self._collect_in_thread(answers_out)

    def _collect_in_thread(self, from_child: Connection) -> None:
        threading.Thread(target=self._collect, args=(from_child,), name="sendguard-checker-collect",
                         daemon=True).start()

    def _watch_in_loop(self, from_child: Connection) -> None:
        """(In the loop.) Take the child's answers as they come; check each second for a late one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if from_child is not self._from_child:  # it failed or was closed meanwhile
                return
            try:
                fd = from_child.fileno()
                loop.add_reader(fd, self._answer_ready, from_child)
            except (NotImplementedError, OSError):  # a loop that watches no pipes
                fd = -1
            else:
                self._watched = (from_child, fd)
        if fd < 0:
            self._collect_in_thread(from_child)
            return
        loop.call_later(1.0, self._check_late, from_child)

    def _answer_ready(self, from_child: Connection) -> None:
        """(In the loop.) An answer has come: settle its senders."""
        if from_child is not self._from_child:
            self._unwatch(from_child)
            return
        try:
            numbers, rows, error = from_child.recv()
        except Exception as exc:  # noqa: BLE001 - it ended, or its answer cannot be read: taken in here
            self._unwatch(from_child)
            if from_child is self._from_child:
                self._fail_elsewhere(f"it ended: {exc or type(exc).__name__}")
            return
        self._answered(numbers, rows, error)

    def _fail_elsewhere(self, why: str) -> None:
        """``_fail`` in a thread of its own: the helper's own intake of what the child held commits, which
        the SMTP sessions' loop must not wait for."""
        threading.Thread(target=self._fail, args=(why,), name="sendguard-checker-failed", daemon=True).start()

    def _check_late(self, from_child: Connection) -> None:
        """(In the loop.) The watch the collecting thread keeps between answers: see ``_late``."""
        if from_child is not self._from_child:
            return
        if self._late():
            self._unwatch(from_child)
            self._fail_elsewhere(f"no answer in {ANSWER_SECONDS:.0f} s")
            return
        asyncio.get_running_loop().call_later(1.0, self._check_late, from_child)

    def _unwatch(self, from_child: Connection) -> bool:
        """Stop watching this pipe (a descriptor closed while the loop watches it could be given to a new
        connection, which the loop would then read for us). True when the loop closes it, once it no longer
        watches it (asked from another thread)."""
        with self._lock:
            watched = self._watched
            if watched is None or watched[0] is not from_child:
                return False
            self._watched = None
        loop = self._loop
        assert loop is not None
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # no loop runs in this thread
            in_loop = False
        if in_loop:
            loop.remove_reader(watched[1])
            return False
        try:
            loop.call_soon_threadsafe(_remove_and_close, loop, watched[1], from_child)
        except RuntimeError:  # the loop is closed and watches nothing any more
            return False
        return True

    def close(self) -> None:
        """End the child; what it still held is taken in here (its senders get their 250)."""
        with self._lock:
            self._closed = True
        self._fail(None)

    def _fail(self, why: str | None) -> None:
        with self._lock:
            to_child, from_child, proc = self._to_child, self._from_child, self._proc
            self._to_child = self._from_child = self._proc = None
            left = [self._held.pop(n) for n in sorted(self._held)]
            if why is not None:
                self._failed_at = time.monotonic()
        if why is not None:
            log.warning("the checking process failed (%s): the helper takes in its %d message(s)", why, len(left))
        if proc is not None and to_child is not None and from_child is not None:
            if self._unwatch(from_child):  # the loop closes it once it no longer watches it
                _end(proc, to_child)
            else:
                _end(proc, to_child, from_child)
        if left:
            self.taken_back += len(left)
            self.take_in([entry for entry, _, _ in left], [item_id for _, item_id, _ in left])

    # ------------------------------------------------------------------ work
    def hand_over(self, entries: Sequence[tuple[Incoming, W]]) -> bool:
        """Give these messages to the child (the senders are answered when it has taken them in); False
        when it cannot take them (not started yet: it starts now) and the caller takes them in itself."""
        with self._lock:
            to_child = self._to_child
        if to_child is None:
            self.start()
            return False
        policy = self.outbox.policy()
        accounts = tuple(self.outbox.accounts())
        messages = []
        now = time.monotonic()
        with self._lock:
            if self._to_child is not to_child:  # failed meanwhile
                return False
            for entry in entries:
                self._next += 1
                item_id = new_id()
                self._held[self._next] = (entry, item_id, now)
                messages.append((self._next, item_id, entry[0]))
        request = (policy if policy is not self._sent_policy else None,
                   accounts if accounts != self._sent_accounts else None, self.outbox.domains_epoch,
                   self.outbox.clock(), messages)
        try:
            to_child.send(request)
        except (OSError, ValueError) as exc:  # the child is gone: its messages are taken in here
            self._fail(f"it took no more: {exc}")
            return True
        except Exception as exc:  # noqa: BLE001 - e.g. a policy that cannot be handed over: stay here
            log.warning("intake stays in the helper's process: %s", exc)
            with self._lock:
                self._closed = True
            self._fail(None)
            return True
        self._sent_policy, self._sent_accounts = policy, accounts
        return True

    def _collect(self, from_child: Connection) -> None:
        """Answer the senders of what the child has taken in; tell the helper's listeners."""
        readable = _readable(from_child)
        while True:
            try:
                if not readable(1.0):
                    if from_child is not self._from_child:
                        return
                    if self._late():
                        self._fail(f"no answer in {ANSWER_SECONDS:.0f} s")
                        return
                    continue
                numbers, rows, error = from_child.recv()
            except Exception as exc:  # noqa: BLE001 - it ended, its answer cannot be read, or the pipe was
                # closed under this read by close() (a TypeError from inside multiprocessing): the helper
                # takes in what the child held
                if from_child is self._from_child:
                    self._fail(f"it ended: {exc or type(exc).__name__}")
                return
            self._answered(numbers, rows, error)

    def _late(self) -> bool:
        """Has a message the child holds gone unanswered for ``ANSWER_SECONDS``?"""
        with self._lock:
            oldest = min((at for _, _, at in self._held.values()), default=None)
        return oldest is not None and time.monotonic() - oldest > ANSWER_SECONDS

    def _answered(self, numbers: list[int], rows: list[dict[str, Any]] | None,
                  error: tuple[str, str, str] | None) -> None:
        """Answer the senders of what the child has taken in (or could not); tell the helper's listeners."""
        with self._lock:
            held = [self._held.pop(n, None) for n in numbers]
        # (one no longer held was handed back already, and taken in by the helper)
        entries = [h[0] for h in held if h is not None]
        if not entries:
            return
        if error is not None:
            self.settle(entries, None, _error(error))
            return
        assert rows is not None
        kept = [row for h, row in zip(held, rows, strict=True) if h is not None]
        self.taken_there += len(entries)
        self.outbox.announce(kept)
        self.settle(entries, [(row["id"], row["state"]) for row in kept], None)


class IntakeFailed(RuntimeError):
    """The child could not store messages: ``kind`` names its exception's class, which the sender's
    ``451`` names as it would have named the helper's own."""

    def __init__(self, kind: str):
        super().__init__(f"the checking process could not store the messages ({kind})")
        self.kind = kind


def _error(said: tuple[str, str, str]) -> BaseException:
    """The child's error as the helper's SMTP side tells it (451, the store's reason where it has one)."""
    kind, text, reason = said
    return StoreUnavailable(text, reason) if kind == "store_unavailable" else IntakeFailed(text)


def _readable(conn: Connection) -> Callable[[float], bool]:
    """``conn.poll`` that does not build a selector on each call (multiprocessing's does): one poll
    object for the pipe's life where the system has ``poll`` (not Windows)."""
    if not hasattr(select, "poll"):
        return conn.poll
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return lambda timeout: bool(poller.poll(timeout * 1000))


def _remove_and_close(loop: asyncio.AbstractEventLoop, fd: int, conn: Connection) -> None:
    loop.remove_reader(fd)
    try:
        conn.close()
    except OSError:
        pass


def _end(proc: multiprocessing.process.BaseProcess, *conns: Connection) -> None:
    for conn in conns:
        try:
            conn.close()  # the child reads EOF and ends
        except OSError:
            pass
    proc.join(2)
    if proc.is_alive():
        proc.kill()
        proc.join(2)


# ---------------------------------------------------------------------- the child
def child_main(requests: Connection, answers: Connection, database: str, language: str | None,
               audit_key: bytes | None) -> None:
    """Take in messages until the helper closes the pipe: all that wait, checked, then in one commit.

    (One thread: a second one committing while this one checks was slower, each of its waits on the
    disk handing the interpreter over and waiting to get it back.)"""
    from .i18n import translator
    from .policy import Policy
    from .store import Store

    state: dict[str, Any] = {"policy": Policy(), "accounts": ()}
    outbox = Outbox(Store(database, audit_key=audit_key, prepare=False), lambda: state["policy"],
                    gettext=translator(language), accounts=lambda: state["accounts"])
    epoch = None
    readable = _readable(requests)
    answers.send("ready")
    while True:
        try:
            waiting = [requests.recv()]
            while len(waiting) < 64 and readable(0):
                waiting.append(requests.recv())
        except (EOFError, OSError):
            return
        work: list[tuple[list[int], Intake]] = []
        for policy, accounts, new_epoch, now, messages in waiting:
            if policy is not None:  # each message is checked with the policy the helper had at hand-over
                state["policy"] = policy
            if accounts is not None:
                state["accounts"] = accounts
            if new_epoch != epoch:  # the helper has sent to new domains: what was new may not be any more
                if epoch is not None:
                    outbox.forget_unknown_domains()
                epoch = new_epoch
            work.append(([number for number, _, _ in messages],
                         outbox.prepare_intake([msg for _, _, msg in messages], check=True,
                                               ids=[item_id for _, item_id, _ in messages], now=now)))
        error: tuple[str, str, str] | None = None
        try:
            outbox.commit_intake([intake for _, intake in work])
            faults.point("checker.committed")  # a crash here: the helper takes them in again, stored once
        except StoreUnavailable as exc:
            error = ("store_unavailable", str(exc), exc.reason)
        except Exception as exc:  # noqa: BLE001 - the helper answers 451: the client keeps it, retries
            log.exception("could not store submitted messages")
            error = ("failed", type(exc).__name__, "")
        # one answer for all of them (one write, one wake-up of the helper's side)
        numbers = [number for taken, _ in work for number in taken]
        rows = None if error else [{k: v for k, v in row.items() if k != "raw"}
                                   for _, intake in work for row in intake.rows]
        try:
            answers.send((numbers, rows, error))
        except (OSError, ValueError):
            return
