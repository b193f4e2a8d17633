"""Serves the Outlook add-in's own files from the helper (same origin as the API).

``bp`` serves the Smart Alerts runtime page and script, the icons, a small support page, the
manifests for the host the request came in on, and ``/.well-known/microsoft-officeaddins-allowed.json``
(classic Outlook on Windows runs the script in a JavaScript-only runtime and asks that file which
scripts of this origin may make requests). Host/Origin checks and TLS belong to the app that
registers the blueprint (``addin.create_app``).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, abort, current_app, request, send_from_directory

from addin import manifests

bp = Blueprint("outlook_addin", __name__)
log = logging.getLogger(__name__)

_STATIC = manifests.STATIC_DIR
_ICONS = {path.rsplit("/", 1)[1] for key, path in manifests.PATHS.items() if key.startswith("icon-")}
_ICONS.update(manifests.UNIFIED_ICONS)

# The runtime page's Content-Security-Policy. Microsoft publishes no list of what Office.js loads on
# each client (office-js issue #1005; seen: its CDN, ajax.aspnetcdn.com, the aria telemetry pipe), and a
# page that cannot run makes Outlook treat the add-in as unavailable (SoftBlock: "Send Anyway"). So
# only script sources - the part that stops injected code - are enforced; the full policy runs
# report-only and violations are logged by /addin/csp-report, so an admin sees what a client needs
# before it is enforced.
OFFICE_JS_HOSTS = ("https://appsforoffice.microsoft.com", "https://ajax.aspnetcdn.com")
OFFICE_TELEMETRY_HOSTS = ("https://browser.pipe.aria.microsoft.com",)
CSP_REPORT_PATH = "/addin/csp-report"
_OFFICE = " ".join(OFFICE_JS_HOSTS)
_CSP = f"script-src 'self' {_OFFICE}; object-src 'none'; base-uri 'none'; form-action 'none'"
_CSP_REPORT_ONLY = (
    f"default-src 'none'; script-src 'self' {_OFFICE}; "
    f"connect-src 'self' {_OFFICE} {' '.join(OFFICE_TELEMETRY_HOSTS)}; img-src 'self' data: {_OFFICE}; "
    f"style-src 'self' 'unsafe-inline' {_OFFICE}; font-src 'self' {_OFFICE}; frame-src 'self' {_OFFICE}; "
    f"object-src 'none'; base-uri 'none'; form-action 'none'; report-uri {CSP_REPORT_PATH}"
)
_MAX_REPORT = 16 * 1024


def _origin() -> str:
    # The add-in is only ever loaded over HTTPS; the Host header was checked by the app.
    return "https://" + request.host


def _no_store(response: Response) -> Response:
    # Outlook caches add-in files hard; revalidating keeps a new helper version effective at once.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get(manifests.PATHS["commands"])
def commands_page() -> Response:
    response = send_from_directory(_STATIC, "commands.html", mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Content-Security-Policy-Report-Only"] = _CSP_REPORT_ONLY
    return _no_store(response)


@bp.post(CSP_REPORT_PATH)
def csp_report() -> Response:
    """What the report-only policy would have blocked in the runtime page, logged for the admin."""
    raw = request.get_data(cache=False)[:_MAX_REPORT]
    try:
        report = current_app.json.loads(raw or b"{}")
    except ValueError:  # also JSON nested too deeply (JSONProvider)
        report = {}
    body = report.get("csp-report") if isinstance(report, dict) else None
    if isinstance(body, dict):
        log.warning("add-in page CSP (report-only) would block %s for %s on %s",
                    str(body.get("blocked-uri", "?"))[:300], str(body.get("violated-directive", "?"))[:100],
                    str(body.get("document-uri", "?"))[:300])
    return Response(status=204)


@bp.get(manifests.PATHS["script"])
def launchevent_script() -> Response:
    # The script learns its API base from this first line: classic Outlook's JavaScript-only runtime
    # has no document or location to take it from.
    source = (_STATIC / "launchevent.js").read_text(encoding="utf-8")
    # On the central server the add-in's API is the relay (addin/relay.py), entered with Office SSO.
    base = _origin() + str(current_app.config.get("ADDIN_API_PATH", ""))
    prefix = f"var SENDGUARD_API_BASE = {json.dumps(base)};\n"
    if current_app.config.get("ADDIN_SSO"):
        prefix += "var SENDGUARD_SSO = true;\n"
    return _no_store(Response(prefix + source, mimetype="text/javascript"))


@bp.get(manifests.PATHS["support"])
def support_page() -> Response:
    return _no_store(send_from_directory(_STATIC, "support.html", mimetype="text/html"))


@bp.get("/addin/icons/<name>")
def icon(name: str) -> Response:
    if name not in _ICONS:
        abort(404)
    return send_from_directory(_STATIC / "icons", name, mimetype="image/png", max_age=86400)


@bp.get("/.well-known/microsoft-officeaddins-allowed.json")
def allowed_scripts() -> Response:
    body = {"allowed": [_origin() + manifests.PATHS["script"]]}
    return _no_store(Response(json.dumps(body), mimetype="application/json"))


def _settings_for_request() -> manifests.AddinSettings:
    host, _, port = request.host.rpartition(":") if ":" in request.host else (request.host, "", "")
    send_mode = request.args.get("send_mode", "SoftBlock")
    try:
        return manifests.AddinSettings(host=host, port=int(port) if port else 443, send_mode=send_mode)
    except manifests.ManifestError as exc:
        abort(Response(json.dumps({"error": {"code": "bad_request", "message": str(exc)}}),
                       status=400, mimetype="application/json"))


@bp.get("/addin/manifest.xml")
def manifest_xml() -> Response:
    """The XML manifest for the origin this request came in on (``?send_mode=Block`` to block)."""
    xml = manifests.build_xml(_settings_for_request())
    response = Response(xml, mimetype="application/xml")
    response.headers["Content-Disposition"] = 'attachment; filename="sendguard-outlook.xml"'
    return _no_store(response)


@bp.get("/addin/manifest.json")
def manifest_json() -> Response:
    """The unified manifest for this origin (the zip package with icons comes from the CLI)."""
    return _no_store(Response(manifests.unified_text(_settings_for_request()), mimetype="application/json"))
