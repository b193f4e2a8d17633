<#
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
# classic Outlook reaches the helper on loopback only with this exemption (elevated, once per PC)
if (-not $UserOnly -and (Test-Path "$PSScriptRoot\manifest\sendguard-loopback-exempt.ps1")) { & "$PSScriptRoot\manifest\sendguard-loopback-exempt.ps1" }
if (-not $MachineOnly) { Install-ForUser }
