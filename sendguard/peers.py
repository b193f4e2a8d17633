"""Which local user a loopback connection comes from (Linux), so the helper serves its own user only.

The helper's SMTP port and its add-in session are open to any program that can reach loopback, which on a
shared machine (a terminal server, a lab PC) includes other users' programs: they could hand the helper
mail that it would then release through this user's account. On Linux the kernel says who owns each TCP
socket (``/proc/net/tcp``, ``tcp6``): the client's end of a connection to us is owned by the uid that
opened it. Elsewhere (Windows, macOS) this returns None: nothing is known, nothing is refused.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

_TABLES = {4: Path("/proc/net/tcp"), 6: Path("/proc/net/tcp6")}
_ESTABLISHED = "01"


def _proc_address(host: str, port: int) -> tuple[int, str]:
    """(IP version, the address as /proc/net/tcp writes it: 32-bit words in host order, hex, then port)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    packed = ip.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return ip.version, "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def peer_uid(host: str, port: int) -> int | None:
    """The uid owning the client socket ``host:port`` connected to this machine; None when it cannot be
    known here (no /proc: not Linux) or the connection is gone."""
    try:
        version, wanted = _proc_address(host, port)
    except ValueError:
        return None
    try:
        lines = _TABLES[version].read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == wanted and fields[3] == _ESTABLISHED:
            return int(fields[7])
    return None


def foreign_user(host: str, port: int) -> int | None:
    """The uid of a loopback client that is another user than this process's, else None."""
    if os.name != "posix" or not _TABLES[4].exists():
        return None
    uid = peer_uid(host, port)
    return uid if uid is not None and uid != os.getuid() else None
