<#
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
