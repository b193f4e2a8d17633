"""build_installer.py: the .deb, the Windows and macOS admin bundles, and the admin policy check.

Everything is built under tmp_path from a small stand-in ``sendguard`` wheel (building the real one
needs the setuptools version pyproject.toml asks for, which pip fetches from PyPI), so no test needs
the network. The maintainer scripts and install.sh really run: against a DPKG_ROOT / --prefix
directory, pip installing from a wheelhouse of stand-in wheels with --no-index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import build_installer as bi  # noqa: E402

VERSION = "0.1.0"

ADMIN_POLICY = """\
locked = ["organization.*", "rules.blocked_domains"]

[organization]
internal_domains = ["example.co.jp"]

[rules]
blocked_domains = ["rival.example"]
personal_data = "block"
"""
SERVER_URL = "https://sendguard.example.co.jp"

FAKE_MAIN = '''\
import json, os, sys


def main():
    log = os.environ.get("SENDGUARD_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "admin_policy": os.environ.get("SENDGUARD_ADMIN_POLICY"),
                                "prefix": sys.prefix}) + "\\n")
    print("fake sendguard", *sys.argv[1:])


if __name__ == "__main__":
    main()
'''


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = (),
               extras: tuple[str, ...] = (), console: dict[str, str] | None = None) -> Path:
    """A minimal, valid py3-none-any wheel written with zipfile."""
    norm = re.sub(r"[-_.]+", "_", name)
    info = f"{norm}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Requires-Python: >=3.11"]
    meta += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    entries = dict(files)
    entries[f"{info}/METADATA"] = "\n".join(meta) + "\n"
    entries[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if console:
        entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in console.items())
    record = []
    for path, text in entries.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = "\n".join(record) + "\n"
    target = directory / f"{norm}-{version}-py3-none-any.whl"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return target


def fake_sendguard_wheel(directory: Path) -> Path:
    return make_wheel(
        directory, "sendguard", VERSION,
        {"sendguard/__init__.py": f'__version__ = "{VERSION}"\n', "sendguard/__main__.py": FAKE_MAIN},
        requires=("sendguard-testdep>=1.0", 'sendguard-testdesktop; extra == "desktop"',
                  'sendguard-never-here; extra == "dev"', 'sendguard-windows-only; sys_platform == "win32"'),
        extras=("desktop", "dev"),
        console={"sendguard": "sendguard.__main__:main"},
    )


def wheelhouse(directory: Path, target: str = "any") -> Path:
    """Stand-in wheels for the fake wheel's requirements, pinned in a requirements.lock like a real one."""
    for name in ("sendguard-testdep", "sendguard-testdesktop"):
        module = name.replace("-", "_")
        make_wheel(directory, name, "1.0", {f"{module}.py": "VALUE = 1\n"})
    bi.write_lock(directory, target, "test wheelhouse")
    return directory


