"""The Outlook add-in's manifests, built from one description.

Two manifest formats describe the same add-in:

* ``outlook.xml`` - the add-in only XML manifest (``VersionOverridesV1_1``, Mailbox 1.12, a
  ``LaunchEvent`` for ``OnMessageSend``); accepted by every Outlook that has Smart Alerts, on
  Exchange Online and on-premises Exchange 2016 CU22+/2019 CU12+.
* ``manifest.json`` - the unified manifest for Microsoft 365 (``autoRunEvents`` → ``messageSending``),
  deployed as a zip package together with its two icons. Microsoft requires the unified manifest of
  an add-in that also exists as an XML manifest to have its own GUID and to hide the XML one
  (``extensions[].alternates[].hide.customOfficeAddin``): its id is derived from the XML id, so both
  stay fixed. The unified manifest is not supported on Outlook on Mac or on-premises Exchange;
  those take ``outlook.xml``.

Both come from :class:`AddinSettings` and :data:`PATHS` below, so the host, port, add-in id and
send mode are stated once. ``sendguard addin manifest --host ...`` writes them for an admin; the
copies in the repository's ``manifest/`` folder are the defaults (``localhost:8765``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape, quoteattr

STATIC_DIR = Path(__file__).resolve().parent / "static"
ICONS_DIR = STATIC_DIR / "icons"

# A fixed id: re-deploying a manifest for another host or a new version replaces the add-in
# instead of installing a second one. Admins who run two deployments side by side pass --id.
DEFAULT_ADDIN_ID = "5d1a8c3e-2b7f-4c61-9a0e-7f3b6e2d4c18"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8765
DEFAULT_VERSION = "1.0.0"
SEND_MODES = ("SoftBlock", "Block")
HANDLER_NAME = "onMessageSendHandler"
APPOINTMENT_HANDLER_NAME = "onAppointmentSendHandler"  # meeting invitations (OnAppointmentSend)
MAILBOX_MIN_VERSION = "1.12"
UNIFIED_MANIFEST_VERSION = "1.17"

# Where the helper serves each file (addin/outlook.py serves exactly these paths).
PATHS = {
    "commands": "/addin/commands.html",
    "script": "/addin/launchevent.js",
    "support": "/addin/support.html",
    "icon-16": "/addin/icons/icon-16.png",
    "icon-32": "/addin/icons/icon-32.png",
    "icon-64": "/addin/icons/icon-64.png",
    "icon-80": "/addin/icons/icon-80.png",
    "icon-128": "/addin/icons/icon-128.png",
}
UNIFIED_ICONS = ("color.png", "outline.png")  # 192x192 colour, 32x32 white outline (package files)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class ManifestError(ValueError):
    """A setting that cannot go into a manifest (the message names it)."""


@dataclass(frozen=True)
class AddinSettings:
    """Everything that varies between deployments of the add-in."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    addin_id: str = DEFAULT_ADDIN_ID
    version: str = DEFAULT_VERSION
    send_mode: str = "SoftBlock"
    # Entra ID app registration for Office SSO (the add-in served by a central server signs in with it)
    sso_client_id: str | None = None
    provider: str = "SendGuard"
    display_name: str = "SendGuard"
    description: str = field(
        default="Checks recipients and attachments when you press Send and asks you to confirm "
        "in the SendGuard window before the message leaves Outlook."
    )

    def __post_init__(self) -> None:
        host = self.host.strip().lower()
        if not host or not (_HOSTNAME.match(host) or _is_ipv4(host)):
            raise ManifestError(f"--host: {self.host!r} is not a host name (give a name like "
                                "sendguard.example.com, without https:// or a path)")
        object.__setattr__(self, "host", host)
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ManifestError(f"--port: {self.port!r} is not a TCP port (1-65535)")
        try:
            object.__setattr__(self, "addin_id", str(uuid.UUID(str(self.addin_id))))
        except ValueError:
            raise ManifestError(f"--id: {self.addin_id!r} is not a GUID") from None
        if self.sso_client_id is not None:
            try:
                object.__setattr__(self, "sso_client_id", str(uuid.UUID(str(self.sso_client_id))))
            except ValueError:
                raise ManifestError(f"--sso-client-id: {self.sso_client_id!r} is not an application (client) "
                                    "id GUID") from None
        if self.send_mode not in SEND_MODES:
            raise ManifestError(f"--send-mode: {self.send_mode!r} is not one of {', '.join(SEND_MODES)}")
        if not re.fullmatch(r"\d{1,5}\.\d{1,5}\.\d{1,5}", self.version):
            raise ManifestError(f"version {self.version!r} must be three numbers, like 1.0.0")

    @property
    def origin(self) -> str:
        return f"https://{self.host}" + ("" if self.port == 443 else f":{self.port}")

    def url(self, name: str) -> str:
        return self.origin + PATHS[name]

    @property
    def sso_resource(self) -> str:
        """The Application ID URI Office SSO asks a token for: api://HOST/CLIENT_ID."""
        return f"api://{self.host}" + ("" if self.port == 443 else f":{self.port}") + f"/{self.sso_client_id}"

    @property
    def unified_id(self) -> str:
        """The unified manifest's own GUID, derived from the XML manifest's id (never equal to it)."""
        return str(uuid.uuid5(uuid.UUID(self.addin_id), "sendguard-unified-manifest"))

    @property
    def xml_version(self) -> str:
        return self.version + ".0"  # the XML manifest wants four parts

    @property
    def unified_send_mode(self) -> str:
        return self.send_mode[0].lower() + self.send_mode[1:]  # SoftBlock -> softBlock


