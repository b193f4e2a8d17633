"""Gmail: release through the Gmail API, and take Gmail drafts into the outbox.

Gmail has no API that holds or delays a send made in the web UI, so SendGuard serves Gmail two ways:
mail clients submit over the helper's SMTP port and the helper releases with ``users.messages.send``;
a draft handed over by ``sendguard gmail check-and-send`` or the Gmail add-on is released with
``users.messages.send`` (the confirmed MIME, in the draft's thread), and the draft is then deleted.

Permissions are the least that do the job: ``gmail.send`` to release (``gmail.compose`` instead when
the drafts feature is on, since it covers sending too), ``openid email`` to learn which Google account
signed in, and, for reconciliation after a crash, ``gmail.readonly`` (a Sent search for the
Message-ID) or ``gmail.metadata`` (a look at the newest Sent headers), as the admin chooses.

The refresh token and client secret live in the keyring (``sendguard.secrets``); the account's other
settings go to ``config.toml``. No network discovery: the API description ships with the client.
"""

from __future__ import annotations

import base64
import email.policy
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.parser import BytesParser
from email.utils import getaddresses
from functools import partial
from pathlib import Path
from typing import Any

import google_auth_httplib2
import httplib2
from google.auth import exceptions as google_auth_errors
from google.oauth2.credentials import Credentials
from googleapiclient import discovery
from googleapiclient.errors import HttpError, MediaUploadSizeError
from googleapiclient.http import MediaInMemoryUpload

from .. import secrets
from ..config import Account
from . import _retry
from .base import (
    AnswerLost,
    AuthError,
    HeldItem,
    MailboxError,
    OutcomeUnknown,
    PermanentError,
    ReleaseItem,
    ReleaseReceipt,
    TransientError,
)

log = logging.getLogger(__name__)

_AUTH = "https://www.googleapis.com/auth/"
SCOPE_SEND = _AUTH + "gmail.send"
SCOPE_COMPOSE = _AUTH + "gmail.compose"
SCOPE_READONLY = _AUTH + "gmail.readonly"
SCOPE_METADATA = _AUTH + "gmail.metadata"
SCOPE_MODIFY = _AUTH + "gmail.modify"
SCOPE_FULL = "https://mail.google.com/"
IDENTITY_SCOPES = ("openid", _AUTH + "userinfo.email")
RELEASE_SCOPES = {SCOPE_SEND, SCOPE_COMPOSE, SCOPE_MODIFY, SCOPE_FULL}
DRAFT_SCOPES = {SCOPE_COMPOSE, SCOPE_MODIFY, SCOPE_FULL}
SEARCH_SCOPES = {SCOPE_READONLY, SCOPE_MODIFY, SCOPE_FULL}
# reconcile mode -> the scope it needs; "search" is rfc822msgid: in Sent, "headers" reads recent Sent headers.
RECONCILE_SCOPES = {"search": SCOPE_READONLY, "headers": SCOPE_METADATA, "off": None}

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MAX_MESSAGE_BYTES = 36_700_160  # the API's upload limit for messages.send / drafts.send (35 MB)
UPLOAD_THRESHOLD = 5 * 1024 * 1024  # above this, upload the MIME through the resumable media path
UPLOAD_CHUNK = 8 * 1024 * 1024
RECENT_SENT_SCAN = 10
_QUOTA_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded", "quotaExceeded",
                  "RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
