"""The real .deb on a throwaway dpkg root (issue #15.1, .6, .7, .8).

Built from this checkout with a locked, offline wheelhouse (headless: the window's Qt wheels are left
out to keep the suite quick; the lock and install path are the same), installed with the real dpkg
into a scratch root whose package database holds this machine's python3 entries, so Depends is
checked for real. The installed ``sendguard`` runs: --version, check, doctor --json; a helper holds a
message, version N+1 (which adds a store migration) is installed over N, the message is still held and
the store migrated; removal stops the helper and leaves no autostart that would start anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_message

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import build_installer as bi  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg") is None or os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                       reason="needs dpkg, root and /usr/bin/python3"),
]
NEWEST_STEP = "m0002_outbox_due_index.py"
POLICY = 'locked = ["confirm.when"]\n[organization]\ninternal_domains = ["example.co.jp"]\n[confirm]\nwhen = "external"\n'


def source_copy(dest: Path, version: str, drop: tuple[str, ...] = ()) -> Path:
    """This checkout's files at ``dest`` with another version (and without some migration steps)."""
    for rel in bi._source_files(ROOT):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    for name in drop:
        (dest / "sendguard/store_migrations" / name).unlink()
    for rel, pattern in (("pyproject.toml", r'(?m)^version = "[^"]+"'), ("sendguard/__init__.py", r'__version__ = "[^"]+"')):
        text = (dest / rel).read_text(encoding="utf-8")
        replacement = f'version = "{version}"' if rel == "pyproject.toml" else f'__version__ = "{version}"'
        (dest / rel).write_text(re.sub(pattern, replacement, text, count=1), encoding="utf-8")
    return dest


def dpkg_root(base: Path, python_version: str | None = None) -> Path:
    """A scratch dpkg root whose status lists this machine's python3 packages (optionally another version)."""
    root = base / "root"
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "updates").mkdir()
    (admin / "available").touch()
    stanzas = Path("/var/lib/dpkg/status").read_text(encoding="utf-8").split("\n\n")
    keep = [s for s in stanzas if re.search(r"^Package: (python3|python3-venv)$", s, re.M)]
    if python_version:
        keep = [re.sub(r"(?m)^Version: .*$", f"Version: {python_version}", s) for s in keep]
    (admin / "status").write_text("\n\n".join(keep) + "\n\n", encoding="utf-8")
    return root


def dpkg(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDGUARD_", "PIP_", "VIRTUAL_ENV"))}
    result = subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", "--log=/dev/null", *args],
                            capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fleet")
    old_tempdir = tempfile.tempdir
    tempfile.tempdir = str(base)
    try:
        old = bi.build_wheel(source_copy(base / "src-old", "0.0.9", drop=(NEWEST_STEP,)), base / "wheels-old")
        new = bi.build_wheel(ROOT, base / "wheels-new")
        requirements = bi.runtime_requirements(bi.Wheel.read(new).requires, extras=())
        started = time.monotonic()
        house = bi.make_wheelhouse(requirements, "linux", base / "wheelhouse", title="test (headless)")
        bi.check_offline_install(house)
        wheelhouse_seconds = time.monotonic() - started
        policy = base / "policy.toml"
        policy.write_text(POLICY, encoding="utf-8")
        out = {}
        for name, wheel in (("old", old), ("new", new)):
            (built,) = [p for p in bi.build(base / f"dist-{name}", ("linux",), policy, None, wheel_path=wheel,
                                            wheelhouse=house.directory) if p.suffix == ".deb"]
            out[name] = built
    finally:
        tempfile.tempdir = old_tempdir
    return {"base": base, "house": house.directory, "wheelhouse_seconds": wheelhouse_seconds, **out}  # type: ignore[dict-item]


def user_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDGUARD_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"SENDGUARD_HOME": str(home), "PYTHONUNBUFFERED": "1", "LANG": "en_US.UTF-8",
                "XDG_DATA_HOME": str(home / "xdg-data"), "SENDGUARD_ADMIN_POLICY": "/nonexistent"})
    env.pop("DISPLAY", None)
    env.update(extra)
    return env


