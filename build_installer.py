#!/usr/bin/env python3
"""Build SendGuard's admin installers from this checkout.

    .venv/bin/python build_installer.py [--out dist] [--platform linux|windows|macos|all]
                                        [--policy admin-policy.toml] [--server-url URL]

Writes to ``--out``:

* ``sendguard-<version>-py3-none-any.whl`` - the ``sendguard`` distribution (``pip wheel --no-deps``);
* ``sendguard_<version>_all.deb`` (linux) - the wheel and its requirements under /opt/sendguard, the
  machine-wide admin policy as a conffile, a systemd user unit, an XDG autostart entry and
  ``/usr/bin/sendguard``; ``postinst`` makes the venv /opt/sendguard/venv and pip-installs into it;
* ``sendguard-<version>-windows.zip`` and ``sendguard-<version>-macos.zip`` - admin bundles with an
  install and an uninstall script, the wheel, the policy, the Outlook manifests and a README.

The admin policy is checked with ``sendguard.policy.parse_file`` first: a bad one stops the build
with one line naming the file, the line and the key, and nothing is written. Every artefact is
built in a temporary directory and moved into ``--out`` only when all of them succeeded.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

APP = "SendGuard"
DIST = "sendguard"
PLATFORMS = ("linux", "windows", "macos")
# The extras the helper needs on a desktop (the confirmation window: pywebview with Qt).
DESKTOP_EXTRAS = ("desktop",)
LAUNCHD_LABEL = "org.sendguard.helper"
DEFAULT_MAINTAINER = "SendGuard administrators <root@localhost>"

# Fixed install locations. The admin policy paths are what platformdirs.site_config_dir("SendGuard",
# appauthor=False) gives (sendguard/paths.py admin_policy_file): /etc/xdg/SendGuard on Linux,
# C:\ProgramData\SendGuard on Windows, /Library/Application Support/SendGuard on macOS (for the
# python.org build; install.sh asks the installed Python, so a Homebrew Python is right too).
LINUX_PREFIX = "/opt/sendguard"
LINUX_POLICY_DIR = "/etc/xdg/SendGuard"
MACOS_PREFIX = "/opt/sendguard"
MACOS_POLICY_DIR = "/Library/Application Support/SendGuard"

# Debian packages the Qt window loads at run time (the Makefile's RUN_APT): recommended, since the
# helper also runs headless (`sendguard serve --no-window`, confirmation in the browser).
DEB_RECOMMENDS = (
    "libnss3, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0, "
    "libxcb-render-util0, libxcb-image0, libxcomposite1, libxdamage1, libxrandr2, libxtst6, libasound2, "
    "libegl1, libgl1, libopengl0, fonts-noto-cjk"
)

POLICY_TEMPLATE = """\
# SendGuard machine-wide policy (installed by the SendGuard package).
#
# It sets defaults for every user of this machine; keys listed in `locked` cannot be changed by a
# user's own policy.toml. Edit it here; SendGuard reloads it without a restart. Example:
#
# locked = ["organization.*", "rules.blocked_domains", "approval.*"]
#
# [organization]
# internal_domains = ["example.co.jp"]
#
# [approval]
# approvers = ["boss@example.co.jp"]
"""


class BuildError(Exception):
    """Something the admin must fix; the message is one line, shown as it is."""


# --------------------------------------------------------------------------- the wheel
@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    requires: tuple[str, ...]
    requires_python: str

    @classmethod
    def read(cls, path: Path) -> Wheel:
        try:
            with zipfile.ZipFile(path) as zf:
                meta_name = next((n for n in zf.namelist()
                                  if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
                if meta_name is None:
                    raise BuildError(f"{path}: not a wheel (no .dist-info/METADATA)")
                text = zf.read(meta_name).decode("utf-8")
        except (OSError, zipfile.BadZipFile) as exc:
            raise BuildError(f"{path}: cannot read the wheel: {exc}") from None
        meta = email.parser.Parser().parsestr(text, headersonly=True)
        name = (meta.get("Name") or "").strip()
        if re.sub(r"[-_.]+", "-", name).lower() != DIST:
            raise BuildError(f"{path}: this is the wheel of {name!r}, not of {DIST!r}")
        return cls(path=path, name=name, version=(meta.get("Version") or "").strip(),
                   requires=tuple(meta.get_all("Requires-Dist") or ()),
                   requires_python=(meta.get("Requires-Python") or "").strip())


_EXTRA = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


def runtime_requirements(requires: tuple[str, ...] | list[str], extras: tuple[str, ...] = DESKTOP_EXTRAS) -> list[str]:
    """The wheel's Requires-Dist for a desktop install: the base ones plus those of ``extras``.

    ``pywebview[qt]>=5.1; extra == "desktop"`` becomes ``pywebview[qt]>=5.1``; other markers
    (``sys_platform``) stay for pip to evaluate on the target machine.
    """
    out: list[str] = []
    for line in requires:
        spec, _, marker = line.partition(";")
        spec, marker = spec.strip(), marker.strip()
        found = _EXTRA.search(marker)
        if found:
            if found.group(1) not in extras:
                continue
            if re.search(r"\bor\b", marker):
                raise BuildError(f"cannot flatten the requirement marker {line!r} (an extra inside 'or')")
            clauses = [c.strip() for c in re.split(r"\s+and\s+", marker)]
            marker = " and ".join(c for c in clauses if not _EXTRA.search(c))
        out.append(f"{spec}; {marker}" if marker else spec)
    return out


def debian_version(version: str) -> str:
    """A PEP 440 version spelled so that dpkg sorts it the same way (1.0rc1 < 1.0 < 1.0.post1)."""
    v = version.strip().lower()
    epoch, bang, rest = v.partition("!")
    if not bang:
        epoch, rest = "", v
    public, plus, local = rest.partition("+")
    public = re.sub(r"[._-]?(a|alpha|b|beta|c|rc|pre|preview)(\d*)", r"~\1\2", public)
    public = re.sub(r"[._-]?dev(\d*)", r"~~dev\1", public)
    public = re.sub(r"[._-]?(?:post|rev)(\d*)", r"+post\1", public)
    out = (f"{epoch}:" if epoch else "") + public + (f"+{local.replace('_', '.')}" if plus else "")
    if not re.fullmatch(r"(\d+:)?[0-9][A-Za-z0-9.+~]*", out):
        raise BuildError(f"cannot turn the version {version!r} into a Debian version")
    return out


def _source_files(source: Path) -> list[Path]:
    """The checkout's files (tracked and new, not ignored); without git, the tree minus build debris."""
    try:
        listed = subprocess.run(["git", "-C", str(source), "ls-files", "-co", "--exclude-standard", "-z"],
                                capture_output=True, check=True).stdout
        files = [Path(p) for p in listed.decode("utf-8").split("\0") if p]
        return [p for p in files if (source / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "dist", "node_modules", "test-artifacts", "__pycache__"}
        out = []
        for path in source.rglob("*"):
            rel = path.relative_to(source)
            if path.is_file() and not (set(rel.parts) & skip) and not any(p.endswith(".egg-info") for p in rel.parts):
                out.append(rel)
        return out


def _backend_installed(requires: list[str]) -> bool:
    """True when every build-system requirement is installed here (then pip needs no network)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return False
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(installed, prereleases=True):
            return False
    return True


def build_wheel(source: Path, out_dir: Path, python: str = sys.executable) -> Path:
    """``pip wheel --no-deps`` of the checkout at ``source``, built from a copy so the checkout stays clean."""
    import tomllib

    try:
        pyproject = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{source / 'pyproject.toml'}: cannot read it: {exc}") from None
    backend = pyproject.get("build-system", {}).get("requires", ["setuptools>=40.8.0"])
    with tempfile.TemporaryDirectory(prefix="sendguard-wheel-") as tmp:
        copy = Path(tmp) / "src"
        for rel in _source_files(source):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, copy / rel)
        built = Path(tmp) / "wheel"
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--wheel-dir", str(built), str(copy)]
        offline = _backend_installed(backend)
        if offline:
            cmd.insert(4, "--no-build-isolation")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = " | ".join(line.strip() for line in (result.stderr or result.stdout).splitlines()[-4:]
                              if line.strip())
            hint = "" if offline else (f" (pip fetches the build backend {', '.join(backend)} from PyPI: "
                                       "without network, build the wheel elsewhere and pass --wheel)")
            raise BuildError(f"pip wheel failed{hint}: {tail}")
        wheels = sorted(built.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"pip wheel produced {len(wheels)} wheels, expected one")
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], out_dir / wheels[0].name))


# --------------------------------------------------------------------------- inputs
def check_policy(path: Path | None) -> str:
    """The admin policy's text after ``sendguard.policy.parse_file`` accepted it (or the commented template)."""
    from sendguard import policy
    from sendguard.errors import ConfigError

    if path is None:
        return POLICY_TEMPLATE
    try:
        policy.parse_file(path)
    except ConfigError as exc:
        raise BuildError(f"admin policy refused: {exc}") from None
    return path.read_text(encoding="utf-8")


def server_config(url: str | None) -> str | None:
    """The config.toml that points a helper at the central server, checked by sendguard.config."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c in url for c in "\"\\\n "):
        raise BuildError(f"--server-url {url!r}: give the central server's address, like https://sendguard.example.co.jp")
    text = (
        "# SendGuard helper settings written by the installer: approvals go through the company's\n"
        "# central server. Each user still needs a token from the administrator:\n"
        f"#   sendguard server connect {url} --token TOKEN\n"
        "[server]\n"
        f'url = "{url}"\n'
    )
    from sendguard import config
    from sendguard.errors import ConfigError

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "config.toml"
        probe.write_text(text, encoding="utf-8")
        try:
            loaded = config.load(probe)
        except ConfigError as exc:
            raise BuildError(f"--server-url: {exc}") from None
    if loaded.server_url != url:
        raise BuildError(f"--server-url {url!r} did not survive the config file round trip")
    return text


def write_manifests(out_dir: Path, send_mode: str, python: str = sys.executable) -> list[Path]:
    """Outlook manifests from ``sendguard addin manifest`` (the checkout's own CLI)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["SENDGUARD_HOME"] = str(out_dir.parent / ".sendguard-home")  # a throwaway home: nothing of the admin's
    cmd = [python, "-m", "sendguard", "addin", "manifest", "--out", str(out_dir), "--send-mode", send_mode]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BuildError("sendguard addin manifest failed: " + (detail[-1] if detail else f"exit {result.returncode}"))
    written = sorted(p for p in out_dir.iterdir() if p.is_file())
    if not written:
        raise BuildError("sendguard addin manifest wrote no files")
    return written


# --------------------------------------------------------------------------- shared helpers
def _fill(template: str, **values: str) -> str:
    """Replace @NAME@ placeholders; every placeholder must be given (scripts are full of $ and {})."""
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z][A-Z0-9_]*@", text)
    if left:
        raise AssertionError(f"unfilled placeholders: {sorted(set(left))}")
    return text


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    path.chmod(mode)
    return path


def _requirements_text(wheel: Wheel) -> str:
    lines = runtime_requirements(wheel.requires)
    return (f"# Python packages SendGuard {wheel.version} needs (the wheel's requirements with the "
            f"{'/'.join(DESKTOP_EXTRAS)} extra).\n"
            "# For machines without PyPI: pip download -r requirements.txt -d wheelhouse (on a machine of the\n"
            "# same platform), then install with the wheelhouse (see README).\n"
            + "".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- wrapper (Linux and macOS)
WRAPPER = r"""#!/bin/sh
# SendGuard command line (installed by the SendGuard @KIND@). Runs the helper from @PREFIX@/venv.
#
# The admin policy is pinned to the file the installer wrote: platformdirs would otherwise look in the
# first directory of $XDG_CONFIG_DIRS, which some desktops set to another folder.
SENDGUARD_ADMIN_POLICY='@POLICY@'
export SENDGUARD_ADMIN_POLICY

if [ ! -x '@PREFIX@/venv/bin/sendguard' ]; then
    echo "sendguard: not set up yet: @PREFIX@/venv is missing; @REPAIR@" >&2
    exit 1
fi

# A user with no settings yet gets the company's (the central server's address) once.
if [ -f '@PREFIX@/config.toml' ] && [ -n "${HOME:-}" ]; then
    sg_home="${SENDGUARD_HOME:-${XDG_DATA_HOME:-@DATA_HOME@}/SendGuard}"
    if [ ! -e "$sg_home/config.toml" ]; then
        mkdir -p "$sg_home" && cp '@PREFIX@/config.toml' "$sg_home/config.toml" 2>/dev/null || true
    fi
fi

# The venv's console script, not `python -m`: that would import a `sendguard` folder in the current directory.
exec '@PREFIX@/venv/bin/sendguard' "$@"
"""


def wrapper_script(prefix: str, policy: str, kind: str, data_home: str, repair: str) -> str:
    return _fill(WRAPPER, PREFIX=prefix, POLICY=policy, KIND=kind, DATA_HOME=data_home, REPAIR=repair)


# --------------------------------------------------------------------------- Debian package
SYSTEMD_UNIT = """\
[Unit]
Description=SendGuard helper: holds outgoing mail until it is checked and confirmed
PartOf=graphical-session.target
After=graphical-session.target

[Service]
Type=simple
ExecStart=/usr/bin/sendguard serve
Restart=on-failure
RestartSec=5

[Install]
WantedBy=graphical-session.target
"""

AUTOSTART_DESKTOP = """\
[Desktop Entry]
Type=Application
Name=SendGuard
Comment=Checks outgoing mail before it leaves: confirmation window and tray icon
Exec=@PREFIX@/bin/sendguard-autostart
Icon=sendguard
Terminal=false
X-GNOME-Autostart-enabled=true
"""

AUTOSTART_SCRIPT = """\
#!/bin/sh
# Started by the desktop session (XDG autostart, /etc/xdg/autostart/sendguard.desktop).
# With a systemd user manager, start the user unit (supervised, restarted on failure, never twice;
# `systemctl --user mask sendguard.service` opts out). Without one, run the helper here.
if command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then
    systemctl --user import-environment DISPLAY WAYLAND_DISPLAY XAUTHORITY XDG_CURRENT_DESKTOP 2>/dev/null || true
    exec systemctl --user start sendguard.service
fi
exec /usr/bin/sendguard serve
"""

POSTINST = r"""#!/bin/sh
# SendGuard: make the venv @PREFIX@/venv and install the bundled wheel and its requirements into it.
set -e

ROOT="${DPKG_ROOT:-}"
PREFIX="$ROOT@PREFIX@"
VENV="$PREFIX/venv"
WHEEL="$PREFIX/@WHEEL@"
PYTHON=/usr/bin/python3

fail_pip() {
    cat >&2 <<EOF

SendGuard: pip could not install SendGuard's Python packages into $VENV.
Most often this machine cannot reach PyPI (or the package index set in /etc/pip.conf): see pip's
messages above. Fix the network or proxy, or point pip at your company's mirror in /etc/pip.conf
([global] index-url = ...), or rebuild the package with --wheelhouse for offline machines.
Then finish the installation with:  sudo dpkg --configure -a
EOF
    exit 1
}

case "$1" in
configure)
    if [ -d "$PREFIX/wheelhouse" ]; then
        set -- --no-index --find-links "$PREFIX/wheelhouse" --find-links "$PREFIX"
        echo "SendGuard: installing from the bundled wheelhouse (no network)"
    else
        set --
    fi
    # Reuse the venv when it runs the same Python; otherwise (new install, Python upgrade) make it anew.
    want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        "$PYTHON" -m venv --clear "$VENV" || {
            echo "SendGuard: could not create $VENV with $PYTHON -m venv (is python3-venv installed?)" >&2
            exit 1
        }
    fi
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input "$@" \
        --requirement "$PREFIX/requirements.txt" || fail_pip
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input "$@" \
        --no-deps --force-reinstall "$WHEEL" || fail_pip
    "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null 2>&1 || true
    if command -v systemctl >/dev/null 2>&1; then
        systemctl ${ROOT:+--root="$ROOT"} --global enable sendguard.service >/dev/null 2>&1 ||
            echo "SendGuard: could not enable the systemd user unit; the XDG autostart entry starts the helper" >&2
    fi
    echo "SendGuard @VERSION@ is installed: it starts at each user's next desktop login."
    echo "Machine-wide policy: @POLICY@ (its locked keys win over each user's policy.toml)."
    ;;
esac
exit 0
"""

PRERM = r"""#!/bin/sh
# SendGuard: stop starting the helper at login before the files go away.
set -e
ROOT="${DPKG_ROOT:-}"
case "$1" in
remove|deconfigure)
    if command -v systemctl >/dev/null 2>&1; then
        systemctl ${ROOT:+--root="$ROOT"} --global disable sendguard.service >/dev/null 2>&1 || true
    fi
    echo "SendGuard: helpers that are running keep running until their users log out."
    ;;
esac
exit 0
"""

POSTRM = r"""#!/bin/sh
# SendGuard: remove what postinst made (the venv); dpkg removes the packaged files and, on purge,
# the machine-wide policy. Each user's data (outbox, audit log) in their home directory stays.
set -e
ROOT="${DPKG_ROOT:-}"
case "$1" in
remove|purge|abort-install)
    rm -rf "$ROOT@PREFIX@/venv"
    find "$ROOT@PREFIX@" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
    rm -f "$ROOT/etc/systemd/user/graphical-session.target.wants/sendguard.service"
    rmdir "$ROOT@PREFIX@" 2>/dev/null || true
    ;;
esac
if [ "$1" = purge ]; then
    rmdir "$ROOT@POLICY_DIR@" 2>/dev/null || true
fi
exit 0
"""


def _installed_size_kib(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and "DEBIAN" not in path.relative_to(root).parts[:1]:
            total += (path.stat().st_size + 1023) // 1024
    return max(total, 1)


def build_deb(wheel: Wheel, policy_text: str, config_text: str | None, out_dir: Path, work: Path,
              maintainer: str = DEFAULT_MAINTAINER, wheelhouse: Path | None = None) -> Path:
    """``sendguard_<version>_all.deb`` built with ``dpkg-deb --build --root-owner-group``."""
    if shutil.which("dpkg-deb") is None:
        raise BuildError("dpkg-deb not found: install the dpkg package (apt-get install dpkg), or build "
                         "with --platform windows/macos")
    version = debian_version(wheel.version)
    root = work / "deb"
    if root.exists():
        shutil.rmtree(root)
    prefix = root / LINUX_PREFIX.lstrip("/")
    policy = f"{LINUX_POLICY_DIR}/policy.toml"
    prefix.mkdir(parents=True)
    shutil.copy2(wheel.path, prefix / wheel.path.name)
    (prefix / wheel.path.name).chmod(0o644)
    _write(prefix / "requirements.txt", _requirements_text(wheel))
    if config_text:
        _write(prefix / "config.toml", config_text)
    if wheelhouse is not None:
        house = prefix / "wheelhouse"
        house.mkdir()
        for item in sorted(wheelhouse.glob("*.whl")):
            shutil.copy2(item, house / item.name)
            (house / item.name).chmod(0o644)
    _write(prefix / "bin" / "sendguard-autostart", AUTOSTART_SCRIPT, 0o755)
    _write(root / policy.lstrip("/"), policy_text)
    _write(root / "usr/lib/systemd/user/sendguard.service", SYSTEMD_UNIT)
    _write(root / "etc/xdg/autostart/sendguard.desktop", _fill(AUTOSTART_DESKTOP, PREFIX=LINUX_PREFIX))
    _write(root / "usr/bin/sendguard",
           wrapper_script(LINUX_PREFIX, policy, "Debian package", "$HOME/.local/share",
                          "run: sudo dpkg --configure -a"), 0o755)
    icon = ROOT / "addin/static/icons/icon-128.png"
    if icon.exists():
        target = root / "usr/share/icons/hicolor/128x128/apps/sendguard.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(icon, target)
        target.chmod(0o644)
    doc = root / "usr/share/doc/sendguard"
    _write(doc / "README.admin", _fill(README_LINUX, VERSION=wheel.version, POLICY=policy, PREFIX=LINUX_PREFIX))

    debian = root / "DEBIAN"
    debian.mkdir()
    debian.chmod(0o755)
    python_min = re.search(r">=\s*([0-9.]+)", wheel.requires_python or "")
    depends = f"python3 (>= {python_min.group(1)})" if python_min else "python3"
    description = (
        "guard against mis-sent email (helper, policy, confirmation window)\n"
        " SendGuard holds every outgoing message, checks it against the company's policy and\n"
        " releases it only after the sender has confirmed every recipient and attachment (and,\n"
        " when the policy says so, after a supervisor approved it).\n"
        " .\n"
        " This package installs the helper for every desktop user; postinst creates the\n"
        f" Python environment {LINUX_PREFIX}/venv with pip. The machine-wide policy is\n"
        f" {policy}."
    )
    control = (
        f"Package: {DIST}\n"
        f"Version: {version}\n"
        "Architecture: all\n"
        f"Maintainer: {maintainer}\n"
        f"Installed-Size: {_installed_size_kib(root)}\n"
        f"Depends: {depends}, python3-venv\n"
        f"Recommends: {DEB_RECOMMENDS}\n"
        "Section: mail\n"
        "Priority: optional\n"
        f"Description: {description}\n"
    )
    _write(debian / "control", control)
    conffiles = sorted(f"/{p.relative_to(root).as_posix()}" for p in (root / "etc").rglob("*") if p.is_file())
    _write(debian / "conffiles", "".join(f"{c}\n" for c in conffiles))
    values = {"PREFIX": LINUX_PREFIX, "WHEEL": wheel.path.name, "VERSION": wheel.version, "POLICY": policy,
              "POLICY_DIR": LINUX_POLICY_DIR}
    for name, template in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        _write(debian / name, _fill(template, **{k: v for k, v in values.items() if f"@{k}@" in template}), 0o755)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{DIST}_{version}_all.deb"
    result = subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError("dpkg-deb --build failed: " + " ".join((result.stderr or result.stdout).split()))
    return target


README_LINUX = """\
SendGuard @VERSION@ - Debian package, notes for the administrator
==================================================================

Installed files
  @PREFIX@/                      the wheel, requirements.txt, the venv made by postinst
  /usr/bin/sendguard             the command line (pins SENDGUARD_ADMIN_POLICY to the file below)
  @POLICY@    machine-wide policy (a conffile: your edits survive upgrades)
  /usr/lib/systemd/user/sendguard.service   systemd user unit (`sendguard serve`), enabled globally
  /etc/xdg/autostart/sendguard.desktop      desktop autostart; starts the user unit when systemd
                                            runs the session, the helper itself otherwise

postinst runs pip: the machine needs PyPI or a mirror set in /etc/pip.conf, unless the package was
built with --wheelhouse. If it could not reach it, fix that and run `sudo dpkg --configure -a`.

A user opts out of autostart with `systemctl --user mask sendguard.service`.
Removing the package leaves each user's data (~/.local/share/SendGuard: outbox, audit log).
"""


# --------------------------------------------------------------------------- Windows bundle
INSTALL_PS1 = r"""<#
.SYNOPSIS
  Install SendGuard @VERSION@ for the current user, and the machine-wide admin policy when elevated.

.DESCRIPTION
  Machine part (needs an elevated PowerShell; -MachineOnly does just this, e.g. from a computer
  startup script): copies policy.toml to %ProgramData%\SendGuard\policy.toml - the folder
  platformdirs.site_config_dir("SendGuard") names on Windows - readable by users, writable only by
  Administrators and SYSTEM.

  User part (-UserOnly does just this, e.g. from a logon script): a venv in
  %LOCALAPPDATA%\SendGuard\venv, pip install of the bundled wheel and its requirements, the
  company's config.toml when the bundle has one, autostart at logon (Run key or Task Scheduler),
  the helper's local CA trusted for this user (`sendguard addin certs install --trust`; Windows asks
  to confirm), and the helper started.
#>
[CmdletBinding()]
param(
    [string]$Python = "",
    [string]$Wheelhouse = "",
    [ValidateSet("RunKey", "TaskScheduler", "None")][string]$Autostart = "RunKey",
    [switch]$MachineOnly,
    [switch]$UserOnly,
    [switch]$NoTrust,
    [switch]$NoStart
)
$ErrorActionPreference = "Stop"
Set-StrictMode -Version 3.0

$Bundle = $PSScriptRoot
$Wheel = Join-Path $Bundle "@WHEEL@"
$Requirements = Join-Path $Bundle "requirements.txt"
$BundledPolicy = Join-Path $Bundle "policy.toml"
$BundledConfig = Join-Path $Bundle "config.toml"
$ProgramDataDir = [Environment]::GetFolderPath("CommonApplicationData")
$PolicyDir = Join-Path $ProgramDataDir "SendGuard"
$PolicyFile = Join-Path $PolicyDir "policy.toml"
$LocalAppData = [Environment]::GetFolderPath("LocalApplicationData")
$SgHome = Join-Path $LocalAppData "SendGuard"
$Venv = Join-Path $SgHome "venv"
$VenvPython = Join-Path $Venv "Scripts\python.exe"
$VenvPythonW = Join-Path $Venv "Scripts\pythonw.exe"
$RunKey = "HKCU:\Software\Microsoft\Windows\CurrentVersion\Run"
$TaskName = "SendGuard ($env:USERNAME)"

function Test-Elevated {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    return (New-Object Security.Principal.WindowsPrincipal($identity)).IsInRole(
        [Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Install-AdminPolicy {
    if (-not (Test-Path $BundledPolicy)) { Write-Host "No admin policy in this bundle."; return }
    if (-not (Test-Elevated)) {
        throw "The machine-wide policy needs an elevated PowerShell (Run as administrator), or pass -UserOnly."
    }
    New-Item -ItemType Directory -Force -Path $PolicyDir | Out-Null
    # Users may create files under %ProgramData% by default: make the folder admin-only before writing.
    & icacls.exe $PolicyDir /inheritance:r /grant:r "*S-1-5-32-544:(OI)(CI)F" "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-545:(OI)(CI)RX" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls could not set the permissions of $PolicyDir" }
    Copy-Item -Force $BundledPolicy $PolicyFile
    Write-Host "Admin policy installed: $PolicyFile"
}

function Find-Python {
    $check = "import sys; print(sys.version_info >= (3, 11))"
    $candidates = @()
    if ($Python) { $candidates += @{ Exe = $Python; Args = @() } }
    else { $candidates += @{ Exe = "py"; Args = @("-3") }; $candidates += @{ Exe = "python"; Args = @() } }
    foreach ($c in $candidates) {
        if (-not (Get-Command $c.Exe -ErrorAction SilentlyContinue)) { continue }
        # Windows PowerShell turns a native command's redirected stderr into an error: try/catch it.
        try { $answer = & $c.Exe $c.Args -c $check 2>$null } catch { continue }
        if ($LASTEXITCODE -eq 0 -and "$answer".Trim() -eq "True") { return $c }
    }
    throw "Python 3.11 or newer was not found: install it from python.org (for all users) or pass -Python C:\Path\python.exe"
}

function Stop-Helper {
    Get-CimInstance Win32_Process -Filter "Name = 'python.exe' OR Name = 'pythonw.exe' OR Name = 'sendguard.exe'" |
        Where-Object { ("" + $_.ExecutablePath).StartsWith($Venv, "OrdinalIgnoreCase") -or
                       ("" + $_.CommandLine).Contains($Venv) } |
        ForEach-Object { Stop-Process -Id $_.ProcessId -Force -ErrorAction SilentlyContinue }
}

function Install-ForUser {
    $py = Find-Python
    Stop-Helper
    New-Item -ItemType Directory -Force -Path $SgHome | Out-Null
    if (-not (Test-Path $VenvPython)) {
        & $py.Exe $py.Args -m venv $Venv
        if ($LASTEXITCODE -ne 0) { throw "could not create the venv $Venv" }
    }
    $pipArgs = @("-m", "pip", "install", "--disable-pip-version-check", "--no-input")
    if ($Wheelhouse) { $pipArgs += @("--no-index", "--find-links", $Wheelhouse, "--find-links", $Bundle) }
    & $VenvPython @pipArgs --requirement $Requirements
    if ($LASTEXITCODE -ne 0) {
        throw "pip could not install SendGuard's requirements. Most often PyPI (or the index in pip.ini) cannot be reached from this PC: see pip's messages above, or pass -Wheelhouse \\server\share\wheels."
    }
    & $VenvPython @pipArgs --no-deps --force-reinstall $Wheel
    if ($LASTEXITCODE -ne 0) { throw "pip could not install $Wheel" }

    if ((Test-Path $BundledConfig) -and -not (Test-Path (Join-Path $SgHome "config.toml"))) {
        Copy-Item $BundledConfig (Join-Path $SgHome "config.toml")
        Write-Host "Central server settings written to $(Join-Path $SgHome 'config.toml')"
    }

    # -P: never import from the current directory (Python 3.11+)
    $command = "`"$VenvPythonW`" -P -m sendguard serve"
    Remove-ItemProperty -Path $RunKey -Name "SendGuard" -ErrorAction SilentlyContinue
    Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false -ErrorAction SilentlyContinue
    if ($Autostart -eq "RunKey") {
        New-ItemProperty -Path $RunKey -Name "SendGuard" -Value $command -PropertyType String -Force | Out-Null
        Write-Host "Autostart: $RunKey\SendGuard"
    } elseif ($Autostart -eq "TaskScheduler") {
        $action = New-ScheduledTaskAction -Execute $VenvPythonW -Argument "-P -m sendguard serve"
        $trigger = New-ScheduledTaskTrigger -AtLogOn -User "$env:USERDOMAIN\$env:USERNAME"
        Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Force `
            -Description "SendGuard helper: checks outgoing mail before it leaves" | Out-Null
        Write-Host "Autostart: scheduled task '$TaskName'"
    }

    if (-not $NoTrust) {
        & (Join-Path $Venv "Scripts\sendguard.exe") addin certs install --trust
        if ($LASTEXITCODE -ne 0) { Write-Warning "The local CA is not trusted yet: run 'sendguard addin certs install --trust' as this user." }
    }
    if (-not $NoStart) {
        Start-Process -FilePath $VenvPythonW -ArgumentList @("-P", "-m", "sendguard", "serve") -WindowStyle Hidden
        Write-Host "SendGuard helper started."
    }
    Write-Host "SendGuard @VERSION@ installed for $env:USERNAME in $Venv"
}

if ($MachineOnly -and $UserOnly) { throw "Give -MachineOnly or -UserOnly, not both." }
if (-not $UserOnly) { Install-AdminPolicy }
if (-not $UserOnly -and (Test-Path "$PSScriptRoot\manifest\sendguard-loopback-exempt.ps1")) { & "$PSScriptRoot\manifest\sendguard-loopback-exempt.ps1" }  # classic Outlook -> helper
if (-not $MachineOnly) { Install-ForUser }
"""

UNINSTALL_PS1 = r"""<#
.SYNOPSIS
  Remove SendGuard for the current user (venv, autostart, trusted CA) and, when elevated, the
  machine-wide policy. The user's data (outbox, audit log) stays unless -RemoveData is given.
#>
[CmdletBinding()]
param(
    [switch]$MachineOnly,
    [switch]$UserOnly,
    [switch]$RemoveData
)
$ErrorActionPreference = "Stop"
Set-StrictMode -Version 3.0

$PolicyDir = Join-Path ([Environment]::GetFolderPath("CommonApplicationData")) "SendGuard"
$SgHome = Join-Path ([Environment]::GetFolderPath("LocalApplicationData")) "SendGuard"
$Venv = Join-Path $SgHome "venv"
$RunKey = "HKCU:\Software\Microsoft\Windows\CurrentVersion\Run"
$TaskName = "SendGuard ($env:USERNAME)"

function Test-Elevated {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    return (New-Object Security.Principal.WindowsPrincipal($identity)).IsInRole(
        [Security.Principal.WindowsBuiltInRole]::Administrator)
}

if (-not $MachineOnly) {
    Get-CimInstance Win32_Process -Filter "Name = 'python.exe' OR Name = 'pythonw.exe' OR Name = 'sendguard.exe'" |
        Where-Object { ("" + $_.ExecutablePath).StartsWith($Venv, "OrdinalIgnoreCase") -or
                       ("" + $_.CommandLine).Contains($Venv) } |
        ForEach-Object { Stop-Process -Id $_.ProcessId -Force -ErrorAction SilentlyContinue }
    Remove-ItemProperty -Path $RunKey -Name "SendGuard" -ErrorAction SilentlyContinue
    Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false -ErrorAction SilentlyContinue
    & certutil.exe -user -delstore Root "SendGuard Local CA" | Out-Null
    if (Test-Path $Venv) { Remove-Item -Recurse -Force $Venv }
    if ($RemoveData -and (Test-Path $SgHome)) { Remove-Item -Recurse -Force $SgHome }
    Write-Host "SendGuard removed for $env:USERNAME" $(if (-not $RemoveData) { "(data kept in $SgHome)" })
}
if (-not $UserOnly) {
    if (Test-Elevated) {
        if (Test-Path $PolicyDir) { Remove-Item -Recurse -Force $PolicyDir }
        Write-Host "Machine-wide policy removed: $PolicyDir"
    } elseif ($MachineOnly) {
        throw "Removing the machine-wide policy needs an elevated PowerShell."
    }
}
"""

README_WINDOWS = """\
SendGuard @VERSION@ for Windows - notes for the administrator
=============================================================

Contents
  install.ps1, uninstall.ps1   the installer (PowerShell 5.1 or 7)
  @WHEEL@
  requirements.txt             what pip installs beside it
  policy.toml                  the machine-wide admin policy@POLICY_NOTE@
  config.toml                  central server settings for each user (only with --server-url)
  manifest\\                    Outlook add-in manifests: outlook.xml, manifest.json and its zip

Needs Python 3.11 or newer (python.org installer, "for all users", with the py launcher).

Where things go
  %ProgramData%\\SendGuard\\policy.toml        machine-wide policy (what SendGuard reads through
                                              platformdirs.site_config_dir); keys in `locked` win
  %LOCALAPPDATA%\\SendGuard\\venv              the user's Python environment
  %LOCALAPPDATA%\\SendGuard\\                  the user's data: config.toml, policy.toml, outbox, logs
  HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\SendGuard   autostart (or -Autostart TaskScheduler)

One PC, by hand (elevated PowerShell, as the user who will send mail):
  powershell -ExecutionPolicy Bypass -File install.ps1

Many PCs
  computer startup script (SYSTEM):  install.ps1 -MachineOnly
  user logon script:                 install.ps1 -UserOnly [-Wheelhouse \\\\server\\share\\wheels]
  Offline PCs: on a Windows machine with the same Python, run
    pip download -r requirements.txt -d wheels
  and pass the folder with -Wheelhouse.

The user step runs `sendguard addin certs install --trust`: Windows asks the user to confirm the
SendGuard local CA (it signs for localhost only). To skip the prompt, pass -NoTrust and deploy each
user's CA by Group Policy, or have users run the command later.

Outlook: upload manifest\\outlook.xml (or manifest\\sendguard-outlook-addin.zip) in the Microsoft 365
admin center, Settings > Integrated apps (Exchange admin center on-premises). Regenerate them for
another host or SendMode with `sendguard addin manifest --help`.

Remove: uninstall.ps1 (-RemoveData also deletes the user's outbox and audit log).
"""


def _zip_dir(folder: Path, target: Path) -> Path:
    """Zip ``folder`` (as its own top directory), keeping Unix modes so install.sh stays executable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            arcname = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            if path.is_dir():
                continue
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | (path.stat().st_mode & 0o777)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return target


def _common_bundle(folder: Path, wheel: Wheel, policy_text: str | None, config_text: str | None,
                   manifests: Path) -> None:
    folder.mkdir(parents=True)
    shutil.copy2(wheel.path, folder / wheel.path.name)
    _write(folder / "requirements.txt", _requirements_text(wheel))
    if policy_text is not None:
        _write(folder / "policy.toml", policy_text)
    if config_text:
        _write(folder / "config.toml", config_text)
    shutil.copytree(manifests, folder / "manifest")


def build_windows(wheel: Wheel, policy_text: str | None, config_text: str | None, manifests: Path,
                  out_dir: Path, work: Path) -> Path:
    folder = work / f"{DIST}-{wheel.version}-windows"
    _common_bundle(folder, wheel, policy_text, config_text, manifests)
    values = {"VERSION": wheel.version, "WHEEL": wheel.path.name}
    _write(folder / "install.ps1", _fill(INSTALL_PS1, **values))
    _write(folder / "uninstall.ps1", UNINSTALL_PS1)
    note = "" if policy_text is not None else " (none given: build with --policy)"
    _write(folder / "README.txt", _fill(README_WINDOWS, POLICY_NOTE=note, **values))
    return _zip_dir(folder, out_dir / f"{folder.name}.zip")


# --------------------------------------------------------------------------- macOS bundle
INSTALL_SH = r"""#!/bin/sh
# Install SendGuard @VERSION@ on macOS, for every user of the Mac (run with sudo, or from your MDM).
#
#   sudo ./install.sh [--python PATH] [--wheelhouse DIR] [--no-trust] [--prefix DIR]
#
# Machine-wide: the venv @PREFIX@/venv with the bundled wheel and its requirements, the command
# /usr/local/bin/sendguard, the admin policy in platformdirs' site config directory (by default
# @POLICY_DIR@), and the LaunchAgent /Library/LaunchAgents/@LABEL@.plist that
# starts `sendguard serve` at every user's login. For the user logged in now it also loads the
# agent and trusts the helper's local CA (`sendguard addin certs install --trust`).
#
# --prefix DIR installs under DIR as if it were / (every path, the wrapper's and the agent's too) and
# skips launchctl and the CA: a dry run that can be inspected and removed with uninstall.sh --prefix.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=""
WHEELHOUSE=""
TRUST=1
PREFIX_ROOT=""
PIP_EXTRA=""

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
    --python) PYTHON="$2"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
    --no-trust) TRUST=0; shift ;;
    --prefix) PREFIX_ROOT="$2"; shift 2 ;;
    --no-deps) PIP_EXTRA="--no-deps"; shift ;;  # tests: install the wheel alone
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$PREFIX_ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo ./install.sh), or give --prefix DIR to stage the files" >&2
    exit 1
