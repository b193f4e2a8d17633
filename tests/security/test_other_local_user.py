"""Threat: another local user on a shared machine (terminal server, lab PC) hands the helper mail.

The helper's SMTP port and its Outlook add-in session answer on loopback, which every user of the machine
reaches. Mail taken from another user's program would be released through this user's account (or shown in
this user's window as mail they never wrote). On Linux the kernel says who owns a loopback connection, and
the helper serves its own user only. The attacker here is a real process running as ``nobody``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_message, smtp_send

from sendguard import peers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the owner of a loopback "
                                "connection is read from /proc/net/tcp (Linux)")

SMTP_AS_OTHER = """
import smtplib, sys
try:
    with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
        s.sendmail("taro@example.co.jp", ["hanako@example.co.jp"],
                   b"From: taro@example.co.jp\\r\\nTo: hanako@example.co.jp\\r\\nSubject: not mine\\r\\n\\r\\nhi\\r\\n")
    print("accepted")
except smtplib.SMTPResponseException as exc:
    print(exc.smtp_code, exc.smtp_error.decode())
"""

SESSION_AS_OTHER = """
import sys, urllib.request, urllib.error
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v1/addin/session", data=b"{}", method="POST",
                             headers={"Content-Type": "application/json"})
try:
    print(urllib.request.urlopen(req, timeout=20).status)
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


def as_nobody(script: str, *args: str) -> str:
    if os.geteuid() != 0:
        pytest.skip("acting as another local user needs root (CI runs as root)")
    # an interpreter the other user may run (this one may sit in root's home)
    for python in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        if subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], capture_output=True,
                          cwd="/").returncode == 0:
            break
    else:
        pytest.fail("no Python interpreter that the user nobody may run: install python3 (Debian)")
    out = subprocess.run(["runuser", "-u", "nobody", "--", python, "-I", "-c", script, *args],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_owner_of_a_loopback_connection_is_known():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, peer = server.accept()
    try:
        assert peers.peer_uid(*peer) == os.getuid()
        assert peers.foreign_user(*peer) is None
        assert peers.peer_uid("127.0.0.1", 1) is None  # no such connection
    finally:
        for s in (client, accepted, server):
            s.close()


def test_another_users_program_cannot_hand_the_helper_mail(serve_process, home: Path):
    (home / "policy.toml").write_text('[organization]\ninternal_domains = ["example.co.jp"]\n', encoding="utf-8")
    serve = serve_process().start()
    answer = as_nobody(SMTP_AS_OTHER, str(serve.smtp_port))
    assert answer.startswith("550 ") and "another local user" in answer, answer
    session = as_nobody(SESSION_AS_OTHER, str(serve.api_port))
    assert session.startswith("403 ") and "another local user" in session, session
    # the user's own programs are served as before, on the same helper
    smtp_send(serve.smtp_port, make_message(to="hanako@example.co.jp", subject="mine"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = subprocess.run([sys.executable, "-m", "sendguard", "queue", "list", "--json", "--all"],
                                capture_output=True, text=True, env=dict(os.environ))
        items = json.loads(listed.stdout or "[]")
        if items:
            break
        time.sleep(0.2)
    assert [i["subject"] for i in items] == ["mine"]
    log = (home / "logs" / "sendguard.log").read_text(encoding="utf-8")
    assert "refused mail from another local user's program" in log
