"""SMTP submission (aiosmtpd) on loopback: every message is committed to the outbox before ``250``.

Any mail client (Thunderbird, Outlook, scanners, scripts) submits here; nothing is relayed until
the user confirms (and a supervisor approves, when the policy says so).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import ssl
import threading
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from . import faults, peers
from .checker import CheckerProcess, IntakeFailed
from .errors import StoreUnavailable
from .message import DOT_ATOM, make_recipient
from .outbox import Incoming, Outbox

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_RECIPIENTS = 10_000

# Reply texts in one place (tests compare against these).
R_HELD = "250 2.0.0 Held by SendGuard for checking as {id}"
R_BAD_RCPT = "553 5.1.3 Recipient address {addr!r} is not a valid address"
R_TOO_MANY = "452 4.5.3 Too many recipients (at most {n} per message)"
R_STORE_FAILED = "451 4.3.0 SendGuard could not store the message ({error}); your client will retry"
R_FOREIGN_USER = ("550 5.7.1 This SendGuard helper takes mail only from its own user's programs (this connection "
                  "is another local user's, uid {uid}): use your own helper")
R_STORE_UNAVAILABLE = "451 4.3.1 SendGuard cannot store mail now (store {reason}); your client keeps it and retries"


# a message up to this size is handed to the checking process by the SMTP session itself (see submit): what
# a pipe holds on Linux, so that writing one seldom waits for the checking process to read
DIRECT_HAND_OVER_BYTES = 64 * 1024

# where a sender waits for its message's commit: the SMTP session's loop and the future its 250 waits on
_Reply = tuple[asyncio.AbstractEventLoop, "asyncio.Future[tuple[str, str]]"]


class GroupCommitter:
    """One writer thread checks and commits whatever messages are waiting in one transaction (one fsync).

    Each SMTP session still gets its 250 only after the commit that holds its message; a message the
    window must show is committed already checked and held, so it needs no second commit. Once messages
    come in together, a process of its own (``checker.py``, started then) checks and commits them, and
    this side answers.
    """

    MAX_BATCH = 64

    def __init__(self, outbox: Outbox, checker: Callable[..., CheckerProcess[_Reply]] | None = None):
        self.outbox = outbox
        self.checker = checker(self._commit, _answer) if checker is not None else None
        self._queue: queue.Queue[tuple[Incoming, _Reply]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sendguard-intake", daemon=True)
        self._thread.start()

    def submit(self, msg: Incoming) -> asyncio.Future[tuple[str, str]]:
        """The future the sender's ``250`` waits on. Once the checking process runs, a message of ordinary
        size goes to it straight from the SMTP session's thread (it gathers what waits into one commit
        itself); a hop through the intake thread cost a thread switch per message, which on two cores was
        a seventh of the helper's throughput. A large one still goes through the intake thread, so that
        its hand-over never keeps the SMTP sessions waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, str]] = loop.create_future()
        checker = self.checker
        if checker is not None:
            checker.attach(loop)  # its answers are read in this loop (the first one to submit)
        if (checker is not None and len(msg.raw) <= DIRECT_HAND_OVER_BYTES and checker.ready()
                and checker.hand_over([(msg, (loop, future))])):
            return future
        self._queue.put((msg, (loop, future)))
        return future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            checker = self.checker
            # once messages have come in together the checking process takes them all, so that this
            # process's interpreter is left to the SMTP sessions; before that, a lone message is checked
            # here at once (the shortest way to its 250) and no process is started for it
            if checker is not None and (len(batch) > 1 or checker.ready()) and checker.hand_over(batch):
                continue
            self._commit(batch)

    def _commit(self, batch: list[tuple[Incoming, _Reply]], ids: list[str] | None = None) -> None:
        """Check and commit here (under ``ids`` when they were given beforehand) and answer every sender."""
        try:
            stored = self.outbox.receive_many([m for m, _ in batch], check=True, ids=ids)
        except Exception as exc:  # nothing in this batch was stored: every sender gets a 451
            if isinstance(exc, StoreUnavailable):
                log.warning("refused %d submitted message(s) with 451: %s", len(batch), exc)
            else:
                log.exception("could not store %d submitted message(s)", len(batch))
            _answer(batch, None, exc)
            return
        _answer(batch, stored, None)


