"""The per-machine MSI (issue #15.2): built with wixl, read back with msiinfo, signed with osslsigncode."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_installer import ADMIN_POLICY, SERVER_URL, VERSION, fake_sendguard_wheel, wheelhouse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import build_installer as bi  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("wixl") is None or shutil.which("msiinfo") is None,
                                reason="needs wixl and msiinfo (apt-get install wixl msitools)")


def msiinfo(*args: str) -> str:
    return subprocess.run(["msiinfo", *args], capture_output=True, text=True, check=True).stdout


def table(msi: Path, name: str) -> list[dict[str, str]]:
    lines = msiinfo("export", str(msi), name).splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[3:]]


@pytest.fixture(scope="module")
def msi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("msi")
    old = tempfile.tempdir
    tempfile.tempdir = str(base)
    try:
        policy = base / "policy.toml"
        policy.write_text(ADMIN_POLICY, encoding="utf-8")
        wheel = fake_sendguard_wheel(base / "in")
        house = wheelhouse(base / "wh-win", "win_amd64-cp311")
        results = bi.build(base / "dist", ("windows",), policy, SERVER_URL, wheel_path=wheel,
                           windows_wheelhouse=house)
    finally:
        tempfile.tempdir = old
    (built,) = [p for p in results if p.suffix == ".msi"]
    return {"base": base, "msi": built, "wheel": wheel, "house": house, "policy": policy}


def test_msi_is_per_machine_with_upgrade_code_and_silent_properties(msi: dict[str, Path]) -> None:
    path = msi["msi"]
    assert path.name == f"SendGuard-{VERSION}-x64.msi"
    tables = set(msiinfo("tables", str(path)).split())
    assert {"Property", "File", "Component", "Registry", "CustomAction", "InstallExecuteSequence", "Upgrade",
            "Directory", "Media"} <= tables
    props = {r["Property"]: r["Value"] for r in table(path, "Property")}
    assert props["ALLUSERS"] == "1"  # perMachine
    assert props["UpgradeCode"] == "{" + bi.UPGRADE_CODE + "}"
    assert props["ProductVersion"] == "0.1.0" and props["ProductName"] == "SendGuard"
    assert props["ADDINTRUST"] == "1"
    for name in ("SERVERURL", "POLICYFILE", "PYTHON"):
        assert name in props  # settable on the msiexec command line
    assert "Template: x64;1033" in msiinfo("suminfo", str(path))
    upgrade = table(path, "Upgrade")
    assert any(r["ActionProperty"] == "WIX_UPGRADE_DETECTED" for r in upgrade)  # older versions replaced
    assert any(r["ActionProperty"] == "WIX_DOWNGRADE_DETECTED" for r in upgrade)


def test_msi_installs_under_program_files_with_the_locked_wheelhouse(msi: dict[str, Path]) -> None:
    path = msi["msi"]
    dirs = {r["Directory"]: r for r in table(path, "Directory")}
    assert dirs["INSTALLDIR"]["Directory_Parent"] == "ProgramFiles64Folder"
    assert dirs["INSTALLDIR"]["DefaultDir"].endswith("SendGuard")
    files = {r["FileName"].split("|")[-1] for r in table(path, "File")}
    assert {f"sendguard-{VERSION}-py3-none-any.whl", "requirements.lock", "setup-machine.ps1",
            "sendguard_start.py", "policy-default.toml", "config.toml", "outlook.xml", "SendGuard.admx",
            "SendGuard.adml", "sendguard_testdep-1.0-py3-none-any.whl"} <= files
    components = table(path, "Component")
    assert all(int(c["Attributes"]) & 256 for c in components)  # 64-bit components


def test_msi_autostart_for_every_user_and_detection_keys(msi: dict[str, Path]) -> None:
    rows = table(msi["msi"], "Registry")
    run = [r for r in rows if r["Key"] == r"Software\Microsoft\Windows\CurrentVersion\Run"]
    assert len(run) == 1 and run[0]["Root"] == "2"  # HKLM: every user's logon
    assert run[0]["Name"] == "SendGuard" and "pythonw.exe" in run[0]["Value"] and "sendguard_start.py" in run[0]["Value"]
    mine = {r["Name"]: r["Value"] for r in rows if r["Key"] == r"Software\SendGuard" and r["Root"] == "2"}
    assert mine["Version"] == VERSION and mine["ServerUrl"] == "[SERVERURL]" and mine["AddinTrust"] == "[ADDINTRUST]"


def test_msi_custom_actions_set_up_and_clean_up_as_system(msi: dict[str, Path]) -> None:
    actions = {r["Action"]: r for r in table(msi["msi"], "CustomAction")}
    setup, cleanup = actions["MachineSetup"], actions["MachineCleanup"]
    for action in (setup, cleanup):
        kind = int(action["Type"])
        assert kind & 0x3F == 50 and kind & 0x400 and kind & 0x800  # exe from property, deferred, as SYSTEM
        assert action["Source"] == "POWERSHELL" and "setup-machine.ps1" in action["Target"]
    assert "-ServerUrl \"[SERVERURL]\"" in setup["Target"] and "-PolicyFile \"[POLICYFILE]\"" in setup["Target"]
    assert "-AddinTrust \"[ADDINTRUST]\"" in setup["Target"] and "-Action Install" in setup["Target"]
    assert "-Action Uninstall" in cleanup["Target"]
    assert "-ExecutionPolicy Bypass" in setup["Target"]  # unsigned build; a signed one asks for AllSigned
    sequence = {r["Action"]: r for r in table(msi["msi"], "InstallExecuteSequence")}
    seq = {name: int(row["Sequence"]) for name, row in sequence.items()}
    assert seq["InstallFiles"] < seq["MachineSetup"] < seq["InstallFinalize"]
    assert seq["InstallInitialize"] < seq["MachineCleanup"] < seq["RemoveFiles"]
    assert sequence["MachineSetup"]["Condition"] == 'NOT REMOVE="ALL"'
    # an upgrade's removal of the old version must not delete the venv the new one just updated
    assert sequence["MachineCleanup"]["Condition"] == 'REMOVE="ALL" AND NOT UPGRADINGPRODUCTCODE'


def test_msi_exempts_classic_outlook_from_loopback_isolation_without_powershell(msi: dict[str, Path]) -> None:
    """Issue #19.9: the MSI does what install.ps1 does for classic Outlook, with CheckNetIsolation run as
    SYSTEM (an executable: no execution policy, signed or not), for the add-in container of the manifests
    it carries, and removes it on uninstall."""
    from addin.manifests import AddinSettings, loopback_container

    container = loopback_container(AddinSettings())  # the manifests the build makes: localhost:8765, default id
    assert container.startswith("1_https___localhost_8765")
    actions = {r["Action"]: r for r in table(msi["msi"], "CustomAction")}
    setter = actions["SetCheckNetIsolation"]
    assert int(setter["Type"]) & 0x3F == 51 and setter["Source"] == "CHECKNETISOLATION"
    assert setter["Target"] == r"[System64Folder]CheckNetIsolation.exe"
    add, remove = actions["LoopbackExempt"], actions["LoopbackExemptRemove"]
    for action in (add, remove):
        kind = int(action["Type"])
        assert kind & 0x3F == 50 and kind & 0x400 and kind & 0x800, kind  # exe from property, deferred, SYSTEM
        assert action["Source"] == "CHECKNETISOLATION"
    assert add["Target"] == f"LoopbackExempt -a -n={container}"
    assert not int(add["Type"]) & 0x40  # a failed exemption fails the install (classic Outlook could not check)
    assert remove["Target"] == f"LoopbackExempt -d -n={container}"
    assert int(remove["Type"]) & 0x40  # uninstall goes on if it was already gone
    sequence = {r["Action"]: r for r in table(msi["msi"], "InstallExecuteSequence")}
    seq = {name: int(row["Sequence"]) for name, row in sequence.items()}
    assert seq["SetCheckNetIsolation"] < seq["InstallInitialize"] < seq["LoopbackExempt"] < seq["InstallFinalize"]
    assert seq["InstallInitialize"] < seq["LoopbackExemptRemove"] < seq["InstallFinalize"]
    assert sequence["LoopbackExempt"]["Condition"] == 'NOT REMOVE="ALL"'
    assert sequence["LoopbackExemptRemove"]["Condition"] == 'REMOVE="ALL" AND NOT UPGRADINGPRODUCTCODE'
    # the same container as the script the package carries (install.ps1 runs that one)
    extracted = msi["base"] / "extracted"
    if not extracted.exists():
        subprocess.run(["msiextract", "-C", str(extracted), str(msi["msi"])], check=True, capture_output=True)
    (script,) = extracted.rglob("sendguard-loopback-exempt.ps1")
    assert f'$Container = "{container}"' in script.read_text(encoding="ascii")


def test_msi_build_refuses_manifests_without_the_loopback_step(tmp_path: Path) -> None:
    (tmp_path / "outlook.xml").write_text("<x/>", encoding="utf-8")
    with pytest.raises(bi.BuildError, match="sendguard-loopback-exempt.ps1 is missing"):
        bi.loopback_container(tmp_path)


def test_msi_build_refuses_a_linux_wheelhouse(msi: dict[str, Path], tmp_path: Path) -> None:
    linux = wheelhouse(tmp_path / "wh", "linux_x86_64-cp311")
    with pytest.raises(bi.BuildError, match="not Windows"):
        bi.build(tmp_path / "dist", ("windows",), None, None, wheel_path=msi["wheel"], windows_wheelhouse=linux)
    assert not (tmp_path / "dist").exists()


@pytest.mark.skipif(shutil.which("osslsigncode") is None or shutil.which("openssl") is None,
                    reason="needs osslsigncode and openssl")
def test_signed_msi_and_script_verify_with_the_admins_certificate(msi: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert, pfx = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "signer.pfx"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=Example Corp Code Signing", "-addext", "extendedKeyUsage=codeSigning"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkcs12", "-export", "-inkey", str(key), "-in", str(cert), "-out", str(pfx),
                    "-passout", "pass:throwaway"], check=True, capture_output=True)
    monkeypatch.setenv("TEST_SIGN_PASSWORD", "throwaway")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "dist"
    code = bi.main(["--out", str(out), "--platform", "windows", "--wheel", str(msi["wheel"]),
                    "--windows-wheelhouse", str(msi["house"]), "--sign-pkcs12", str(pfx),
                    "--sign-password-env", "TEST_SIGN_PASSWORD"])
    assert code == 0
    signed = out / f"SendGuard-{VERSION}-x64.msi"
    verify = subprocess.run(["osslsigncode", "verify", "-CAfile", str(cert), "-in", str(signed)],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and "Succeeded" in verify.stdout, verify.stdout + verify.stderr
    assert "Example Corp Code Signing" in verify.stdout
    # the script inside is signed too, so the custom action can run under AllSigned
    setup = table(signed, "CustomAction")
    assert any("-ExecutionPolicy AllSigned" in r["Target"] for r in setup)
    extracted = tmp_path / "x"
    subprocess.run(["msiextract", "-C", str(extracted), str(signed)], check=True, capture_output=True)
    (script,) = extracted.rglob("setup-machine.ps1")
    assert "# SIG # Begin signature block" in script.read_text(encoding="utf-8", errors="replace")
    check = subprocess.run(["osslsigncode", "verify", "-CAfile", str(cert), "-in", str(script)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    monkeypatch.delenv("TEST_SIGN_PASSWORD")
    assert bi.main(["--out", str(tmp_path / "d2"), "--platform", "windows", "--wheel", str(msi["wheel"]),
                    "--sign-pkcs12", str(pfx), "--sign-password-env", "TEST_SIGN_PASSWORD"]) == 2
    assert not (tmp_path / "d2").exists()


def test_msi_version_mapping() -> None:
    assert bi.msi_version("1.2.3") == "1.2.3"
    assert bi.msi_version("0.1") == "0.1.0"
    assert bi.msi_version("2.0.1rc1") == "2.0.1"
    with pytest.raises(bi.BuildError):
        bi.msi_version("300.0.0")