fi

APP="$PREFIX_ROOT@PREFIX@"
VENV="$APP/venv"
BIN_DIR="$PREFIX_ROOT/usr/local/bin"
AGENTS="$PREFIX_ROOT/Library/LaunchAgents"
PLIST="$AGENTS/@LABEL@.plist"

if [ -z "$PYTHON" ]; then
    for candidate in python3.13 python3.12 python3.11 python3 \
        /Library/Frameworks/Python.framework/Versions/Current/bin/python3 /opt/homebrew/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON=$(command -v "$candidate")
            break
        fi
    done
fi
if [ -z "$PYTHON" ]; then
    echo "install.sh: Python 3.11 or newer not found (macOS's own python3 is older): install it from" >&2
    echo "python.org, or pass --python /path/to/python3" >&2
    exit 1
fi

echo "SendGuard: Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])') at $PYTHON"
mkdir -p "$APP"
cp "$HERE/@WHEEL@" "$HERE/requirements.txt" "$APP/"
[ -f "$HERE/config.toml" ] && cp "$HERE/config.toml" "$APP/config.toml"
# Reuse the venv when it runs the same Python; otherwise (new install, other Python) make it anew.
want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    "$PYTHON" -m venv --clear "$VENV"
fi

set -- --disable-pip-version-check --no-input
[ -n "$WHEELHOUSE" ] && set -- "$@" --no-index --find-links "$WHEELHOUSE" --find-links "$APP"
fail_pip() {
    echo "" >&2
    echo "SendGuard: pip could not install into $VENV. Most often this Mac cannot reach PyPI (or the" >&2
    echo "index in pip.conf): see pip's messages above. For offline Macs: pip download -r requirements.txt" >&2
    echo "-d wheels on a Mac with the same Python, then ./install.sh --wheelhouse wheels" >&2
    exit 1
}
if [ -z "$PIP_EXTRA" ]; then
    "$VENV/bin/python" -m pip install "$@" --requirement "$APP/requirements.txt" || fail_pip