def _answer(batch: list[tuple[Incoming, _Reply]], results: list[tuple[str, str]] | None,
            error: BaseException | None) -> None:
    """Settle each sender's future in its event loop: one wake-up per loop for the whole batch. ``results``:
    each message's stored (id, state); None with the ``error`` that stored none of them."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[tuple[str, str]], Any]]] = {}
    for (_, (loop, future)), value in zip(batch, results if results is not None else [None] * len(batch),
                                          strict=True):
        by_loop.setdefault(loop, []).append((future, value))
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # answered from a thread of its own
        running = None
    for loop, settled in by_loop.items():
        if loop is running:  # answered in the sessions' own loop (see CheckerProcess.attach)
            _settle(settled, error)
            continue
        try:
            loop.call_soon_threadsafe(_settle, settled, error)
        except RuntimeError:  # the SMTP server has stopped: its sessions are gone, their clients retry
            log.info("%d message(s) stored after their SMTP session ended", len(settled))


def _settle(settled: list[tuple[asyncio.Future[tuple[str, str]], tuple[str, str] | None]],
            error: BaseException | None) -> None:
    for future, value in settled:
        if future.done():
            continue
        if error is not None or value is None:
            future.set_exception(error or RuntimeError("nothing stored"))
        else:
            future.set_result(value)


class SubmissionHandler:
    """aiosmtpd handler: validate recipients, store durably, then accept."""

    def __init__(self, outbox: Outbox, on_received: Callable[[str], None] | None = None,
                 checker: Callable[..., CheckerProcess[_Reply]] | None = None):
        self.outbox = outbox
        self.on_received = on_received
        self.committer = GroupCommitter(outbox, checker)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        """Mail from another local user's program is refused: the helper would release it through this
        user's account (where the system says who owns a loopback connection: Linux). Asked once a session."""
        foreign = getattr(session, "sendguard_foreign_uid", None)
        if foreign is None:
            peer = session.peer
            uid = peers.foreign_user(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
            foreign = session.sendguard_foreign_uid = -1 if uid is None else uid  # type: ignore[attr-defined]
        if foreign != -1:
            log.warning("refused mail from another local user's program (uid %s)", foreign)
            return R_FOREIGN_USER.format(uid=foreign)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if make_recipient(address, "", "to") is None:
            return R_BAD_RCPT.format(addr=address)
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return R_TOO_MANY.format(n=MAX_RECIPIENTS)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            item_id, state = await self.committer.submit(
                Incoming(raw, envelope.mail_from or "", list(envelope.rcpt_tos), "smtp"))
        except StoreUnavailable as exc:  # disk full / read-only: the client keeps the message and retries
            return R_STORE_UNAVAILABLE.format(reason=exc.reason.replace("_", "-"))
        except Exception as exc:  # storage failure: refuse temporarily, the client keeps the message
            return R_STORE_FAILED.format(error=exc.kind if isinstance(exc, IntakeFailed) else type(exc).__name__)
        faults.point("smtp.before_250")
        if self.on_received and state == "received":  # not checked at intake: the worker checks it
            self.on_received(item_id)
        return R_HELD.format(id=item_id)


# ``<local@domain>`` in its common plain form (dot-atom local part, host name): read at once. aiosmtpd
# reads every MAIL/RCPT address with the email package's full RFC 5322 parser, which was the larger part
# of the SMTP thread's time; anything else (quoted, literal, comments, ``<>``) still goes through it.
_PLAIN_PATH = re.compile(rf"<({DOT_ATOM}"
                         r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>")


# what DATA reads from the connection at a time: whatever has arrived, up to this
_DATA_READ = 1 << 20


class SMTPSession(SMTP):
    """aiosmtpd's SMTP protocol with a fast path for plain addresses (same results; see ``_PLAIN_PATH``)
    and a message text read in blocks (same results; see ``smtp_DATA``)."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd answers it, with the message read in blocks instead of one line at a time.

        aiosmtpd reads the text line by line through the stream reader, a few microseconds a line: a
        fifth of the SMTP sessions' time on an ordinary message, and the larger part on one with
        attachments. Here the lines are still checked one by one for what aiosmtpd refuses (a line over
        ``line_length_limit``: 500; more than ``data_size_limit`` bytes: 552; the first limit crossed
        decides, as there), but on whole blocks of text. What a client sends after the closing ``.`` line
        in the same packet is given back to the stream, where aiosmtpd reads its next command.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            text, refusal = await self._read_text()
        except asyncio.CancelledError:  # the connection was reset during DATA (aiosmtpd cancels the session)
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()
            return
        if text is None:  # the client closed the connection before the closing line
            self._writer.close()
            return
        if text.startswith(b"."):  # a leading dot of a line was added by the client (RFC 5321 4.5.2)
            text = text[1:]
        text = text.replace(b"\r\n.", b"\r\n")
        assert self.envelope is not None
        if self._decode_data:
            if self.enable_SMTPUTF8:
                self.envelope.content = text.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    self.envelope.content = text.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        else:
            self.envelope.content = text
        self.envelope.original_content = text
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_text(self) -> tuple[bytes | None, str | None]:
        """(the text up to the closing ``.`` line, None) or (None, the refusal) once it has all been read;
        (None, None) when the connection closed first."""
        reader = self._reader
        longest, limit = self.line_length_limit, self.data_size_limit
        kept: list[bytes] = []
        size = 0
        refusal: str | None = None
        carry = b""  # the line begun in an earlier block (only its last byte once it is sure to be too long)
        dropped = 0  # bytes of that line not kept in ``carry``
        while True:
            block = await reader.read(_DATA_READ)
            if not block:
                return None, None
            if carry:
                block = carry + block
            # the closing line: "." alone, at the start of a line
            if block.startswith(b".\r\n") and not dropped:
                end = 0
            else:
                end = block.find(b"\r\n.\r\n")
                end = end + 2 if end >= 0 else -1
            lines_end = end if end >= 0 else block.rfind(b"\r\n") + 2
            if lines_end >= 2 or end == 0:
                whole = block[:lines_end]
                if refusal is None and whole:
                    lines = whole.split(b"\r\n")
                    lines.pop()  # (what follows the last CRLF: nothing)
                    if (dropped + len(lines[0]) + 2 <= longest and len(max(lines, key=len)) + 2 <= longest
                            and not (limit and size + dropped + len(whole) > limit)):
                        kept.append(whole)  # the usual text: every line within bounds
                        size += dropped + len(whole)
                    else:
                        lengths = [len(line) + 2 for line in lines]
                        lengths[0] += dropped
                        for n in lengths:  # the first limit crossed, in the order aiosmtpd finds them
                            if n - 2 > longest:
                                refusal = "500 Line too long (see RFC5321 4.5.3.1.6)"
                                break
                            size += n
                            if limit and size > limit:
                                refusal = "552 Error: Too much mail data"
                                break
                            if n > longest:
                                refusal = "500 Line too long (see RFC5321 4.5.3.1.6)"
                                break
                        kept = []
                carry, dropped = b"", 0
                rest = block[lines_end:]
            else:
                rest = block
            if end >= 0:
                after = rest[3:]  # what came after the closing line belongs to the next command
                if after and not reader.at_eof():  # (a client that pipelines without being offered it)
                    reader.feed_data(after)
                return (None, refusal) if refusal is not None else (b"".join(kept), None)
            if dropped + len(rest) > longest + 2:  # too long already: only its end is kept, to find the CRLF
                dropped += len(rest) - 1
                carry = rest[-1:]
            else:
                carry = rest

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.match(arg)
        if match:
            rest = arg[match.end():].lstrip(" \t")
            address = match.group(1)
            if not rest.startswith("(") and not (
                    self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit):
                return address, rest
        return super()._getaddr(arg)


def new_event_loop(starttls: bool = False) -> asyncio.AbstractEventLoop:
    """The SMTP server's loop: uvloop's where it is installed (Linux, macOS), asyncio's otherwise.

    uvloop does a session's socket reads and writes in C: a mail merge through the helper takes about a
    fifth less of the interpreter per message, which the checks need. aiosmtpd's STARTTLS builds on
    asyncio's own TLS protocol class, so a server offering STARTTLS keeps asyncio's loop.
    """
    if not starttls:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


class SubmissionServer:
    """The SMTP server in its own thread and event loop; ``port`` is known after ``start``."""

    def __init__(self, handler: Any, host: str = "127.0.0.1", port: int = 1587,
                 listen_ssl: ssl.SSLContext | None = None, **smtp_options: Any):
        self.handler = handler
        self.listen_ssl = listen_ssl  # implicit TLS (port 465 style); STARTTLS goes in smtp_options
        self.smtp_options = smtp_options
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _factory(self) -> SMTP:
        options = {"data_size_limit": MAX_MESSAGE_BYTES, "enable_SMTPUTF8": True, "hostname": "localhost",
                   "ident": "SendGuard ESMTP", **self.smtp_options}
        return SMTPSession(self.handler, loop=self._loop, **options)

    def _run(self) -> None:
        self._loop = new_event_loop(starttls=self.smtp_options.get("tls_context") is not None)
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(self._factory, host=self.host, port=self.port, ssl=self.listen_ssl))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        # sessions still open end here (their clients see the connection close and keep their messages)
        sessions = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
        for task in sessions:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*sessions, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def start(self) -> SubmissionServer:
        self._thread = threading.Thread(target=self._run, name="sendguard-smtp", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            err = self._error
            if isinstance(err, OSError):
                raise OSError(err.errno, f"cannot listen for SMTP on {self.host}:{self.port}: {err.strerror} "
                                         "(another program uses the port? set [smtp] port in config.toml)")
            raise err
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Close the port; False when the server's thread is still busy after ``timeout`` seconds."""
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True
