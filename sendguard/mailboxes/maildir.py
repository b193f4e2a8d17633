"""The embedded default release: a Maildir under ``$SENDGUARD_HOME/sent`` (no account needed).

Each released message is one file named after its outbox id, so after a crash ``find_sent`` can
tell for certain whether the release happened.
"""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

from .. import paths
from ..config import Account
from .base import ReleaseItem, ReleaseReceipt, TransientError


class MaildirMailbox:
    kind = "maildir"

    def __init__(self, path: Path, name: str = "local"):
        self.name = name
        self.path = Path(path)

    @classmethod
    def from_account(cls, account: Account, home: Path) -> MaildirMailbox:
        path = account.settings.get("path") or (home / "sent")
        return cls(Path(path).expanduser(), account.name)

    def _maildir(self) -> mailbox.Maildir:
        return mailbox.Maildir(str(self.path), create=True)

    @staticmethod
    def _key(outbox_id: str) -> str:
        return f"sendguard-{outbox_id}"

    def release(self, item: ReleaseItem) -> ReleaseReceipt:
        try:
            self._maildir()  # creates new/, cur/, tmp/ when missing
            key = self._key(item.outbox_id)
            tmp = self.path / "tmp" / f"{key}.{os.getpid()}"
            final = self.path / "new" / key
            # the delivered file carries the envelope, as a local delivery agent would record it
            head = f"Return-Path: <{item.envelope_from}>\n".encode()
            head += "".join(f"X-SendGuard-Envelope-To: {r}\n" for r in item.recipients).encode()
            with paths.open_private(tmp) as fh:  # holds the mail (an approval request: its link)
                fh.write(head + item.raw.replace(b"\r\n", b"\n"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)  # atomic: the file is there whole, or not at all
            dir_fd = os.open(self.path / "new", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise TransientError(f"the Maildir {self.path} is full: free some disk space") from None
            # unmounted, read-only, permissions: nothing was delivered; the mail stays held and is tried again
            raise TransientError(f"cannot write to the Maildir {self.path} ({exc.strerror or exc}); SendGuard "
                                 "will try again: check that the folder is there and writable") from None
        return ReleaseReceipt("maildir", {"path": str(final)})

    def close(self) -> None:
        """Nothing to let go of: every call opens the folder anew."""

    def find_sent(self, message_id: str) -> bool | None:
        """True when a delivered file carries this Message-ID in its header (not merely in its body,
        where a forwarded copy of another message would hold that message's id)."""
        wanted = message_id.strip().lower()
        if self.path.exists() and not self.path.is_dir():
            raise TransientError(f"the Maildir {self.path} is not a folder (unmounted or replaced?); SendGuard "
                                 "asks again later")
        for sub in ("new", "cur"):
            folder = self.path / sub
            if not folder.is_dir():
                continue
            for file in folder.iterdir():
                with open(file, "rb") as fh:
                    head = fh.read(65536).split(b"\n\n", 1)[0].decode("utf-8", "replace")
                for line in head.split("\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "message-id" and value.strip().lower() == wanted:
                        return True
        return False

    def messages(self) -> list[Path]:
        """Delivered files, oldest first (for tests and `doctor`)."""
        folder = self.path / "new"
        return sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
