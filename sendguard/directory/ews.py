"""Distribution lists from on-premises Exchange: the EWS ExpandDL operation through exchangelib.

ExpandDL answers with the list's members (each with its MailboxType: a nested ``PublicDL`` or
``PrivateDL`` is expanded in turn), or with ``ErrorNameResolutionNoResults`` when the address is not
a list. The lookups use a connector of their own (its own lock), so a long release never delays a
check, and the connector's error translation: throttling, network failures and refused sign-ins
become a "could not ask" answer with the connector's message.
"""

from __future__ import annotations

from pathlib import Path

from exchangelib import errors as ews_errors

from ..config import Account
from ..mailboxes.base import MailboxError
from ..mailboxes.exchange import ExchangeMailbox
from . import ListLookup, flatten

_NOT_A_LIST = (ews_errors.ErrorNameResolutionNoResults, ews_errors.ErrorNameResolutionNoMailbox)
_LIST_TYPES = ("PublicDL", "PrivateDL")


class _CannotExpand(Exception):
    pass


class EwsResolver:
    source = "Exchange"

    def __init__(self, box: ExchangeMailbox):
        self.box = box
        self.domain = box.address.rpartition("@")[2].lower()

    @classmethod
    def for_account(cls, account: Account, home: Path) -> EwsResolver:
        return cls(ExchangeMailbox.from_account(account, home))  # its own connection and lock

    def _members(self, address: str) -> list[tuple[str, str, bool]] | None:
        """(address, name, is a list) per member; None when the address is not a list."""

        def expand(account):
            try:
                return account.protocol.expand_dl(address)
            except _NOT_A_LIST:
                return None
            except ews_errors.ErrorServerBusy:
                raise  # throttling: the connector waits or gives up as for any call
            except ews_errors.ResponseMessageError as exc:  # the server answered, but not with the members
                return _CannotExpand(f"{type(exc).__name__}: {exc}")

        found = self.box._call(f"asking Exchange who is on {address}", expand)
        if isinstance(found, _CannotExpand):
            raise found
        if found is None:
            return None
        return [((m.email_address or "").lower(), m.name or "", m.mailbox_type in _LIST_TYPES) for m in found]

    def expand(self, address: str) -> ListLookup:
        """Raises MailboxError when Exchange cannot be asked (the directory then stops asking a while)."""
        try:
            members = self._members(address)
        except _CannotExpand as exc:
            return ListLookup(address, None, why=str(exc), source=self.source)
        if members is None:
            return ListLookup(address, False, source=self.source)

        def nested(inner: str) -> list[tuple[str, str, bool]] | None:
            try:
                return self._members(inner)
            except (MailboxError, _CannotExpand):
                return None

        return flatten(address, self.source, members, nested)

    def close(self) -> None:
        self.box.close()
