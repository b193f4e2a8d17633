"""``sendguard demo`` without a display: three sample messages held, confirm links printed and working."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_working_confirm_links(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SENDGUARD_HOME")}
    proc = subprocess.Popen([sys.executable, "-m", "sendguard", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.time() + 60
        while time.time() < deadline and len([x for x in lines if "/confirm/" in x]) < 3:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
        links = [re.search(r"(http://localhost:\d+/confirm/\w+\?t=\S+)", x) for x in lines]
        urls = [m.group(1) for m in links if m]
        assert len(urls) == 3, lines
        assert any("来週の定例会議" in x for x in lines)
        home = Path(re.search(r"temporary helper in (\S+)", "\n".join(lines)).group(1))  # type: ignore[union-attr]
        assert (home / "policy.toml").exists()
        with requests.Session() as browser:
            page = browser.get(urls[2], timeout=10)
            assert page.status_code == 200
            assert "<title>SendGuard" in page.text
            data = browser.get(page.url + "/data", timeout=10).json()
        recipients = data["item"]["check"]["recipients"]
        assert len(recipients) == 12
        assert any("lookalike" in r["flags"] for r in recipients)
        assert data["item"]["state"] == "awaiting_confirmation"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Demo ended" in out
    assert not home.exists()
