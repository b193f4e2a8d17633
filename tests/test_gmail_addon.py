"""Gmail add-on endpoints: only requests carrying a Google-signed ID token for this add-on are served."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import keyring
import pytest
from click.testing import CliRunner
from flask import Flask
from keyrings.alt.file import PlaintextKeyring

from addin import gmail_addon
from sendguard import config
from sendguard.mailboxes import gmail
from tests.fakes.gmail_server import COMPOSE, READONLY, FakeGoogle, SigningKey

ADDR = "alice@example.com"
ENDPOINT = "https://sendguard.example.com/gmail/addon"
SERVICE_ACCOUNT = "service-123@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"
CLIENT_ID = "addon-client.apps.example"


@pytest.fixture
def google(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("SENDGUARD_HOME", str(home))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    store = PlaintextKeyring()
    store.file_path = str(tmp_path / "keyring.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(store)
    gmail_addon._certs_cache.clear()
    with FakeGoogle(email=ADDR) as fake:
        yield fake
    keyring.set_keyring(previous)


class Outbox:
    def __init__(self):
        self.items = []

    def by_source_ref(self, source, ref):
        return None

    def submit(self, raw, envelope_from, recipients, source="smtp", source_ref=None, account=None):
        item = SimpleNamespace(
            id=f"ob{len(self.items) + 1}",
            state="awaiting_confirmation",
            raw=raw,
            source=source,
            source_ref=source_ref,
            account=account,
        )
        self.items.append(item)
        return item


@pytest.fixture
def service(google, tmp_path):
    """A Gmail account with the drafts feature (admin-provisioned token) and a stand-in core service."""
    path = tmp_path / "user.json"
    google.write_authorized_user(path, ["openid", gmail.IDENTITY_SCOPES[1], COMPOSE, READONLY])
    result = CliRunner().invoke(
        gmail.add_command,
        ["--address", ADDR, "--authorized-user", str(path), "--drafts", "--api-endpoint", google.url],
    )
    assert result.exit_code == 0, result.output
    return SimpleNamespace(
        outbox=Outbox(),
        config=config.load(),
        home=tmp_path / "home",
        confirm_url=lambda item_id: f"https://127.0.0.1:8765/confirm/{item_id}",
    )


@pytest.fixture
def client(google, service):
    app = Flask(__name__)
    app.config.update(
        SENDGUARD_SERVICE=service,
        GMAIL_ADDON_AUDIENCE=ENDPOINT,
        GOOGLE_CERTS_URL=google.certs_url,
        GMAIL_ADDON_SERVICE_ACCOUNT=SERVICE_ACCOUNT,
        GMAIL_ADDON_CLIENT_ID=CLIENT_ID,
        GMAIL_ADDON_BASE_URL="https://sendguard.example.com",
    )
    app.register_blueprint(gmail_addon.bp)
    return app.test_client()


def system_token(google, **overrides):
    claims = {"aud": ENDPOINT, "email": SERVICE_ACCOUNT, "email_verified": True, "sub": "1"}
    claims.update(overrides)
    return google.sign_id_token(**claims)


def user_token(google, email=ADDR, **overrides):
    claims = {"aud": CLIENT_ID, "email": email, "email_verified": True, "sub": "42"}
    claims.update(overrides)
    return google.sign_id_token(**claims)


def event(google, draft_message_id=None, draft_id=None, user=ADDR):
    gm = {"toRecipients": ["bob@partner.example"], "accessToken": "temporary"}
    if draft_message_id:
        gm["messageId"] = draft_message_id
    if draft_id:
        gm["draftId"] = draft_id
    return {
        "commonEventObject": {"hostApp": "GMAIL", "platform": "WEB"},
        "authorizationEventObject": {"userIdToken": user_token(google, email=user)},
        "gmail": gm,
    }


def draft(google) -> tuple[str, str]:
    raw = (
        f"From: Alice <{ADDR}>\r\nTo: bob@partner.example\r\nSubject: quote\r\n"
        "Message-ID: <draft-1@mail.gmail.com>\r\n\r\nHello\r\n"
    ).encode()
    draft_id = google.add_draft(raw, labels=())
    return draft_id, google.drafts[draft_id]


def post(client, path, body, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/gmail/addon/{path}", json=body, headers=headers)


def test_compose_trigger_card_offers_check_and_send(client, google):
    response = post(client, "compose", event(google), system_token(google))
    assert response.status_code == 200
    card = response.get_json()["action"]["navigations"][0]["pushCard"]
    button = card["sections"][0]["widgets"][1]["buttonList"]["buttons"][0]
    assert button["text"] == "Check and send with SendGuard"
    assert button["onClick"]["action"]["function"] == ENDPOINT + "/check-and-send"


def test_check_and_send_hands_the_draft_to_the_outbox(client, google, service):
    draft_id, message_id = draft(google)
    response = post(
        client, "check-and-send", event(google, draft_message_id=message_id), system_token(google)
    )
    assert response.status_code == 200, response.get_json()
    [item] = service.outbox.items
    assert item.source == "gmail" and item.source_ref == f"draft:{draft_id}" and item.account == ADDR
    text = json.dumps(response.get_json())
    assert "Confirm the recipients" in text and "https://127.0.0.1:8765/confirm/ob1" in text
    assert google.sends == [] and draft_id in google.drafts  # nothing sent before confirmation


@pytest.mark.parametrize(
    "make_token, reason",
    [
        (lambda g: None, "no Google ID token"),
        (lambda g: "not-a-jwt", "invalid Google ID token"),
        (lambda g: system_token(g, aud="https://attacker.example/gmail/addon"), "invalid Google ID token"),
        (
            lambda g: system_token(g, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
            "invalid Google ID token",
        ),
        (lambda g: system_token(g, iss="https://evil.example"), "not issued by Google"),
        (
            lambda g: system_token(g, email="someone@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"),
            "service account",
        ),
        (
            lambda g: SigningKey(kid=g.key.kid).sign(
                {
                    "iss": "https://accounts.google.com",
                    "aud": ENDPOINT,
                    "email": SERVICE_ACCOUNT,
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 600,
                }
            ),
            "invalid Google ID token",
        ),
        (
            lambda g: SigningKey(kid="unknown-kid").sign(
                {
                    "iss": "https://accounts.google.com",
                    "aud": ENDPOINT,
                    "email": SERVICE_ACCOUNT,
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 600,
                }
            ),
            "invalid Google ID token",
        ),
    ],
    ids=[
        "unsigned",
        "garbage",
        "wrong-audience",
        "expired",
        "wrong-issuer",
        "other-signer",
        "forged-same-kid",
        "forged-unknown-kid",
    ],
)
def test_unverified_requests_are_refused_before_acting(client, google, service, make_token, reason):
    _draft_id, message_id = draft(google)
    for path in ("homepage", "compose", "check-and-send"):
        response = post(client, path, event(google, draft_message_id=message_id), make_token(google))
        assert response.status_code == 401, (path, response.get_json())
        assert reason in response.get_json()["error"]["message"]
    assert service.outbox.items == [] and google.calls == []


def test_user_token_for_another_audience_is_refused(client, google, service):
    _draft_id, message_id = draft(google)
    body = event(google, draft_message_id=message_id)
    body["authorizationEventObject"]["userIdToken"] = user_token(google, aud="some-other-client")
    response = post(client, "check-and-send", body, system_token(google))
    assert response.status_code == 401
    assert service.outbox.items == []


def test_user_without_a_sendguard_gmail_account_is_told_so(client, google, service):
    _draft_id, message_id = draft(google)
    body = event(google, draft_message_id=message_id, user="stranger@example.com")
    response = post(client, "check-and-send", body, system_token(google))
    assert response.status_code == 200
    assert "no Gmail account for stranger@example.com" in json.dumps(response.get_json())
    assert service.outbox.items == []


def test_unsaved_draft_asks_to_wait(client, google, service):
    response = post(
        client, "check-and-send", event(google, draft_message_id="m-unknown"), system_token(google)
    )
    assert response.status_code == 200 and "not saved this draft yet" in json.dumps(response.get_json())
    assert service.outbox.items == []


def test_unconfigured_audience_fails_closed(google, service):
    app = Flask(__name__)
    app.config.update(SENDGUARD_SERVICE=service, GOOGLE_CERTS_URL=google.certs_url)
    app.register_blueprint(gmail_addon.bp)
    response = post(app.test_client(), "compose", event(google), system_token(google))
    assert response.status_code == 503


def test_registered_by_the_app_factory(google, service):
    from addin import create_app

    app = create_app(
        service,
        {
            "GMAIL_ADDON_AUDIENCE": ENDPOINT,
            "GOOGLE_CERTS_URL": google.certs_url,
            "ALLOWED_HOSTS": ["sendguard.example.com"],
            "SECRET_KEY": "test",
        },
    )
    client = app.test_client()
    response = client.post(
        "/gmail/addon/compose",
        json=event(google),
        base_url="https://sendguard.example.com",
        headers={"Authorization": "Bearer " + system_token(google)},
    )
    assert response.status_code == 200
    response = client.post(
        "/gmail/addon/compose", json=event(google), base_url="https://sendguard.example.com"
    )
    assert response.status_code == 401


def test_deployment_manifest_points_at_these_endpoints():
    from pathlib import Path

    manifest = json.loads(
        (Path(__file__).resolve().parents[1] / "manifest/gmail/deployment.json").read_text()
    )
    gm = manifest["addOns"]["gmail"]
    assert gm["composeTrigger"]["selectActions"][0]["runFunction"].endswith("/gmail/addon/compose")
    assert gm["composeTrigger"]["draftAccess"] == "METADATA"
    assert manifest["addOns"]["common"]["homepageTrigger"]["runFunction"].endswith("/gmail/addon/homepage")
    assert "https://www.googleapis.com/auth/gmail.addons.execute" in manifest["oauthScopes"]
    app = Flask(__name__)
    app.register_blueprint(gmail_addon.bp)
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert {"/gmail/addon/homepage", "/gmail/addon/compose", "/gmail/addon/check-and-send"} <= rules