fi
"$VENV/bin/python" -m pip install "$@" --no-deps --force-reinstall "$APP/@WHEEL@" || fail_pip

# The policy goes where the installed Python's platformdirs says SendGuard reads it (a Homebrew
# Python uses its own prefix); without an answer, the python.org default.
POLICY_DIR=$(env -u SENDGUARD_ADMIN_POLICY -u XDG_CONFIG_DIRS "$VENV/bin/python" -c \
    'from sendguard import paths; print(paths.admin_policy_file().parent)' 2>/dev/null || true)
[ -n "$POLICY_DIR" ] || POLICY_DIR='@POLICY_DIR@'
POLICY="$PREFIX_ROOT$POLICY_DIR/policy.toml"
if [ -f "$HERE/policy.toml" ]; then
    mkdir -p "$(dirname "$POLICY")"
    cp "$HERE/policy.toml" "$POLICY"
    chmod 644 "$POLICY"
    echo "SendGuard: admin policy installed: $POLICY"
fi

mkdir -p "$APP/bin" "$BIN_DIR" "$AGENTS"
# The command: the wrapper below with this install's paths filled in.
sed_escape() { printf '%s' "$1" | sed 's/[#&\\]/\\&/g'; }
sed -e "s#%%POLICY%%#$(sed_escape "$POLICY")#g" -e "s#%%APP%%#$(sed_escape "$APP")#g" \
    >"$APP/bin/sendguard" <<'WRAPPER'
