"""The lock file and the wheelhouse it pins (issue #15.1), on stand-in wheels: no network needed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from test_installer import make_wheel

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import build_installer as bi  # noqa: E402


def house(tmp_path: Path) -> Path:
    d = tmp_path / "wh"
    make_wheel(d, "app-core", "2.0", {"app_core.py": ""},
               requires=('win-helper>=1; sys_platform == "win32"', 'linux-helper; sys_platform == "linux"',
                         'extra-thing; extra == "gui"', "shared"), extras=("gui",))
    for name in ("win-helper", "linux-helper", "shared", "extra-thing"):
        make_wheel(d, name, "1.0", {f"{name.replace('-', '_')}.py": ""})
    return d


def test_lock_round_trip_and_offline_resolution(tmp_path: Path) -> None:
    d = house(tmp_path)
    lock = bi.write_lock(d, "linux_x86_64-cp311", "test")
    pins, target = bi.read_lock(lock)
    assert target == "linux_x86_64-cp311"
    assert set(pins) == {"app-core", "win-helper", "linux-helper", "shared", "extra-thing"}
    assert pins["app-core"][0] == "2.0" and all(len(h) == 64 for h in pins["shared"][1])
    opened = bi.Wheelhouse.open(d)
    assert {f.name for f in opened.files} == set(pins)
    bi.check_offline_install(opened)  # pip resolves it from the folder alone, hashes required


def test_a_changed_or_missing_file_is_refused(tmp_path: Path) -> None:
    d = house(tmp_path)
    bi.write_lock(d, "any", "test")
    (d / "shared-1.0-py3-none-any.whl").unlink()
    make_wheel(d, "shared", "1.0", {"shared.py": "changed = True\n"})
    with pytest.raises(bi.BuildError, match=r"shared==1.0: no file .* has the locked sha256"):
        bi.Wheelhouse.open(d)
    (d / "shared-1.0-py3-none-any.whl").unlink()
    with pytest.raises(bi.BuildError, match="shared==1.0"):
        bi.Wheelhouse.open(d)


def test_two_versions_of_one_package_are_refused(tmp_path: Path) -> None:
    d = house(tmp_path)
    make_wheel(d, "shared", "1.1", {"shared.py": ""})
    with pytest.raises(bi.BuildError, match="two versions of shared"):
        bi.write_lock(d, "any", "test")


def test_bad_lock_lines_are_named(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("shared>=1.0\n", encoding="utf-8")
    with pytest.raises(bi.BuildError, match="expected `name==version --hash=sha256"):
        bi.read_lock(lock)
    with pytest.raises(bi.BuildError, match="no lock file"):
        bi.Wheelhouse.open(house(tmp_path / "x"))


def test_windows_closure_follows_windows_markers_and_drops_the_rest(tmp_path: Path) -> None:
    """pip evaluates markers for the machine it runs on; the Windows set is completed and pruned here."""
    d = house(tmp_path)
    (d / "win_helper-1.0-py3-none-any.whl").rename(tmp_path / "win_helper-1.0-py3-none-any.whl")
    assert bi._missing(d, bi.WINDOWS_MARKERS) == ["win-helper>=1"]
    assert bi._missing(d, None) == []  # on Linux nothing is missing: the Linux helper is there
    shutil.move(str(tmp_path / "win_helper-1.0-py3-none-any.whl"), d)
    removed = bi._prune(d, ["app-core[gui]"], bi.WINDOWS_MARKERS)
    assert removed == ["linux-helper"]
    assert sorted(p.name.split("-")[0] for p in d.glob("*.whl")) == ["app_core", "extra_thing", "shared",
                                                                     "win_helper"]


def test_debian_python_and_architecture_come_from_the_wheels(tmp_path: Path) -> None:
    d = tmp_path / "wh"
    make_wheel(d, "pure", "1.0", {"pure.py": ""})
    bi.write_lock(d, "any", "t")
    assert bi.deb_python_depends(">=3.11", bi.Wheelhouse.open(d))[:2] == ("python3 (>= 3.11)", "all")
    make_wheel(d, "fast", "1.0", {"fast.py": ""}).rename(d / "fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl")
    bi.write_lock(d, "linux_x86_64-cp311", "t")
    depends, arch, note = bi.deb_python_depends(">=3.11", bi.Wheelhouse.open(d))
    assert depends == "python3 (>= 3.11), python3 (<< 3.12)" and arch == "amd64"
    assert "Not Ubuntu 22.04" in note
    make_wheel(d, "win", "1.0", {"win.py": ""}).rename(d / "win-1.0-cp311-cp311-win_amd64.whl")
    bi.write_lock(d, "x", "t")
    with pytest.raises(bi.BuildError, match="not a Linux wheel"):
        bi.deb_python_depends(">=3.11", bi.Wheelhouse.open(d))
