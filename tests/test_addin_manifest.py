"""The Outlook add-in manifests: generated from one description, checked in, and valid.

No package ships the XML manifest's XSDs, so outlook.xml is checked structurally here (and converted
with Microsoft's converter in tests/js/manifest.test.js); manifest.json is validated against the
unified manifest schema from npm ``@microsoft/app-manifest`` (installed by ``make test`` in tests/js).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner
from flask import Flask

from addin import manifests
from addin.cli import addin_group
from addin.outlook import bp

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_DIR = ROOT / "manifest"
SCHEMA = (ROOT / "tests/js/node_modules/@microsoft/app-manifest/build/json-schemas/teams"
          / f"v{manifests.UNIFIED_MANIFEST_VERSION}/MicrosoftTeams.schema.json")
NS = {
    "o": "http://schemas.microsoft.com/office/appforoffice/1.1",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "bt": "http://schemas.microsoft.com/office/officeappbasictypes/1.0",
    "v10": "http://schemas.microsoft.com/office/mailappversionoverrides",
    "v11": "http://schemas.microsoft.com/office/mailappversionoverrides/1.1",
}
XSI_TYPE = f"{{{NS['xsi']}}}type"
# The order the MailApp schema's sequence demands, for the elements we use.
OFFICEAPP_ORDER = ["Id", "Version", "ProviderName", "DefaultLocale", "DisplayName", "Description", "IconUrl",
                   "HighResolutionIconUrl", "SupportUrl", "AppDomains", "Hosts", "Requirements", "FormSettings",
                   "Permissions", "Rule", "DisableEntityHighlighting", "VersionOverrides"]
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _urls_in_xml(root: ET.Element) -> list[str]:
    """Every attribute value or text holding a URL (namespace names are tags, not values)."""
    values = [v for el in root.iter() for v in [*el.attrib.values(), el.text or ""]]
    return [v.strip() for v in values if "://" in v and not v.strip().startswith("api://")]  # SSO resource: a name


def _urls_in_json(value) -> list[str]:
    if isinstance(value, dict):
        return [u for k, v in value.items() if k != "$schema" for u in _urls_in_json(v)]
    if isinstance(value, list):
        return [u for v in value for u in _urls_in_json(v)]
    return [value] if isinstance(value, str) and "://" in value else []


def check_xml(text: str, settings: manifests.AddinSettings) -> None:
    """Structural checks standing in for the XSDs."""
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == f"{{{NS['o']}}}OfficeApp" and root.get(XSI_TYPE) == "MailApp"

    order = [_local(child.tag) for child in root]
    assert order == [name for name in OFFICEAPP_ORDER if name in order], order
    for required in ("Id", "Version", "ProviderName", "DefaultLocale", "DisplayName", "Description", "IconUrl",
                     "SupportUrl", "Hosts", "Requirements", "FormSettings", "Permissions", "Rule", "VersionOverrides"):
        assert required in order, required
    assert GUID.match(root.findtext("o:Id", namespaces=NS))
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", root.findtext("o:Version", namespaces=NS))
    assert root.find("o:Hosts/o:Host", NS).get("Name") == "Mailbox"
    assert root.findtext("o:Permissions", namespaces=NS) == "ReadWriteItem"

    outer = root.find("v10:VersionOverrides", NS)
    assert outer.get(XSI_TYPE) == "VersionOverridesV1_0"
    inner = outer.find("v11:VersionOverrides", NS)
    assert inner.get(XSI_TYPE) == "VersionOverridesV1_1"
    sets = inner.find("v11:Requirements/bt:Sets", NS)
    assert sets.get("DefaultMinVersion") == "1.12"
    assert [s.get("Name") for s in sets.findall("bt:Set", NS)] == ["Mailbox"]

    host = inner.find("v11:Hosts/v11:Host", NS)
    assert host.get(XSI_TYPE) == "MailHost"
    runtime = host.find("v11:Runtimes/v11:Runtime", NS)
    override = runtime.find("v11:Override", NS)
    assert override.get("type") == "javascript"
    desktop = host.find("v11:DesktopFormFactor", NS)
    launch = [ep for ep in desktop.findall("v11:ExtensionPoint", NS) if ep.get(XSI_TYPE) == "LaunchEvent"]
    assert len(launch) == 1
    events = launch[0].findall("v11:LaunchEvents/v11:LaunchEvent", NS)
    assert [(e.get("Type"), e.get("FunctionName"), e.get("SendMode")) for e in events] == [
        ("OnMessageSend", "onMessageSendHandler", settings.send_mode),
        ("OnAppointmentSend", "onAppointmentSendHandler", settings.send_mode),
    ]
    assert launch[0].find("v11:SourceLocation", NS).get("resid") == runtime.get("resid")

    resources = inner.find("v11:Resources", NS)
    urls = {u.get("id"): u.get("DefaultValue") for u in resources.findall("bt:Urls/bt:Url", NS)}
    images = {i.get("id"): i.get("DefaultValue") for i in resources.findall("bt:Images/bt:Image", NS)}
    assert urls[runtime.get("resid")] == settings.url("commands")
    assert urls[override.get("resid")] == settings.url("script")
    for el in inner.iter():  # every resource reference resolves
        if el.get("resid") is not None:
            assert el.get("resid") in urls or el.get("resid") in images, el.get("resid")
    all_urls = list(urls.values()) + list(images.values()) + _urls_in_xml(root)
    assert all_urls and all(u.startswith(settings.origin + "/") for u in all_urls), all_urls
    assert all(len(u) <= 2048 for u in all_urls)


def check_unified(doc: dict, settings: manifests.AddinSettings) -> None:
    # Its own GUID, hiding the XML manifest's add-in where both are installed.
    assert doc["id"] == settings.unified_id != settings.addin_id
    assert GUID.match(doc["id"])
    [extension] = doc["extensions"]
    assert extension["alternates"] == [{"hide": {"customOfficeAddin": {"officeAddinId": settings.addin_id}}}]
    assert {"name": "Mailbox", "minVersion": "1.12"} in extension["requirements"]["capabilities"]
    [runtime] = extension["runtimes"]
    assert runtime["code"] == {"page": settings.url("commands"), "script": settings.url("script")}
    action_ids = {a["id"] for a in runtime["actions"]}
    assert action_ids == {"onMessageSendHandler", "onAppointmentSendHandler"}
    events = extension["autoRunEvents"][0]["events"]
    assert [(e["type"], e["actionId"]) for e in events] == [
        ("messageSending", "onMessageSendHandler"), ("appointmentSending", "onAppointmentSendHandler")]
    for event in events:
        assert event["options"] == {"sendMode": settings.send_mode[0].lower() + settings.send_mode[1:]}
    urls = _urls_in_json(doc)
    assert urls and all(u.startswith("https://") for u in urls), urls


def validate_schema(doc: dict) -> None:
    if not SCHEMA.exists():
        pytest.skip("unified manifest schema not installed: run `cd tests/js && npm install` (make test does)")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    try:
        import jsonschema_rs
    except ImportError:  # pragma: no cover - either validator will do
        import jsonschema

        jsonschema.Draft4Validator(schema).validate(doc)
        return
    errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(doc)]
    assert not errors, errors


# --- the checked-in manifests ------------------------------------------------------------------

def test_checked_in_manifests_match_the_generator():
    defaults = manifests.AddinSettings()
    assert (MANIFEST_DIR / "outlook.xml").read_text(encoding="utf-8") == manifests.build_xml(defaults), \
        "manifest/outlook.xml is stale: run `sendguard addin manifest --out manifest` and drop the extra files"
    assert (MANIFEST_DIR / "manifest.json").read_text(encoding="utf-8") == manifests.unified_text(defaults)
    assert (MANIFEST_DIR / manifests.LOOPBACK_SCRIPT).read_bytes() == \
        manifests.build_loopback_script(defaults).replace("\n", "\r\n").encode("ascii")
    assert (MANIFEST_DIR / manifests.LNA_REG).read_bytes() == \
        b"\xff\xfe" + manifests.build_lna_reg(defaults).encode("utf-16-le")


def test_loopback_exemption_script_names_the_runtime_container():
    defaults = manifests.AddinSettings()
    # Microsoft's form: "1_" + the origin with ':' and '/' as '_' + the add-in id in upper case.
    assert manifests.loopback_container(defaults) == "1_https___localhost_87655D1A8C3E-2B7F-4C61-9A0E-7F3B6E2D4C18"
    other = manifests.AddinSettings(port=9443, addin_id="0f8fad5b-d9cb-469f-a165-70867728950e")
    script = manifests.build_loopback_script(other)
    assert '$Container = "1_https___localhost_94430F8FAD5B-D9CB-469F-A165-70867728950E"' in script
    assert "LoopbackExempt -a" in script and "LoopbackExempt -d" in script and "Administrator" in script
    assert manifests.build_loopback_script(manifests.AddinSettings(host="sendguard.example.com", port=443)) is None


def test_local_network_access_policy_lists_outlook_and_the_addin(tmp_path):
    written = manifests.write_manifests(manifests.AddinSettings(port=9443), tmp_path)
    reg = (tmp_path / manifests.LNA_REG).read_bytes()
    assert tmp_path / manifests.LNA_REG in written
    text = reg[2:].decode("utf-16-le")
    assert reg[:2] == b"\xff\xfe" and text.startswith("Windows Registry Editor Version 5.00\r\n")
    for browser in ("Microsoft\\Edge", "Google\\Chrome"):
        section = text.split(f"[HKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\{browser}\\LocalNetworkAccessAllowedForUrls]")[1]
        section = section.split("[")[0]
        assert '"101"="https://outlook.office.com"' in section
        assert '"104"="https://localhost:9443"' in section
    assert manifests.build_lna_reg(manifests.AddinSettings(host="sendguard.example.com", port=443)) is None


def test_checked_in_xml_is_valid():
    check_xml((MANIFEST_DIR / "outlook.xml").read_text(encoding="utf-8"), manifests.AddinSettings())


def test_checked_in_unified_manifest_is_schema_valid():
    doc = json.loads((MANIFEST_DIR / "manifest.json").read_text(encoding="utf-8"))
    validate_schema(doc)
    check_unified(doc, manifests.AddinSettings())


# --- generated for other deployments -------------------------------------------------------------

SETTINGS = [
    manifests.AddinSettings(),
    manifests.AddinSettings(send_mode="Block"),
    manifests.AddinSettings(host="sendguard.example.co.jp", port=443, addin_id="0f8fad5b-d9cb-469f-a165-70867728950e"),
    manifests.AddinSettings(host="127.0.0.1", port=9443, provider='Example & Sons "IT"',
                            display_name="SendGuard <Test>", version="2.3.4"),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.host}:{s.port}-{s.send_mode}")
def test_generated_manifests_are_valid(settings):
    check_xml(manifests.build_xml(settings), settings)
    doc = json.loads(manifests.unified_text(settings))
    validate_schema(doc)
    check_unified(doc, settings)


def test_port_443_is_left_out_of_urls():
    settings = manifests.AddinSettings(host="SendGuard.Example.com", port=443)
    assert settings.url("script") == "https://sendguard.example.com/addin/launchevent.js"


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"host": "https://evil.example/x"}, "--host"),
        ({"host": ""}, "--host"),
        ({"port": 0}, "--port"),
        ({"port": 70000}, "--port"),
        ({"addin_id": "not-a-guid"}, "--id"),
        ({"send_mode": "PromptUser"}, "--send-mode"),
        ({"version": "1.0"}, "version"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, names):
    with pytest.raises(manifests.ManifestError, match=names):
        manifests.AddinSettings(**kwargs)


# --- the CLI -------------------------------------------------------------------------------------

def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_manifests_and_package(tmp_path):
    result = CliRunner().invoke(addin_group, ["manifest", "--host", "sendguard.example.com", "--port", "443",
                                              "--send-mode", "Block", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["origin"] == "https://sendguard.example.com"
    settings = manifests.AddinSettings(host="sendguard.example.com", port=443, send_mode="Block")
    check_xml((tmp_path / "outlook.xml").read_text(encoding="utf-8"), settings)
    assert not (tmp_path / manifests.LOOPBACK_SCRIPT).exists(), "a central server needs no loopback exemption"
    with zipfile.ZipFile(tmp_path / "sendguard-outlook-addin.zip") as package:
        assert sorted(package.namelist()) == ["color.png", "manifest.json", "outline.png"]
        doc = json.loads(package.read("manifest.json"))
        assert _png_size(package.read(doc["icons"]["color"])) == (192, 192)
        assert _png_size(package.read(doc["icons"]["outline"])) == (32, 32)
    check_unified(doc, settings)


def test_cli_refuses_a_bad_host_in_one_line(tmp_path):
    result = CliRunner().invoke(addin_group, ["manifest", "--host", "https://x.example/", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "--host" in result.output and "Traceback" not in result.output


# --- serving the add-in ----------------------------------------------------------------------------

@pytest.fixture
def client():
    app = Flask(__name__)
    app.register_blueprint(bp)
    return app.test_client()


def test_serves_the_runtime_page(client):
    resp = client.get(manifests.PATHS["commands"], base_url="https://localhost:8765")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "https://appsforoffice.microsoft.com/lib/1/hosted/office.js" in page
    # the page's relative script reference resolves to the served script
    src = re.findall(r'<script src="([^"]+)"', page)[-1]
    assert manifests.PATHS["commands"].rsplit("/", 1)[0] + "/" + src == manifests.PATHS["script"]
    enforced = resp.headers["Content-Security-Policy"]
    assert "script-src 'self' https://appsforoffice.microsoft.com" in enforced
    assert "connect-src" not in enforced, "fetch directives run report-only until a client is known to need no more"
    report_only = resp.headers["Content-Security-Policy-Report-Only"]
    assert "default-src 'none'" in report_only and "report-uri /addin/csp-report" in report_only
    for directive in ("script-src", "connect-src", "img-src", "style-src", "frame-src"):
        assert re.search(directive + r" [^;]*https://appsforoffice\.microsoft\.com", report_only), directive


def test_csp_reports_are_logged_and_bounded(client, caplog):
    report = {"csp-report": {"document-uri": "https://localhost:8765/addin/commands.html",
                             "violated-directive": "connect-src", "blocked-uri": "https://new.office.example/x"}}
    with caplog.at_level("WARNING", logger="addin.outlook"):
        resp = client.post("/addin/csp-report", data=json.dumps(report), content_type="application/csp-report",
                           base_url="https://localhost:8765")
    assert resp.status_code == 204
    assert "https://new.office.example/x" in caplog.text and "connect-src" in caplog.text
    junk = client.post("/addin/csp-report", data=b"{" * 100000, content_type="application/csp-report",
                       base_url="https://localhost:8765")
    assert junk.status_code == 204


def test_serves_the_script_with_its_api_base(client):
    resp = client.get(manifests.PATHS["script"], base_url="https://localhost:8765")
    assert resp.status_code == 200 and resp.mimetype == "text/javascript"
    first, rest = resp.get_data(as_text=True).split("\n", 1)
    assert first == 'var SENDGUARD_API_BASE = "https://localhost:8765";'
    assert 'Office.actions.associate("onMessageSendHandler"' in rest
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_well_known_allowed_lists_the_script(client):
    resp = client.get("/.well-known/microsoft-officeaddins-allowed.json", base_url="https://127.0.0.1:8765")
    assert resp.status_code == 200
    assert resp.get_json() == {"allowed": ["https://127.0.0.1:8765/addin/launchevent.js"]}


@pytest.mark.parametrize("key", [k for k in manifests.PATHS if k.startswith("icon-")])
def test_serves_every_icon_the_manifest_names(client, key):
    resp = client.get(manifests.PATHS[key])
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    size = int(key.split("-")[1])
    assert _png_size(resp.get_data()) == (size, size)


def test_unknown_icon_is_404(client):
    assert client.get("/addin/icons/..%2Fcommands.html").status_code == 404
    assert client.get("/addin/icons/nope.png").status_code == 404


def test_support_page(client):
    resp = client.get(manifests.PATHS["support"])
    assert resp.status_code == 200 and b'id="privacy"' in resp.get_data()


def test_manifest_download_follows_the_request_host(client):
    resp = client.get("/addin/manifest.xml?send_mode=Block", base_url="https://localhost:8765")
    assert resp.status_code == 200
    check_xml(resp.get_data(as_text=True), manifests.AddinSettings(send_mode="Block"))
    doc = client.get("/addin/manifest.json", base_url="https://localhost:8765").get_json()
    check_unified(doc, manifests.AddinSettings())
    bad = client.get("/addin/manifest.xml?send_mode=Whatever", base_url="https://localhost:8765")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "bad_request"


def test_sso_client_id_adds_web_application_info_to_both_manifests():
    settings = manifests.AddinSettings(host="sendguard.example.co.jp", port=443,
                                       sso_client_id="0F8FAD5B-D9CB-469F-A165-70867728950E")
    xml = manifests.build_xml(settings)
    check_xml(xml, settings)
    root = ET.fromstring(xml.encode("utf-8"))
    info = root.find("v10:VersionOverrides/v11:VersionOverrides/v11:WebApplicationInfo", NS)
    assert info.findtext("v11:Id", namespaces=NS) == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert info.findtext("v11:Resource", namespaces=NS) == \
        "api://sendguard.example.co.jp/0f8fad5b-d9cb-469f-a165-70867728950e"
    doc = manifests.build_unified(settings)
    assert doc["webApplicationInfo"] == {"id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                                         "resource": "api://sendguard.example.co.jp/0f8fad5b-d9cb-469f-a165-70867728950e"}
    validate_schema(doc)
    assert "WebApplicationInfo" not in manifests.build_xml(manifests.AddinSettings())
    with pytest.raises(manifests.ManifestError, match="--sso-client-id"):
        manifests.AddinSettings(sso_client_id="nope")