def run(root: Path, home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The installed command (the venv's console script in the scratch root), run from a neutral folder."""
    return subprocess.run([str(root / "opt/sendguard/venv/bin/sendguard"), *args], capture_output=True,
                          env=user_env(home), input=input, cwd=str(home), timeout=120)


def start_helper(root: Path, home: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([str(root / "opt/sendguard/venv/bin/sendguard"), "serve", "--no-window",
                             "--smtp-port", "0", "--api-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=user_env(home), cwd=str(home))
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"SMTP submission: [\d.]+:(\d+)", line)
        if found:
            return proc, int(found.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"the installed helper did not start: {proc.stdout.read() if proc.stdout else ''}")


def wait_exit(proc: subprocess.Popen[str], timeout: float = 30) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def test_install_run_upgrade_keeps_held_mail_and_removal_stops_the_helper(debs: dict[str, Path], tmp_path: Path) -> None:
    root = dpkg_root(tmp_path)
    home = tmp_path / "user-home"
    home.mkdir()
    control = subprocess.run(["dpkg-deb", "--field", str(debs["new"]), "Depends", "Architecture"],
                             capture_output=True, text=True, check=True).stdout
    assert "python3 (>= 3.11)" in control and "python3 (<< 3.12)" in control  # cp311 wheels inside
    assert "Architecture: amd64" in control or "Architecture: arm64" in control

    installed = dpkg(root, "-i", str(debs["old"]))
    assert "locked packages from the bundled wheelhouse (no network)" in installed.stdout
    version = run(root, home, "--version")
    assert version.returncode == 0 and b"0.0.9" in version.stdout, version.stderr

    # item 7: the user's environment names another admin policy; the installed helper keeps the machine's
    doctor = run(root, home, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    machine = next(r for r in json.loads(doctor.stdout) if r["check"] == "machine policy")
    assert machine["detail"].startswith("/etc/xdg/SendGuard/policy.toml (pinned by the installer's marker")

    eml = tmp_path / "quote.eml"
    eml.write_bytes(make_message(to="x@partner.example").as_bytes())
    check = run(root, home, "check", str(eml), "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["recipients"][0]["address"] == "x@partner.example"

    # hold a message with the installed helper (a real SMTP submission)
    helper, port = start_helper(root, home)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.send_message(make_message(to="x@partner.example"), "taro@example.co.jp", ["x@partner.example"])
        listing: list[dict] = []
        for _ in range(100):
            listing = json.loads(run(root, home, "queue", "list", "--json").stdout or b"[]")
            if listing and listing[0]["state"] == "awaiting_confirmation":
                break
            time.sleep(0.3)
        assert [i["state"] for i in listing] == ["awaiting_confirmation"]
        held = listing[0]["id"]
        db = home / "sendguard.db"
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # N knows one step

        # N+1 over N: prerm stops the running helper, postinst updates the venv from the wheelhouse
        upgraded = dpkg(root, "-i", str(debs["new"]))
        assert "stopping the helpers running from" in upgraded.stdout + upgraded.stderr
        assert wait_exit(helper) is not None, "the old helper kept running after the upgrade"
    finally:
        if helper.poll() is None:
            helper.kill()
    version = run(root, home, "--version")
    assert b"0.1.0" in version.stdout, version.stdout + version.stderr
    listing = json.loads(run(root, home, "queue", "list", "--json").stdout)
    assert [(i["id"], i["state"]) for i in listing] == [(held, "awaiting_confirmation")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ix_outbox_state_release_after'").fetchone()
    assert (home / "sendguard.db.schema-1.bak").exists()
    verify = run(root, home, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # removal: the running helper is stopped, nothing is left to start at login
    helper, port = start_helper(root, home)
    try:
        removed = dpkg(root, "-r", "sendguard")
        assert wait_exit(helper) is not None, "a helper kept running after dpkg -r"
    finally:
        if helper.poll() is None:
            helper.send_signal(signal.SIGKILL)
    del removed
    assert not (root / "usr/bin/sendguard").exists() and not (root / "opt/sendguard/venv").exists()
    desktop = root / "etc/xdg/autostart/sendguard.desktop"
    assert desktop.exists()  # a conffile stays until purge, but its TryExec program is gone
    try_exec = re.search(r"^TryExec=(.+)$", desktop.read_text(), re.M)
    assert try_exec and not (root / try_exec.group(1).lstrip("/")).exists()
    if shutil.which("desktop-file-validate"):
        assert subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True).returncode == 0
    dpkg(root, "--purge", "sendguard")
    assert not desktop.exists() and not (root / "etc/xdg/SendGuard/policy.toml").exists()
    assert (home / "sendguard.db").exists()  # the user's data stays


def test_depends_refuses_a_python_older_than_the_wheels(debs: dict[str, Path], tmp_path: Path) -> None:
    """Ubuntu 22.04's python3 (3.10): dpkg refuses to configure, and the package says why."""
    root = dpkg_root(tmp_path, python_version="3.10.6-1~22.04")
    result = dpkg(root, "-i", str(debs["new"]), check=False)
    assert result.returncode != 0
    assert "dependency problems" in result.stderr and "python3 (>= 3.11)" in result.stderr
    assert not (root / "opt/sendguard/venv").exists()  # postinst never ran
    info = subprocess.run(["dpkg-deb", "--field", str(debs["new"]), "Description"], capture_output=True,
                          text=True, check=True).stdout
    assert "Not Ubuntu 22.04 (Python 3.10)" in info


def test_lock_pins_every_wheel_and_installs_offline(debs: dict[str, Path]) -> None:
    house = bi.Wheelhouse.open(debs["house"])  # every file matches its sha256
    pins, target = bi.read_lock(house.lock)
    assert target.startswith("linux_") and target.endswith("-cp311")
    assert {"sqlalchemy", "cryptography", "flask", "aiosmtpd", "click"} <= set(pins)
    assert all(len(hashes) >= 1 for _v, hashes in pins.values())
    assert "sendguard" not in pins  # the package's own wheel is installed by path, after the lock
    print(f"wheelhouse build + offline check: {debs['wheelhouse_seconds']:.1f}s for {len(pins)} packages")