def _is_ipv4(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


_XML = Template("""\
<?xml version="1.0" encoding="UTF-8"?>
<!-- SendGuard Outlook add-in (add-in only manifest). Generated by `sendguard addin manifest`;
     edit addin/manifests.py, not this file. -->
<OfficeApp xmlns="http://schemas.microsoft.com/office/appforoffice/1.1"
           xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
           xmlns:bt="http://schemas.microsoft.com/office/officeappbasictypes/1.0"
           xmlns:mailappor="http://schemas.microsoft.com/office/mailappversionoverrides/1.0"
           xsi:type="MailApp">
  <Id>$addin_id</Id>
  <Version>$xml_version</Version>
  <ProviderName>$provider</ProviderName>
  <DefaultLocale>en-US</DefaultLocale>
  <DisplayName DefaultValue=$display_name/>
  <Description DefaultValue=$description/>
  <IconUrl DefaultValue=$icon_64/>
  <HighResolutionIconUrl DefaultValue=$icon_128/>
  <SupportUrl DefaultValue=$support/>
  <Hosts>
    <Host Name="Mailbox"/>
  </Hosts>
  <Requirements>
    <Sets>
      <Set Name="Mailbox" MinVersion="1.1"/>
    </Sets>
  </Requirements>
  <!-- Only clients without VersionOverrides support read FormSettings; they show the support page. -->
  <FormSettings>
    <Form xsi:type="ItemRead">
      <DesktopSettings>
        <SourceLocation DefaultValue=$support/>
        <RequestedHeight>250</RequestedHeight>
      </DesktopSettings>
    </Form>
  </FormSettings>
  <!-- Read/write on the item being sent: recipients and attachments removed in the SendGuard
       window are removed from the message before Outlook sends it. -->
  <Permissions>ReadWriteItem</Permissions>
  <Rule xsi:type="RuleCollection" Mode="Or">
    <Rule xsi:type="ItemIs" ItemType="Message" FormType="Read"/>
  </Rule>
  <DisableEntityHighlighting>true</DisableEntityHighlighting>
  <VersionOverrides xmlns="http://schemas.microsoft.com/office/mailappversionoverrides" xsi:type="VersionOverridesV1_0">
    <VersionOverrides xmlns="http://schemas.microsoft.com/office/mailappversionoverrides/1.1" xsi:type="VersionOverridesV1_1">
      <Requirements>
        <bt:Sets DefaultMinVersion="$mailbox_min">
          <bt:Set Name="Mailbox"/>
        </bt:Sets>
      </Requirements>
      <Hosts>
        <Host xsi:type="MailHost">
          <Runtimes>
            <!-- Outlook on the web, new Outlook on Windows and Outlook on Mac load the HTML page;
                 classic Outlook on Windows loads the JavaScript file directly. -->
            <Runtime resid="WebViewRuntime.Url">
              <Override type="javascript" resid="JSRuntime.Url"/>
            </Runtime>
          </Runtimes>
          <DesktopFormFactor>
            <FunctionFile resid="WebViewRuntime.Url"/>
            <ExtensionPoint xsi:type="LaunchEvent">
              <LaunchEvents>
                <LaunchEvent Type="OnMessageSend" FunctionName="$handler" SendMode="$send_mode"/>
                <LaunchEvent Type="OnAppointmentSend" FunctionName="$appointment_handler" SendMode="$send_mode"/>
              </LaunchEvents>
              <SourceLocation resid="WebViewRuntime.Url"/>
            </ExtensionPoint>
          </DesktopFormFactor>
        </Host>
      </Hosts>
      <Resources>
        <bt:Images>
          <bt:Image id="Icon.16x16" DefaultValue=$icon_16/>
          <bt:Image id="Icon.32x32" DefaultValue=$icon_32/>
          <bt:Image id="Icon.80x80" DefaultValue=$icon_80/>
        </bt:Images>
        <bt:Urls>
          <bt:Url id="WebViewRuntime.Url" DefaultValue=$commands/>
          <bt:Url id="JSRuntime.Url" DefaultValue=$script/>
        </bt:Urls>
      </Resources>$web_application_info
    </VersionOverrides>
  </VersionOverrides>
</OfficeApp>
""")


def build_xml(settings: AddinSettings) -> str:
    """The add-in only XML manifest."""
    attr = {key.replace("-", "_"): quoteattr(settings.url(key)) for key in PATHS}
    return _XML.substitute(
        addin_id=escape(settings.addin_id),
        xml_version=escape(settings.xml_version),
        provider=escape(settings.provider),
        display_name=quoteattr(settings.display_name),
        description=quoteattr(settings.description),
        mailbox_min=MAILBOX_MIN_VERSION,
        handler=HANDLER_NAME,
        appointment_handler=APPOINTMENT_HANDLER_NAME,
        web_application_info=_web_application_info(settings),
        send_mode=settings.send_mode,
        **attr,
    )


def _web_application_info(settings: AddinSettings) -> str:
    if not settings.sso_client_id:
        return ""
    return f"""
      <!-- Office SSO: the add-in proves the user to the central server (addin/relay.py). -->
      <WebApplicationInfo>
        <Id>{escape(settings.sso_client_id)}</Id>
        <Resource>{escape(settings.sso_resource)}</Resource>
        <Scopes>
          <Scope>openid</Scope>
          <Scope>profile</Scope>
        </Scopes>
      </WebApplicationInfo>"""


def build_unified(settings: AddinSettings) -> dict:
    """The unified manifest for Microsoft 365 as a dict (see :func:`unified_text`)."""
    mailbox = [{"name": "Mailbox", "minVersion": MAILBOX_MIN_VERSION}]
    doc = _unified(settings, mailbox)
    if settings.sso_client_id:
        doc["webApplicationInfo"] = {"id": settings.sso_client_id, "resource": settings.sso_resource}
    return doc


def _unified(settings: AddinSettings, mailbox: list[dict]) -> dict:
    return {
        "$schema": "https://developer.microsoft.com/json-schemas/teams/"
        f"v{UNIFIED_MANIFEST_VERSION}/MicrosoftTeams.schema.json",
        "manifestVersion": UNIFIED_MANIFEST_VERSION,
        "version": settings.version,
        "id": settings.unified_id,
        "localizationInfo": {"defaultLanguageTag": "en-us"},
        "developer": {
            "name": settings.provider[:32],
            "websiteUrl": settings.url("support"),
            "privacyUrl": settings.url("support") + "#privacy",
            "termsOfUseUrl": settings.url("support") + "#terms",
        },
        "name": {"short": settings.display_name[:30], "full": f"{settings.display_name} for Outlook"},
        "description": {
            "short": "Confirm recipients and attachments before a message is sent.",
            "full": settings.description,
        },
        "icons": {"outline": UNIFIED_ICONS[1], "color": UNIFIED_ICONS[0]},
        "accentColor": "#1F5FAD",
        "authorization": {
            "permissions": {"resourceSpecific": [{"name": "MailboxItem.ReadWrite.User", "type": "Delegated"}]}
        },
        "extensions": [
            {
                "requirements": {"scopes": ["mail"], "capabilities": mailbox},
                "runtimes": [
                    {
                        "requirements": {"capabilities": mailbox},
                        "id": "sendguard_send_runtime",
                        "type": "general",
                        "code": {"page": settings.url("commands"), "script": settings.url("script")},
                        "lifetime": "short",
                        "actions": [
                            {"id": HANDLER_NAME, "type": "executeFunction", "displayName": HANDLER_NAME},
                            {"id": APPOINTMENT_HANDLER_NAME, "type": "executeFunction",
                             "displayName": APPOINTMENT_HANDLER_NAME},
                        ],
                    }
                ],
                "autoRunEvents": [
                    {
                        "requirements": {"capabilities": mailbox, "scopes": ["mail"]},
                        "events": [
                            {
                                "type": "messageSending",
                                "actionId": HANDLER_NAME,
                                "options": {"sendMode": settings.unified_send_mode},
                            },
                            {
                                "type": "appointmentSending",
                                "actionId": APPOINTMENT_HANDLER_NAME,
                                "options": {"sendMode": settings.unified_send_mode},
                            },
                        ],
                    }
                ],
                # Where the XML manifest's add-in is installed too, Outlook shows only this one.
                "alternates": [{"hide": {"customOfficeAddin": {"officeAddinId": settings.addin_id}}}],
            }
        ],
    }


def unified_text(settings: AddinSettings) -> str:
    return json.dumps(build_unified(settings), indent=2, ensure_ascii=False) + "\n"


LOOPBACK_SCRIPT = "sendguard-loopback-exempt.ps1"
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1")


def loopback_container(settings: AddinSettings) -> str:
    """The AppContainer classic Outlook on Windows runs this add-in's JavaScript-only runtime in:
    "1_" + the origin with ':' and '/' as '_' + the add-in id in upper case (port and id both count)."""
    return "1_" + re.sub(r"[:/]", "_", settings.origin) + settings.addin_id.upper()


_LOOPBACK_PS1 = Template(r"""<#
  SendGuard: let classic Outlook on Windows reach the SendGuard helper on this PC.

  Classic Outlook runs the add-in's send check in an AppContainer that may not connect to loopback
  (https://$host:$port) unless exempted. Run once per PC, elevated, as an installer step (the
  SendGuard Windows bundle's install.ps1 runs it in its machine part); -Remove undoes it.
  Generated by `sendguard addin manifest` for add-in $addin_id on $origin: a new port or add-in id
  needs a new exemption.
#>
[CmdletBinding()]
param([switch]$$Remove)
$$ErrorActionPreference = "Stop"
$$Container = "$container"
$$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $$principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Write-Warning "SendGuard: the Outlook loopback exemption needs an elevated PowerShell; run $$PSCommandPath as administrator."
    exit 2
}
$$exe = Join-Path $$env:SystemRoot "System32\CheckNetIsolation.exe"
$$listed = (& $$exe LoopbackExempt -s) -join "`n"
$$present = $$listed -match [regex]::Escape($$Container)
if ($$Remove) {
    if ($$present) { & $$exe LoopbackExempt -d "-n=$$Container" | Out-Null }
    Write-Host "SendGuard: loopback exemption for $$Container removed."
    exit 0
}
if (-not $$present) {
    & $$exe LoopbackExempt -a "-n=$$Container" | Out-Null
    if ($$LASTEXITCODE -ne 0) {
        Write-Warning "SendGuard: CheckNetIsolation could not add the loopback exemption for $$Container (exit $$LASTEXITCODE); classic Outlook will not reach the helper."
        exit 1
    }
}
Write-Host "SendGuard: classic Outlook may reach the helper ($$Container). Restart Outlook if it is running."
""")


def build_loopback_script(settings: AddinSettings) -> str | None:
    """The elevated installer step for classic Outlook on Windows, or None when the add-in is not
    served from this PC (a central server needs no loopback exemption)."""
    if settings.host not in _LOOPBACK_HOSTS:
        return None
    return _LOOPBACK_PS1.substitute(host=settings.host, port=settings.port, addin_id=settings.addin_id,
                                    origin=settings.origin, container=loopback_container(settings))


LNA_REG = "sendguard-local-network-access.reg"
# Where Outlook on the web and new Outlook load (the page that frames the add-in). Chrome/Edge 142+
# (WebView2 143+) ask before such a public site, or a frame in it, reaches loopback.
OUTLOOK_WEB_ORIGINS = ("https://outlook.office.com", "https://outlook.office365.com", "https://outlook.cloud.microsoft")


def lna_origins(settings: AddinSettings) -> list[str]:
    """Origins to list in the browsers' LocalNetworkAccessAllowedForUrls policy: Outlook's own and
    the add-in's (the request comes from the add-in's frame)."""
    return [*OUTLOOK_WEB_ORIGINS, settings.origin]


def build_lna_reg(settings: AddinSettings) -> str | None:
    """A .reg file setting LocalNetworkAccessAllowedForUrls for Edge and Chrome, machine-wide, in
    values 101.. so that an admin's own entries 1..100 stay; None when the add-in is not on loopback."""
    if settings.host not in _LOOPBACK_HOSTS:
        return None
    lines = ["Windows Registry Editor Version 5.00", "",
             "; SendGuard: let Outlook on the web / new Outlook reach the SendGuard helper on this PC",
             "; without asking (Local Network Access). Generated by `sendguard addin manifest`.", ""]
    for key in (r"HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Edge\LocalNetworkAccessAllowedForUrls",
                r"HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Google\Chrome\LocalNetworkAccessAllowedForUrls"):
        lines.append(f"[{key}]")
        lines += [f'"{n}"="{origin}"' for n, origin in enumerate(lna_origins(settings), start=101)]
        lines.append("")
    return "\r\n".join(lines)


def write_manifests(settings: AddinSettings, out_dir: Path) -> list[Path]:
    """Write ``outlook.xml``, ``manifest.json`` with its icons, and the zip package an admin uploads
    for the unified manifest. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml_path = out_dir / "outlook.xml"
    json_path = out_dir / "manifest.json"
    xml_path.write_text(build_xml(settings), encoding="utf-8")
    json_path.write_text(unified_text(settings), encoding="utf-8")
    written = [xml_path, json_path]
    for icon in UNIFIED_ICONS:
        (out_dir / icon).write_bytes((ICONS_DIR / icon).read_bytes())
        written.append(out_dir / icon)
    zip_path = out_dir / "sendguard-outlook-addin.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("manifest.json", unified_text(settings))
        for icon in UNIFIED_ICONS:
            package.write(ICONS_DIR / icon, icon)
    written.append(zip_path)
    loopback = build_loopback_script(settings)
    if loopback is not None:
        script_path = out_dir / LOOPBACK_SCRIPT
        # Windows PowerShell 5.1 reads a BOM-less script as ANSI; the script is ASCII, CRLF for Notepad.
        script_path.write_bytes(loopback.replace("\n", "\r\n").encode("ascii"))
        written.append(script_path)
    lna_reg = build_lna_reg(settings)  # None, like the script, unless the add-in is on loopback
    if lna_reg is not None:
        reg_path = out_dir / LNA_REG
        reg_path.write_bytes(b"\xff\xfe" + lna_reg.encode("utf-16-le"))  # regedit's own format
        written.append(reg_path)
    return written