@WRAPPER@WRAPPER
chmod 755 "$APP/bin/sendguard"
ln -sf "$APP/bin/sendguard" "$BIN_DIR/sendguard"

cat >"$PLIST" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>@LABEL@</string>
    <key>ProgramArguments</key>
    <array>
        <string>$APP/bin/sendguard</string>
        <string>serve</string>
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>LimitLoadToSessionType</key>
    <string>Aqua</string>
    <key>ProcessType</key>
    <string>Interactive</string>
</dict>
</plist>
PLIST
chmod 644 "$PLIST"

if [ -n "$PREFIX_ROOT" ]; then
    echo "SendGuard: staged under $PREFIX_ROOT (--prefix: launchctl and the CA step skipped)"
    exit 0
fi

chown root:wheel "$PLIST"
CONSOLE_USER=$(stat -f %Su /dev/console 2>/dev/null || true)
if [ -n "$CONSOLE_USER" ] && [ "$CONSOLE_USER" != root ] && [ "$CONSOLE_USER" != loginwindow ]; then
    CONSOLE_UID=$(id -u "$CONSOLE_USER")
    launchctl bootout "gui/$CONSOLE_UID/@LABEL@" 2>/dev/null || true
    launchctl bootstrap "gui/$CONSOLE_UID" "$PLIST" || echo "SendGuard: launchctl could not load the agent; it starts at next login" >&2
    if [ "$TRUST" = 1 ]; then
        launchctl asuser "$CONSOLE_UID" sudo -u "$CONSOLE_USER" "$APP/bin/sendguard" addin certs install --trust ||
            echo "SendGuard: $CONSOLE_USER must still run: sendguard addin certs install --trust" >&2
    fi
