<#
.SYNOPSIS
  SendGuard machine setup, run by the MSI as SYSTEM (deferred custom action); not for users.

.DESCRIPTION
  -Action Install: makes (or updates) the venv <InstallDir>\venv with the Python packages of the
  wheelhouse in the package, offline and hash-checked (pip --no-index --require-hashes); writes the
  marker venv\sendguard-install.toml that pins the machine-wide policy for every user; installs the
  policy (-PolicyFile, or the one built into the package) to %ProgramData%\SendGuard\policy.toml,
  writable only by Administrators and SYSTEM; writes the central server address; creates the
  per-machine add-in CA and trusts it machine-wide (-AddinTrust 1).
  -Action Uninstall: stops every running helper of this install, removes the venv and the CA.
  Users' data (%LOCALAPPDATA%\SendGuard: outbox, audit log) stays.
#>
[CmdletBinding()]
param(
    [ValidateSet("Install", "Uninstall")][string]$Action = "Install",
    [Parameter(Mandatory = $true)][string]$InstallDir,
    [string]$ServerUrl = "",
    [string]$PolicyFile = "",
    [string]$AddinTrust = "1",
    [string]$Python = ""
)
$ErrorActionPreference = "Stop"
Set-StrictMode -Version 3.0

$InstallDir = $InstallDir.TrimEnd("\")
$Venv = Join-Path $InstallDir "venv"
$VenvPython = Join-Path $Venv "Scripts\python.exe"
$ProgramDataDir = [Environment]::GetFolderPath("CommonApplicationData")
$MachineDir = Join-Path $ProgramDataDir "SendGuard"
$MachinePolicy = Join-Path $MachineDir "policy.toml"
$CaDir = Join-Path $MachineDir "ca"
$Log = Join-Path $MachineDir "setup.log"

function Write-Log([string]$Text) {
    New-Item -ItemType Directory -Force -Path $MachineDir | Out-Null
    Add-Content -Path $Log -Value ("{0:u} {1}" -f (Get-Date), $Text)
    Write-Host $Text
}

function Set-MachineFolderAcl {
    # %ProgramData% lets users create files: make SendGuard's folder admin-written, user-readable
    New-Item -ItemType Directory -Force -Path $MachineDir | Out-Null
    & icacls.exe $MachineDir /inheritance:r /grant:r "*S-1-5-32-544:(OI)(CI)F" "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-545:(OI)(CI)RX" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls could not set the permissions of $MachineDir" }
}

function Find-Python {
    $check = "import sys; print(sys.version_info[:2] == (3, 11) and sys.maxsize > 2**32)"
    $candidates = @()
    if ($Python.Trim()) { $candidates += $Python.Trim() }
    foreach ($root in @("HKLM:\SOFTWARE\Python\PythonCore\3.11\InstallPath")) {
        $path = (Get-ItemProperty -Path $root -ErrorAction SilentlyContinue)
        if ($path) { $candidates += (Join-Path $path."(default)" "python.exe") }
    }
    $candidates += (Join-Path $env:ProgramFiles "Python311\python.exe")
    foreach ($exe in $candidates) {
        if (-not (Test-Path $exe)) { continue }
        try { $answer = & $exe -c $check 2>$null } catch { continue }
        if ($LASTEXITCODE -eq 0 -and "$answer".Trim() -eq "True") { return $exe }
    }
    throw "Python 3.11 (64-bit, installed for all users) was not found: deploy it first (python.org installer: /quiet InstallAllUsers=1), or pass PYTHON=C:\Path\python.exe to msiexec."
}

function Stop-Helpers {
    Get-CimInstance Win32_Process -Filter "Name = 'python.exe' OR Name = 'pythonw.exe'" |
        Where-Object { ("" + $_.ExecutablePath).StartsWith($Venv, "OrdinalIgnoreCase") -or
                       ("" + $_.CommandLine).Contains($Venv) } |
        ForEach-Object { Stop-Process -Id $_.ProcessId -Force -ErrorAction SilentlyContinue }
}

function Install-Machine {
    Set-MachineFolderAcl
    $exe = Find-Python
    Write-Log "SendGuard setup: Python $exe"
    Stop-Helpers
    if (-not (Test-Path $VenvPython)) {
        & $exe -m venv $Venv
        if ($LASTEXITCODE -ne 0) { throw "could not create the venv $Venv" }
    }
    $env:PIP_CONFIG_FILE = "NUL"  # the machine's pip.ini plays no part in an offline, hashed install
    $lock = Join-Path $InstallDir "requirements.lock"
    $pip = @("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-index")
    if (Test-Path $lock) {
        & $VenvPython @pip --find-links (Join-Path $InstallDir "wheelhouse") --require-hashes --requirement $lock
    } else {
        & $VenvPython -m pip install --disable-pip-version-check --no-input --requirement (Join-Path $InstallDir "requirements.txt")
    }
    if ($LASTEXITCODE -ne 0) { throw "pip could not install SendGuard's packages into $Venv (see $Log)" }
    $wheel = Get-ChildItem -Path $InstallDir -Filter "sendguard-*.whl" | Select-Object -First 1
    & $VenvPython @pip --no-deps --force-reinstall $wheel.FullName
    if ($LASTEXITCODE -ne 0) { throw "pip could not install $($wheel.Name)" }

    # TOML literal strings: backslashes stay as they are
    Set-Content -Encoding UTF8 -Path (Join-Path $Venv "sendguard-install.toml") -Value @(
        "# Written by the SendGuard MSI. Do not edit: repair or reinstall instead.",
        "admin_policy = '$MachinePolicy'",
        "ca_dir = '$CaDir'")

    if ($PolicyFile.Trim()) {
        Copy-Item -Force $PolicyFile.Trim() $MachinePolicy
        Write-Log "Machine policy copied from $PolicyFile"
    } elseif (Test-Path (Join-Path $InstallDir "policy-default.toml")) {
        Copy-Item -Force (Join-Path $InstallDir "policy-default.toml") $MachinePolicy
    }
    $config = Join-Path $MachineDir "config.toml"
    if ($ServerUrl.Trim()) {
        Set-Content -Encoding UTF8 -Path $config -Value @("[server]", "url = `"$($ServerUrl.Trim())`"")
    } elseif (Test-Path (Join-Path $InstallDir "config.toml")) {
        Copy-Item -Force (Join-Path $InstallDir "config.toml") $config
    }

    & $VenvPython -P -m sendguard addin certs machine --dir $CaDir
    if ($LASTEXITCODE -ne 0) { throw "could not create the per-machine add-in CA in $CaDir" }
    if ($AddinTrust.Trim() -eq "1") {
        & certutil.exe -f -addstore Root (Join-Path $CaDir "ca.pem") | Out-Null
        if ($LASTEXITCODE -ne 0) { throw "certutil could not trust the SendGuard CA machine-wide" }
        Write-Log "SendGuard CA trusted machine-wide (LocalMachine\Root)"
    }
    Write-Log "SendGuard setup done in $Venv"
}

function Uninstall-Machine {
    Stop-Helpers
    & certutil.exe -delstore Root "SendGuard Machine CA" | Out-Null
    if (Test-Path $Venv) { Remove-Item -Recurse -Force $Venv }
    if (Test-Path $CaDir) { Remove-Item -Recurse -Force $CaDir }
    Write-Log "SendGuard removed from $InstallDir (users' data kept)"
}

try {
    if ($Action -eq "Install") { Install-Machine } else { Uninstall-Machine }
} catch {
    Write-Log "SendGuard setup failed: $_"
    exit 1
}
