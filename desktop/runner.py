"""Runs one helper: the core service (SMTP intake, outbox worker) and the local web API on loopback."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from addin import create_app
from sendguard import paths, runtime, shutdown
from sendguard.config import is_loopback
from sendguard.errors import SendGuardError
from sendguard.service import Helper

log = logging.getLogger(__name__)


def _ssl_context(home: Path) -> ssl.SSLContext | None:
    """HTTPS with the installer's per-machine CA, or this user's local CA once `sendguard addin certs
    install` created it."""
    from sendguard import certs

    try:
        if not (home / "certs").exists() and certs.machine_certificates() is None:
            return None
        return certs.ssl_context(home)  # type: ignore[no-any-return]
    except Exception as exc:  # a broken cert must not stop the guard: fall back to plain loopback HTTP
        log.warning("cannot use the local HTTPS certificate (%s); serving plain HTTP on loopback", exc)
        return None


class Runner:
    """Helper + API server; ``start`` returns once both listen (ports known even when 0 was asked)."""

    def __init__(self, home: Path | None = None, smtp_port: int | None = None, api_port: int | None = None,
                 tls: bool | None = None):
        self.home = home or paths.home()
        self.helper = Helper(self.home)
        self.smtp_port = smtp_port
        self.api_port = self.helper.config.api_port if api_port is None else api_port
        self.tls = tls
        self.app = create_app(self.helper)
        self.server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.scheme = "http"

    def start(self) -> Runner:
        if not is_loopback(self.helper.config.api_host):  # the Host check means nothing on a LAN address
            raise SendGuardError(f"[api] host {self.helper.config.api_host!r}: the helper listens on loopback only")
        self.helper.start(smtp=True, smtp_port=self.smtp_port)
        context = _ssl_context(self.home) if self.tls is not False else None
        self.scheme = "https" if context else "http"
        # served over HTTPS, the page session's cookie is never sent over plain HTTP
        self.app.config["SESSION_COOKIE_SECURE"] = context is not None
        host = self.helper.config.api_host
        try:
            self.server = make_server(host, self.api_port, self.app, threaded=True, ssl_context=context)
        except OSError as exc:
            self.helper.stop()
            raise OSError(exc.errno, f"cannot listen for the API on {host}:{self.api_port}: {exc.strerror} "
                                     "(another SendGuard running? set [api] port in config.toml)") from None
        self.api_port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="sendguard-api", daemon=True)
        self._thread.start()
        assert self.helper.smtp is not None
        runtime.write(self.home, smtp_port=self.helper.smtp.port, api_port=self.api_port, scheme=self.scheme)
        return self

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://localhost:{self.api_port}"

    def describe(self) -> dict[str, Any]:
        cfg = self.helper.config
        transport = ", ".join(f"{a.name} ({a.kind})" for a in cfg.accounts) or f"Maildir {self.home / 'sent'}"
        assert self.helper.smtp is not None
        return {"smtp": f"{self.helper.smtp.host}:{self.helper.smtp.port}", "api": self.base_url,
                "home": str(self.home), "transport": transport}

    def stop(self, timeout: float = shutdown.STOP_SECONDS) -> None:
        """Stop the API server and the helper within ``timeout`` seconds in all (a part still busy then
        is named in the log and left behind; see ``Helper.stop``)."""
        deadline = time.monotonic() + timeout
        if self.server and self._thread:
            # serve_forever() notices within its poll interval; shutdown() itself would wait without limit
            threading.Thread(target=self.server.shutdown, name="sendguard-api-shutdown", daemon=True).start()
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("the API server did not stop in time; stopping the helper without it")
        self.helper.stop(max(0.0, deadline - time.monotonic()))
        runtime.clear(self.home)