_SCOPE_REASONS = {"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}
_RETRY_AFTER_TS = re.compile(r"Retry after (\d{4}-\d\d-\d\dT[\d:.]+Z)")
_BCC_HEADER = re.compile(rb"(?mi)^bcc[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n)?")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def requested_scopes(drafts: bool, reconcile: str) -> list[str]:
    """The OAuth scopes to ask for: identity, release (or drafts), and the reconciliation scope chosen."""
    scopes = [*IDENTITY_SCOPES, SCOPE_COMPOSE if drafts else SCOPE_SEND]
    extra = RECONCILE_SCOPES[reconcile]
    if extra:
        scopes.append(extra)
    return scopes


def reconcile_mode(granted: Iterable[str], wanted: str = "search") -> str:
    """What the granted scopes allow: ``search`` (exact), ``headers`` (recent Sent only) or ``off``."""
    granted = set(granted)
    if wanted == "off":
        return "off"
    if SCOPE_METADATA in granted:  # Gmail refuses q= to any token carrying the metadata scope
        return "headers"
    if granted & SEARCH_SCOPES:
        return "search" if wanted == "search" else "headers"
    return "off"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _addresses(values: Iterable[str]) -> list[str]:
    return [addr.strip().lower() for _name, addr in getaddresses([str(v) for v in values]) if addr.strip()]


def header_addresses(raw: bytes) -> dict[str, list[str]]:
    """Lower-cased addresses of From, To, Cc and Bcc as written in the message header."""
    msg = BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    out: dict[str, list[str]] = {}
    for field in ("from", "to", "cc", "bcc"):
        values = [_decode(v) for v in msg.get_all(field, [])]
        out[field] = _addresses(values)
    return out


def _decode(value: Any) -> str:
    text = str(value)
    # compat32 leaves 8-bit (SMTPUTF8) headers as surrogate escapes; bring them back to UTF-8 text.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _header(raw: bytes, name: str) -> str:
    msg = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
    value = msg.get(name)
    return str(value) if value is not None else ""


def with_bcc(raw: bytes, bcc: Iterable[str]) -> bytes:
    """``raw`` with its Bcc header set to ``bcc`` (dropped when empty); other bytes untouched.

    Gmail sends to the addresses in the To, Cc and Bcc headers (there is no envelope), and removes
    Bcc from the copies it delivers, so blind copies must be in a Bcc header for Gmail.
    """
    bcc = list(dict.fromkeys(bcc))
    match = _HEADER_END.search(raw)
    head = raw[: match.start()] if match else raw.rstrip(b"\r\n")
    rest = raw[len(head):]
    had_bcc = bool(_BCC_HEADER.search(head))
    if not bcc and not had_bcc:
        return raw
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    head = _BCC_HEADER.sub(b"", head).rstrip(b"\r\n")
    if bcc:
        head += eol + b"Bcc: " + ", ".join(bcc).encode("utf-8")
    return head + (rest or eol)


class _EndpointHttp(httplib2.Http):
    """httplib2 that sends media uploads to the configured API endpoint too.

    google-api-python-client builds upload URLs from the discovery document's root and, when
    ``api_endpoint`` overrides it, swaps in the host only: the scheme stays https and a path prefix is
    lost, so a plain-http or path-prefixed endpoint (a proxy, a test server) would never see the upload.
    """

    def __init__(self, endpoint: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._base = endpoint.rstrip("/") + "/"
        self._hosts = {urllib.parse.urlsplit(endpoint).netloc, "gmail.googleapis.com", "www.googleapis.com"}

    def request(self, uri, method="GET", body=None, headers=None, redirections=5, connection_type=None):
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc in self._hosts and parts.path.startswith(("/upload/", "/resumable/upload/")):
            uri = self._base + parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
        return super().request(uri, method, body=body, headers=headers, redirections=redirections,
                               connection_type=connection_type)


class _NotFound(PermanentError):
    """Gmail answered 404 for the thing asked."""


class GmailMailbox:
    """One Gmail account: releases with the Gmail API, finds sent mail by Message-ID, reads drafts."""

    kind = "gmail"

    def __init__(self, name: str, address: str, credentials: Credentials | None, *,
                 api_endpoint: str | None = None, reconcile: str = "search", drafts: bool = False,
                 drafts_label: str = "SendGuard", send_as: Iterable[str] = (), gmail_account: str = "",
                 retries: int = 4, backoff: float = 1.0, upload_threshold: int = UPLOAD_THRESHOLD,
                 upload_chunk: int = UPLOAD_CHUNK, timeout: float = 60.0,
                 on_token_rotated: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 credentials_source: Callable[[], Credentials | None] | None = None):
        self.name = name
        self.address = address
        self.credentials = credentials
        self.api_endpoint = api_endpoint or None
        self.reconcile = reconcile
        self.drafts = drafts
        self.drafts_label = drafts_label
        self.gmail_account = gmail_account
        self.send_as = {a.lower() for a in (address, *send_as) if a}
        self.retries = retries
        self.backoff = backoff
        self.upload_threshold = upload_threshold
        self.upload_chunk = max(256 * 1024, upload_chunk // (256 * 1024) * (256 * 1024))
        self.timeout = timeout
        self._on_token_rotated = on_token_rotated
        self._sleep = sleep
        self._service: Any = None
        self._refresh_token = credentials.refresh_token if credentials else None
        # where the sign-in is kept (the keyring): read again after Google refused it, so a reconnect
        # from another process takes effect in a running helper
        self._credentials_source = credentials_source
        self._reread_credentials = False
        # sends whose answer was lost: until the grace is over, "not in Sent" only means "not there yet"
        self._unanswered = _retry.LostAnswers()

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def from_account(cls, account: Account, home: Path) -> GmailMailbox:
        s = account.settings

        def stored_credentials() -> Credentials | None:
            refresh_token = secrets.get(account.secret_key("refresh_token"))
            if not refresh_token:
                return None
            granted = list(s.get("scopes", []))
            return Credentials(None, refresh_token=refresh_token, token_uri=s.get("token_uri", GOOGLE_TOKEN_URI),
                               client_id=s.get("client_id"),
                               client_secret=secrets.get(account.secret_key("client_secret")),
                               scopes=granted or None)

        def rotated(token: str) -> None:
            secrets.put(account.secret_key("refresh_token"), token)

        return cls(account.name, account.address, stored_credentials(), api_endpoint=s.get("api_endpoint"),
                   reconcile=reconcile_mode(s.get("scopes", []), s.get("reconcile", "search")),
                   drafts=bool(s.get("drafts", False)), drafts_label=s.get("drafts_label", "SendGuard"),
                   send_as=s.get("send_as", []), gmail_account=s.get("gmail_account", ""),
                   retries=int(s.get("retries", 4)), backoff=float(s.get("backoff_seconds", 1.0)),
                   upload_threshold=int(s.get("upload_threshold", UPLOAD_THRESHOLD)),
                   upload_chunk=int(s.get("upload_chunk", UPLOAD_CHUNK)),
                   timeout=float(s.get("timeout_seconds", 60.0)), on_token_rotated=rotated,
                   credentials_source=stored_credentials)

    @property
    def service(self) -> Any:
        if self._service is None:
            if self._credentials_source is not None and (self._reread_credentials or self.credentials is None):
                self.credentials = self._credentials_source()
                self._refresh_token = self.credentials.refresh_token if self.credentials else None
                self._reread_credentials = False
            if self.credentials is None:
                raise AuthError(f"SendGuard holds no Gmail sign-in for {self.address}: run "
                                f"`sendguard gmail reconnect {self.name}`; your mail stays held.")
            base = (_EndpointHttp(self.api_endpoint, timeout=self.timeout) if self.api_endpoint
                    else httplib2.Http(timeout=self.timeout))
            # Like googleapiclient.http.build_http: a 308 is the resumable-upload protocol, not a redirect.
            base.redirect_codes = base.redirect_codes - {308}
            authed = google_auth_httplib2.AuthorizedHttp(self.credentials, http=base)
            options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
            self._service = discovery.build("gmail", "v1", http=authed, static_discovery=True,
                                            cache_discovery=False, client_options=options)
        return self._service

    # -- calls, retries and errors -------------------------------------------------------------------

    def _execute(self, make_request: Callable[[], Any], action: str, *, message_id: str | None = None,
                 size: int | None = None, outbox_id: str = "") -> Any:
        """Run one API call with retries on 429/5xx; map failures to the connector errors.

        ``message_id`` marks a send: after an answer that leaves unknown whether the message went out
        (5xx, a dropped connection), Sent is searched before any retry so nothing goes twice. When Sent
        cannot tell (``off``, or ``headers`` not seeing it) the send is OutcomeUnknown, never retried. When
        Sent cannot be searched now, or the send got no answer at all (Gmail may still be carrying it out)
        and it is not in Sent yet, it is ``AnswerLost``: held, and looked for again before any new send.
        """
        attempt = 0
        while True:
            ambiguous = ""  # why the send may have gone out although it failed
            answered = False  # Gmail answered the send (a 5xx): it is done with it, whatever it did
            try:
                result = make_request().execute()
                self._note_rotation()
                return result
            except google_auth_errors.RefreshError as exc:
                refused = self._refresh_failed(exc)
                if isinstance(refused, AuthError):
                    self._sign_in_refused()
                raise refused from None
            except google_auth_errors.TransportError as exc:
                err: MailboxError = TransientError(f"Google's sign-in service could not be reached ({exc}); "
                                                   "SendGuard will try again.")
            except MediaUploadSizeError:
                raise self._too_large(size) from None
            except HttpError as exc:
                err = self._http_error(exc, action, size)
                if isinstance(err, AuthError):
                    self._sign_in_refused()
                if not isinstance(err, TransientError):
                    raise err from None
                ambiguous = f"it answered {exc.resp.status}" if exc.resp.status >= 500 else ""
                answered = True
            except ConnectionRefusedError:
                err = TransientError(f"Gmail could not be reached to {action} (connection refused); "
                                     "SendGuard will try again.")
            except (OSError, httplib2.HttpLib2Error) as exc:
                err = TransientError(f"Gmail could not be reached to {action} ({type(exc).__name__}); "
                                     "SendGuard will try again.")
                ambiguous = f"the connection failed: {type(exc).__name__}"
            if message_id and ambiguous:
                try:
                    sent = self.find_sent(message_id)
                except MailboxError as lookup:  # cannot look now: asked again later, never sent blind
                    raise self._answer_lost(message_id, ambiguous, "Sent mail cannot be searched now",
                                            f" Last answer: {lookup}") from None
                if sent:
                    self._unanswered.forget(message_id)
                    return {"id": None, "reconciled": True}
                if sent is None:
                    raise self._outcome_unknown(ambiguous, outbox_id) from None
                if not answered:  # no answer at all: Gmail may still be carrying the send out
                    raise self._answer_lost(message_id, ambiguous, "it is not in Sent mail yet") from None
            delay = err.retry_after if isinstance(err, TransientError) and err.retry_after else None
            attempt += 1
            if delay is None:  # the helper's back-off, from this account's first wait (backoff_seconds)
                delay = _retry.delay(attempt, base=self.backoff)
            # the helper's one retry policy (_retry): only a short pause is waited out here; anything longer
            # goes back to the outbox (the server's Retry-After, if any, travels with the error)
            if attempt > min(self.retries, _retry.MAX_INLINE_ATTEMPTS - 1) or delay > _retry.MAX_INLINE_WAIT:
                raise err
            log.info("gmail %s: %s; retry %d in %.1fs", self.address, err, attempt, delay)
            self._sleep(delay)

    def _answer_lost(self, message_id: str, cause: str, why: str, last: str = "") -> AnswerLost:
        """A send that may have gone out, which Sent cannot settle yet: the message stays held and its next
        release looks in Sent first (``_after_lost_answer``), in a restarted helper too (the outbox keeps
        the loss on record)."""
        self._unanswered.record(message_id)
        return AnswerLost(f"Gmail did not confirm the send from {self.address} ({cause}), and {why}. The "
                          "message may have gone out, so it is not sent again before SendGuard has looked for it "
                          f"in Sent mail; SendGuard will look again.{last}")

    def _outcome_unknown(self, cause: str, outbox_id: str) -> OutcomeUnknown:
        """A send that may have gone out, which Sent cannot confirm: the user decides, nothing is retried."""
        if self.reconcile == "off":
            why = "SendGuard cannot look in Sent mail (only the gmail.send permission was granted)"
        else:
            why = "SendGuard does not see it among the newest Sent messages (gmail.metadata cannot search)"
        then = f"`sendguard queue resolve {outbox_id} --sent` or `--resend`" if outbox_id else "settle it"
        return OutcomeUnknown(f"Gmail did not confirm the send from {self.address} ({cause}). The message may "
                              f"have gone out, and {why}, so it is not sent again. Check Sent mail in Gmail, "
                              f"then {then}.")

    def _sign_in_refused(self) -> None:
        """Google refused the sign-in: the next call reads it from the keyring again."""
        self._service = None
        self._reread_credentials = True

    def _note_rotation(self) -> None:
        token = getattr(self.credentials, "refresh_token", None)
        if token and token != self._refresh_token:
            self._refresh_token = token
            if self._on_token_rotated:
                self._on_token_rotated(token)

    def _reconnect_hint(self) -> str:
        return f"run `sendguard gmail reconnect {self.name}` to sign in again; your mail stays held."

    def _refresh_failed(self, exc: Exception) -> MailboxError:
        text = str(exc)
        if getattr(exc, "retryable", False):
            return TransientError(f"Google's sign-in service failed for {self.address}; "
                                  "SendGuard will try again.")
        if "invalid_grant" in text or "revoked" in text.lower() or "expired" in text.lower():
            return AuthError(f"Gmail access for {self.address} was revoked or has expired: "
                             f"{self._reconnect_hint()}")
        if "invalid_client" in text or "unauthorized_client" in text or "deleted_client" in text:
            return AuthError(f"Google no longer accepts SendGuard's OAuth client for {self.address} "
                             f"(deleted or disabled): ask your admin for a new client file, then "
                             f"{self._reconnect_hint()}")
        return AuthError(f"Google refused to renew Gmail access for {self.address} ({text.split(',')[0]}): "
                         f"{self._reconnect_hint()}")

    def _too_large(self, size: int | None) -> PermanentError:
        mb = f"{size / 1_048_576:.1f} MB; " if size else ""
        return PermanentError(f"The message is too large for Gmail ({mb}Gmail accepts up to 35 MB including "
                              "encoding): remove attachments or share them as links, then send again.")

    def _http_error(self, exc: HttpError, action: str, size: int | None) -> MailboxError:
        status = exc.resp.status
        reason, message = _error_detail(exc)
        if status == 401:
            return AuthError(f"Gmail refused SendGuard's sign-in for {self.address}: "
                             f"{self._reconnect_hint()}")
        if status == 429 or (status == 403 and reason in _QUOTA_REASONS):
            wait = _retry_after(exc, message)
            when = f" in {int(wait)} s" if wait else " later"
            err = TransientError(f"Gmail quota exceeded for {self.address} ({message or reason}); "
                                 f"SendGuard will try again{when}.", retry_after=wait)
            return err
        if status == 403 and reason in _SCOPE_REASONS:
            return AuthError(f"{self.address} has not allowed SendGuard to {action}: run `sendguard gmail "
                             f"reconnect {self.name}` and tick every permission asked; your mail stays held.")
        if status == 413 or (status == 400 and re.search(r"too large|exceed|size", message, re.I)):
            return self._too_large(size)
        if status >= 500:
            return TransientError(f"Gmail failed to {action} ({status} {message or reason}); "
                                  "SendGuard will try again.")
        if status == 404:
            return _NotFound(f"Gmail could not find what SendGuard asked for to {action} ({message}).")
        return PermanentError(f"Gmail refused to {action} for {self.address}: {message or reason or status}.")

    # -- Mailbox interface ---------------------------------------------------------------------------

    def gmail_raw(self, item: ReleaseItem) -> bytes:
        """The bytes Gmail gets: ``item.raw`` with a Bcc header for every recipient not in To/Cc.

        Refuses (PermanentError) a From that is not this account and a To/Cc address that is not among
        the recipients to release to: Gmail sends to the header addresses, so one the user removed
        must not still be in the header.
        """
        heads = header_addresses(item.raw)
        senders = heads["from"]
        if senders and not set(senders) & self.send_as:
            raise PermanentError(f"The message is from {senders[0]}, but this Gmail account releases mail "
                                 f"from {self.address}: Gmail would send it as another sender. Send from "
                                 f"{self.address}, or add a Gmail account for {senders[0]}.")
        recipients = list(dict.fromkeys(r.lower() for r in item.recipients))
        if not recipients:
            raise PermanentError("The message has no recipients left to send to.")
        visible = set(heads["to"]) | set(heads["cc"])
        stray = sorted(visible - set(recipients))
        if stray:
            raise PermanentError(f"The To/Cc header still names {', '.join(stray)}, which is not among the "
                                 "recipients to release to; Gmail would send to it, so SendGuard refuses.")
        bcc = [r for r in recipients if r not in visible]
        return with_bcc(item.raw, bcc)

    def release(self, item: ReleaseItem) -> ReleaseReceipt:
        raw = self.gmail_raw(item)
        if len(raw) > MAX_MESSAGE_BYTES:
            raise self._too_large(len(raw))
        draft_id = None
        if item.source == "gmail" and (item.source_ref or "").startswith("draft:"):
            draft_id = (item.source_ref or "").split(":", 1)[1]
        # a loss the outbox has on record (this process may not have seen it: a restart since)
        self._unanswered.recall(item.message_id, item.answer_lost_ago)
        if item.message_id in self._unanswered:
            settled = self._after_lost_answer(item, draft_id)
            if settled is not None:
                return settled
        if draft_id is not None:
            return self._release_draft(item, draft_id, raw)
        users = self.service.users()
        payload = self._payload(raw)
        thread_id = self._thread_of_reply(raw)
        if thread_id:  # Gmail files a reply in its conversation only when told the threadId
            payload.setdefault("body", {})["threadId"] = thread_id
        result = self._execute(lambda: users.messages().send(userId="me", **payload),
                               "send the message", message_id=item.message_id, size=len(raw),
                               outbox_id=item.outbox_id)
        return self._receipt(result, item, "messages.send")

    def _after_lost_answer(self, item: ReleaseItem, draft_id: str | None) -> ReleaseReceipt | None:
        """An earlier send of this message lost its answer: look in Sent before sending it again.

        Found: that send went out (a handed-over draft is deleted, as after a send). Sent cannot tell
        (``headers`` not seeing it, ``off``): OutcomeUnknown, the user decides. Not in Sent within the
        grace (``_retry.sent_items_grace``): TransientError, asked again later; after it: None, nothing
        went out and it is sent. A look-up that fails raises as it is (TransientError, AuthError): the
        outbox asks again with back-off, and nothing is sent meanwhile."""
        try:
            found = self.find_sent(item.message_id)
        except TransientError as exc:
            raise TransientError(f"Gmail did not confirm an earlier send of this message from {self.address}: it may "
                                 "have gone out, so it is not sent again before SendGuard has looked for it in Sent "
                                 "mail. Sent mail cannot be searched now; SendGuard will look again. Last answer: "
                                 f"{exc}", retry_after=exc.retry_after) from None
        if found:
            self._unanswered.forget(item.message_id)
            receipt = self._receipt({"id": None, "reconciled": True}, item, "messages.send")
            if draft_id is not None:
                receipt.detail["draft_id"] = draft_id
                receipt.detail["draft_deleted"] = self._delete_draft(draft_id)
            return receipt
        if found is None:
            raise self._outcome_unknown("the answer to an earlier send of it was lost", item.outbox_id)
        if self._unanswered.check(item.message_id, "Gmail", "Sent mail"):  # the grace is over: nothing went out
            log.info("gmail %s: %s is not in Sent mail %.0f s after its send lost its answer; sending it again",
                     self.address, item.message_id, _retry.sent_items_grace())
        return None

    def _thread_of_reply(self, raw: bytes) -> str | None:
        """The Gmail thread of the message this one replies to (In-Reply-To, then References), if found.

        Needs the Sent/mailbox search (``search`` reconciliation, gmail.readonly); without it, or when
        Gmail cannot be asked, the reply is sent without a threadId (Gmail may then start a new thread).
        """
        if self.reconcile != "search":
            return None
        refs = (_header(raw, "In-Reply-To") + " " + _header(raw, "References")).split()
        messages = self.service.users().messages()
        for ref in dict.fromkeys(r.strip().strip("<>") for r in refs if r.strip().strip("<>")):
            try:
                found = self._execute(partial(messages.list, userId="me", q=f"rfc822msgid:{ref}",
                                              includeSpamTrash=True, maxResults=1),
                                      "find the conversation of the reply")
            except MailboxError as exc:
                log.info("gmail %s: no thread for reply to %s: %s", self.address, ref, exc)
                return None
            hits = found.get("messages") or []
            if hits and hits[0].get("threadId"):
                return str(hits[0]["threadId"])
        return None

    def _release_draft(self, item: ReleaseItem, draft_id: str, raw: bytes) -> ReleaseReceipt:
        """Send the confirmed MIME with ``messages.send`` in the draft's thread, then delete the draft.

        The draft is not updated and sent: the compose window may still be open and autosaving, and
        anything Gmail saved after the confirmation would go out unseen. The draft is only read for its
        thread (and, if it is gone, to find out whether Gmail already sent it).
        """
        drafts = self.service.users().drafts()
        try:
            draft = self._execute(lambda: drafts.get(userId="me", id=draft_id, format="minimal"),
                                  "read the draft")
        except _NotFound:
            if self.find_sent(item.message_id):
                return ReleaseReceipt("gmail", {"account": self.address, "method": "messages.send",
                                                "reconciled": True, "draft_id": draft_id})
            raise PermanentError(f"The Gmail draft {draft_id} no longer exists (sent or deleted in Gmail); "
                                 "SendGuard sent nothing.") from None
        payload = self._payload(raw)
        thread_id = (draft.get("message") or {}).get("threadId")
        if thread_id:
            payload.setdefault("body", {})["threadId"] = thread_id
        messages = self.service.users().messages()
        result = self._execute(lambda: messages.send(userId="me", **payload), "send the message",
                               message_id=item.message_id, size=len(raw), outbox_id=item.outbox_id)
        receipt = self._receipt(result, item, "messages.send")
        receipt.detail["draft_id"] = draft_id
        receipt.detail["draft_deleted"] = self._delete_draft(draft_id)
        return receipt

    def _delete_draft(self, draft_id: str) -> bool:
        """Delete the draft after its content went out; a failure is logged, never raised (it was sent)."""
        drafts = self.service.users().drafts()
        try:
            self._execute(lambda: drafts.delete(userId="me", id=draft_id), "delete the sent draft")
        except _NotFound:
            return True
        except MailboxError as exc:
            log.warning("gmail %s: sent, but the draft %s stays in Drafts: %s", self.address, draft_id, exc)
            return False
        return True

    def _payload(self, raw: bytes) -> dict[str, Any]:
        if len(raw) <= self.upload_threshold:
            return {"body": {"raw": _b64(raw)}}
        return {"media_body": MediaInMemoryUpload(raw, mimetype="message/rfc822", resumable=True,
                                                  chunksize=self.upload_chunk)}

    def _receipt(self, result: dict[str, Any], item: ReleaseItem, method: str) -> ReleaseReceipt:
        detail = {"account": self.address, "method": method, "gmail_id": result.get("id"),
                  "thread_id": result.get("threadId"), "message_id": item.message_id}
        if result.get("reconciled"):
            detail["reconciled"] = True
        return ReleaseReceipt("gmail", detail)

    def close(self) -> None:
        """Drop the API client (and its HTTP connections); the next call builds it again."""
        self._service = None

    def find_sent(self, message_id: str) -> bool | None:
        """Whether a message with this Message-ID is in the account's Sent mail.

        ``search`` mode asks Gmail for ``rfc822msgid:`` in Sent and also reads the newest Sent headers
        (the search index can lag a just-sent message), so its "no" is an answer; ``headers`` mode can
        only see the newest Sent messages, so it answers True or None; ``off`` always None. When Gmail
        cannot be asked right now it raises (TransientError/AuthError) so the outbox asks again later.
        """
        wanted = message_id.strip().strip("<>").strip()
        if self.reconcile == "off" or not wanted:
            return None
        try:
            if self.reconcile == "search":
                messages = self.service.users().messages()
                found = self._execute(lambda: messages.list(userId="me", q=f"rfc822msgid:{wanted}",
                                                            labelIds=["SENT"], includeSpamTrash=True,
                                                            maxResults=5), "search Sent mail")
                if found.get("messages"):
                    return True
            if self._recent_sent_has(wanted):
                return True
        except PermanentError as exc:
            log.warning("gmail %s: cannot tell whether %s was sent: %s", self.address, message_id, exc)
            return None
        return False if self.reconcile == "search" else None

    def _recent_sent_has(self, wanted: str) -> bool:
        messages = self.service.users().messages()
        listing = self._execute(lambda: messages.list(userId="me", labelIds=["SENT"], includeSpamTrash=True,
                                                      maxResults=RECENT_SENT_SCAN), "list Sent mail")
        for entry in listing.get("messages", []):
            meta = self._execute(partial(messages.get, userId="me", id=entry["id"], format="metadata",
                                         metadataHeaders=["Message-ID"]),
                                 "read Sent mail")
            for header in meta.get("payload", {}).get("headers", []):
                value = header.get("value", "").strip().strip("<>")
                if header.get("name", "").lower() == "message-id" and value == wanted:
                    return True
        return False

    # -- drafts ----------------------------------------------------------------------------------------

    def _need_drafts(self) -> None:
        if not self.drafts:
            raise PermanentError(f"The drafts feature is off for {self.address}: run `sendguard accounts add "
                                 f"gmail --address {self.address} --drafts` to allow Gmail drafts.")

    def list_drafts(self) -> list[dict[str, Any]]:
        """Drafts labelled for SendGuard (``label:<drafts_label>``), newest first, with their headers."""
        self._need_drafts()
        drafts = self.service.users().drafts()
        query = f'label:"{self.drafts_label}"' if " " in self.drafts_label else f"label:{self.drafts_label}"
        out: list[dict[str, Any]] = []
        request = drafts.list(userId="me", q=query, maxResults=100)
        while request is not None:
            page = self._execute(_again(request), "list drafts")
            for entry in page.get("drafts", []):
                full = self._execute(partial(drafts.get, userId="me", id=entry["id"], format="metadata"),
                                     "read a draft")
                headers = {h["name"].lower(): h["value"]
                           for h in full.get("message", {}).get("payload", {}).get("headers", [])}
                out.append({"id": entry["id"], "message_id": headers.get("message-id", ""),
                            "from": headers.get("from", ""), "to": headers.get("to", ""),
                            "cc": headers.get("cc", ""), "subject": headers.get("subject", ""),
                            "date": headers.get("date", ""),
                            "snippet": full.get("message", {}).get("snippet", "")})
            request = drafts.list_next(request, page)
        return out

    def find_drafts(self, to: Iterable[str] = (), cc: Iterable[str] = (), bcc: Iterable[str] = (),
                    limit: int = 25) -> list[dict[str, Any]]:
        """The newest saved drafts (at most ``limit``), newest first, each marked ``exact`` when its
        To/Cc/Bcc are the addresses given (what a compose event with draft metadata carries).

        A draft's id survives Gmail's autosaves (its message id does not), so the id found here is
        what the outbox keeps.
        """
        self._need_drafts()
        wanted = {f: sorted(set(_addresses(v))) for f, v in (("to", to), ("cc", cc), ("bcc", bcc))}
        drafts = self.service.users().drafts()
        listing = self._execute(lambda: drafts.list(userId="me", maxResults=limit), "list drafts")
        out: list[dict[str, Any]] = []
        for entry in listing.get("drafts", [])[:limit]:
            try:
                full = self._execute(partial(drafts.get, userId="me", id=entry["id"], format="metadata"),
                                     "read a draft")
            except _NotFound:  # sent or discarded meanwhile
                continue
            message = full.get("message") or {}
            headers: dict[str, list[str]] = {}
            for h in message.get("payload", {}).get("headers", []):
                headers.setdefault(h.get("name", "").lower(), []).append(_decode(h.get("value", "")))
            found = {f: sorted(set(_addresses(headers.get(f, [])))) for f in ("to", "cc", "bcc")}
            out.append({"id": entry["id"], "thread_id": message.get("threadId"),
                        "subject": (headers.get("subject") or [""])[0], **found,
                        "saved": int(message.get("internalDate") or 0),
                        "exact": any(wanted.values()) and found == wanted})
        out.sort(key=lambda d: d["saved"], reverse=True)
        return out

    def draft_id_for_message(self, gmail_message_id: str) -> str | None:
        """The draft whose current message has this Gmail message id (what the add-on is given)."""
        drafts = self.service.users().drafts()
        request = drafts.list(userId="me", maxResults=500)
        while request is not None:
            page = self._execute(_again(request), "list drafts")
            for entry in page.get("drafts", []):
                if entry.get("message", {}).get("id") == gmail_message_id:
                    return entry["id"]
            request = drafts.list_next(request, page)
        return None

    def take_draft(self, draft_id: str) -> HeldItem:
        """A draft's MIME as a held item for the outbox; the draft itself is not touched."""
        self._need_drafts()
        drafts = self.service.users().drafts()
        try:
            draft = self._execute(lambda: drafts.get(userId="me", id=draft_id, format="raw"),
                                  "read the draft")
        except _NotFound:
            raise PermanentError(f"No Gmail draft {draft_id} in {self.address} (sent or deleted?).") from None
        raw = _unb64(draft.get("message", {}).get("raw", ""))
        heads = header_addresses(raw)
        recipients = tuple(dict.fromkeys(heads["to"] + heads["cc"] + heads["bcc"]))
        if not recipients:
            raise PermanentError(f"The Gmail draft {draft_id} has no recipients yet.")
        sender = heads["from"][0] if heads["from"] else self.address.lower()
        if sender not in self.send_as:
            raise PermanentError(f"The draft is from {sender}, but this Gmail account is {self.address}.")
        return HeldItem(ref=f"draft:{draft_id}", raw=raw, envelope_from=sender, recipients=recipients,
                        source="gmail")


def _error_detail(exc: HttpError) -> tuple[str, str]:
    try:
        data = json.loads(exc.content.decode("utf-8"))
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "", str(getattr(exc, "reason", "") or "")
    error = data.get("error", {}) if isinstance(data, dict) else {}
    if not isinstance(error, dict):
        return str(error), str(data.get("error_description", ""))
    errors = error.get("errors") or [{}]
    reason = errors[0].get("reason") or error.get("status") or ""
    return str(reason), str(error.get("message", ""))


def _again(request: Any) -> Callable[[], Any]:
    """A prepared API request to execute (again, on a retry) as it is."""
    return lambda: request


def _retry_after(exc: HttpError, message: str) -> float | None:
    header = exc.resp.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    m = _RETRY_AFTER_TS.search(message or "")
    if m:
        try:
            when = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
        except ValueError:
            return None
    return None
