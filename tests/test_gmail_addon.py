"""Gmail add-on (HTTP runtime): the deployment Google accepts, and the requests Google really sends.

Requests are Google's documented event samples (tests/fixtures/gmail_addon), with ID tokens signed by
the fake Google's key; the drafts live in the fake Gmail API; the outbox is the real helper's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import keyring
import pytest
from click.testing import CliRunner
from flask import Flask
from keyrings.alt.file import PlaintextKeyring

from addin import gmail_addon
from sendguard.accounts import gmail as gmail_accounts
from sendguard.mailboxes import gmail
from tests.fakes.gmail_server import COMPOSE, READONLY, FakeGoogle, SigningKey

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/gmail_addon"
ADDR = "alice@example.com"
BASE = "https://sendguard.example.com"
SERVICE_ACCOUNT = "service-123456789@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"
CLIENT_ID = "123456789-addon.apps.googleusercontent.com"
ALL_SCOPES = sorted({s for scopes in gmail_addon.NEEDED_SCOPES.values() for s in scopes})
SETTINGS = {
    "GMAIL_ADDON_BASE_URL": BASE,
    "GMAIL_ADDON_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
    "GMAIL_ADDON_CLIENT_ID": CLIENT_ID,
}


@pytest.fixture
def google(tmp_path, monkeypatch):
    store = PlaintextKeyring()
    store.file_path = str(tmp_path / "keyring.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(store)
    gmail_addon._certs_cache.clear()
    with FakeGoogle(email=ADDR) as fake:
        yield fake
    keyring.set_keyring(previous)


@pytest.fixture
def helper(google, tmp_path, sg_env):
    """The real helper, with a Gmail account that has the drafts feature (admin-provisioned token)."""
    from sendguard.service import Helper

    path = tmp_path / "user.json"
    google.write_authorized_user(path, ["openid", gmail.IDENTITY_SCOPES[1], COMPOSE, READONLY])
    result = CliRunner().invoke(
        gmail_accounts.add_command,
        ["--address", ADDR, "--authorized-user", str(path), "--drafts", "--api-endpoint", google.url],
    )
    assert result.exit_code == 0, result.output
    (sg_env / "policy.toml").write_text('[organization]\ninternal_domains = ["example.com"]\n')
    h = Helper(sg_env)
    yield h
    h.stop()


def make_app(google, helper, **overrides):
    app = Flask(__name__)
    app.config.update(SENDGUARD_SERVICE=helper, GOOGLE_CERTS_URL=google.certs_url, **SETTINGS)
    for key, value in overrides.items():
        if value is None:
            app.config.pop(key, None)
        else:
            app.config[key] = value
    app.register_blueprint(gmail_addon.bp)
    return app


@pytest.fixture
def client(google, helper):
    return make_app(google, helper).test_client()


def system_token(google, path, **overrides):
    claims = {"aud": f"{BASE}/gmail/addon/{path}", "email": SERVICE_ACCOUNT, "email_verified": True,
              "sub": "1"}
    claims.update(overrides)
    return google.sign_id_token(**claims)


def user_token(google, email=ADDR, **overrides):
    claims = {"aud": CLIENT_ID, "email": email, "email_verified": True, "sub": "42"}
    claims.update(overrides)
    return google.sign_id_token(**claims)


def sample(google, name, *, user=ADDR, scopes=ALL_SCOPES, draft_id="", **user_claims):
    """A documented event sample with this test's tokens in place of the placeholders."""
    text = (FIXTURES / f"{name}.json").read_text()
    text = text.replace("$USER_ID_TOKEN", user_token(google, email=user, **user_claims))
    text = text.replace("$SYSTEM_ID_TOKEN", "system-token-not-used").replace("$USER_OAUTH_TOKEN", "ya29.x")
    text = text.replace("$DRAFT_ID", draft_id).replace('"$SCOPES"', json.dumps(scopes))
    return json.loads(text)


