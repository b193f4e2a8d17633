"""A TCP proxy for network faults between a helper and a server: one address in front of one or more
backends (round robin per connection, as a load balancer does), which can be cut (a partition: open
connections are reset and new ones are closed at once) and healed.
"""

from __future__ import annotations

import itertools
import socket
import threading


class TcpProxy:
    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self.cut_off = False
        self.connections = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Partition: reset every open connection; new ones are closed without a byte."""
        with self._lock:
            self.cut_off = True
            for s in list(self._open):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()
                except OSError:
                    pass
            self._open.clear()

    def heal(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            with self._lock:
                backend = self.backends[next(self._next)]
                self.connections += 1
            try:
                upstream = socket.create_connection(backend, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
