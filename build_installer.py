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
import hashlib
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

# Fixed install locations. The admin policy paths are sendguard.paths.fixed_system_config_dir():
# /etc/xdg/SendGuard on Linux, C:\ProgramData\SendGuard on Windows, /Library/Application Support/SendGuard
# on macOS; each installer also names it in the marker (sendguard-install.toml) in the venv it makes.
LINUX_PREFIX = "/opt/sendguard"
LINUX_POLICY_DIR = "/etc/xdg/SendGuard"
LINUX_CA_DIR = "/var/lib/sendguard/ca"  # the per-machine add-in CA postinst makes
MACOS_PREFIX = "/opt/sendguard"
MACOS_POLICY_DIR = "/Library/Application Support/SendGuard"

# Debian packages the Qt window loads at run time (the Makefile's RUN_APT): recommended, since the
# helper also runs headless (`sendguard serve --no-window`, confirmation in the browser).
DEB_RECOMMENDS = (
    "libnss3, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0, "
    "libxcb-render-util0, libxcb-image0, libxcomposite1, libxdamage1, libxrandr2, libxtst6, libasound2, "
    "libegl1, libgl1, libopengl0, fonts-noto-cjk"
)

PACKAGING = ROOT / "packaging"


def template(name: str) -> str:
    """A template file under packaging/ (shell, PowerShell, WiX, systemd...: kept as files so they can be linted)."""
    return (PACKAGING / name).read_text(encoding="utf-8")


def policy_template() -> str:
    return template("policy-template.toml")


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


# --------------------------------------------------------------------------- lock file and wheelhouse
# A fleet installs exactly the bytes the admin built: every Python package SendGuard needs, pinned by
# version and sha256 in ``requirements.lock`` for one platform, the files themselves in a wheelhouse
# next to it. Installers run ``pip install --no-index --find-links WHEELHOUSE --require-hashes``.
LOCK_NAME = "requirements.lock"
PYTHON_VERSION = "3.11"  # the CPython the Windows and macOS wheelhouses are fetched for
# pip evaluates environment markers against the Python running it, not --platform: the Windows set
# is therefore resolved here, against this environment.
WINDOWS_MARKERS = {
    "os_name": "nt", "sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
    "platform_release": "10", "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".9",
}
TARGETS = ("linux", "windows")
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class LockedFile:
    name: str
    version: str
    sha256: str
    path: Path


