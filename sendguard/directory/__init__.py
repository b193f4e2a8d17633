"""Distribution lists from the mail server's directory: is this recipient a list, and who is on it?

The policy engine stays pure: the outbox asks a ``Directory`` before a check and hands the answers in
as data (``ListLookup`` per address). A directory is a cache in front of one resolver per account
that allows it (``expand_lists = true`` in the account's settings): Exchange's ExpandDL over EWS
(``sendguard.directory.ews``) or Microsoft Graph's groups (``sendguard.directory.graph``).

Only addresses in the organisation's own domains are asked (an external list is not in our
directory; ``lists.csv`` covers those). A resolver that cannot answer (server down, throttled,
permission missing) gives an answer too: ``is_list`` None with the reason, which the policy treats
like a list that cannot be expanded (the policy's ``[rules] distribution_list`` action), never as a single address.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .. import detect
from ..mailboxes.errors import MailboxError

if TYPE_CHECKING:
    from ..config import Account
    from ..policy import Policy

log = logging.getLogger(__name__)

ANSWER_TTL = 600.0  # seconds a directory answer is reused (list membership changes rarely)
FAILURE_TTL = 60.0  # seconds "could not ask" is reused, so an outage does not cost a timeout per message
MAX_MEMBERS = 5000  # a larger list is treated as one SendGuard cannot show in full
MAX_DEPTH = 5  # nested lists followed at most this deep
MAX_CACHED = 20_000  # answers kept; expired ones are dropped when the cache is full


@dataclass(frozen=True)
class Member:
    address: str  # lower-cased
    name: str = ""


@dataclass(frozen=True)
class ListLookup:
    """What the directory said about one address.

    ``is_list``: True (a list), False (not a list), None (the directory could not be asked: ``why``).
    A list is ``expanded`` when ``members`` is all of it; otherwise ``why`` says why not.
    ``source`` names the directory ("Exchange", "Microsoft Graph").
    """

    address: str
    is_list: bool | None
    members: tuple[Member, ...] = ()
    expanded: bool = False
    why: str = ""
    source: str = ""


class Resolver(Protocol):
    """One account's directory. ``expand`` answers for one address: a ``ListLookup`` (with ``is_list``
    None and ``why`` when the server answered but not with the members), or it raises ``MailboxError``
    when the server cannot be asked at all (down, throttling, sign-in refused)."""

    source: str
    domain: str  # the account's own domain

    def expand(self, address: str) -> ListLookup: ...

    def close(self) -> None: ...


class NotCached(Exception):
    """Raised by ``Directory.lookup(cached_only=True)`` when the directory would have to be asked."""


class Directory:
    """A cache of directory answers in front of the accounts' resolvers. Thread-safe."""

    def __init__(self, resolvers: Iterable[Resolver], clock: Callable[[], float] = time.monotonic,
                 answer_ttl: float = ANSWER_TTL, failure_ttl: float = FAILURE_TTL):
        self.resolvers = list(resolvers)
        self.clock = clock
        self.answer_ttl = answer_ttl
        self.failure_ttl = failure_ttl
        self._cache: dict[str, tuple[float, ListLookup]] = {}
        self._down: dict[int, tuple[float, str]] = {}  # resolver -> (until, why): not asked again meanwhile
        self._lock = threading.Lock()

    def candidates(self, addresses: Iterable[str], internal_domains: Iterable[str]) -> list[str]:
        """The addresses a directory can know: in the internal domains or an account's own domain."""
        domains = [*internal_domains, *(r.domain for r in self.resolvers if r.domain)]
        out = []
        for address in addresses:
            domain = address.rpartition("@")[2]
            if domain and any(detect.in_domain(domain, d) for d in domains) and address not in out:
                out.append(address)
        return out

    def _resolver_for(self, address: str) -> Resolver:
        domain = address.rpartition("@")[2]
        for resolver in self.resolvers:
            if resolver.domain and detect.in_domain(domain, resolver.domain):
                return resolver
        return self.resolvers[0]

    def _cached(self, address: str) -> ListLookup | None:
        with self._lock:
            entry = self._cache.get(address)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def lookup(self, addresses: Iterable[str], *, cached_only: bool = False) -> dict[str, ListLookup]:
        """An answer per address (from the cache, else asked now). With ``cached_only``, raise
        ``NotCached`` instead of asking (intake must not wait for a network call)."""
        out: dict[str, ListLookup] = {}
        if not self.resolvers:
            return out
        for address in addresses:
            found = self._cached(address)
            if found is None:
                if cached_only:
                    raise NotCached(address)
                found = self._ask(address)
            out[address] = found
        return out

    def _ask(self, address: str) -> ListLookup:
        resolver = self._resolver_for(address)
        with self._lock:
            down = self._down.get(id(resolver))
        if down is not None and down[0] > self.clock():
            # the server could not be asked a moment ago: say so at once instead of waiting for it again
            # (a message to many colleagues would otherwise wait a timeout per address)
            found = ListLookup(address, None, why=down[1], source=resolver.source)
        else:
            try:
                found = resolver.expand(address)
            except MailboxError as exc:
                found = ListLookup(address, None, why=str(exc), source=resolver.source)
                with self._lock:
                    self._down[id(resolver)] = (self.clock() + self.failure_ttl, str(exc))
            except Exception as exc:  # a resolver bug must not pass a list off as one address
                log.exception("directory lookup of %s failed", address)
                found = ListLookup(address, None, why=f"{type(exc).__name__}: {exc}", source=resolver.source)
        ttl = self.failure_ttl if found.is_list is None else self.answer_ttl
        now = self.clock()
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache = {a: e for a, e in self._cache.items() if e[0] > now}
                if len(self._cache) >= MAX_CACHED:  # all still fresh: drop the oldest half
                    keep = sorted(self._cache.items(), key=lambda kv: kv[1][0])[MAX_CACHED // 2:]
                    self._cache = dict(keep)
            self._cache[address] = (now + ttl, found)
        return found

    def close(self) -> None:
        for resolver in self.resolvers:
            try:
                resolver.close()
            except Exception:  # closing is best effort
                log.debug("closing a directory resolver failed", exc_info=True)


def flatten(address: str, source: str, members: Iterable[tuple[str, str, bool]],
            expand_nested: Callable[[str], Iterable[tuple[str, str, bool]] | None], depth: int = 0,
            seen: set[str] | None = None) -> ListLookup:
    """A list's members with nested lists followed (``expand_nested`` gives a nested list's members,
    or None when it cannot): (address, name, is_list) rows in, one ``ListLookup`` out."""
    seen = seen if seen is not None else {address}
    out: dict[str, Member] = {}
    why = ""
    for member, name, is_list in members:
        member = member.lower()
        if not member or member in seen:
            continue
        if is_list:
            seen.add(member)
            nested = expand_nested(member) if depth + 1 < MAX_DEPTH else None
            if nested is None:
                why = why or f"the nested list {member} could not be expanded"
                continue
            inner = flatten(member, source, nested, expand_nested, depth + 1, seen)
            why = why or inner.why
            for m in inner.members:
                out.setdefault(m.address, m)
        else:
            out.setdefault(member, Member(member, name))
        if len(out) > MAX_MEMBERS:
            return ListLookup(address, True, (), False, f"more than {MAX_MEMBERS} members", source)
    return ListLookup(address, True, tuple(out.values()), not why, why, source)


def lists_for(lookups: Mapping[str, ListLookup]) -> dict[str, ListLookup]:
    """Only the answers the policy needs: lists, and addresses that could not be asked."""
    return {a: found for a, found in lookups.items() if found.is_list is not False}


MARKED_BY_CLIENT = "Outlook"


def answers_for(found: Directory | None, addresses: Iterable[str], policy: Policy,
                cached_only: bool = False, marked: Iterable[str] = ()) -> dict[str, ListLookup]:
    """What the policy engine gets for a message's recipients: the directory's answers for the
    addresses it can know (ours, and not already described by lists.csv). ``marked``: addresses the
    mail client says are lists; one the directory does not expand is a list SendGuard cannot see."""
    addresses = list(addresses)
    answers: dict[str, ListLookup] = {}
    if found is not None:
        wanted = found.candidates([a for a in addresses if policy.list_for(a) is None], policy.internal_domains)
        answers = lists_for(found.lookup(wanted, cached_only=cached_only))
    for address in marked:
        if address in addresses and address not in answers and policy.list_for(address) is None:
            answers[address] = ListLookup(address, True, (), False, source=MARKED_BY_CLIENT, why=(
                "Outlook marks it as a distribution list and no account here can expand it; an Exchange or "
                "Microsoft 365 account added with --expand-lists can"))
    return answers


class _Unusable:
    """An account whose directory cannot even be set up (settings incomplete, secrets unreadable): every
    lookup says so, so lists are never taken for single addresses while it is broken."""

    def __init__(self, account: Account, why: str):
        self.source = {"exchange": "Exchange", "graph": "Microsoft Graph"}.get(account.kind, account.kind)
        self.domain = account.address.rpartition("@")[2].lower()
        self.why = f"the account {account.name} cannot be used: {why}"

    def expand(self, address: str) -> ListLookup:
        raise MailboxError(self.why)

    def close(self) -> None:
        pass


def for_accounts(accounts: Iterable[Account], home: Path) -> Directory | None:
    """The directory of the accounts whose settings say ``expand_lists = true``; None when none do."""
    resolvers: list[Resolver] = []
    for account in accounts:
        if not account.settings.get("expand_lists") or account.kind not in ("exchange", "graph"):
            continue
        try:
            if account.kind == "exchange":
                from .ews import EwsResolver

                resolvers.append(EwsResolver.for_account(account, home))
            else:
                from .graph import GraphResolver

                resolvers.append(GraphResolver.for_account(account, home))
        except Exception as exc:  # the helper starts anyway; checks say why lists cannot be asked about
            log.warning("the directory of account %s cannot be used: %s", account.name, exc)
            resolvers.append(_Unusable(account, str(exc)))
    return Directory(resolvers) if resolvers else None