def post(client, path, body, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/gmail/addon/{path}", json=body, headers=headers)


def card_text(response) -> str:
    return json.dumps(response.get_json(), ensure_ascii=False)


def buttons(response) -> list[dict]:
    card = response.get_json()["action"]["navigations"][0]["pushCard"]
    out = []
    for section in card["sections"]:
        for widget in section["widgets"]:
            out += widget.get("buttonList", {}).get("buttons", [])
    return out


def raw_draft(to="bob@partner.example", subject="quote", msgid="<draft-1@mail.gmail.com>") -> bytes:
    return (f"From: Alice <{ADDR}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {msgid}\r\n\r\n"
            "Hello\r\n").encode()


# -- the deployment -----------------------------------------------------------------------------


def load_deployment() -> dict:
    return json.loads((ROOT / "manifest/gmail/deployment.json").read_text())


def test_deployment_is_a_valid_http_deployment():
    schema = json.loads((FIXTURES / "deployment.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(load_deployment())


def test_apps_script_field_names_are_refused_by_the_schema():
    """Regression (#18 item 1): selectActions[].text is Apps Script's, not the HTTP deployment's."""
    schema = json.loads((FIXTURES / "deployment.schema.json").read_text())
    old = load_deployment()
    old["addOns"]["gmail"]["composeTrigger"] = {
        "selectActions": [{"text": "Check and send", "runFunction": f"{BASE}/gmail/addon/compose"}],
        "draftAccess": "METADATA",
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(old)


def test_deployment_scopes_endpoints_and_link_allow_list():
    deployment = load_deployment()
    add_ons = deployment["addOns"]
    scopes = set(deployment["oauthScopes"])
    # every compose add-on must declare the compose action scope (gmail_addon_manifest.proto)
    assert gmail_addon.SCOPE_ACTION_COMPOSE in scopes
    assert set(ALL_SCOPES) <= scopes  # the endpoints never ask for a scope the deployment lacks
    assert add_ons["httpOptions"] == {"authorizationHeader": "SYSTEM_ID_TOKEN",
                                      "granularOauthPermissionSupport": "OPT_IN"}
    [action] = add_ons["gmail"]["composeTrigger"]["actions"]
    assert action["runFunction"] == f"{BASE}/gmail/addon/compose" and action["label"]
    assert add_ons["gmail"]["composeTrigger"]["draftAccess"] == "METADATA"
    assert add_ons["common"]["homepageTrigger"]["runFunction"] == f"{BASE}/gmail/addon/homepage"
    assert add_ons["common"]["openLinkUrlPrefixes"] == [f"{BASE}/"]
    app = Flask(__name__)
    app.register_blueprint(gmail_addon.bp)
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert {"/gmail/addon/homepage", "/gmail/addon/compose", "/gmail/addon/check-and-send"} <= rules


# -- compose trigger and the draft ---------------------------------------------------------------


def test_compose_event_without_metadata_gets_the_check_button(client, google):
    response = post(client, "compose", sample(google, "compose_no_metadata"), system_token(google, "compose"))
    assert response.status_code == 200
    [button] = buttons(response)
    assert button["text"] == "Check and send with SendGuard"
    assert button["onClick"]["action"]["function"] == f"{BASE}/gmail/addon/check-and-send"


def test_check_and_send_finds_the_draft_from_the_events_metadata_after_autosave(client, google, helper):
    """Regression (#18 item 3): the event has no draft id; the old code always said "not saved yet"."""
    google.add_draft(raw_draft(to="carol@example.com", msgid="<other@x>"), labels=())
    draft_id = google.add_draft(raw_draft(), labels=())
    google.autosave(draft_id, raw_draft(subject="quote v2"))  # the message id changes, the draft id not
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    assert response.status_code == 200, response.get_json()
    [item] = helper.outbox.list()
    assert item.source == "gmail" and item.source_ref == f"draft:{draft_id}" and item.account == ADDR
    assert item.state == "awaiting_confirmation" and item.subject == "quote v2"
    text = card_text(response)
    assert "Close this compose window" in text
    assert google.sends == [] and draft_id in google.drafts  # nothing sent before confirmation
    # the loopback helper link is not offered: the user's browser cannot open it from Google's card (item 7)
    assert "127.0.0.1" not in text and "localhost" not in text


def test_without_metadata_the_user_chooses_among_the_newest_drafts(client, google, helper):
    first = google.add_draft(raw_draft(subject="first"), labels=())
    second = google.add_draft(raw_draft(to="dave@example.com", subject="second"), labels=())
    response = post(client, "check-and-send", sample(google, "compose_no_metadata"),
                    system_token(google, "check-and-send"))
    offered = [b["onClick"]["action"].get("parameters", [{}])[0].get("value") for b in buttons(response)]
    assert offered[:2] == [second, first] and helper.outbox.list() == []
    chosen = post(client, "check-and-send", sample(google, "compose_button_with_draft", draft_id=first),
                  system_token(google, "check-and-send"))
    assert "Handed to SendGuard" in card_text(chosen)
    assert [i.source_ref for i in helper.outbox.list()] == [f"draft:{first}"]


def test_two_drafts_to_the_same_recipients_are_offered_not_guessed(client, google, helper):
    google.add_draft(raw_draft(subject="a"), labels=())
    google.add_draft(raw_draft(subject="b"), labels=())
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    assert "Which draft?" in card_text(response) and helper.outbox.list() == []


def test_recipients_not_yet_saved_ask_to_wait(client, google, helper):
    google.add_draft(raw_draft(to="carol@example.com"), labels=())
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    assert "Draft not saved yet" in card_text(response) and helper.outbox.list() == []


def test_an_open_link_under_the_public_url_is_offered(google, helper):
    helper.confirm_url = lambda item_id: f"{BASE}/confirm/{item_id}?t=abc"
    client = make_app(google, helper).test_client()
    google.add_draft(raw_draft(), labels=())
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    [link] = [b for b in buttons(response) if "openLink" in b["onClick"]]
    prefixes = load_deployment()["addOns"]["common"]["openLinkUrlPrefixes"]
    assert any(link["onClick"]["openLink"]["url"].startswith(p) for p in prefixes)


def test_gmail_busy_answers_at_once_and_retries_in_the_background(client, google, helper, monkeypatch):
    """Regression (#18 item 10): no 120 s sleeps inside Google's callback."""
    monkeypatch.setattr(gmail_addon, "BACKGROUND_BACKOFF", 0.05)
    draft_id = google.add_draft(raw_draft(), labels=())
    google.fail("drafts.get", 503, reason="backendError", times=1)
    started = time.monotonic()
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    assert "Gmail is busy" in card_text(response)
    assert time.monotonic() - started < 30  # answered without the connector's retry sleeps
    deadline = time.monotonic() + 30
    while not helper.outbox.list() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [i.source_ref for i in helper.outbox.list()] == [f"draft:{draft_id}"]


# -- who may call ----------------------------------------------------------------------------------


def _forged(kid):
    now = int(time.time())
    return SigningKey(kid=kid).sign({"iss": "https://accounts.google.com", "aud": f"{BASE}/gmail/addon/compose",
                                     "email": SERVICE_ACCOUNT, "email_verified": True, "iat": now,
                                     "exp": now + 600})


@pytest.mark.parametrize(
    "make_token",
    [
        lambda g, p: None,
        lambda g, p: "not-a-jwt",
        lambda g, p: system_token(g, p, aud="https://attacker.example/gmail/addon"),
        lambda g, p: system_token(g, p, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        lambda g, p: system_token(g, p, iss="https://evil.example"),
        lambda g, p: system_token(g, p, email="service-999@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"),
        lambda g, p: system_token(g, p, email_verified=False),
        lambda g, p: system_token(g, "homepage") if p != "homepage" else system_token(g, "compose"),
        lambda g, p: _forged(g.key.kid),
        lambda g, p: _forged("unknown-kid"),
    ],
    ids=["unsigned", "garbage", "wrong-audience", "expired", "wrong-issuer", "other-add-on",
         "unverified-email", "other-endpoint", "forged-same-kid", "forged-unknown-kid"],
)
def test_unverified_requests_are_refused_before_acting(client, google, helper, make_token):
    google.add_draft(raw_draft(), labels=())
    for path in ("homepage", "compose", "check-and-send"):
        response = post(client, path, sample(google, "compose_metadata"), make_token(google, path))
        assert response.status_code == 401, (path, response.get_json())
        assert "could not verify" in card_text(response)  # still a card
    assert helper.outbox.list() == [] and google.calls == []


def test_user_token_must_be_for_the_add_ons_oauth_client(client, google, helper):
    """Regression (#18 item 4): the user's ID token is issued for the OAuth client id, nothing else."""
    google.add_draft(raw_draft(), labels=())
    body = sample(google, "compose_metadata", aud=f"{BASE}/gmail/addon/check-and-send")
    response = post(client, "check-and-send", body, system_token(google, "check-and-send"))
    assert "Who are you?" in card_text(response) and helper.outbox.list() == []
    body = sample(google, "compose_metadata", email_verified=False)
    response = post(client, "check-and-send", body, system_token(google, "check-and-send"))
    assert "Who are you?" in card_text(response) and helper.outbox.list() == []


@pytest.mark.parametrize("missing", ["GMAIL_ADDON_CLIENT_ID", "GMAIL_ADDON_SERVICE_ACCOUNT",
                                     "GMAIL_ADDON_BASE_URL"])
def test_each_required_setting_fails_closed_with_a_card(google, helper, missing):
    """Regression (#18 items 4 and 11): no optional client id/service account, no host_url fallback."""
    client = make_app(google, helper, **{missing: None}).test_client()
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    assert response.status_code == 200 and "Not set up" in card_text(response)
    assert missing in card_text(response) and google.calls == []


def test_missing_consent_asks_for_exactly_the_missing_scopes(client, google, helper):
    """Regression (#18 item 6): granular consent — ask Google for what the user has not granted."""
    granted = [gmail_addon.SCOPE_EXECUTE, gmail_addon.SCOPE_MESSAGE_METADATA]
    response = post(client, "check-and-send", sample(google, "compose_metadata", scopes=granted),
                    system_token(google, "check-and-send"))
    assert response.get_json() == {"requesting_google_scopes": {
        "scopes": [gmail_addon.SCOPE_ACTION_COMPOSE, gmail_addon.SCOPE_EMAIL]}}
    assert helper.outbox.list() == [] and google.calls == []


def test_user_without_a_sendguard_gmail_account_is_told_so(client, google, helper):
    google.add_draft(raw_draft(), labels=())
    response = post(client, "check-and-send", sample(google, "compose_metadata", user="stranger@example.com"),
                    system_token(google, "check-and-send"))
    assert response.status_code == 200
    assert "no Gmail account with drafts for stranger@example.com" in card_text(response)
    assert helper.outbox.list() == []


def test_registered_by_the_app_factory(google, helper):
    from addin import create_app

    app = create_app(helper, {**SETTINGS, "GOOGLE_CERTS_URL": google.certs_url,
                              "ALLOWED_HOSTS": ["sendguard.example.com"], "SECRET_KEY": "test"})
    client = app.test_client()
    response = client.post("/gmail/addon/compose", json=sample(google, "compose_no_metadata"),
                           base_url=BASE, headers={"Authorization": "Bearer " + system_token(google, "compose")})
    assert response.status_code == 200 and buttons(response)
    response = client.post("/gmail/addon/compose", json=sample(google, "compose_no_metadata"), base_url=BASE)
    assert response.status_code == 401


# -- the gateway: the add-on served by a headless helper behind the organisation's TLS proxy ------------


def test_gateway_helper_end_to_end(google, tmp_path, sg_env, monkeypatch):
    """Item 5: Google's call -> the user's saved draft in the outbox -> the user confirms on the public
    confirmation page -> the helper sends it through the user's own Gmail (their consented token), in
    the draft's thread, and deletes the draft."""
    import requests

    from desktop.runner import Runner
    from sendguard import certs

    path = tmp_path / "alice-consented.json"  # the user's own consent, imported by the admin
    google.write_authorized_user(path, ["openid", gmail.IDENTITY_SCOPES[1], COMPOSE, READONLY])
    assert CliRunner().invoke(gmail_accounts.add_command, ["--address", ADDR, "--authorized-user", str(path), "--drafts",
                                                  "--api-endpoint", google.url]).exit_code == 0
    (sg_env / "policy.toml").write_text('[organization]\ninternal_domains = ["example.com"]\n')
    for key, variable in gmail_addon.ENV_SETTINGS.items():
        monkeypatch.setenv(variable, SETTINGS[key])
    monkeypatch.setattr(gmail_addon, "GOOGLE_CERTS_URL", google.certs_url)
    certs.ensure_certificates(sg_env)
    runner = Runner(sg_env, smtp_port=0, api_port=0).start()
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would replace the install's CA
    http.verify = str(certs.CertPaths.under(sg_env).ca_cert)
    public = {"Host": "sendguard.example.com"}  # what the reverse proxy forwards

    def through_proxy(url: str) -> str:
        return url.replace(BASE, runner.base_url)

    try:
        draft_id = google.add_draft(raw_draft(), labels=())
        thread = google.messages[google.drafts[draft_id]]["thread"]
        response = http.post(f"{runner.base_url}/gmail/addon/check-and-send", json=sample(google, "compose_metadata"),
                             headers={**public, "Authorization": "Bearer " + system_token(google, "check-and-send")})
        assert response.status_code == 200, response.text
        card = response.json()["action"]["navigations"][0]["pushCard"]
        [link] = [b["onClick"]["openLink"]["url"] for s in card["sections"] for w in s["widgets"]
                  for b in w.get("buttonList", {}).get("buttons", []) if "openLink" in b["onClick"]]
        assert link.startswith(f"{BASE}/confirm/")

        # The user opens the link (the page session) and confirms with every box ticked.
        page = http.get(through_proxy(link), headers=public, allow_redirects=True)
        assert page.status_code == 200 and "SendGuard" in page.text
        item_id = link.split("/confirm/")[1].split("?")[0]
        shown = http.get(f"{runner.base_url}/api/v1/outbox/{item_id}", headers=public).json()
        checked = {"recipients": [r["address"] for r in shown["check"]["recipients"]],
                   "attachments": [a["id"] for a in shown["check"]["attachments"]]}
        confirmed = http.post(f"{runner.base_url}/api/v1/outbox/{item_id}/confirm", json={"checked": checked},
                              headers={**public, "Origin": BASE})
        assert confirmed.status_code == 200, confirmed.text

        deadline = time.monotonic() + 30
        while (not google.sends or draft_id in google.drafts) and time.monotonic() < deadline:
            time.sleep(0.1)  # the helper's worker sends, then deletes the draft
        assert [(s["method"], s["threadId"]) for s in google.sends] == [("messages.send", thread)]
        assert google.sends[0]["raw"] == raw_draft() and draft_id not in google.drafts
    finally:
        runner.stop()


def test_the_central_approval_server_says_it_does_not_host_the_add_on(google, helper):
    helper.outbox.mailbox_for = None  # what the central server's outbox is: it never sends mail
    client = make_app(google, helper).test_client()
    response = post(client, "check-and-send", sample(google, "compose_metadata"),
                    system_token(google, "check-and-send"))
    assert "Gmail gateway" in card_text(response) and google.calls == []
