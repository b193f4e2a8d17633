"""The central server's WSGI runner: gunicorn (gthread workers, so long polls do not block others) on
POSIX, waitress on Windows. ``ready_file`` receives the bound URL once the server listens."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask


def serve(app_factory: Callable[[], Flask], host: str, port: int, workers: int, threads: int,
          ready_file: Path | None = None, longest_request: float = 60.0) -> None:
    """gunicorn (gthread workers, so long polls do not block others) on POSIX; waitress on Windows."""
    if sys.platform == "win32":
        import waitress

        if ready_file:
            ready_file.write_text(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid()}))
        os.environ["SENDGUARD_SERVER_THREADS"] = str(max(4, workers * threads))  # one process: the wait budget
        waitress.serve(app_factory(), host=host, port=port, threads=max(4, workers * threads))
        return
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            def when_ready(arbiter: Any) -> None:
                if ready_file:
                    sock = arbiter.LISTENERS[0].sock.getsockname()
                    tmp = ready_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"url": f"http://{sock[0]}:{sock[1]}", "pid": os.getpid()}))
                    os.replace(tmp, ready_file)

            settings = {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
                        "worker_class": "gthread", "timeout": int(longest_request), "graceful_timeout": 10,
                        "keepalive": 5, "accesslog": None, "errorlog": "-", "loglevel": "warning",
                        "when_ready": when_ready}
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app_factory()

    Server().run()