def script_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment for running the packaged scripts: no SendGuard or XDG variables, no pip cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SENDGUARD_", "XDG_", "PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update({"HOME": str(tmp / "user-home"), "PIP_NO_CACHE_DIR": "1", "PIP_NO_INPUT": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull,
                "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("installer")
    old_tempdir = tempfile.tempdir
    tempfile.tempdir = str(base)  # build_installer's own scratch space stays under tmp_path too
    try:
        policy = base / "admin-policy.toml"
        policy.write_text(ADMIN_POLICY, encoding="utf-8")
        wheel = fake_sendguard_wheel(base / "input")
        house = wheelhouse(base / "wheelhouse")
        win_house = wheelhouse(base / "wheelhouse-win", "win_amd64-cp311")
        out = base / "dist"
        results = bi.build(out, bi.PLATFORMS, policy, SERVER_URL, wheel_path=wheel, wheelhouse=house,
                           windows_wheelhouse=win_house, maintainer="IT <it@example.co.jp>",
                           msi=shutil.which("wixl") is not None)
    finally:
        tempfile.tempdir = old_tempdir
    by_name = {p.name: p for p in results}
    return {"base": base, "out": out, "policy": policy, "house": house, "wheel": wheel,
            "deb": by_name[f"sendguard_{VERSION}_all.deb"],
            "windows": by_name[f"sendguard-{VERSION}-windows.zip"],
            "macos": by_name[f"sendguard-{VERSION}-macos.zip"],
            "msi": by_name.get(f"SendGuard-{VERSION}-x64.msi"),
            "results": results}  # type: ignore[dict-item]


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


# --------------------------------------------------------------------------- pure helpers
def test_runtime_requirements_flatten_the_desktop_extra() -> None:
    reqs = bi.runtime_requirements([
        "click>=8.1", 'pywebview[qt]>=5.1; extra == "desktop"', 'pytest>=8; extra == "dev"',
        'gunicorn>=22; sys_platform != "win32"', 'foo; sys_platform == "linux" and extra == "desktop"',
    ])
    assert reqs == ["click>=8.1", "pywebview[qt]>=5.1", 'gunicorn>=22; sys_platform != "win32"',
                    'foo; sys_platform == "linux"']


@pytest.mark.parametrize("pep440, deb", [("0.1.0", "0.1.0"), ("1.0rc1", "1.0~rc1"), ("1.0.dev3", "1.0~~dev3"),
                                         ("1.0.post2", "1.0+post2"), ("2!1.0+local.1", "2:1.0+local.1")])
def test_debian_version(pep440: str, deb: str) -> None:
    assert bi.debian_version(pep440) == deb


def test_debian_versions_sort_like_pep440(tmp_path: Path) -> None:
    order = ["1.0.dev1", "1.0a1", "1.0rc1", "1.0", "1.0.post1", "1.1"]
    debs = [bi.debian_version(v) for v in order]
    for low, high in zip(debs, debs[1:], strict=False):
        assert subprocess.run(["dpkg", "--compare-versions", low, "lt", high]).returncode == 0, (low, high)


def test_policy_template_is_a_valid_policy(tmp_path: Path) -> None:
    from sendguard import policy

    path = tmp_path / "policy.toml"
    path.write_text(bi.policy_template(), encoding="utf-8")
    assert policy.parse_file(path) == {}


def test_platformdirs_site_config_dir_on_windows_and_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundles hard-code what platformdirs answers on the other systems: check it here."""
    import platformdirs.macos
    import platformdirs.windows

    folders = {"CSIDL_COMMON_APPDATA": "C:\\ProgramData", "CSIDL_LOCAL_APPDATA": "C:\\Users\\u\\AppData\\Local"}
    monkeypatch.setattr(platformdirs.windows, "get_win_folder", lambda csidl: folders[csidl])
    win = platformdirs.windows.Windows(appname=bi.APP, appauthor=False)
    assert Path(win.site_config_dir).parts[-2:] == ("C:\\ProgramData", "SendGuard")
    assert Path(win.user_data_dir).parts[-2:] == ("C:\\Users\\u\\AppData\\Local", "SendGuard")
    monkeypatch.delenv("XDG_CONFIG_DIRS", raising=False)
    monkeypatch.setattr(platformdirs.macos, "_homebrew_prefix", lambda: None)
    mac = platformdirs.macos.MacOS(appname=bi.APP, appauthor=False)
    assert mac.site_config_dir == bi.MACOS_POLICY_DIR
    import platformdirs.unix

    assert platformdirs.unix.Unix(appname=bi.APP, appauthor=False).site_config_dir == bi.LINUX_POLICY_DIR


# --------------------------------------------------------------------------- refusals
BAD_POLICIES = [
    ('[rules]\nexternal_attachment = "confirm"\npersonal_data = "maybe"\n', ":3", "[rules.personal_data]"),
    ("[organization]\ninternal_domains = [\"example.co.jp\"\n", ":", "TOML syntax error"),
    ('[rules]\nno_such_rule = 1\n', ":2", "[rules.no_such_rule]"),
]


@pytest.mark.parametrize("text, line, key", BAD_POLICIES)
def test_bad_policy_refused_with_one_line_and_nothing_written(tmp_path: Path, text: str, line: str, key: str) -> None:
    policy = tmp_path / "bad-policy.toml"
    policy.write_text(text, encoding="utf-8")
    wheel = fake_sendguard_wheel(tmp_path / "input")
    out = tmp_path / "dist"
    result = subprocess.run([sys.executable, str(ROOT / "build_installer.py"), "--out", str(out),
                             "--policy", str(policy), "--wheel", str(wheel)],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("build_installer: error: admin policy refused: ")
    assert f"{policy}{line}" in lines[0] and key in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_policy_and_bad_server_url_refused(tmp_path: Path) -> None:
    with pytest.raises(bi.BuildError, match=r"no-such\.toml.*cannot read"):
        bi.check_policy(tmp_path / "no-such.toml")
    with pytest.raises(bi.BuildError, match="--wheel .*no such file"):
        bi.build(tmp_path / "dist", ("linux",), None, None, wheel_path=tmp_path / "missing.whl")
    assert not (tmp_path / "dist").exists()
    for url in ("sendguard.example.co.jp", "ftp://x.example", 'https://x.example/"'):
        with pytest.raises(bi.BuildError, match="--server-url"):
            bi.server_config(url)


# --------------------------------------------------------------------------- the .deb
def test_deb_control_conffiles_and_scripts(built: dict[str, Path], tmp_path: Path) -> None:
    deb = built["deb"]
    info = dpkg_deb("--info", str(deb))
    fields = dict(re.findall(r"^ ([A-Z][A-Za-z-]+): (.*)$", info, re.M))
    assert fields["Package"] == "sendguard"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == "all"
    assert fields["Maintainer"] == "IT <it@example.co.jp>"
    assert "python3 (>= 3.11)" in fields["Depends"] and "python3-venv" in fields["Depends"]
    assert "fonts-noto-cjk" in fields["Recommends"]
    assert int(fields["Installed-Size"]) >= 1

    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == [
        "/etc/xdg/SendGuard/policy.toml", "/etc/xdg/autostart/sendguard.desktop"]
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert path.stat().st_mode & 0o777 == 0o755, script
        assert path.read_text().startswith("#!/bin/sh\n")
        subprocess.run(["sh", "-n", str(path)], check=True)
    postinst = (control / "postinst").read_text()
    assert f"/opt/sendguard/sendguard-{VERSION}-py3-none-any.whl" in postinst.replace("$PREFIX", "/opt/sendguard")
    assert "PyPI" in postinst and "dpkg --configure -a" in postinst


def test_deb_contents(built: dict[str, Path]) -> None:
    listing = dpkg_deb("--contents", str(built["deb"]))
    entries = {}
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, path = line.split(None, 5)
        entries[path.split(" -> ")[0].removeprefix(".")] = (mode, owner)
    assert all(owner == "root/root" for _mode, owner in entries.values())
    expected = {
        f"/opt/sendguard/sendguard-{VERSION}-py3-none-any.whl": "-rw-r--r--",
        "/opt/sendguard/requirements.txt": "-rw-r--r--",
        "/opt/sendguard/config.toml": "-rw-r--r--",
        "/opt/sendguard/bin/sendguard-autostart": "-rwxr-xr-x",
        "/opt/sendguard/bin/sendguard-stop-helpers": "-rwxr-xr-x",
        "/opt/sendguard/requirements.lock": "-rw-r--r--",
        "/opt/sendguard/wheelhouse/sendguard_testdep-1.0-py3-none-any.whl": "-rw-r--r--",
        "/etc/xdg/SendGuard/policy.toml": "-rw-r--r--",
        "/etc/xdg/autostart/sendguard.desktop": "-rw-r--r--",
        "/usr/share/applications/sendguard.desktop": "-rw-r--r--",
        "/usr/lib/systemd/user/sendguard.service": "-rw-r--r--",
        "/usr/bin/sendguard": "-rwxr-xr-x",
    }
    for path, mode in expected.items():
        assert entries.get(path, (None,))[0] == mode, path


def test_deb_files(built: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(built["deb"]), str(root)], check=True)
    assert (root / "etc/xdg/SendGuard/policy.toml").read_text(encoding="utf-8") == ADMIN_POLICY

    unit = (root / "usr/lib/systemd/user/sendguard.service").read_text()
    assert "ExecStart=/usr/bin/sendguard serve" in unit
    assert "WantedBy=graphical-session.target" in unit and "Restart=on-failure" in unit

    desktop = (root / "etc/xdg/autostart/sendguard.desktop").read_text()
    assert desktop.startswith("[Desktop Entry]\n")
    assert "Exec=/opt/sendguard/bin/sendguard-autostart" in desktop and "Type=Application" in desktop
    # once the package is removed (the conffile stays until purge) the session starts nothing
    assert "\nTryExec=/opt/sendguard/bin/sendguard-autostart\n" in desktop
    # in the applications menu too: with no tray, starting SendGuard again brings its window back
    menu = (root / "usr/share/applications/sendguard.desktop").read_text()
    assert "\nExec=/usr/bin/sendguard serve\n" in menu and "X-GNOME-Autostart" not in menu
    autostart = (root / "opt/sendguard/bin/sendguard-autostart").read_text()
    assert "systemctl --user start sendguard.service" in autostart and "exec /usr/bin/sendguard serve" in autostart

    requirements = (root / "opt/sendguard/requirements.txt").read_text().splitlines()
    assert [r for r in requirements if not r.startswith("#")] == [
        "sendguard-testdep>=1.0", "sendguard-testdesktop", 'sendguard-windows-only; sys_platform == "win32"']
    assert f'url = "{SERVER_URL}"' in (root / "opt/sendguard/config.toml").read_text()

    wrapper = (root / "usr/bin/sendguard").read_text()
    assert "SENDGUARD_ADMIN_POLICY" not in wrapper.replace("# ", "")  # the venv's marker pins it instead
    assert "exec '/opt/sendguard/venv/bin/sendguard' \"$@\"" in wrapper


def test_deb_wrapper_runs_the_venv_pins_the_policy_and_seeds_config(built: dict[str, Path], tmp_path: Path) -> None:
    """The packaged /usr/bin/sendguard, pointed at the extracted tree and a stand-in venv python."""
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(built["deb"]), str(root)], check=True)
    prefix = root / "opt/sendguard"
    fake_python = prefix / "venv/bin/sendguard"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text('#!/bin/sh\necho "argv: $*"\n')
    fake_python.chmod(0o755)
    wrapper = tmp_path / "sendguard"
    wrapper.write_text((root / "usr/bin/sendguard").read_text().replace("/opt/sendguard", str(prefix)))
    wrapper.chmod(0o755)
    env = script_env(tmp_path, SENDGUARD_ADMIN_POLICY="/tmp/user-chosen.toml")
    run = subprocess.run([str(wrapper), "queue", "list"], capture_output=True, text=True, env=env, check=True)
    assert "argv: queue list" in run.stdout
    seeded = tmp_path / "user-home/.local/share/SendGuard/config.toml"
    assert f'url = "{SERVER_URL}"' in seeded.read_text()
    seeded.write_text("language = \"ja\"\n")
    subprocess.run([str(wrapper)], capture_output=True, env=env, check=True)
    assert seeded.read_text() == "language = \"ja\"\n"  # never overwritten

    fake_python.unlink()
    broken = subprocess.run([str(wrapper)], capture_output=True, text=True, env=env)
    assert broken.returncode == 1 and "dpkg --configure -a" in broken.stderr


@pytest.mark.slow
def test_deb_maintainer_scripts_in_a_dpkg_root(built: dict[str, Path], tmp_path: Path) -> None:
    """postinst (offline, from the bundled wheelhouse) makes a working venv; postrm removes it."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("postinst uses /usr/bin/python3")
    root = tmp_path / "root"
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-x", str(built["deb"]), str(root)], check=True)
    subprocess.run(["dpkg-deb", "--control", str(built["deb"]), str(control)], check=True)
    env = script_env(tmp_path, DPKG_ROOT=str(root))
    post = subprocess.run([str(control / "postinst"), "configure", ""], capture_output=True, text=True, env=env)
    assert post.returncode == 0, post.stdout + post.stderr
    assert "bundled wheelhouse (no network)" in post.stdout
    venv_python = root / "opt/sendguard/venv/bin/python"
    marker = (root / "opt/sendguard/venv/sendguard-install.toml").read_text()
    assert 'admin_policy = "/etc/xdg/SendGuard/policy.toml"' in marker
    log = tmp_path / "calls.jsonl"
    subprocess.run([str(venv_python.parent / "sendguard"), "serve"], env={**env, "SENDGUARD_TEST_LOG": str(log)},
                   check=True, capture_output=True, cwd=ROOT)  # the checkout's sendguard/ is not picked up
    assert json.loads(log.read_text())["argv"] == ["serve"]
    check = subprocess.run([str(venv_python), "-c", "import sendguard_testdep, sendguard_testdesktop"], env=env)
    assert check.returncode == 0
    if shutil.which("systemctl"):
        link = root / "etc/systemd/user/graphical-session.target.wants/sendguard.service"
        assert link.is_symlink()

    again = subprocess.run([str(control / "postinst"), "configure", VERSION], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr  # upgrade path: the venv is reused

    for script, arg in (("prerm", "remove"), ("postrm", "remove")):
        done = subprocess.run([str(control / script), arg], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    assert not (root / "opt/sendguard/venv").exists()
    assert not (root / "etc/systemd/user/graphical-session.target.wants/sendguard.service").exists()


def test_postinst_says_clearly_when_pypi_is_unreachable(built: dict[str, Path], tmp_path: Path) -> None:
    """Without a wheelhouse and with pip's index unreachable, postinst fails with the explanation."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("postinst uses /usr/bin/python3")
    root = tmp_path / "root"
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-x", str(built["deb"]), str(root)], check=True)
    subprocess.run(["dpkg-deb", "--control", str(built["deb"]), str(control)], check=True)
    shutil.rmtree(root / "opt/sendguard/wheelhouse")
    (root / "opt/sendguard/requirements.lock").unlink()  # as a package built without --wheelhouse
    # pip's index is a closed port: what a machine without network or proxy sees.
    env = script_env(tmp_path, DPKG_ROOT=str(root), PIP_INDEX_URL="http://127.0.0.1:9/simple/",
                     PIP_RETRIES="0", PIP_TIMEOUT="2")
    post = subprocess.run([str(control / "postinst"), "configure", ""], capture_output=True, text=True, env=env)
    assert post.returncode == 1
    assert "cannot reach PyPI" in post.stderr and "sudo dpkg --configure -a" in post.stderr


def test_postinst_refuses_a_wheel_whose_bytes_differ_from_the_lock(built: dict[str, Path], tmp_path: Path) -> None:
    """--require-hashes: a wheelhouse file swapped after the build is not installed, offline or not."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("postinst uses /usr/bin/python3")
    root = tmp_path / "root"
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-x", str(built["deb"]), str(root)], check=True)
    subprocess.run(["dpkg-deb", "--control", str(built["deb"]), str(control)], check=True)
    house = root / "opt/sendguard/wheelhouse"
    target = next(house.glob("sendguard_testdep-*.whl"))
    target.unlink()
    make_wheel(house, "sendguard-testdep", "1.0", {"sendguard_testdep.py": "VALUE = 'tampered'\n"})
    env = script_env(tmp_path, DPKG_ROOT=str(root))
    post = subprocess.run([str(control / "postinst"), "configure", ""], capture_output=True, text=True, env=env)
    assert post.returncode == 1, post.stdout
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in post.stderr or "hash" in post.stderr.lower()
    assert "sudo dpkg --configure -a" in post.stderr


# --------------------------------------------------------------------------- Windows bundle
def test_windows_bundle(built: dict[str, Path]) -> None:
    top = f"sendguard-{VERSION}-windows/"
    with zipfile.ZipFile(built["windows"]) as zf:
        names = set(zf.namelist())
        for name in ("install.ps1", "uninstall.ps1", "README.txt", f"sendguard-{VERSION}-py3-none-any.whl",
                     "requirements.txt", "policy.toml", "config.toml", "manifest/outlook.xml",
                     "manifest/manifest.json", "manifest/sendguard-outlook-addin.zip"):
            assert top + name in names, name
        install = zf.read(top + "install.ps1").decode("ascii")  # PowerShell 5.1 reads BOM-less files as ANSI
        uninstall = zf.read(top + "uninstall.ps1").decode("ascii")
        assert zf.read(top + "policy.toml").decode() == ADMIN_POLICY
        assert f'url = "{SERVER_URL}"' in zf.read(top + "config.toml").decode()
        outlook = zf.read(top + "manifest/outlook.xml").decode()
        readme = zf.read(top + "README.txt").decode()
    assert "https://localhost:8765/addin/launchevent.js" in outlook
    # %ProgramData%\SendGuard\policy.toml (platformdirs.site_config_dir), %LOCALAPPDATA%\SendGuard\venv
    assert '[Environment]::GetFolderPath("CommonApplicationData")' in install
    assert '$PolicyDir = Join-Path $ProgramDataDir "SendGuard"' in install
    assert '$PolicyFile = Join-Path $PolicyDir "policy.toml"' in install
    assert '[Environment]::GetFolderPath("LocalApplicationData")' in install
    assert '$SgHome = Join-Path $LocalAppData "SendGuard"' in install and '$Venv = Join-Path $SgHome "venv"' in install
    assert f'$Wheel = Join-Path $Bundle "sendguard-{VERSION}-py3-none-any.whl"' in install
    assert "HKCU:\\Software\\Microsoft\\Windows\\CurrentVersion\\Run" in install
    assert "Register-ScheduledTask" in install and "New-ScheduledTaskTrigger -AtLogOn" in install
    assert "addin certs install --trust" in install
    assert "--no-deps --force-reinstall $Wheel" in install and "--requirement $Requirements" in install
    assert '"-P -m sendguard serve"' in install
    assert "HKCU:\\Software\\Microsoft\\Windows\\CurrentVersion\\Run" in uninstall
    assert 'certutil.exe -user -delstore Root "SendGuard Local CA"' in uninstall
    assert "%ProgramData%\\SendGuard\\policy.toml" in readme
    for script in (install, uninstall):
        assert script.count("{") == script.count("}") and script.count("(") == script.count(")")
        assert not re.search(r"@[A-Z][A-Z0-9_]*@", script)


def test_powershell_scripts_parse_when_pwsh_is_available(built: dict[str, Path], tmp_path: Path) -> None:
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("no PowerShell (pwsh) on this machine")
    with zipfile.ZipFile(built["windows"]) as zf:
        zf.extractall(tmp_path)
    for name in ("install.ps1", "uninstall.ps1"):
        path = tmp_path / f"sendguard-{VERSION}-windows" / name
        cmd = ("$e = $null; [System.Management.Automation.Language.Parser]::ParseFile("
               f"'{path}', [ref]$null, [ref]$e) | Out-Null; if ($e) {{ $e | ForEach-Object {{ $_.Message }}; exit 1 }}")
        result = subprocess.run([pwsh, "-NoProfile", "-Command", cmd], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


# --------------------------------------------------------------------------- macOS bundle
def _unzip(archive: Path, target: Path) -> Path:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, target))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)
    return target


def test_macos_bundle_contents(built: dict[str, Path]) -> None:
    top = f"sendguard-{VERSION}-macos/"
    with zipfile.ZipFile(built["macos"]) as zf:
        names = set(zf.namelist())
        for name in ("install.sh", "uninstall.sh", "README.txt", "policy.toml", "config.toml",
                     "manifest/outlook.xml", "manifest/manifest.json", f"sendguard-{VERSION}-py3-none-any.whl"):
            assert top + name in names, name
        assert (zf.getinfo(top + "install.sh").external_attr >> 16) & 0o777 == 0o755
        install = zf.read(top + "install.sh").decode()
    assert f"/Library/LaunchAgents/{bi.LAUNCHD_LABEL}.plist" in install.replace('$PREFIX_ROOT', '')
    assert "POLICY_DIR='/Library/Application Support/SendGuard'" in install
    assert "sendguard-install.toml" in install and "chown root:wheel" in install
    assert "addin certs machine --dir" in install and "launchctl bootstrap" in install
    assert "/Library/Keychains/System.keychain" in install  # the machine CA, trusted once for every user
    assert not re.search(r"@[A-Z][A-Z0-9_]*@", install)


def test_macos_pkg_layout_and_profile(built: dict[str, Path], tmp_path: Path) -> None:
    """What a Mac's pkgbuild/productbuild and MDM take: checked here as far as Linux can."""
    import xml.etree.ElementTree as ET

    bundle = _unzip(built["macos"], tmp_path / "bundle") / f"sendguard-{VERSION}-macos"
    pkg = bundle / "pkg"
    share = pkg / "root/opt/sendguard/share"
    assert (share / f"sendguard-{VERSION}-py3-none-any.whl").exists() and (share / "install.sh").stat().st_mode & 0o111
    policy = pkg / "root/Library/Application Support/SendGuard/policy.toml"
    assert policy.read_text(encoding="utf-8") == ADMIN_POLICY
    for script in (pkg / "scripts/postinstall", pkg / "build-pkg.sh", share / "install.sh"):
        assert script.stat().st_mode & 0o111, script
        subprocess.run(["sh", "-n", str(script)], check=True)
    assert "/opt/sendguard/share/install.sh' --from-pkg" in (pkg / "scripts/postinstall").read_text()
    build = (pkg / "build-pkg.sh").read_text()
    assert "pkgbuild --root root --scripts scripts --identifier 'org.sendguard.pkg'" in build
    assert "productbuild --distribution distribution.xml" in build
    dist = ET.parse(pkg / "distribution.xml").getroot()
    assert dist.tag == "installer-gui-script"
    assert dist.find("pkg-ref").text == "SendGuard-component.pkg"  # type: ignore[union-attr]
    assert dist.find("domains").get("enable_localSystem") == "true"  # type: ignore[union-attr]
    profile = plistlib.loads((bundle / "SendGuard-policy.mobileconfig").read_bytes())
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == "org.sendguard.SendGuard"
    assert payload["organization"] == {"internal_domains": ["example.co.jp"]}
    assert payload["rules"]["personal_data"] == "block" and "locked" not in payload
    assert len({profile["PayloadUUID"], payload["PayloadUUID"]}) == 2


@pytest.mark.slow
def test_macos_install_sh_with_prefix(built: dict[str, Path], tmp_path: Path) -> None:
    bundle = _unzip(built["macos"], tmp_path / "bundle") / f"sendguard-{VERSION}-macos"
    stage = tmp_path / "stage"
    env = script_env(tmp_path)
    run = subprocess.run(["sh", str(bundle / "install.sh"), "--prefix", str(stage), "--python", sys.executable,
                          "--wheelhouse", str(built["house"]), "--no-trust"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "launchctl and the CA step skipped" in run.stdout

    app = stage / "opt/sendguard"
    policy = stage / "Library/Application Support/SendGuard/policy.toml"
    assert policy.read_text(encoding="utf-8") == ADMIN_POLICY
    plist = plistlib.loads((stage / f"Library/LaunchAgents/{bi.LAUNCHD_LABEL}.plist").read_bytes())
    assert plist["Label"] == bi.LAUNCHD_LABEL
    assert plist["ProgramArguments"] == [str(app / "bin/sendguard"), "serve"]
    assert plist["RunAtLoad"] is True and plist["LimitLoadToSessionType"] == "Aqua"
    link = stage / "usr/local/bin/sendguard"
    assert link.is_symlink() and link.resolve() == (app / "bin/sendguard").resolve()

    log = tmp_path / "calls.jsonl"
    env_user = {**env, "SENDGUARD_TEST_LOG": str(log)}
    subprocess.run([str(link), "addin", "certs", "install", "--trust"], env=env_user, check=True, capture_output=True)
    call = json.loads(log.read_text())
    assert call["argv"] == ["addin", "certs", "install", "--trust"]
    marker = (app / "venv/sendguard-install.toml").read_text()
    assert "admin_policy = \"/Library/Application Support/SendGuard/policy.toml\"" in marker
    assert Path(call["prefix"]) == app / "venv"
    seeded = tmp_path / "user-home/Library/Application Support/SendGuard/config.toml"
    assert f'url = "{SERVER_URL}"' in seeded.read_text()
    check = subprocess.run([str(app / "venv/bin/python"), "-c", "import sendguard_testdep, sendguard_testdesktop"],
                           env=env)
    assert check.returncode == 0

    removed = subprocess.run(["sh", str(bundle / "uninstall.sh"), "--prefix", str(stage)],
                             capture_output=True, text=True, env=env)
    assert removed.returncode == 0, removed.stderr
    assert not app.exists() and not policy.exists() and not link.is_symlink()
    assert not (stage / f"Library/LaunchAgents/{bi.LAUNCHD_LABEL}.plist").exists()


def test_macos_install_sh_needs_root_or_prefix(built: dict[str, Path], tmp_path: Path) -> None:
    bundle = _unzip(built["macos"], tmp_path / "bundle") / f"sendguard-{VERSION}-macos"
    bad = subprocess.run(["sh", str(bundle / "install.sh"), "--bogus"], capture_output=True, text=True,
                         env=script_env(tmp_path))
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
    helptext = subprocess.run(["sh", str(bundle / "install.sh"), "--help"], capture_output=True, text=True,
                              env=script_env(tmp_path))
    assert helptext.returncode == 0 and "--prefix DIR" in helptext.stdout


# --------------------------------------------------------------------------- the whole command
def test_only_the_requested_platform_and_no_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    wheel = fake_sendguard_wheel(tmp_path / "input")
    out = tmp_path / "dist"
    assert bi.main(["--out", str(out), "--platform", "linux", "--wheel", str(wheel)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"sendguard-{VERSION}-py3-none-any.whl",
                                                     f"sendguard_{VERSION}_all.deb"]
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(out / f"sendguard_{VERSION}_all.deb"), str(root)], check=True)
    # without --policy the conffile is the commented template, ready to be edited in place
    assert (root / "etc/xdg/SendGuard/policy.toml").read_text() == bi.policy_template()
    assert not (root / "opt/sendguard/config.toml").exists() and not (root / "opt/sendguard/wheelhouse").exists()


def test_real_wheel_build_when_the_build_backend_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pip wheel of this checkout; only where pip needs no network for it."""
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    if not bi._backend_installed(requires):
        pytest.skip(f"build backend {requires} not installed here; pip would fetch it from PyPI")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    wheel = bi.Wheel.read(bi.build_wheel(ROOT, tmp_path / "wheel"))
    assert wheel.version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with zipfile.ZipFile(wheel.path) as zf:
        names = zf.namelist()
    assert "sendguard/policy.py" in names and "addin/static/launchevent.js" in names
    assert any(r.startswith("pywebview") for r in bi.runtime_requirements(wheel.requires))


def test_stop_helpers_ends_every_process_running_from_the_install(built: dict[str, Path], tmp_path: Path) -> None:
    """prerm's helper stop: processes started from PREFIX/venv/bin (any user's) end; others are left alone."""
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(built["deb"]), str(root)], check=True)
    prefix = root / "opt/sendguard"
    fake = prefix / "venv/bin/sendguard"
    fake.parent.mkdir(parents=True)
    # a helper that ignores nothing: exits on SIGTERM like `sendguard serve`
    fake.write_text(f"#!{sys.executable}\nimport time\nwhile True:\n    time.sleep(0.2)\n")
    fake.chmod(0o755)
    other = tmp_path / "elsewhere/bin/sendguard"
    other.parent.mkdir(parents=True)
    shutil.copy2(fake, other)
    helpers = [subprocess.Popen([str(fake), "serve"]) for _ in range(2)]
    bystander = subprocess.Popen([str(other), "serve"])
    try:
        time.sleep(0.5)
        run = subprocess.run([str(prefix / "bin/sendguard-stop-helpers"), str(prefix)], capture_output=True,
                             text=True, env=script_env(tmp_path, DPKG_ROOT=str(root)), timeout=60)
        assert run.returncode == 0, run.stderr
        assert "stopping the helpers running from" in run.stdout
        for proc in helpers:
            assert proc.wait(timeout=15) is not None
        assert bystander.poll() is None  # another installation's process keeps running
    finally:
        for proc in (*helpers, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