@dataclass(frozen=True)
class Wheelhouse:
    """A wheelhouse whose files all match its lock (checked by ``Wheelhouse.open``)."""

    directory: Path
    lock: Path
    files: tuple[LockedFile, ...]
    target: str

    @classmethod
    def open(cls, directory: Path, lock: Path | None = None) -> Wheelhouse:
        lock = lock or directory / LOCK_NAME
        if not directory.is_dir():
            raise BuildError(f"--wheelhouse {directory}: not a directory")
        if not lock.is_file():
            raise BuildError(f"{lock}: no lock file; make the wheelhouse with "
                             "`build_installer.py wheelhouse --target linux|windows --out DIR`")
        pins, target = read_lock(lock)
        on_disk: dict[str, Path] = {}
        for path in directory.glob("*.whl"):
            on_disk[sha256_file(path)] = path
        files = []
        for name, (version, hashes) in sorted(pins.items()):
            match = next((on_disk[h] for h in hashes if h in on_disk), None)
            if match is None:
                raise BuildError(f"{lock}: {name}=={version}: no file in {directory} has the locked sha256 "
                                 f"({', '.join(sorted(hashes))[:80]}); rebuild the wheelhouse or restore the file")
            found = _WHEEL_NAME.match(match.name)
            if not found or normalize(found["name"]) != name or found["version"] != version:
                raise BuildError(f"{lock}: {name}=={version} is locked to {match.name}, another package")
            files.append(LockedFile(name, version, sha256_file(match), match))
        return cls(directory=directory, lock=lock, files=tuple(files), target=target)

    def python_and_arch(self) -> tuple[str | None, str | None, str]:
        """(lowest CPython, highest CPython exclusive, Debian architecture) the wheels allow."""
        low: tuple[int, int] | None = None
        high: tuple[int, int] | None = None
        arch = "all"
        for item in self.files:
            tags = _WHEEL_NAME.match(item.path.name)
            assert tags is not None
            for py in tags["py"].split("."):
                m = re.fullmatch(r"cp3(\d+)", py)
                if not m:
                    continue
                minor = (3, int(m.group(1)))
                low = max(low or minor, minor)
                if tags["abi"] != "abi3" and tags["abi"] != "none":
                    high = min(high or (3, minor[1] + 1), (3, minor[1] + 1))
            plat = tags["plat"]
            if plat != "any":
                if "x86_64" in plat:
                    wheel_arch = "amd64"
                elif "aarch64" in plat:
                    wheel_arch = "arm64"
                else:
                    raise BuildError(f"{item.path.name}: not a Linux wheel (platform {plat}); the .deb needs a "
                                     "wheelhouse made with --target linux")
                if arch not in ("all", wheel_arch):
                    raise BuildError(f"{self.lock}: wheels for {arch} and {wheel_arch} mixed")
                arch = wheel_arch
        fmt = (lambda v: f"{v[0]}.{v[1]}" if v else None)  # noqa: E731
        return fmt(low), fmt(high), arch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_lock(path: Path) -> tuple[dict[str, tuple[str, set[str]]], str]:
    """{name: (version, {sha256, ...})} and the target named in the header."""
    pins: dict[str, tuple[str, set[str]]] = {}
    target = ""
    text = path.read_text(encoding="utf-8")
    found = re.search(r"^# target: (\S+)", text, re.M)
    if found:
        target = found.group(1)
    logical = re.sub(r"\\\n", " ", text)
    for number, line in enumerate(logical.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        if not m:
            raise BuildError(f"{path}: entry {number}: expected `name==version --hash=sha256:...`, got {line[:80]!r}")
        hashes = set(re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
        pins[normalize(m.group(1))] = (m.group(2), hashes)
    if not pins:
        raise BuildError(f"{path}: the lock names no package")
    return pins, target


def write_lock(directory: Path, target: str, title: str) -> Path:
    """``requirements.lock`` for every wheel in ``directory`` (one version per package)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(directory.glob("*.whl")):
        m = _WHEEL_NAME.match(path.name)
        if not m:
            raise BuildError(f"{path}: not a wheel file name")
        name, version = normalize(m["name"]), m["version"]
        if name in entries and entries[name][0] != version:
            raise BuildError(f"{directory}: two versions of {name} ({entries[name][0]}, {version}): remove one")
        entries.setdefault(name, (version, []))[1].append(sha256_file(path))
    if not entries:
        raise BuildError(f"{directory}: no wheels")
    lines = [
        f"# {title}",
        f"# target: {target}",
        "# Every file is pinned by its sha256: every PC installs these bytes and nothing else, offline:",
        f"#   pip install --no-index --find-links WHEELHOUSE --require-hashes -r {LOCK_NAME}",
        "# Made by build_installer.py wheelhouse; do not edit by hand.",
    ]
    for name, (version, hashes) in sorted(entries.items()):
        lines.append(f"{name}=={version} \\")
        lines.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(sorted(hashes)))
    path = directory / LOCK_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines()
                 if ln.strip() and "is ignored" not in ln]
        raise BuildError(f"pip {args[0]} failed: {' | '.join(lines[-4:])}")


def _requires_for(requires: list[str] | tuple[str, ...], markers: dict[str, str] | None,
                  extras: tuple[str, ...] = ()) -> list[str]:
    """Requirements whose markers hold on the target (``markers``; None: this machine), markers dropped."""
    from packaging.requirements import Requirement

    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is not None:
            envs = [{**(markers or {}), "extra": e} for e in ("", *extras)] if markers else None
            if envs is None:
                ok = any(req.marker.evaluate({"extra": e}) for e in ("", *extras))
            else:
                ok = any(req.marker.evaluate(env) for env in envs)
            if not ok:
                continue
        req.marker = None
        out.append(str(req))
    return out


def _missing(directory: Path, markers: dict[str, str] | None) -> list[str]:
    """Requirements of the wheels in ``directory`` (on the target) that no wheel there provides."""
    from packaging.requirements import Requirement

    have: dict[str, str] = {}
    needs: list[tuple[str, list[str]]] = []
    for path in directory.glob("*.whl"):
        m = _WHEEL_NAME.match(path.name)
        if not m:
            continue
        have[normalize(m["name"])] = m["version"]
        with zipfile.ZipFile(path) as zf:
            meta = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            parsed = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"), headersonly=True)
        needs.append((m["name"], parsed.get_all("Requires-Dist") or []))
    missing = []
    for _owner, requires in needs:
        for text in _requires_for(requires, markers):
            req = Requirement(text)
            version = have.get(normalize(req.name))
            if version is None:
                missing.append(text)
            elif not req.specifier.contains(version, prereleases=True):
                raise BuildError(f"wheelhouse: {req.name} {version} does not satisfy {text}")
    return sorted(set(missing))


def _prune(directory: Path, requirements: list[str], markers: dict[str, str] | None) -> list[str]:
    """Delete wheels no requirement on the target leads to (pip download also fetches what the markers
    of the machine running it ask for, e.g. Linux-only dependencies); returns the names removed."""
    from packaging.requirements import Requirement

    files: dict[str, Path] = {}
    for path in directory.glob("*.whl"):
        m = _WHEEL_NAME.match(path.name)
        if m:
            files[normalize(m["name"])] = path
    todo = [Requirement(r) for r in _requires_for(requirements, markers)]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = normalize(req.name)
        if name in seen or name not in files:
            continue
        seen.add(name)
        with zipfile.ZipFile(files[name]) as zf:
            meta = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            parsed = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"), headersonly=True)
        todo.extend(Requirement(r) for r in _requires_for(parsed.get_all("Requires-Dist") or [], markers,
                                                          tuple(req.extras)))
    removed = sorted(set(files) - seen)
    for name in removed:
        files[name].unlink()
    return removed


def make_wheelhouse(requirements: list[str], target: str, out: Path, python: str = sys.executable,
                    title: str = "SendGuard's Python packages", pure_wheels: Path | None = None) -> Wheelhouse:
    """Fill ``out`` with wheels for ``requirements`` on ``target`` and write its lock.

    linux: ``pip wheel`` on this machine (it must be the fleet's platform and Python; sdists are built
    into wheels here). windows: ``pip download --platform win_amd64 --only-binary=:all:`` for CPython
    3.11, with the pure-Python wheels of a Linux wheelhouse (``pure_wheels``) for packages PyPI has only
    as sdists; markers are evaluated for Windows and the set is closed over every wheel's requirements.
    Uses pip's usual configuration and cache (a mirror in pip.conf, --find-links...).
    """
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="sendguard-reqs-") as tmp:
        reqs = Path(tmp) / "requirements.txt"
        if target == "linux":
            if not sys.platform.startswith("linux"):
                raise BuildError("--target linux: build the Linux wheelhouse on Linux (the fleet's Python)")
            reqs.write_text("\n".join(_requires_for(requirements, None)) + "\n", encoding="utf-8")
            _pip(python, "wheel", "--wheel-dir", str(out), "--requirement", str(reqs))
            markers = None
            tag = f"linux_{os.uname().machine}-cp{sys.version_info[0]}{sys.version_info[1]}"
        elif target == "windows":
            markers = WINDOWS_MARKERS
            base = ["download", "--dest", str(out), "--only-binary=:all:", "--platform", "win_amd64",
                    "--python-version", PYTHON_VERSION, "--implementation", "cp"]
            if pure_wheels is not None:
                pure = Path(tmp) / "pure"
                pure.mkdir()
                for wheel in pure_wheels.glob("*-none-any.whl"):
                    shutil.copy2(wheel, pure / wheel.name)
                base += ["--find-links", str(pure)]
            todo = _requires_for(requirements, markers)
            for _round in range(6):
                reqs.write_text("\n".join(todo) + "\n", encoding="utf-8")
                _pip(python, *base, "--requirement", str(reqs))
                todo = _missing(out, markers)
                if not todo:
                    break
            else:
                raise BuildError(f"wheelhouse for Windows: still missing {', '.join(todo)}")
            _prune(out, requirements, markers)
            tag = "win_amd64-cp" + PYTHON_VERSION.replace(".", "")
        else:
            raise BuildError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    missing = _missing(out, markers)
    if missing:
        raise BuildError(f"wheelhouse {out}: requirements no wheel provides: {', '.join(missing)}")
    write_lock(out, tag, f"{title} for {tag}")
    return Wheelhouse.open(out)


def check_offline_install(house: Wheelhouse, python: str = sys.executable) -> None:
    """pip resolves the lock from the wheelhouse alone, hashes checked (no network, nothing installed)."""
    with tempfile.TemporaryDirectory(prefix="sendguard-dry-") as tmp:
        args = ["install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(house.directory),
                "--require-hashes", "--requirement", str(house.lock)]
        if house.target.startswith("win"):
            args += ["--only-binary=:all:", "--platform", "win_amd64", "--python-version", PYTHON_VERSION,
                     "--implementation", "cp", "--target", tmp]
        env_backup = os.environ.get("PIP_CONFIG_FILE")
        os.environ["PIP_CONFIG_FILE"] = os.devnull  # the machine's pip.conf (indexes, find-links) plays no part
        try:
            _pip(python, *args)
        finally:
            if env_backup is None:
                os.environ.pop("PIP_CONFIG_FILE", None)
            else:
                os.environ["PIP_CONFIG_FILE"] = env_backup


# --------------------------------------------------------------------------- inputs
def check_policy(path: Path | None) -> str:
    """The admin policy's text after ``sendguard.policy.parse_file`` accepted it (or the commented template)."""
    from sendguard import policy
    from sendguard.errors import ConfigError

    if path is None:
        return policy_template()
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
    text = _fill(template("common/server-config.toml"), URL=url)
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
def wrapper_script(prefix: str, kind: str, data_home: str, repair: str) -> str:
    return _fill(template("common/wrapper.sh"), PREFIX=prefix, KIND=kind, DATA_HOME=data_home, REPAIR=repair)


# --------------------------------------------------------------------------- Debian package
def _installed_size_kib(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and "DEBIAN" not in path.relative_to(root).parts[:1]:
            total += (path.stat().st_size + 1023) // 1024
    return max(total, 1)


def deb_python_depends(requires_python: str, house: Wheelhouse | None) -> tuple[str, str, str]:
    """(Depends on python3, Architecture, the sentence saying which systems that means)."""
    python_min = re.search(r">=\s*([0-9]+\.[0-9]+)", requires_python or "")
    low = python_min.group(1) if python_min else None
    high = None
    arch = "all"
    if house is not None:
        wheels_low, high, arch = house.python_and_arch()
        if wheels_low and (low is None or tuple(map(int, wheels_low.split("."))) > tuple(map(int, low.split(".")))):
            low = wheels_low
    parts = [f"python3 (>= {low})"] if low else ["python3"]
    if high:
        parts.append(f"python3 (<< {high})")
    if high:
        said = (f"Needs Python {low} exactly (the bundled wheels are built for it): Debian 12; for other\n"
                f" releases build the package there. Not Ubuntu 22.04 (Python 3.10).")
    else:
        said = f"Needs Python {low} or newer: Debian 12, Ubuntu 24.04 or later; not Ubuntu 22.04 (Python 3.10)."
    return ", ".join(parts), arch, said


def build_deb(wheel: Wheel, policy_text: str, config_text: str | None, out_dir: Path, work: Path,
              maintainer: str = DEFAULT_MAINTAINER, wheelhouse: Wheelhouse | None = None) -> Path:
    """``sendguard_<version>_<arch>.deb`` built with ``dpkg-deb --build --root-owner-group``."""
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
    target_name = "PyPI at install time"
    if wheelhouse is not None:
        house = prefix / "wheelhouse"
        house.mkdir()
        for item in wheelhouse.files:
            shutil.copy2(item.path, house / item.path.name)
            (house / item.path.name).chmod(0o644)
        shutil.copy2(wheelhouse.lock, prefix / LOCK_NAME)
        (prefix / LOCK_NAME).chmod(0o644)
        target_name = wheelhouse.target
    for script in ("sendguard-autostart", "sendguard-stop-helpers"):
        _write(prefix / "bin" / script, template(f"linux/{script}"), 0o755)
    _write(root / policy.lstrip("/"), policy_text)
    _write(root / "usr/lib/systemd/user/sendguard.service", template("linux/sendguard.service"))
    _write(root / "etc/xdg/autostart/sendguard.desktop", _fill(template("linux/sendguard.desktop"), PREFIX=LINUX_PREFIX))
    # in the applications menu: where the desktop has no tray (vanilla GNOME), starting SendGuard again is
    # how a user gets the running helper's window back (a second `sendguard serve` asks the first to show it)
    _write(root / "usr/share/applications/sendguard.desktop", template("linux/sendguard-menu.desktop"))
    _write(root / "usr/bin/sendguard",
           wrapper_script(LINUX_PREFIX, "Debian package", "$HOME/.local/share", "run: sudo dpkg --configure -a"), 0o755)
    icon = ROOT / "addin/static/icons/icon-128.png"
    if icon.exists():
        target = root / "usr/share/icons/hicolor/128x128/apps/sendguard.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(icon, target)
        target.chmod(0o644)
    depends, arch, python_note = deb_python_depends(wheel.requires_python, wheelhouse)
    doc = root / "usr/share/doc/sendguard"
    _write(doc / "README.admin", _fill(template("linux/README.admin"), VERSION=wheel.version, POLICY=policy,
                                       PREFIX=LINUX_PREFIX, PYTHON_NOTE=python_note.replace("\n ", "")))

    debian = root / "DEBIAN"
    debian.mkdir()
    debian.chmod(0o755)
    how = ("installs the locked Python packages from the wheelhouse in the package (no network)"
           if wheelhouse is not None else "installs its Python packages with pip (PyPI or the mirror in pip.conf)")
    control = _fill(template("linux/control"), DIST=DIST, VERSION=version, ARCH=arch, MAINTAINER=maintainer,
                    INSTALLED_SIZE=str(_installed_size_kib(root)), DEPENDS=depends, RECOMMENDS=DEB_RECOMMENDS,
                    PREFIX=LINUX_PREFIX, HOW=how, POLICY=policy, PYTHON_NOTE=python_note)
    _write(debian / "control", control)
    conffiles = sorted(f"/{p.relative_to(root).as_posix()}" for p in (root / "etc").rglob("*") if p.is_file())
    _write(debian / "conffiles", "".join(f"{c}\n" for c in conffiles))
    values = {"PREFIX": LINUX_PREFIX, "WHEEL": wheel.path.name, "VERSION": wheel.version, "POLICY": policy,
              "POLICY_DIR": LINUX_POLICY_DIR, "TARGET": target_name, "CA_DIR": LINUX_CA_DIR}
    for name in ("postinst", "prerm", "postrm"):
        text = template(f"linux/{name}")
        _write(debian / name, _fill(text, **{k: v for k, v in values.items() if f"@{k}@" in text}), 0o755)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{DIST}_{version}_{arch}.deb"
    # wheels are zip files already: gzip -1 keeps a large wheelhouse quick to pack
    result = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError("dpkg-deb --build failed: " + " ".join((result.stderr or result.stdout).split()))
    return target


# --------------------------------------------------------------------------- Windows bundle
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
    _write(folder / "install.ps1", _fill(template("windows/install.ps1"), **values))
    _write(folder / "uninstall.ps1", template("windows/uninstall.ps1"))
    note = "" if policy_text is not None else " (none given: build with --policy)"
    _write(folder / "README.txt", _fill(template("windows/README.txt"), POLICY_NOTE=note, **values))
    return _zip_dir(folder, out_dir / f"{folder.name}.zip")


# --------------------------------------------------------------------------- Windows MSI
# The product's UpgradeCode: the same for every SendGuard MSI, so a newer one replaces an older one
# (an organisation shipping its own fork passes --upgrade-code to keep its packages apart).
UPGRADE_CODE = "6F1B2C3D-5E4A-4B7C-9D2E-53454E444755"
MSI_MANUFACTURER = "SendGuard"


@dataclass(frozen=True)
class Signing:
    """The admin's code-signing certificate (PKCS#12), its password read from an environment variable."""

    pkcs12: Path
    password_env: str
    timestamp_url: str | None = None

    def sign(self, path: Path, description: str = "SendGuard") -> None:
        """Authenticode-sign ``path`` in place with osslsigncode (MSI, PowerShell scripts)."""
        if shutil.which("osslsigncode") is None:
            raise BuildError("osslsigncode not found: apt-get install osslsigncode (or build unsigned)")
        if not self.pkcs12.is_file():
            raise BuildError(f"--sign-pkcs12 {self.pkcs12}: no such file")
        password = os.environ.get(self.password_env)
        if password is None:
            raise BuildError(f"--sign-password-env {self.password_env}: that environment variable is not set")
        with tempfile.TemporaryDirectory(prefix="sendguard-sign-") as tmp:
            secret = Path(tmp) / "pass"
            secret.touch(mode=0o600)
            secret.write_text(password, encoding="utf-8")
            signed = Path(tmp) / path.name
            cmd = ["osslsigncode", "sign", "-pkcs12", str(self.pkcs12), "-readpass", str(secret),
                   "-n", description, "-h", "sha256", "-in", str(path), "-out", str(signed)]
            if self.timestamp_url:
                cmd[2:2] = ["-ts", self.timestamp_url]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise BuildError(f"osslsigncode could not sign {path.name}: "
                                 + " ".join((result.stderr or result.stdout).split())[-300:])
            shutil.move(str(signed), str(path))


def msi_version(version: str) -> str:
    """The MSI ProductVersion (major.minor.build, numbers only) of a PEP 440 version."""
    numbers = re.match(r"(?:\d+!)?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version.strip())
    if not numbers:
        raise BuildError(f"cannot turn the version {version!r} into an MSI version")
    major, minor, build = (int(n or 0) for n in numbers.groups())
    if major > 255 or minor > 255 or build > 65535:
        raise BuildError(f"version {version!r}: an MSI version is at most 255.255.65535")
    return f"{major}.{minor}.{build}"


def _wix_id(prefix: str, text: str) -> str:
    return f"{prefix}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:20]}"


def _wix_tree(stage: Path) -> tuple[str, str]:
    """<Directory>/<Component>/<File> XML for every file under ``stage`` and the ComponentRefs."""
    from xml.sax.saxutils import quoteattr

    refs: list[str] = []

    def walk(folder: Path, depth: int) -> list[str]:
        pad = "  " * depth
        lines = []
        for path in sorted(folder.iterdir()):
            rel = path.relative_to(stage).as_posix()
            if path.is_dir():
                lines.append(f"{pad}<Directory Id={quoteattr(_wix_id('d', rel))} Name={quoteattr(path.name)}>")
                lines.extend(walk(path, depth + 1))
                lines.append(f"{pad}</Directory>")
            else:
                comp = _wix_id("c", rel)
                refs.append(f'      <ComponentRef Id="{comp}"/>')
                lines.append(f'{pad}<Component Id="{comp}" Guid="*" Win64="yes">')
                lines.append(f"{pad}  <File Id={quoteattr(_wix_id('f', rel))} Name={quoteattr(path.name)} "
                             f"Source={quoteattr(path.relative_to(stage.parent).as_posix())} KeyPath=\"yes\"/>")
                lines.append(f"{pad}</Component>")
        return lines

    return "\n".join(walk(stage, 5)), "\n".join(refs)


def loopback_container(manifests: Path) -> str:
    """The AppContainer to exempt from loopback isolation: the one named by the loopback script that
    ``sendguard addin manifest`` wrote for these manifests (install.ps1 runs that script; the MSI runs
    CheckNetIsolation itself, so both exempt the same container)."""
    script = manifests / "sendguard-loopback-exempt.ps1"
    if not script.is_file():
        raise BuildError(f"{script.name} is missing from the manifests: the MSI would not let classic Outlook "
                         "reach the helper (build the manifests for https://localhost)")
    found = re.search(r'^\$Container = "(1_[A-Za-z0-9_.-]+)"\r?$', script.read_text(encoding="ascii"), re.MULTILINE)
    if found is None:
        raise BuildError(f"{script.name}: no $Container line with an AppContainer name")
    return found.group(1)


def build_msi(wheel: Wheel, policy_text: str | None, config_text: str | None, manifests: Path,
              wheelhouse: Wheelhouse | None, out_dir: Path, work: Path, signing: Signing | None = None,
              upgrade_code: str = UPGRADE_CODE) -> Path:
    """``SendGuard-<version>-x64.msi``: per-machine, from packaging/windows/SendGuard.wxs with wixl."""
    if shutil.which("wixl") is None:
        raise BuildError("wixl not found: apt-get install wixl (msitools), or build with --platform linux/macos")
    if not re.fullmatch(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}", upgrade_code):
        raise BuildError(f"--upgrade-code {upgrade_code!r}: expected a GUID like {UPGRADE_CODE}")
    if wheelhouse is not None and not wheelhouse.target.startswith("win"):
        raise BuildError(f"--windows-wheelhouse {wheelhouse.directory}: its lock is for {wheelhouse.target}, "
                         "not Windows; make one with `build_installer.py wheelhouse --target windows`")
    stage = work / "msi"
    stage.mkdir()
    shutil.copy2(wheel.path, stage / wheel.path.name)
    if wheelhouse is not None:
        (stage / "wheelhouse").mkdir()
        for item in wheelhouse.files:
            shutil.copy2(item.path, stage / "wheelhouse" / item.path.name)
        shutil.copy2(wheelhouse.lock, stage / LOCK_NAME)
    else:
        _write(stage / "requirements.txt", _requirements_text(wheel))
    if policy_text is not None:
        _write(stage / "policy-default.toml", policy_text)
    if config_text:
        _write(stage / "config.toml", config_text)
    shutil.copytree(manifests, stage / "manifest")
    shutil.copytree(PACKAGING / "windows" / "admx", stage / "policy-templates")
    _write(stage / "setup-machine.ps1", template("windows/setup-machine.ps1"))
    _write(stage / "sendguard_start.py", template("windows/sendguard_start.py"))
    if signing is not None:
        signing.sign(stage / "setup-machine.ps1")
    directories, refs = _wix_tree(stage)
    source = _fill(template("windows/SendGuard.wxs"), MSI_VERSION=msi_version(wheel.version), VERSION=wheel.version,
                   UPGRADE_CODE=upgrade_code.upper(), MANUFACTURER=MSI_MANUFACTURER, DIRECTORIES=directories,
                   COMPONENT_REFS=refs, LOOPBACK_CONTAINER=loopback_container(stage / "manifest"))
    if signing is None:  # an unsigned script cannot run under AllSigned; the admin chose not to sign
        source = source.replace("-ExecutionPolicy AllSigned", "-ExecutionPolicy Bypass")
    wxs = work / "SendGuard.wxs"
    wxs.write_text(source, encoding="utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"SendGuard-{wheel.version}-x64.msi"
    # wixl takes File/@Source relative to the directory it runs in
    result = subprocess.run(["wixl", "--arch", "x64", "-o", str(target.resolve()), wxs.name], capture_output=True,
                            text=True, cwd=str(work))
    if result.returncode != 0 or not target.exists():
        detail = [ln for ln in (result.stderr or result.stdout).splitlines() if "GLib-GObject-WARNING" not in ln]
        raise BuildError("wixl failed: " + " | ".join(detail[-4:]))
    if signing is not None:
        signing.sign(target, "SendGuard")
    return target


# --------------------------------------------------------------------------- macOS bundle
MAC_PKG_IDENTIFIER = "org.sendguard.pkg"


def mobileconfig(policy_text: str, org: str = "SendGuard") -> bytes:
    """A configuration profile (managed preferences of org.sendguard.SendGuard) with the policy's tables.

    MDM (Jamf, Intune for macOS...) installs it; macOS puts the values in /Library/Managed Preferences,
    where SendGuard reads them as locked (sendguard.managed). ``locked`` is dropped: a profile locks
    every key it sets.
    """
    import plistlib
    import tomllib
    import uuid

    from sendguard import managed

    tables = {k: v for k, v in tomllib.loads(policy_text).items() if k != "locked"}
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "https://sendguard.invalid/mobileconfig/" + policy_text)
    payload = {"PayloadType": managed.MAC_DOMAIN, "PayloadVersion": 1,
               "PayloadIdentifier": f"{managed.MAC_DOMAIN}.policy",
               "PayloadUUID": str(uuid.uuid5(namespace, "payload")).upper(),
               "PayloadDisplayName": "SendGuard policy", **tables}
    profile = {"PayloadContent": [payload], "PayloadDisplayName": "SendGuard policy",
               "PayloadDescription": "Settings SendGuard enforces on this Mac (users cannot change them).",
               "PayloadIdentifier": f"{managed.MAC_DOMAIN}.profile", "PayloadOrganization": org,
               "PayloadScope": "System", "PayloadType": "Configuration", "PayloadVersion": 1,
               "PayloadUUID": str(uuid.uuid5(namespace, "profile")).upper(), "PayloadRemovalDisallowed": True}
    return plistlib.dumps(profile, sort_keys=True)


def build_macos(wheel: Wheel, policy_text: str | None, config_text: str | None, manifests: Path,
                out_dir: Path, work: Path) -> Path:
    folder = work / f"{DIST}-{wheel.version}-macos"
    _common_bundle(folder, wheel, policy_text, config_text, manifests)
    # install.sh fills in %%APP%% (--prefix stages the install under another folder).
    wrapper = wrapper_script("%%APP%%", "macOS installer", "$HOME/Library/Application Support",
                             "run the installer again: sudo ./install.sh")
    values = {"VERSION": wheel.version, "WHEEL": wheel.path.name, "PREFIX": MACOS_PREFIX,
              "POLICY_DIR": MACOS_POLICY_DIR, "LABEL": LAUNCHD_LABEL}
    install_sh = _fill(template("macos/install.sh"), WRAPPER=wrapper, **values)
    uninstall_sh = _fill(template("macos/uninstall.sh"), PREFIX=MACOS_PREFIX, LABEL=LAUNCHD_LABEL,
                         POLICY_DIR=MACOS_POLICY_DIR)
    _write(folder / "install.sh", install_sh, 0o755)
    _write(folder / "uninstall.sh", uninstall_sh, 0o755)
    if policy_text is not None:
        (folder / "SendGuard-policy.mobileconfig").write_bytes(mobileconfig(policy_text))
    # the .pkg layout: payload root/, scripts/, distribution.xml and build-pkg.sh (run on a Mac)
    pkg = folder / "pkg"
    share = pkg / "root" / MACOS_PREFIX.lstrip("/") / "share"
    share.mkdir(parents=True)
    shutil.copy2(wheel.path, share / wheel.path.name)
    _write(share / "requirements.txt", _requirements_text(wheel))
    if config_text:
        _write(share / "config.toml", config_text)
    _write(share / "install.sh", install_sh, 0o755)
    _write(share / "uninstall.sh", uninstall_sh, 0o755)
    _write(pkg / "root" / MACOS_POLICY_DIR.lstrip("/") / "policy.toml", policy_text or policy_template())
    pkg_values = {"PREFIX": MACOS_PREFIX, "VERSION": wheel.version, "IDENTIFIER": MAC_PKG_IDENTIFIER,
                  "POLICY_DIR": MACOS_POLICY_DIR}
    _write(pkg / "scripts" / "postinstall", _fill(template("macos/pkg/postinstall"), PREFIX=MACOS_PREFIX), 0o755)
    _write(pkg / "distribution.xml", _fill(template("macos/pkg/distribution.xml"), VERSION=wheel.version,
                                           IDENTIFIER=MAC_PKG_IDENTIFIER))
    _write(pkg / "build-pkg.sh", _fill(template("macos/pkg/build-pkg.sh"), **pkg_values), 0o755)
    note = "" if policy_text is not None else " (none given: build with --policy)"
    _write(folder / "README.txt", _fill(template("macos/README.txt"), POLICY_NOTE=note, **values))
    return _zip_dir(folder, out_dir / f"{folder.name}.zip")


# --------------------------------------------------------------------------- main
def build(out: Path, platforms: tuple[str, ...], policy_path: Path | None, server_url: str | None,
          wheel_path: Path | None = None, send_mode: str = "SoftBlock", maintainer: str = DEFAULT_MAINTAINER,
          wheelhouse: Path | None = None, windows_wheelhouse: Path | None = None,
          signing: Signing | None = None, upgrade_code: str = UPGRADE_CODE, msi: bool = True) -> list[Path]:
    """Build everything into a temporary directory, then move the results into ``out``.

    ``wheelhouse`` (Linux) and ``windows_wheelhouse`` each hold a ``requirements.lock`` that every file
    must match (``build_installer.py wheelhouse`` makes them): the .deb and the MSI then carry them and
    install offline.
    """
    policy_text = check_policy(policy_path)
    config_text = server_config(server_url)
    house = Wheelhouse.open(wheelhouse) if wheelhouse is not None else None
    win_house = Wheelhouse.open(windows_wheelhouse) if windows_wheelhouse is not None else None
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
            build_deb(wheel, policy_text, config_text, staged, work, maintainer, house)
        if "windows" in platforms:
            build_windows(wheel, bundle_policy, config_text, manifests, staged, work)
            if msi:
                build_msi(wheel, bundle_policy, config_text, manifests, win_house, staged, work, signing, upgrade_code)
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


def wheelhouse_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="build_installer.py wheelhouse",
        description="Fetch every Python package SendGuard needs for one platform into DIR and pin them in "
                    "DIR/requirements.lock (sha256 of each file); pass DIR to --wheelhouse/--windows-wheelhouse.")
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the wheelhouse directory to fill")
    parser.add_argument("--wheel", type=Path, help="take the requirements from this sendguard wheel "
                                                    "(default: build it from the checkout)")
    parser.add_argument("--extras", default=",".join(DESKTOP_EXTRAS),
                        help="extras to include (default: desktop, the confirmation window); '' for headless")
    parser.add_argument("--pure-wheels", type=Path,
                        help="(windows) a Linux wheelhouse whose pure-Python wheels fill in for sdist-only packages")
    args = parser.parse_args(argv)
    extras = tuple(e for e in args.extras.split(",") if e)
    try:
        with tempfile.TemporaryDirectory(prefix="sendguard-wheel-") as tmp:
            wheel = Wheel.read(args.wheel if args.wheel else build_wheel(ROOT, Path(tmp)))
            house = make_wheelhouse(runtime_requirements(wheel.requires, extras), args.target, args.out,
                                    title=f"SendGuard {wheel.version} ({', '.join(extras) or 'headless'})",
                                    pure_wheels=args.pure_wheels)
            check_offline_install(house)
    except BuildError as exc:
        print(f"build_installer: error: {exc}", file=sys.stderr)
        return 2
    print(house.lock)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wheelhouse"]:
        return wheelhouse_main(argv[1:])
    parser = argparse.ArgumentParser(prog="build_installer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory (default: dist)")
    parser.add_argument("--platform", choices=(*PLATFORMS, "all"), default="all")
    parser.add_argument("--policy", type=Path, help="the machine-wide admin policy.toml to deploy")
    parser.add_argument("--server-url", help="central server URL written to each user's config.toml")
    parser.add_argument("--wheel", type=Path, help="use this sendguard wheel instead of building one")
    parser.add_argument("--wheelhouse", type=Path,
                        help="(.deb) a Linux wheelhouse with its requirements.lock: postinst installs offline")
    parser.add_argument("--windows-wheelhouse", type=Path,
                        help="(MSI) a Windows wheelhouse with its requirements.lock: the MSI installs offline")
    parser.add_argument("--send-mode", choices=("SoftBlock", "Block"), default="SoftBlock",
                        help="Outlook add-in SendMode in the bundled manifests")
    parser.add_argument("--maintainer", default=DEFAULT_MAINTAINER, help="Maintainer field of the .deb")
    parser.add_argument("--no-msi", action="store_true", help="(windows) only the PowerShell bundle, no MSI")
    parser.add_argument("--upgrade-code", default=UPGRADE_CODE, help="MSI UpgradeCode (a fork's own GUID)")
    parser.add_argument("--sign-pkcs12", type=Path, help="code-signing certificate (.pfx) for the MSI and scripts")
    parser.add_argument("--sign-password-env", default="SENDGUARD_SIGN_PASSWORD",
                        help="environment variable holding the certificate's password")
    parser.add_argument("--sign-timestamp", help="RFC 3161 timestamp server URL")
    args = parser.parse_args(argv)
    platforms = PLATFORMS if args.platform == "all" else (args.platform,)
    signing = (Signing(args.sign_pkcs12, args.sign_password_env, args.sign_timestamp)
               if args.sign_pkcs12 else None)
    try:
        results = build(args.out, platforms, args.policy, args.server_url, args.wheel, args.send_mode,
                        args.maintainer, args.wheelhouse, args.windows_wheelhouse, signing, args.upgrade_code,
                        msi=not args.no_msi)
    except BuildError as exc:
        print(f"build_installer: error: {exc}", file=sys.stderr)
        return 2
    for path in results:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
