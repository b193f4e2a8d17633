"""Exchange Online over Microsoft Graph (msal + requests): hold folder intake, release, reconciliation.

The same model as the EWS connector: a "SendGuard Hold" mail folder (created on first run) and
drafts with the category "SendGuard" are taken into the outbox and marked "SendGuard: taken"; after
confirmation the item itself is corrected (recipients, attachments) and sent with
``POST /me/messages/{id}/send`` so Exchange files it in Sent Items. Mail that came in over SMTP is
sent from its MIME with ``POST /me/sendMail``, or, when an attachment is over 3 MB, as a draft made
from the MIME plus upload sessions for the large attachments, then ``/send``.

Outbox interception: a message sent with a deferred send time (``singleValueExtendedProperties``
``SystemTime 0x3FEF``: Outlook's delay delivery, Outlook on the web's scheduled send, a defer rule)
waits in the Outbox until then. ``watch_outbox`` moves each one whose time is still ahead into the hold
folder at once (``POST /me/messages/{id}/move``), so the server never sends it; ``fetch_held`` takes
it with the source ``graph-outbox``. Messages without a deferred time are never touched. Releasing sets
the deferred time in the past in the PATCH before ``/send`` (Graph cannot remove the property; Exchange
would queue it again otherwise); a cancelled one goes back to Drafts. ``find_missed`` lists what the
server sent at its deferred time while nobody was watching (Sent Items keeps 0x3FEF).

Sign-in is msal's PublicClientApplication (device code or interactive); its token cache is kept in
the keyring. Throttling (429/503) honours Retry-After. Every failure becomes one clear line.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import msal
import requests
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

from .. import secrets
from ..config import Account as AccountConfig
from . import _http, _mime, _retry
from .base import (
    DRAFT_CATEGORY,
    HOLD_FOLDER,
    TAKEN_CATEGORY,
    AnswerLost,
    AuthError,
    HeldItem,
    MailboxError,
    MissedItem,
    OutcomeUnknown,
    PermanentError,
    ReleaseItem,
    ReleaseReceipt,
    TransientError,
)

log = logging.getLogger(__name__)

GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"
AUTHORITY_HOST = "https://login.microsoftonline.com"
GRAPH_SCOPES = ("Mail.ReadWrite", "Mail.Send")
DIRECTORY_SCOPES = ("GroupMember.Read.All",)  # accounts with expand_lists = true
ATTACHMENT_INLINE_LIMIT = 3 * 1024 * 1024  # above this an attachment goes through an upload session
REQUEST_LIMIT = 4 * 1024 * 1024  # Graph's request body limit (base64 MIME counts)
UPLOAD_CHUNK = 10 * 320 * 1024  # 3.2 MiB: a multiple of 320 KiB, under the 4 MB per-PUT limit
PAGE = 50
OUTBOX_SOURCE = "graph-outbox"
DEFERRED_ID = "SystemTime 0x3FEF"  # PidTagDeferredSendTime as a Graph extended property
DEFERRED_EXPAND = f"singleValueExtendedProperties($filter=id eq '{DEFERRED_ID}')"
# What a released or returned message gets as its deferred time: Graph cannot delete the property, and a
# time in the past means "send now". Also how find_missed tells SendGuard's own releases apart.
DEFERRED_CLEARED = "2000-01-01T00:00:00Z"
_CLEARED_BEFORE = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
# A draft the Outlook add-in saved in Cached Exchange Mode reaches the server only when Outlook syncs
# it; until then Graph does not find it. Within this time after intake that is a wait, not a deletion.
OUTLOOK_SYNC_GRACE = 15 * 60
OUTLOOK_SYNC_RETRY = 30.0


def _b64len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _odata_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _deferred_of(message: dict) -> dt.datetime | None:
    """The deferred send time of a message read with ``$expand=DEFERRED_EXPAND``, or None."""
    for prop in message.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == DEFERRED_ID.lower() and prop.get("value"):
            try:
                return dt.datetime.fromisoformat(str(prop["value"]).replace("Z", "+00:00")).astimezone(dt.UTC)
            except ValueError:
                log.warning("unreadable deferred send time %r", prop["value"])
                return None
    return None


class _Session(requests.Session):
    """A session whose configured CA file wins: plain requests lets REQUESTS_CA_BUNDLE from the
    environment override ``Session.verify``, which would silently ignore the account's ``ca_bundle``."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify
        return super().request(*args, **kwargs)


