"""Checking at intake in a process of its own, so that SMTP intake scales past one core.

Reading a message and running the policy over it is most of the CPU a submitted message costs. Done in the
helper's process it competes with the SMTP sessions for the interpreter lock. When messages come in
together (a mail merge, several clients), the helper hands them to a child process as they arrive; the
child answers each verdict as soon as it has it, and a thread of the helper commits whatever verdicts are
in, together (one commit, one fsync), while the child goes on with the next messages.

The verdict is the one the helper would reach itself: the child runs the same ``Outbox.verdict_at_intake``
with the helper's own policy object (sent along whenever the helper's changes), its language, its
user's accounts and the same store (read only; the child never writes). The commit, and so what the
``250`` promises, stays with the helper.

The helper never depends on the child: until it is ready, when it dies, is slow or answers what cannot be
read, the messages it holds are checked in the helper's process as before (nothing lost, nothing taken
twice) and it is started again a while later.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar

from .outbox import INTAKE_CHECK_MAX_BYTES, Incoming, Outbox, Verdict

log = logging.getLogger(__name__)

ANSWER_SECONDS = 10.0  # a message the child has not answered in this time is checked in the helper
RESTART_SECONDS = 5.0  # after a failure the child is started again no sooner than this

# a verdict as it crosses the pipe: (hold, audit, values), or None (not checked at intake: the worker will)
Answer = tuple[bool, dict[str, Any], dict[str, Any]] | None

W = TypeVar("W")  # what the caller keeps with each message (the SMTP session's future)


class CheckerProcess(Generic[W]):
    """The helper's side: the child, the messages it holds, and the thread that commits its verdicts.

    ``commit(entries, verdicts)`` is the caller's commit (it also answers the senders); it is called from
    the collecting thread with the messages whose verdicts are in, or with ``None`` verdicts for messages
    to be checked in the helper after all.
    """

    def __init__(self, outbox: Outbox, database: Path, language: str | None,
                 commit: Callable[[list[tuple[Incoming, W]], list[Verdict | None] | None], None]):
        self.outbox = outbox
        self.database = database
        self.language = language
        self.commit = commit
        self._lock = threading.Lock()
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._held: dict[int, tuple[tuple[Incoming, W], float]] = {}  # handed over (when), no verdict yet
        self._next = 0
        self._sent_policy: object = None
        self._sent_accounts: tuple[str, ...] | None = None
        self._starting = False
        self._failed_at = -RESTART_SECONDS
        self._closed = False
        self.checked_there = 0  # messages whose verdict came from the child
        self.checked_here = 0  # messages handed to the child that it could not answer: checked by the helper

    # ------------------------------------------------------------------ life
    def ready(self) -> bool:
        return self._to_child is not None

    def busy(self) -> bool:
        """Does the child hold messages whose verdict is not in yet?"""
        return bool(self._held)

    def start(self) -> None:
        """Start the child in the background (its imports take a while); meanwhile the helper checks."""
        with self._lock:
            if (self._closed or self._starting or self._to_child is not None
                    or time.monotonic() - self._failed_at < RESTART_SECONDS):
                return
            self._starting = True
        threading.Thread(target=self._spawn, name="sendguard-checker-start", daemon=True).start()

    def _spawn(self) -> None:
        try:
            context = multiprocessing.get_context("spawn")  # alike on every OS; never a fork of a threaded process
            requests_out, requests_in = context.Pipe(duplex=False)
            answers_out, answers_in = context.Pipe(duplex=False)
            proc = context.Process(target=child_main, args=(requests_out, answers_in, str(self.database),
                                                            self.language), name="sendguard-checker", daemon=True)
            proc.start()
            requests_out.close()
            answers_in.close()
            if not answers_out.poll(60) or answers_out.recv() != "ready":
                raise RuntimeError("the checking process did not start")
        except Exception as exc:  # noqa: BLE001 - intake goes on in the helper's own process
            log.warning("checks at intake stay in the helper's process: %s", exc)
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
        threading.Thread(target=self._collect, args=(answers_out,), name="sendguard-checker-collect",
                         daemon=True).start()

    def close(self) -> None:
        """End the child; what it still held is checked and committed here (its senders get their 250)."""
        with self._lock:
            self._closed = True
        self._fail(None)

    def _fail(self, why: str | None) -> None:
        with self._lock:
            to_child, from_child, proc = self._to_child, self._from_child, self._proc
            self._to_child = self._from_child = self._proc = None
            left = [self._held.pop(n)[0] for n in sorted(self._held)]
            if why is not None:
                self._failed_at = time.monotonic()
        if why is not None:
            log.warning("the checking process failed (%s): its %d message(s) are checked by the helper",
                        why, len(left))
        if proc is not None and to_child is not None and from_child is not None:
            _end(proc, to_child, from_child)
        if left:
            self.checked_here += len(left)
            self.commit(left, None)

    # ------------------------------------------------------------------ work
    def hand_over(self, entries: Sequence[tuple[Incoming, W]]) -> bool:
        """Give these messages to the child (their verdicts are committed as they come in); False when it
        cannot take them (not started yet: it starts now) and the caller checks them itself."""
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
                self._held[self._next] = (entry, now)
                msg = entry[0]
                messages.append((self._next, msg.raw if len(msg.raw) <= INTAKE_CHECK_MAX_BYTES else None,
                                 msg.envelope_from, [r.strip() for r in msg.recipients]))
        request = (policy if policy is not self._sent_policy else None,
                   accounts if accounts != self._sent_accounts else None, self.outbox.domains_epoch, messages)
        try:
            to_child.send(request)
        except (OSError, ValueError) as exc:  # the child is gone: the collector hands its messages back
            self._fail(f"it took no more: {exc}")
            return True
        except Exception as exc:  # noqa: BLE001 - e.g. a policy that cannot be handed over: check here
            log.warning("checks at intake stay in the helper's process: %s", exc)
            with self._lock:
                self._closed = True
            self._fail(None)
            return True
        self._sent_policy, self._sent_accounts = policy, accounts
        return True

    def _collect(self, from_child: Connection) -> None:
        """Commit the child's verdicts as they come, all that are in at once in one commit."""
        while True:
            try:
                if not from_child.poll(1.0):
                    if from_child is not self._from_child:
                        return
                    with self._lock:
                        oldest = min((at for _, at in self._held.values()), default=None)
                    if oldest is not None and time.monotonic() - oldest > ANSWER_SECONDS:
                        self._fail(f"no verdict in {ANSWER_SECONDS:.0f} s")
                        return
                    continue
                answers = [from_child.recv()]
                while len(answers) < 256 and from_child.poll(0):
                    answers.append(from_child.recv())
            except (EOFError, OSError, ValueError) as exc:
                if from_child is self._from_child:
                    self._fail(f"it ended: {exc or type(exc).__name__}")
                return
            entries, verdicts = [], []
            with self._lock:
                for number, answer in answers:
                    held = self._held.pop(number, None)
                    if held is not None:  # else handed back already
                        entries.append(held[0])
                        verdicts.append(None if answer is None else Verdict(answer[0], answer[1], answer[2]))
            if entries:
                self.checked_there += len(entries)
                self.commit(entries, verdicts)


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
def child_main(requests: Connection, answers: Connection, database: str, language: str | None) -> None:
    """Check messages until the helper closes the pipe, answering each as soon as it is checked."""
    from .i18n import translator
    from .policy import Policy
    from .store import Store

    state: dict[str, Any] = {"policy": Policy(), "accounts": ()}
    outbox = Outbox(Store(database, audit_key=None, prepare=False), lambda: state["policy"],
                    gettext=translator(language), accounts=lambda: state["accounts"])
    epoch = None
    answers.send("ready")
    while True:
        try:
            policy, accounts, new_epoch, messages = requests.recv()
        except (EOFError, OSError):
            return
        if policy is not None:
            state["policy"] = policy
        if accounts is not None:
            state["accounts"] = accounts
        if new_epoch != epoch:  # the helper has sent to new domains: what was new may not be any more
            if epoch is not None:
                outbox.forget_unknown_domains()
            epoch = new_epoch
        for number, raw, envelope_from, envelope_to in messages:  # raw None: too large to check before the 250
            verdict = None if raw is None else outbox.verdict_at_intake(raw, envelope_from, envelope_to,
                                                                        state["policy"])
            try:
                answers.send((number, None if verdict is None else (verdict.hold, verdict.audit, verdict.values)))
            except (OSError, ValueError):
                return