fi
echo "SendGuard @VERSION@ installed: the helper starts at each user's login."
"""

UNINSTALL_SH = r"""#!/bin/sh
# Remove SendGuard from this Mac (run with sudo). Users' data (~/Library/Application Support/SendGuard:
# outbox, audit log) stays. --prefix DIR undoes a staged install.
set -eu
PREFIX_ROOT=""
[ "${1:-}" = --prefix ] && PREFIX_ROOT="$2"
APP="$PREFIX_ROOT@PREFIX@"
PLIST="$PREFIX_ROOT/Library/LaunchAgents/@LABEL@.plist"
POLICY_DIR=$(env -u SENDGUARD_ADMIN_POLICY -u XDG_CONFIG_DIRS "$APP/venv/bin/python" -c \
    'from sendguard import paths; print(paths.admin_policy_file().parent)' 2>/dev/null || true)
[ -n "$POLICY_DIR" ] || POLICY_DIR='@POLICY_DIR@'
if [ -z "$PREFIX_ROOT" ]; then
    CONSOLE_USER=$(stat -f %Su /dev/console 2>/dev/null || true)
    if [ -n "$CONSOLE_USER" ] && [ "$CONSOLE_USER" != root ]; then
        launchctl bootout "gui/$(id -u "$CONSOLE_USER")/@LABEL@" 2>/dev/null || true
    fi