def _session(ca_bundle: str | None) -> requests.Session:
    s = _Session()
    if ca_bundle:
        s.verify = ca_bundle
    return s


class MsalTokenSource:
    """Access tokens for one account from msal; the token cache is kept in the keyring."""

    def __init__(self, cache_key: str, client_id: str, authority: str, scopes: tuple[str, ...],
                 username: str | None = None, session: requests.Session | None = None, timeout: float = 30.0):
        self.cache_key = cache_key
        self.client_id = client_id
        self.authority = authority.rstrip("/")
        self.scopes = list(scopes)
        self.username = username
        self.session = session or requests.Session()
        self.timeout = timeout
        self._app: msal.PublicClientApplication | None = None
        self._cache = msal.SerializableTokenCache()
        self._lock = threading.RLock()

    @staticmethod
    def authority_for(settings: dict[str, Any]) -> str:
        if settings.get("authority"):
            base = settings["authority"].rstrip("/")
            parsed = urlparse(base)
            # "https://host" alone names the cloud; "https://host/tenant" is complete
            return base if parsed.path.strip("/") else f"{base}/{settings.get('tenant', 'organizations')}"
        return f"{AUTHORITY_HOST}/{settings.get('tenant', 'organizations')}"

    @classmethod
    def for_account(cls, account: AccountConfig, session: requests.Session | None = None) -> MsalTokenSource:
        s = account.settings
        endpoint = s.get("graph_endpoint", GRAPH_ENDPOINT).rstrip("/")
        origin = "{0.scheme}://{0.netloc}".format(urlparse(endpoint))
        # Scopes are named on the Graph resource of the cloud in use (national clouds differ). Reading
        # distribution lists (sendguard.directory.graph) needs group members too.
        wanted = GRAPH_SCOPES + (DIRECTORY_SCOPES if s.get("expand_lists") else ())
        scopes = tuple(f"{origin}/{scope}" for scope in wanted)
        return cls(account.secret_key("token_cache"), s.get("client_id", ""), cls.authority_for(s),
                   scopes, account.address, session or _session(s.get("ca_bundle")))

    @classmethod
    def for_ews(cls, account: AccountConfig) -> MsalTokenSource:
        s = account.settings
        server = s.get("server") or f"https://outlook.office365.com/{account.address}"
        origin = "{0.scheme}://{0.netloc}".format(urlparse(server))
        return cls(account.secret_key("token_cache"), s.get("client_id", ""), cls.authority_for(s),
                   (f"{origin}/EWS.AccessAsUser.All",), account.address, _session(s.get("ca_bundle")))

    def _application(self) -> msal.PublicClientApplication:
        if self._app is None:
            stored = secrets.get(self.cache_key)
            if stored:
                self._cache.deserialize(stored)
            host = urlparse(self.authority).hostname or ""
            try:
                self._app = msal.PublicClientApplication(
                    self.client_id, authority=self.authority, token_cache=self._cache, http_client=self.session,
                    # Microsoft's own clouds are validated by instance discovery; an authority set by the
                    # admin (AD FS, a sovereign deployment) is trusted as configured.
                    instance_discovery=None if host in WELL_KNOWN_AUTHORITY_HOSTS else False,
                    timeout=self.timeout)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                raise self._unreachable(e) from None
            except msal.exceptions.MsalServiceError as e:  # 5xx/429 from discovery: the service is down
                raise TransientError(f"The sign-in service {self.authority} is not answering ({e}); "
                                     "your mail stays held.") from None
            except ValueError as e:
                raise PermanentError(f"The sign-in authority {self.authority} is not usable: {e}") from None
        return self._app

    def _unreachable(self, e: Exception) -> TransientError:
        if isinstance(e, requests.exceptions.SSLError):
            return TransientError(f"The certificate of the sign-in service {self.authority} is not one SendGuard "
                                  f"trusts ({e}); if your company changed it, set the account's ca_bundle. Your "
                                  "mail stays held.")
        return TransientError(f"Cannot reach the sign-in service {self.authority} ({type(e).__name__}); "
                              "your mail stays held.")

    def _save(self) -> None:
        if self._cache.has_state_changed:
            secrets.put(self.cache_key, self._cache.serialize())
            self._cache.has_state_changed = False

    def reset(self) -> None:
        """Forget the in-memory sign-in; the next call reads the keyring again (the user may have signed
        in again from another process meanwhile)."""
        with self._lock:
            self._app = None
            self._cache = msal.SerializableTokenCache()

    def _sign_in_again(self, why: str) -> AuthError:
        self.reset()
        return AuthError(f"The Microsoft 365 sign-in for {self.username or self.client_id} {why}: run `sendguard "
                         f"accounts add graph --address {self.username}` to sign in again. Your mail stays held.")

    def access_token(self, force_refresh: bool = False) -> dict:
        """A current access token (msal refreshes it silently); AuthError when a new sign-in is needed."""
        with self._lock:
            app = self._application()
            accounts = app.get_accounts(username=self.username) if self.username else []
            accounts = accounts or app.get_accounts()
            if not accounts:
                raise self._sign_in_again("is missing")
            try:
                result = app.acquire_token_silent_with_error(self.scopes, accounts[0], force_refresh=force_refresh)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                raise self._unreachable(e) from None
            except msal.exceptions.MsalServiceError as e:
                raise TransientError(f"The sign-in service {self.authority} is not answering ({e}); "
                                     "your mail stays held.") from None
            self._save()
            if not result or "access_token" not in result:
                error = (result or {}).get("error", "no token")
                if error in ("invalid_grant", "interaction_required", "no token"):
                    raise self._sign_in_again("has expired or was revoked")
                raise self._sign_in_again(f"failed ({error})")
            return result

    def sign_in(self, device_code: bool = True, echo=print) -> dict:
        """Interactive sign-in (device code by default); stores the token cache."""
        with self._lock:
            app = self._application()
            if device_code:
                flow = app.initiate_device_flow(scopes=self.scopes)
                if "user_code" not in flow:
                    raise AuthError(f"Could not start the device sign-in: {flow.get('error_description') or flow}")
                echo(flow["message"])
                result = app.acquire_token_by_device_flow(flow)
            else:
                result = app.acquire_token_interactive(self.scopes, login_hint=self.username)
            if "access_token" not in result:
                raise AuthError(f"Sign-in failed: {result.get('error_description') or result.get('error')}")
            self._save()
            return result


