"""What a failed HTTP request (requests / urllib3, as Graph and exchangelib use them) says about a send.

``never_reached``: the request failed before a connection was made, so nothing was sent and a retry is
safe. ``connection_lost``: the network failure behind an error (a reset, a timeout, a dropped answer),
after which the server may have the message. Both follow the exception's cause chain: exchangelib re-raises
such failures under its own classes.
"""

from __future__ import annotations

from collections.abc import Iterator

import requests
import urllib3


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e``, then its causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def never_reached(e: BaseException) -> bool:
    """True when a request failed before a connection was made (refused, no route, DNS): nothing was sent."""
    for cur in _chain(e):
        reason = cur.args[0] if cur.args else None
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
        if isinstance(cur, requests.exceptions.ConnectTimeout | ConnectionRefusedError) \
                or isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
            return True
    return False


def connection_lost(e: BaseException) -> BaseException | None:
    """The network failure behind ``e`` (a reset, a timeout, a dropped answer), or None. exchangelib raises
    such a failure as ErrorTimeoutExpired, or as ErrorServerBusy when it has more than one connection
    ("Reraised from ..."): no answer from the server, whatever the class says."""
    for cur in _chain(e):
        if isinstance(cur, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | requests.exceptions.ChunkedEncodingError | ConnectionError | TimeoutError):
            return cur
    return None
