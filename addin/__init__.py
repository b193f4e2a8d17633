"""SendGuard's web side: the REST API, the confirmation/approval pages and the Outlook/Gmail add-ins.

``create_app(service)`` builds the Flask app around the process it runs in: the desktop helper
(``sendguard.service.Helper``) or the central server (``addin.server.CentralService``), both of which
offer ``addin.service.AppService``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from flask import Flask

if TYPE_CHECKING:
    from .service import AppService

# Optional feature blueprints: registered when their module is present.
BLUEPRINTS = ("addin.api", "addin.pages", "addin.approval_pages", "addin.outlook", "addin.gmail_addon")


def create_app(service: AppService | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    from . import security

    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(
        SENDGUARD_SERVICE=service,
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "[::1]", "::1"],
        EXTRA_ORIGINS=[],
        API_TOKEN=None,  # filled from the keyring on first use unless given
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_NAME="sendguard_session",
        # the desktop helper is one user's: a session cookie from another local user's program is refused
        OWN_USER_ONLY=True,
        CONFIRM_LINK_MAX_AGE=24 * 3600,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    # the Gmail browser extension's origin(s), from config.toml [api] extension_origins
    extension_origins = service.config.api_extension_origins if service is not None else []
    app.config["EXTRA_ORIGINS"] = [*app.config["EXTRA_ORIGINS"], *extension_origins]
    if not app.config.get("SECRET_KEY"):
        from sendguard.links import signing_key

        app.config["SECRET_KEY"] = signing_key()
    app.json = security.JSONProvider(app)
    security.init_app(app)
    for name in BLUEPRINTS:
        module = import_module(name)
        init = getattr(module, "init_app", None)
        if init is not None:
            init(app)
        else:
            app.register_blueprint(module.bp)
    return app