fi
rm -f "$PLIST" "$PREFIX_ROOT/usr/local/bin/sendguard" "$PREFIX_ROOT$POLICY_DIR/policy.toml"
rmdir "$PREFIX_ROOT$POLICY_DIR" 2>/dev/null || true
rm -rf "$APP"
echo "SendGuard removed. Users' data in ~/Library/Application Support/SendGuard is kept."
"""

README_MACOS = """\
SendGuard @VERSION@ for macOS - notes for the administrator
===========================================================

Contents
  install.sh, uninstall.sh     the installer (run with sudo, or as a script from your MDM)
  @WHEEL@
  requirements.txt             what pip installs beside it
  policy.toml                  the machine-wide admin policy@POLICY_NOTE@
  config.toml                  central server settings for each user (only with --server-url)
  manifest/                    Outlook add-in manifests: outlook.xml, manifest.json and its zip

Needs Python 3.11 or newer (python.org or Homebrew; the python3 that comes with macOS is too old).

Where things go
  @PREFIX@/venv                           the Python environment (all users)
  @PREFIX@/bin/sendguard, /usr/local/bin/sendguard   the command (pins the admin policy path)
  @POLICY_DIR@/policy.toml   machine-wide policy: platformdirs.site_config_dir
                                          (a Homebrew Python: $(brew --prefix)/share/SendGuard;
                                          install.sh asks the installed Python)
  /Library/LaunchAgents/@LABEL@.plist   starts `sendguard serve` at every login
  ~/Library/Application Support/SendGuard/  each user's data: config.toml, outbox, audit log