class GraphMailbox:
    """The Mailbox (and HoldingMailbox) interface for one Exchange Online account over Microsoft Graph."""

    kind = "graph"

    def __init__(self, name: str, address: str, token_source: MsalTokenSource, *, endpoint: str = GRAPH_ENDPOINT,
                 session: requests.Session | None = None, hold_folder: str = HOLD_FOLDER, timeout: float = 60.0,
                 ca_bundle: str | None = None):
        self.name = name
        self.address = address
        self.tokens = token_source
        self.endpoint = endpoint.rstrip("/")
        self.session = session or token_source.session
        self.ca_bundle = ca_bundle
        self.hold_folder_name = hold_folder
        self.timeout = timeout
        self.backoff = _retry.Backoff()
        self._hold_id: str | None = None
        self._outbox_id: str | None = None
        # sends whose answer was lost: until the grace is over, "not in Sent Items" only means "not filed
        # yet" (Exchange files what sendMail accepted asynchronously)
        self._unanswered = _retry.LostAnswers()

    @classmethod
    def from_account(cls, account: AccountConfig, home: Path) -> GraphMailbox:
        """The connector for an account (the helper keeps one per account while it runs, so the sign-in
        in msal's in-memory cache and the hold folder id carry over between calls)."""
        s = account.settings
        return cls(account.name, account.address, MsalTokenSource.for_account(account),
                   endpoint=s.get("graph_endpoint", GRAPH_ENDPOINT), hold_folder=s.get("hold_folder", HOLD_FOLDER),
                   timeout=float(s.get("timeout", 60)), ca_bundle=s.get("ca_bundle"))

    def companion(self) -> GraphMailbox:
        """A second connector for the same account, with its own HTTP session but the same sign-in, for
        the Outbox watch: a long release (an upload session) never delays a take."""
        return GraphMailbox(self.name, self.address, self.tokens, endpoint=self.endpoint,
                            session=_session(self.ca_bundle), hold_folder=self.hold_folder_name,
                            timeout=self.timeout, ca_bundle=self.ca_bundle)

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ HTTP
    def _url(self, path: str) -> str:
        return path if path.startswith("https://") or path.startswith("http://") else f"{self.endpoint}{path}"

    def _request(self, method: str, path: str, *, what: str, ok=(200, 201, 202, 204), sends: bool = False,
                 auth: bool = True, headers: dict | None = None, **kwargs) -> requests.Response:
        """One Graph call. 429 (and 503 for calls that send nothing) with a short Retry-After is waited out
        here; longer waits, network failures and 5xx go back to the outbox as TransientError. A 401 gets
        one silent token refresh, then AuthError. A lost answer to a send is never repeated here."""
        refreshed = False
        attempts = 0
        while True:
            attempts += 1
            sent_headers = dict(headers or {})
            if auth:
                token = self.tokens.access_token(force_refresh=refreshed)["access_token"]
                sent_headers["Authorization"] = f"Bearer {token}"
            try:
                r = self.session.request(method, self._url(path), headers=sent_headers, timeout=self.timeout,
                                         **kwargs)
            except requests.exceptions.SSLError as e:
                wait = self.backoff.next_delay()
                raise TransientError(f"The certificate of {self.endpoint} is not one SendGuard trusts ({e}); "
                                     f"nothing was sent while {what}. If your company changed it, set the "
                                     f"account's ca_bundle; trying again in {wait:.0f} s. Your mail stays held.",
                                     retry_after=wait) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                wait = self.backoff.next_delay()
                if sends and not _http.never_reached(e):
                    raise AnswerLost(f"Cannot reach Microsoft Graph at {self.endpoint} while {what}: the "
                                     f"connection broke after the message was handed over ({type(e).__name__}), "
                                     "so it may have gone out. It is not sent again before SendGuard has looked "
                                     f"for it in the mailbox; trying again in {wait:.0f} s.",
                                     retry_after=wait) from None
                raise TransientError(f"Cannot reach Microsoft Graph at {self.endpoint} while {what} "
                                     f"({type(e).__name__}); trying again in {wait:.0f} s. Your mail stays held.",
                                     retry_after=wait) from None
            if r.status_code in ok:
                self.backoff.reset()
                return r
            code, message = self._error_of(r)
            if r.status_code in (429, 503) or (r.status_code >= 500 and not sends):
                asked = _retry.parse_retry_after(r.headers.get("Retry-After"))
                throttled = r.status_code == 429 or (r.status_code == 503 and not sends)
                wait = asked if asked is not None else self.backoff.next_delay()
                if throttled and wait <= _retry.MAX_INLINE_WAIT and attempts < _retry.MAX_INLINE_ATTEMPTS:
                    _retry.sleep(wait)
                    continue
                kind = "is throttling requests" if r.status_code == 429 else f"answered {r.status_code}"
                raise TransientError(f"Microsoft Graph {kind} while {what}; trying again in {wait:.0f} s. "
                                     "Your mail stays held.", retry_after=wait)
            if r.status_code >= 500:
                wait = _retry.parse_retry_after(r.headers.get("Retry-After")) or self.backoff.next_delay()
                if r.status_code in (500, 502, 504):  # a gateway may have passed the send on: it may have gone out
                    raise AnswerLost(f"Microsoft Graph answered {r.status_code} ({code}) while {what}; the message "
                                     "may have gone out, so it is not sent again before SendGuard has looked for "
                                     f"it in the mailbox; trying again in {wait:.0f} s.", retry_after=wait)
                raise TransientError(f"Microsoft Graph answered {r.status_code} ({code}) while {what}; trying "
                                     f"again in {wait:.0f} s. Your mail stays held.", retry_after=wait)
            if r.status_code == 401 and auth and not refreshed:
                refreshed = True
                continue
            raise self._translate(r.status_code, code, message, what)

    @staticmethod
    def _error_of(r: requests.Response) -> tuple[str, str]:
        try:
            err = r.json().get("error", {})
            return str(err.get("code", "")), str(err.get("message", ""))
        except ValueError:
            return "", r.text[:200]

    def _translate(self, status: int, code: str, message: str, what: str) -> MailboxError:
        if status == 401:
            return self.tokens._sign_in_again("was refused")
        if "Quota" in code or status == 507:
            return PermanentError(f"Your Exchange Online mailbox {self.address} is full, so the message cannot be "
                                  "sent or saved; free some space and send it again. Nothing was sent.")
        if status == 413 or "SizeExceeded" in code or "TooLarge" in code:
            return PermanentError("The message is larger than Exchange Online accepts (an attachment is too large); "
                                  "remove or shrink attachments and send again. Nothing was sent.")
        if status == 403:
            return AuthError(f"Microsoft Graph denied access while {what} ({code}: {message}); the app needs the "
                             "Mail.ReadWrite and Mail.Send permissions. Your mail stays held.")
        return PermanentError(f"Microsoft Graph refused {what}: {status} {code} {message}".rstrip() + ".")

    def _json(self, method: str, path: str, *, what: str, **kwargs) -> dict:
        r = self._request(method, path, what=what, **kwargs)
        return r.json() if r.content else {}

    def _pages(self, path: str, params: dict, *, what: str) -> list[dict]:
        out: list[dict] = []
        url: str | None = path
        query: dict | None = params
        while url:
            data = self._json("GET", url, what=what, params=query)
            out.extend(data.get("value", []))
            url, query = data.get("@odata.nextLink"), None  # the next link carries the query itself
        return out

    # ------------------------------------------------------------------ folders
    def ensure_hold_folder(self) -> str:
        if self._hold_id:
            return self._hold_id
        what = "looking for the hold folder"
        flt = {"$filter": f"displayName eq {_odata_literal(self.hold_folder_name)}"}
        found = self._pages("/me/mailFolders", flt, what=what)
        if not found:
            try:
                found = [self._json("POST", "/me/mailFolders", json={"displayName": self.hold_folder_name},
                                    what="creating the hold folder")]
                log.info("created the %r folder in %s", self.hold_folder_name, self.address)
            except PermanentError:
                found = self._pages("/me/mailFolders", flt, what=what)  # created meanwhile (409)
                if not found:
                    raise
        self._hold_id = found[0]["id"]
        return self._hold_id

    # ------------------------------------------------------------------ intake
    def fetch_held(self) -> list[HeldItem]:
        hold = self.ensure_hold_folder()
        select = {"$select": "id,categories,internetMessageId", "$top": str(PAGE)}
        what = "looking for held mail"
        candidates = [m for m in self._pages(f"/me/mailFolders/{hold}/messages", select, what=what)
                      if TAKEN_CATEGORY not in (m.get("categories") or [])]
        drafts = self._pages("/me/mailFolders/drafts/messages",
                             {**select, "$filter": f"categories/any(c:c eq {_odata_literal(DRAFT_CATEGORY)})"},
                             what=what)
        candidates += [m for m in drafts if TAKEN_CATEGORY not in (m.get("categories") or [])]
        held = []
        for m in candidates:
            try:
                info = self._json("GET", f"/me/messages/{m['id']}", what=what, params={
                    "$select": "id,internetMessageId,toRecipients,ccRecipients,bccRecipients",
                    "$expand": DEFERRED_EXPAND})
                raw = self._request("GET", f"/me/messages/{m['id']}/$value", what=what).content
            except PermanentError:
                continue  # deleted between the listing and the read
            recipients = [r["emailAddress"]["address"] for key in ("toRecipients", "ccRecipients", "bccRecipients")
                          for r in info.get(key) or [] if r.get("emailAddress", {}).get("address")]
            raw = _mime.ensure_message_id(raw, info.get("internetMessageId"))
            source = OUTBOX_SOURCE if _deferred_of(info) is not None else "graph"
            held.append(HeldItem(ref=m["id"], raw=raw, envelope_from=self.address,
                                 recipients=tuple(dict.fromkeys(recipients)), source=source))
        return held

    def ack_held(self, ref: str) -> None:
        what = "marking a held item as taken"
        try:
            cats = self._json("GET", f"/me/messages/{ref}", params={"$select": "categories"}, what=what)
        except PermanentError:
            log.info("held item on %s vanished before it was marked as taken", self.address)
            return
        categories = list(cats.get("categories") or [])
        if TAKEN_CATEGORY not in categories:
            self._request("PATCH", f"/me/messages/{ref}", json={"categories": categories + [TAKEN_CATEGORY]},
                          what=what)

    # ------------------------------------------------------------------ Outbox interception
    source_outbox = OUTBOX_SOURCE

    def watch_outbox(self) -> int:
        """Move every Outbox message whose deferred send time is still ahead into the hold folder, at once.

        One listing of the Outbox (ids and the 0x3FEF property only) and one move per waiting message;
        messages without a deferred time are only listed, never changed. Returns how many were taken; a
        message the server sent meanwhile is gone (``find_missed`` reports it)."""
        what = "watching the Outbox"
        listing = self._pages("/me/mailFolders/outbox/messages",
                              {"$select": "id", "$expand": DEFERRED_EXPAND, "$top": str(PAGE)}, what=what)
        now = dt.datetime.now(dt.UTC)
        waiting = [m["id"] for m in listing if (_deferred_of(m) or now) > now]
        if not waiting:
            return 0
        hold = self.ensure_hold_folder()
        taken = 0
        for ref in waiting:
            try:
                self._request("POST", f"/me/messages/{ref}/move", what=what, json={"destinationId": hold})
                taken += 1
            except PermanentError as e:  # sent (or opened by the user) between the listing and the move
                log.info("an Outbox message of %s left before it could be taken (%s)", self.address, e)
        if taken:
            log.info("took %d deferred message(s) out of the Outbox of %s", taken, self.address)
        return taken

    def return_to_drafts(self, ref: str) -> bool:
        """A cancelled Outbox message goes back to Drafts, with its deferred time in the past and without
        our category, so the user can edit it and send it again. False when it is no longer held."""
        what = "returning a cancelled message to Drafts"
        try:
            held = self._json("GET", f"/me/messages/{ref}", what=what, params={"$select": "id,isDraft,categories"})
        except PermanentError:
            return False
        if not held.get("isDraft", True):
            return False
        moved = self._json("POST", f"/me/messages/{ref}/move", what=what, json={"destinationId": "drafts"})
        categories = [c for c in held.get("categories") or [] if c not in (DRAFT_CATEGORY, TAKEN_CATEGORY)]
        self._request("PATCH", f"/me/messages/{moved['id']}", what=what, json={
            "categories": categories,
            "singleValueExtendedProperties": [{"id": DEFERRED_ID, "value": DEFERRED_CLEARED}]})
        return True

    def find_missed(self, since: float) -> list[MissedItem]:
        """Messages in Sent Items, sent at or after ``since`` (epoch seconds), that carry a deferred send
        time: the server sent them from the Outbox itself (SendGuard's releases carry DEFERRED_CLEARED).
        The caller skips any Message-ID it already knows."""
        what = "looking for deferred mail the server sent"
        start = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        found = self._pages("/me/mailFolders/sentitems/messages", {
            "$filter": f"sentDateTime ge {start}", "$expand": DEFERRED_EXPAND, "$top": str(PAGE),
            "$select": "id,internetMessageId,subject,sentDateTime,toRecipients,ccRecipients,bccRecipients"},
            what=what)
        out = []
        for m in found:
            deferred = _deferred_of(m)
            if deferred is None or deferred < _CLEARED_BEFORE or not m.get("internetMessageId"):
                continue
            recipients = [r["emailAddress"]["address"] for key in ("toRecipients", "ccRecipients", "bccRecipients")
                          for r in m.get(key) or [] if r.get("emailAddress", {}).get("address")]
            try:
                raw = self._request("GET", f"/me/messages/{m['id']}/$value", what=what).content
            except PermanentError:
                raw = b""
            sent = m.get("sentDateTime")
            out.append(MissedItem(
                message_id=m["internetMessageId"], subject=m.get("subject") or "",
                sent_at=dt.datetime.fromisoformat(sent.replace("Z", "+00:00")).timestamp() if sent else since,
                deferred_until=deferred.timestamp(), recipients=tuple(dict.fromkeys(recipients)), raw=raw))
        return out

    # ------------------------------------------------------------------ reconciliation
    def find_sent(self, message_id: str) -> bool | None:
        """True when a sent copy with this internetMessageId is in Sent Items, anywhere else not as a draft,
        or waiting in the Outbox (submitted: the transport sends it; Graph shows it there as a draft)."""
        what = "looking the message up in Sent Items"
        flt = f"internetMessageId eq {_odata_literal(message_id)}"
        if self._pages("/me/mailFolders/sentitems/messages", {"$filter": flt, "$select": "id"}, what=what):
            return True
        found = self._pages("/me/messages", {"$filter": flt, "$select": "id,isDraft,parentFolderId"}, what=what)
        if any(not m.get("isDraft", True) for m in found):
            return True
        # only when a draft copy exists: is it the one in the Outbox?
        return bool(found) and self._outbox_folder_id(what) in {m.get("parentFolderId") for m in found}

    def _outbox_folder_id(self, what: str) -> str:
        if self._outbox_id is None:
            self._outbox_id = str(self._json("GET", "/me/mailFolders/outbox", what=what,
                                             params={"$select": "id"})["id"])
        return self._outbox_id

    # ------------------------------------------------------------------ release
    def release(self, item: ReleaseItem) -> ReleaseReceipt:
        msg = _mime.parse(item.raw)
        plan = _mime.plan_recipients(item, msg)
        # a loss the outbox has on record (this process may not have seen it: a restart since)
        self._unanswered.recall(item.message_id, item.answer_lost_ago)
        try:
            if item.source_ref:
                return self._release_held(item, msg, plan)
            return self._release_new(item, plan)
        except AnswerLost:
            self._unanswered.record(item.message_id)
            raise

    def _receipt(self, item: ReleaseItem, how: str, **extra) -> ReleaseReceipt:
        return ReleaseReceipt("graph", {"account": self.name, "message_id": item.message_id, "via": how, **extra})

    @staticmethod
    def _recipients(pairs) -> list[dict]:
        return [{"emailAddress": {"address": a, **({"name": n} if n else {})}} for n, a in pairs]

    def _graph_id(self, ref: str, what: str) -> str:
        """``ref`` as Graph takes it. The Outlook add-in sends the REST id (``convertToRestId``); an
        EWS-format id (it has ``/`` or ``+``, which REST ids never do) from an older add-in is
        translated with ``translateExchangeIds``, which needs User.ReadBasic.All (or User.Read)."""
        if "/" not in ref and "+" not in ref:
            return ref
        try:
            found = self._json("POST", "/me/translateExchangeIds", what=what, json={
                "inputIds": [ref], "sourceIdType": "ewsId", "targetIdType": "restId"})
        except (AuthError, PermanentError) as e:
            raise PermanentError(
                "The Outlook add-in identified this draft by its Exchange (EWS) id, which Microsoft Graph does "
                "not accept, and Graph refused to translate it (" + str(e).rstrip(".") + "). Update the add-in "
                "(it now sends the Graph id itself) or grant the app User.ReadBasic.All; nothing was sent.") from None
        targets = [v.get("targetId") for v in found.get("value") or [] if v.get("targetId")]
        if not targets:
            raise PermanentError("Microsoft Graph could not translate the Outlook item id of the held message; "
                                 "nothing was sent.")
        return targets[0]

    def _release_held(self, item: ReleaseItem, msg, plan: _mime.RecipientPlan) -> ReleaseReceipt:
        what = "sending the held message"
        ref = self._graph_id(item.source_ref or "", what)
        try:
            draft = self._json("GET", f"/me/messages/{ref}", what=what,
                               params={"$select": "id,isDraft,categories,internetMessageId",
                                       "$expand": DEFERRED_EXPAND})
        except PermanentError:
            draft = None
        if item.message_id in self._unanswered:  # our /send of it lost its answer
            if self.find_sent(item.message_id):
                self._unanswered.forget(item.message_id)
                return self._receipt(item, "already-sent")
            self._unanswered.check(item.message_id, "Microsoft Graph")  # within the grace: try again later
            if draft is None or not draft.get("isDraft", True):  # it left Drafts, yet is nowhere to be found
                raise OutcomeUnknown(
                    "Microsoft Graph lost its answer to the send of this message, and "
                    f"{_retry.sent_items_grace():.0f} s later the draft has left Drafts but is not in Sent Items "
                    "or the Outbox: it may have gone out, "
                    "so it is not sent again. Check Sent Items, then "
                    f"`sendguard queue resolve {item.outbox_id} --sent` or `--resend`")
            # still a draft after the grace: the send never happened; send it now
        if draft is None or not draft.get("isDraft", True):
            if self.find_sent(item.message_id):
                return self._receipt(item, "already-sent")
            if draft is None and item.source == "outlook" and item.held_since is not None \
                    and time.time() - item.held_since < OUTLOOK_SYNC_GRACE:
                raise TransientError("The draft Outlook saved for this message is not on the server yet (Outlook "
                                     "in Cached Exchange Mode uploads it when it next syncs); trying again in "
                                     f"{OUTLOOK_SYNC_RETRY:.0f} s. Keep Outlook running; the message stays held.",
                                     retry_after=OUTLOOK_SYNC_RETRY)
            raise PermanentError("The held message was deleted from the mailbox before it could be sent; "
                                 "nothing was sent.")
        wanted = _mime.attachment_names(msg)
        for att in self._pages(f"/me/messages/{ref}/attachments", {"$select": "id,name,size"}, what=what):
            name = att.get("name") or ""
            if wanted[name] > 0:
                wanted[name] -= 1
            else:
                self._request("DELETE", f"/me/messages/{ref}/attachments/{att['id']}", what=what)
        categories = [c for c in draft.get("categories") or [] if c not in (DRAFT_CATEGORY, TAKEN_CATEGORY)]
        patch: dict[str, Any] = {
            "toRecipients": self._recipients(plan.to), "ccRecipients": self._recipients(plan.cc),
            "bccRecipients": self._recipients(plan.bcc), "categories": categories}
        if _deferred_of(draft) is not None:
            # taken from the Outbox: with a future deferred time /send would only queue it again
            patch["singleValueExtendedProperties"] = [{"id": DEFERRED_ID, "value": DEFERRED_CLEARED}]
        self._request("PATCH", f"/me/messages/{ref}", what=what, json=patch)
        self._send_draft(ref, what)
        receipt = self._receipt(item, "messages/send", item_id=ref)
        if draft.get("internetMessageId") and draft["internetMessageId"] != item.message_id:
            receipt.detail["internet_message_id"] = draft["internetMessageId"]
        return receipt

    def _send_draft(self, ref: str, what: str) -> None:
        try:
            self._request("POST", f"/me/messages/{ref}/send", what=what, sends=True)
        except PermanentError as e:
            # "already sent": a retried send after a lost 202
            if "already been sent" in str(e) or "ErrorInvalidOperation" in str(e):
                return
            raise

    def _release_new(self, item: ReleaseItem, plan: _mime.RecipientPlan) -> ReleaseReceipt:
        what = "sending the message"
        if self.find_sent(item.message_id):
            self._unanswered.forget(item.message_id)
            return self._receipt(item, "already-sent")
        if self._unanswered.check(item.message_id, "Microsoft Graph"):  # the grace is over: nothing went out
            log.info("%s: %s is not in the mailbox %.0f s after its send lost its answer; sending it again",
                     self.address, item.message_id, _retry.sent_items_grace())
        # Graph takes the blind copies from a Bcc header in the MIME and keeps it off delivered copies.
        raw = _mime.with_bcc_header(item.raw, [a for _, a in plan.bcc])
        stripped, large = _mime.split_large_attachments(raw, ATTACHMENT_INLINE_LIMIT)
        if not large and _b64len(len(raw)) <= REQUEST_LIMIT:
            self._request("POST", "/me/sendMail", what=what, sends=True, data=base64.b64encode(raw),
                          headers={"Content-Type": "text/plain"})
            return self._receipt(item, "sendMail")
        if _b64len(len(stripped)) > REQUEST_LIMIT:
            stripped, large = _mime.split_large_attachments(raw, 0)  # every attachment goes separately
        draft = self._json("POST", "/me/messages", what=what, data=base64.b64encode(stripped),
                           headers={"Content-Type": "text/plain"})
        ref = draft["id"]
        try:
            for att in large:
                self._attach(ref, att, what)
        except MailboxError:
            try:  # leave no half-built draft behind; the outbox will build it again
                self._request("DELETE", f"/me/messages/{ref}", what="removing an unfinished draft")
            except MailboxError:
                log.warning("could not remove an unfinished draft from %s", self.address)
            raise
        self._send_draft(ref, what)
        return self._receipt(item, "messages/send+uploadSession", uploads=len(large))

    def _attach(self, ref: str, att: _mime.LargeAttachment, what: str) -> None:
        if len(att.content) <= ATTACHMENT_INLINE_LIMIT:
            body = {"@odata.type": "#microsoft.graph.fileAttachment", "name": att.name,
                    "contentType": att.content_type, "contentBytes": base64.b64encode(att.content).decode(),
                    "isInline": att.is_inline}
            if att.content_id:
                body["contentId"] = att.content_id
            self._request("POST", f"/me/messages/{ref}/attachments", what=what, json=body)
            return
        item: dict[str, Any] = {"attachmentType": "file", "name": att.name, "size": len(att.content),
                                "contentType": att.content_type, "isInline": att.is_inline}
        if att.content_id:
            item["contentId"] = att.content_id
        session = self._json("POST", f"/me/messages/{ref}/attachments/createUploadSession", what=what,
                             json={"AttachmentItem": item})
        url = session["uploadUrl"]
        total = len(att.content)
        for start in range(0, total, UPLOAD_CHUNK):
            chunk = att.content[start:start + UPLOAD_CHUNK]
            end = start + len(chunk) - 1
            # The upload URL carries its own authorization: no bearer token may be sent to it.
            self._request("PUT", url, what=f"uploading {att.name}", auth=False, data=chunk,
                          headers={"Content-Range": f"bytes {start}-{end}/{total}",
                                   "Content-Type": "application/octet-stream"})


__all__ = ["GraphMailbox", "MsalTokenSource"]