Install:   sudo ./install.sh            (offline Macs: --wheelhouse DIR from
                                          `pip download -r requirements.txt -d DIR`)
Each user trusts the helper's local CA once: `sendguard addin certs install --trust` (install.sh
does it for the user logged in; it asks for that user's password). Or deploy it by MDM profile.

Outlook: upload manifest/outlook.xml (or manifest/sendguard-outlook-addin.zip) in the Microsoft 365
admin center, Settings > Integrated apps.

Remove:    sudo ./uninstall.sh
"""


def build_macos(wheel: Wheel, policy_text: str | None, config_text: str | None, manifests: Path,
                out_dir: Path, work: Path) -> Path:
    folder = work / f"{DIST}-{wheel.version}-macos"
    _common_bundle(folder, wheel, policy_text, config_text, manifests)
    # install.sh fills in %%APP%% and %%POLICY%%: the policy folder is known only once Python is installed.
    wrapper = wrapper_script("%%APP%%", "%%POLICY%%", "macOS installer", "$HOME/Library/Application Support",
                             "run the installer again: sudo ./install.sh")
    values = {"VERSION": wheel.version, "WHEEL": wheel.path.name, "PREFIX": MACOS_PREFIX,
              "POLICY_DIR": MACOS_POLICY_DIR, "LABEL": LAUNCHD_LABEL}
    text = _fill(INSTALL_SH, WRAPPER=wrapper, **values)
    _write(folder / "install.sh", text, 0o755)
    _write(folder / "uninstall.sh", _fill(UNINSTALL_SH, PREFIX=MACOS_PREFIX, LABEL=LAUNCHD_LABEL,
                                          POLICY_DIR=MACOS_POLICY_DIR), 0o755)
    note = "" if policy_text is not None else " (none given: build with --policy)"
    _write(folder / "README.txt", _fill(README_MACOS, POLICY_NOTE=note, **values))
    return _zip_dir(folder, out_dir / f"{folder.name}.zip")


# --------------------------------------------------------------------------- main
def build(out: Path, platforms: tuple[str, ...], policy_path: Path | None, server_url: str | None,
          wheel_path: Path | None = None, send_mode: str = "SoftBlock", maintainer: str = DEFAULT_MAINTAINER,
          wheelhouse: Path | None = None) -> list[Path]:
    """Build everything into a temporary directory, then move the results into ``out``."""
    policy_text = check_policy(policy_path)
    config_text = server_config(server_url)
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BuildError(f"--wheelhouse {wheelhouse}: not a directory")
    if wheel_path is not None and not wheel_path.is_file():
        raise BuildError(f"--wheel {wheel_path}: no such file")
    with tempfile.TemporaryDirectory(prefix="sendguard-installer-") as tmp:
        work = Path(tmp)
        staged = work / "out"
        staged.mkdir()
        if wheel_path is not None:
            built = Path(shutil.copy2(wheel_path, staged / wheel_path.name))
        else:
            built = build_wheel(ROOT, staged)
        wheel = Wheel.read(built)
        bundle_policy = policy_text if policy_path is not None else None
        if "windows" in platforms or "macos" in platforms:
            manifests = work / "manifest"
            manifests.mkdir()
            write_manifests(manifests, send_mode)
        if "linux" in platforms:
            build_deb(wheel, policy_text, config_text, staged, work, maintainer, wheelhouse)
        if "windows" in platforms:
            build_windows(wheel, bundle_policy, config_text, manifests, staged, work)
        if "macos" in platforms:
            build_macos(wheel, bundle_policy, config_text, manifests, staged, work)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for item in sorted(staged.iterdir()):
            target = out / item.name
            if target.exists():
                target.unlink()
            results.append(Path(shutil.move(str(item), str(target))))
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_installer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory (default: dist)")
    parser.add_argument("--platform", choices=(*PLATFORMS, "all"), default="all")
    parser.add_argument("--policy", type=Path, help="the machine-wide admin policy.toml to deploy")
    parser.add_argument("--server-url", help="central server URL written to each user's config.toml")
    parser.add_argument("--wheel", type=Path, help="use this sendguard wheel instead of building one")
    parser.add_argument("--wheelhouse", type=Path,
                        help="(.deb) bundle these wheels so postinst installs without network")
    parser.add_argument("--send-mode", choices=("SoftBlock", "Block"), default="SoftBlock",
                        help="Outlook add-in SendMode in the bundled manifests")
    parser.add_argument("--maintainer", default=DEFAULT_MAINTAINER, help="Maintainer field of the .deb")
    args = parser.parse_args(argv)
    platforms = PLATFORMS if args.platform == "all" else (args.platform,)
    try:
        results = build(args.out, platforms, args.policy, args.server_url, args.wheel, args.send_mode,
                        args.maintainer, args.wheelhouse)
    except BuildError as exc:
        print(f"build_installer: error: {exc}", file=sys.stderr)
        return 2
    for path in results:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
