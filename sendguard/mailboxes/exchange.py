"""On-premises Exchange over EWS (exchangelib): hold folder intake, release, Sent Items reconciliation.

Intake: the user (or the Outlook add-in) puts a message in the "SendGuard Hold" folder, or marks a
draft with the category "SendGuard". ``fetch_held`` finds those items (a pull subscription tells it
when to look; a periodic full scan is the fallback), hands their MIME to the outbox, and ``ack_held``
marks each taken item with the category "SendGuard: taken" so it is not taken twice.

Outbox interception: an item the user sent with a deferred send time (PidTagDeferredSendTime,
0x3FEF: Outlook's delay delivery, a "defer all sends" rule, scheduled send) waits in the server-side
Outbox until that time. ``watch_outbox`` moves every such item whose time is still ahead into the hold
folder at once (MoveItem), so the server never sends it; ``fetch_held`` then takes it like any held item,
with the source ``exchange-outbox``. Items without a deferred time are never touched. Releasing clears
the deferred time in the same UpdateItem that sends (Exchange would queue it again otherwise); a
cancelled one goes back to Drafts. ``find_missed`` lists what the server sent at its deferred time
while nobody was watching, from Sent Items (the sent copy keeps 0x3FEF).

Release: an item taken from the mailbox is sent in place (recipients and attachments brought in line
with the confirmed message first) with ``send_and_save`` so the copy lands in Sent Items; a message
that came in over SMTP is created from its MIME and sent the same way. Before any send the connector
looks the Message-ID up in Sent Items, so a retried release never sends twice.

Secrets (password, OAuth token cache) live in the keyring via ``sendguard.secrets``; nothing here
writes them to a file or a log.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import requests
from exchangelib import (
    BASIC,
    DELEGATE,
    NTLM,
    OAUTH2,
    SHALLOW,
    UTC,
    Account,
    Configuration,
    Credentials,
    EWSDateTime,
    ExtendedProperty,
    FailFast,
    Folder,
    FolderCollection,
    Message,
)
from exchangelib import Mailbox as EwsMailbox
from exchangelib import errors as ews_errors
from exchangelib.credentials import OAuth2AuthorizationCodeCredentials
from exchangelib.folders import SingleFolderQuerySet

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

# exchangelib logs request headers (and so Basic credentials and bearer tokens) at DEBUG: never let
# those records through, whatever level the application runs at.
for _noisy in ("exchangelib", "requests_oauthlib", "requests_ntlm"):
    logging.getLogger(_noisy).setLevel(max(logging.getLogger(_noisy).level, logging.INFO))

FULL_SCAN_SECONDS = 300.0
AUTH_TYPES = {"ntlm": NTLM, "basic": BASIC, "oauth": OAUTH2, "auto": None}
HELD_FIELDS = ("mime_content", "message_id", "subject", "categories", "to_recipients", "cc_recipients",
               "bcc_recipients", "author", "deferred_send_time")
OUTBOX_SOURCE = "exchange-outbox"
CONNECTIONS = 4  # per server and sign-in: release, hold/Outbox watch, Outbox stream, one spare


class DeferredSendTime(ExtendedProperty):
    """PidTagDeferredSendTime (0x3FEF, PT_SYSTIME): the time the server may send an Outbox item."""

    property_tag = 0x3FEF
    property_type = "SystemTime"


try:
    Message.register("deferred_send_time", DeferredSendTime)
except ValueError:  # registered already (the module was loaded twice, e.g. by a test reloading it)
    pass


def _mailbox(name_addr: tuple[str, str]) -> EwsMailbox:
    name, addr = name_addr
    return EwsMailbox(name=name or None, email_address=addr)


def _addresses(boxes) -> list[str]:
    return [b.email_address for b in (boxes or []) if b.email_address]


class _TokenCredentials(OAuth2AuthorizationCodeCredentials):
    """OAuth for EWS with a token from msal; ``refresh`` asks msal again (refresh token in the keyring)."""

    def __init__(self, token_source, **kwargs):
        self._token_source = token_source
        super().__init__(access_token=self._token(), **kwargs)

    def _token(self) -> dict:
        result = self._token_source.access_token()
        return {"access_token": result["access_token"], "token_type": "Bearer",
                "expires_in": int(result.get("expires_in", 3600))}

    def refresh(self, session):
        self.access_token = self._token()


class ExchangeMailbox:
    """The Mailbox (and HoldingMailbox) interface for one Exchange account over EWS."""

    kind = "exchange"

    def __init__(self, name: str, address: str, *, server: str | None = None, autodiscover: bool = False,
                 username: str | None = None, password: str | None = None, auth: str = "auto",
                 token_source=None, hold_folder: str = HOLD_FOLDER, timeout: float = 60.0,
                 full_scan_seconds: float = FULL_SCAN_SECONDS, password_key: str | None = None):
        if not server and not autodiscover:
            raise PermanentError(f"Exchange account {name}: give a server URL or turn autodiscover on.")
        self.name = name
        self.address = address
        self.server = server
        self.autodiscover = autodiscover
        self.username = username or address
        self._password = password
        # the keyring entry of the password: read again when the server refuses it (the user may have
        # stored a new one meanwhile), so a running helper needs no restart after a password change
        self._password_key = password_key
        self._reread_password = False
        self.auth = auth
        self._token_source = token_source
        self.hold_folder_name = hold_folder
        self.timeout = timeout
        self.full_scan_seconds = full_scan_seconds
        self.backoff = _retry.Backoff()
        # sends whose answer was lost: until the grace is over, "not in Sent Items or the Outbox" only means
        # "not filed yet" (Exchange saves the sent copy asynchronously, later under load)
        self._unanswered = _retry.LostAnswers()
        self._lock = threading.RLock()
        self._account: Account | None = None
        self._hold = None
        self._subscription: tuple[str, str] | None = None  # (id, watermark)
        self._last_scan = 0.0
        self._outbox_moved = False  # items were moved from the Outbox into the hold folder: look there
        self._stream_subscription: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_account(cls, account: AccountConfig, home: Path) -> ExchangeMailbox:
        """The connector for an account (the helper keeps one per account while it runs)."""
        s = account.settings
        auth = s.get("auth", "auto")
        token_source = None
        password_key = None
        if auth == "oauth":
            from .graph import MsalTokenSource

            token_source = MsalTokenSource.for_ews(account)
        else:
            password_key = account.secret_key("password")
        return cls(account.name, account.address, server=s.get("server"), autodiscover=bool(s.get("autodiscover")),
                   username=s.get("username"), password=secrets.get(password_key) if password_key else None,
                   auth=auth, token_source=token_source, hold_folder=s.get("hold_folder", HOLD_FOLDER),
                   timeout=float(s.get("timeout", 60)), password_key=password_key)

    def companion(self) -> ExchangeMailbox:
        """Another connector for the same account and sign-in, with its own connection and lock, for the
        Outbox watch and its streaming connection: a long release (a large attachment) on this one never
        delays a take."""
        return ExchangeMailbox(self.name, self.address, server=self.server, autodiscover=self.autodiscover,
                               username=self.username, password=self._password, auth=self.auth,
                               token_source=self._token_source, hold_folder=self.hold_folder_name,
                               timeout=self.timeout, full_scan_seconds=self.full_scan_seconds,
                               password_key=self._password_key)

    def _where(self) -> str:
        return self.server or f"autodiscover for {self.address}"

    def _connect(self) -> Account:
        if self._account is not None:
            return self._account
        if self.auth == "oauth":
            if self._token_source is None:
                raise AuthError(f"Exchange account {self.name} has no sign-in; run `sendguard accounts add exchange "
                                f"--address {self.address} --oauth` again. Your mail stays held.")
            credentials = _TokenCredentials(self._token_source)
        else:
            if self._password_key and (self._reread_password or not self._password):
                self._password = secrets.get(self._password_key)
                self._reread_password = False
            if not self._password:
                raise AuthError(f"No password stored for Exchange account {self.name}; run `sendguard accounts add "
                                f"exchange --address {self.address} --password-stdin` again. Your mail stays held.")
            credentials = Credentials(self.username, self._password)
        auth_type = AUTH_TYPES.get(self.auth)
        if self.autodiscover:
            config = Configuration(credentials=credentials, auth_type=auth_type, retry_policy=FailFast())
            account = Account(self.address, credentials=credentials, config=config, autodiscover=True,
                              access_type=DELEGATE, default_timezone=UTC)
        else:
            config = Configuration(service_endpoint=self.server, credentials=credentials, auth_type=auth_type,
                                   retry_policy=FailFast())
            account = Account(self.address, config=config, autodiscover=False, access_type=DELEGATE,
                              default_timezone=UTC)
        account.protocol.TIMEOUT = self.timeout
        # exchangelib shares one protocol (and its connection pool, one connection by default) between all
        # connectors of the same server and sign-in: the release, the Outbox watch and its streaming
        # connection each need their own, or a long release or an open stream would hold up a take.
        account.protocol.max_connections = max(account.protocol.max_connections or 1, CONNECTIONS)
        self._account = account
        return account

    def close(self) -> None:
        with self._lock:
            if self._account is not None:
                self._account.protocol.close()
            self._account = None
            self._hold = None
            self._subscription = None

    # ------------------------------------------------------------------ error translation
    def _call(self, what: str, fn):
        """Run ``fn`` against the server; turn exchangelib and network errors into Mailbox errors.

        A throttling answer with a short back-off is waited out here (a throttled request was not
        carried out, so repeating it cannot double anything); a long one goes back to the outbox.
        Connection failures are never repeated here: the request may have reached the server.
        """
        attempts = 0
        while True:
            attempts += 1
            try:
                with self._lock:
                    result = fn(self._connect())
                self.backoff.reset()
                return result
            except ews_errors.ErrorServerBusy as e:
                wait = e.back_off if e.back_off is not None else self.backoff.next_delay()
                if wait <= _retry.MAX_INLINE_WAIT and attempts < _retry.MAX_INLINE_ATTEMPTS:
                    _retry.sleep(wait)
                    continue
                raise TransientError(f"The Exchange server is busy (throttling) while {what}; trying again in "
                                     f"{wait:.0f} s. Your mail stays held.", retry_after=wait) from None
            except MailboxError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
                raise self._translate(what, e) from None

    def _translate(self, what: str, e: Exception) -> MailboxError:
        if isinstance(e, ews_errors.UnauthorizedError | ews_errors.ErrorAccessDenied):
            self.close()
            self._reread_password = True
            if self._token_source is not None:
                self._token_source.reset()
            how = "--oauth" if self.auth == "oauth" else "--password-stdin"
            return AuthError(f"Exchange refused the sign-in for {self.address} (wrong password, or the token "
                             f"expired or was revoked): run `sendguard accounts add exchange --address "
                             f"{self.address} {how}` to sign in again. Your mail stays held.")
        if isinstance(e, AuthError):
            return e
        if isinstance(e, ews_errors.ErrorQuotaExceeded):
            return PermanentError(f"Your Exchange mailbox {self.address} is full, so the message cannot be "
                                  "sent or saved; free some space and send it again. Nothing was sent.")
        if isinstance(e, ews_errors.ErrorMessageSizeExceeded):
            return PermanentError("The message is larger than the Exchange server accepts (an attachment is too "
                                  "large); remove or shrink attachments and send again. Nothing was sent.")
        if isinstance(e, ews_errors.ErrorSendAsDenied):
            return PermanentError(f"Exchange does not let {self.address} send as this sender. Nothing was sent.")
        if isinstance(e, ews_errors.ErrorInvalidRecipients | ews_errors.ErrorMailRecipientNotFound):
            return PermanentError(f"Exchange refused a recipient: {e}. Nothing was sent.")
        if isinstance(e, ews_errors.ErrorNonExistentMailbox):
            return PermanentError(f"Exchange has no mailbox {self.address}; check the account settings.")
        network = (ews_errors.TransportError, ews_errors.CASError, requests.exceptions.RequestException,
                   ConnectionError, TimeoutError, OSError)
        wait = self.backoff.next_delay()
        if isinstance(e, network):
            self.close()
            return TransientError(f"Cannot reach the Exchange server at {self._where()} while {what}; trying "
                                  f"again in {wait:.0f} s. Your mail stays held.", retry_after=wait)
        log.warning("unexpected Exchange error while %s: %s", what, type(e).__name__)
        return TransientError(f"Exchange answered with an error while {what} ({type(e).__name__}: {e}); trying "
                              f"again in {wait:.0f} s. Your mail stays held.", retry_after=wait)

    # ------------------------------------------------------------------ folders
    def _hold_folder(self, account: Account):
        if self._hold is not None:
            return self._hold
        root = account.msg_folder_root
        query = SingleFolderQuerySet(account=account, folder=root).depth(SHALLOW)
        found = [f for f in query.filter(name=self.hold_folder_name) if not isinstance(f, Exception)]
        if found:
            self._hold = found[0]
        else:
            folder = Folder(parent=root, name=self.hold_folder_name, folder_class="IPF.Note")
            try:
                folder.save()
            except ews_errors.ErrorFolderExists:
                folder = next(f for f in query.filter(name=self.hold_folder_name) if not isinstance(f, Exception))
            log.info("created the %r folder in %s", self.hold_folder_name, self.address)
            self._hold = folder
        return self._hold

    def ensure_hold_folder(self) -> str:
        """Create the hold folder if needed (first run); returns its id. Also proves the sign-in works."""
        return self._call("preparing the hold folder", lambda a: self._hold_folder(a).id)

    # ------------------------------------------------------------------ intake
    def _changed_since_last_look(self, account: Account) -> bool:
        """Ask the pull subscription whether anything happened; any doubt means "look"."""
        now = time.monotonic()
        if self._subscription is None or now - self._last_scan >= self.full_scan_seconds:
            self._subscribe(account)
            return True
        sub_id, watermark = self._subscription
        try:
            changed = False
            for notification in self._hold_folder(account).get_events(subscription_id=sub_id, watermark=watermark):
                for event in notification.events:
                    watermark = event.watermark or watermark
                    if type(event).__name__ != "StatusEvent":
                        changed = True
            self._subscription = (sub_id, watermark)
            return changed
        except (ews_errors.ErrorSubscriptionNotFound, ews_errors.ErrorExpiredSubscription,
                ews_errors.ErrorInvalidSubscription, ews_errors.ErrorInvalidWatermark):
            log.info("the pull subscription on %s lapsed; scanning and subscribing again", self.address)
            self._subscribe(account)
            return True

    def _subscribe(self, account: Account) -> None:
        folders = FolderCollection(account=account, folders=[self._hold_folder(account), account.drafts])
        try:
            self._subscription = folders.subscribe_to_pull(
                event_types=("CreatedEvent", "ModifiedEvent", "MovedEvent", "CopiedEvent"), timeout=30)
        except ews_errors.EWSError as e:  # polling fallback: the server may not allow subscriptions
            if isinstance(e, ews_errors.UnauthorizedError | ews_errors.TransportError):
                raise
            log.info("no pull subscription on %s (%s); polling instead", self.address, type(e).__name__)
            self._subscription = None

    def fetch_held(self) -> list[HeldItem]:
        return self._call("looking for held mail", self._fetch_held)

    def _fetch_held(self, account: Account) -> list[HeldItem]:
        changed = self._changed_since_last_look(account)
        if not (changed or self._outbox_moved):
            return []
        hold = self._hold_folder(account)
        candidates = []
        for folder, needs_category in ((hold, False), (account.drafts, True)):
            for item in folder.all().only("categories"):
                if isinstance(item, Exception):
                    continue
                cats = set(item.categories or [])
                if TAKEN_CATEGORY in cats or (needs_category and DRAFT_CATEGORY not in cats):
                    continue
                candidates.append((item.id, item.changekey))
        self._last_scan = time.monotonic()
        self._outbox_moved = False  # the scan that sees what was moved has been made
        if not candidates:
            return []
        held = []
        for item in account.fetch(ids=candidates, only_fields=list(HELD_FIELDS)):
            if isinstance(item, Exception) or not item.mime_content:
                continue  # deleted between the two calls, or not a message
            raw = _mime.ensure_message_id(bytes(item.mime_content), item.message_id)
            recipients = _addresses(item.to_recipients) + _addresses(item.cc_recipients) + _addresses(
                item.bcc_recipients)
            source = OUTBOX_SOURCE if item.deferred_send_time is not None else "exchange"
            held.append(HeldItem(ref=item.id, raw=raw, envelope_from=self.address,
                                 recipients=tuple(dict.fromkeys(recipients)), source=source))
        return held

    def ack_held(self, ref: str) -> None:
        def ack(account: Account) -> None:
            item = self._get(account, ref, ("categories",))
            if item is None:
                log.info("held item on %s vanished before it was marked as taken", self.address)
                return
            cats = list(item.categories or [])
            if TAKEN_CATEGORY not in cats:
                item.categories = cats + [TAKEN_CATEGORY]
                item.save(update_fields=["categories"])

        self._call("marking a held item as taken", ack)

    # ------------------------------------------------------------------ Outbox interception
    source_outbox = OUTBOX_SOURCE

    def watch_outbox(self) -> int:
        """Move every Outbox item whose deferred send time is still ahead into the hold folder, at once.

        One FindItem (restricted to 0x3FEF later than now, so items without a deferred time are never
        even read) and one MoveItem for all of them. Returns how many were taken; an item the server
        sent in the meantime is simply not found (``find_missed`` reports it)."""
        return self._call("watching the Outbox", self._take_from_outbox)

    def _take_from_outbox(self, account: Account) -> int:
        now = EWSDateTime.now(UTC)
        waiting = list(account.outbox.filter(deferred_send_time__gt=now).values_list("id", "changekey"))
        if not waiting:
            return 0
        hold = self._hold_folder(account)
        taken = 0
        for result in account.bulk_move(ids=waiting, to_folder=hold):
            if isinstance(result, Exception):
                log.info("an Outbox item of %s left before it could be taken (%s)", self.address,
                         type(result).__name__)
                continue
            taken += 1
        if taken:
            self._outbox_moved = True
            log.info("took %d deferred item(s) out of the Outbox of %s", taken, self.address)
        return taken

    def stream_outbox_changes(self, on_change, minutes: int = 1) -> None:
        """Hold a streaming subscription on the Outbox open for up to ``minutes`` and call ``on_change()``
        whenever an item is created, changed or moved there, so the watch looks at once instead of at its
        next poll. Returns when the server closes the connection; raises MailboxError when streaming
        fails (the caller keeps polling and tries again later)."""

        def stream(account: Account) -> None:
            if self._stream_subscription is None:
                self._stream_subscription = account.outbox.subscribe_to_streaming(
                    event_types=("CreatedEvent", "ModifiedEvent", "MovedEvent", "CopiedEvent"))
            for notification in account.outbox.get_streaming_events(self._stream_subscription,
                                                                    connection_timeout=minutes):
                if any(type(event).__name__ != "StatusEvent" for event in notification.events):
                    on_change()

        try:
            self._call("waiting for Outbox notifications", stream)
        except MailboxError:
            self._stream_subscription = None  # lapsed or refused: subscribe again next time
            raise

    def return_to_drafts(self, ref: str) -> bool:
        """A cancelled Outbox item goes back to Drafts, without its deferred time or our category, so
        the user can edit it and send it again. False when it is no longer in the hold folder."""
        return self._call("returning a cancelled message to Drafts", lambda a: self._return_to_drafts(a, ref))

    def _return_to_drafts(self, account: Account, ref: str) -> bool:
        item = self._get(account, ref, ("categories", "deferred_send_time", "is_draft"))
        if item is None or not item.is_draft:
            return False
        moved = account.bulk_move(ids=[(item.id, item.changekey)], to_folder=account.drafts)
        if not moved or isinstance(moved[0], Exception):
            return False
        draft = self._get(account, moved[0][0], ("categories", "deferred_send_time"))
        if draft is not None:
            draft.deferred_send_time = None
            draft.categories = [c for c in (draft.categories or []) if c not in (DRAFT_CATEGORY, TAKEN_CATEGORY)] or None
            draft.save(update_fields=["deferred_send_time", "categories"])
        return True

    def find_missed(self, since: float) -> list[MissedItem]:
        """Messages in Sent Items, sent at or after ``since`` (epoch seconds), that carry a deferred
        send time: the server sent them from the Outbox itself. SendGuard's own releases clear 0x3FEF;
        the caller skips any Message-ID it already knows."""
        return self._call("looking for deferred mail the server sent", lambda a: self._find_missed(a, since))

    def _find_missed(self, account: Account, since: float) -> list[MissedItem]:
        start = EWSDateTime.fromtimestamp(since, tz=UTC)
        found = account.sent.filter(datetime_sent__gte=start, deferred_send_time__exists=True).only(
            "message_id", "subject", "datetime_sent", "deferred_send_time", "to_recipients", "cc_recipients",
            "bcc_recipients", "mime_content")
        out = []
        for item in found:
            if isinstance(item, Exception) or not item.message_id:
                continue
            recipients = _addresses(item.to_recipients) + _addresses(item.cc_recipients) + _addresses(
                item.bcc_recipients)
            out.append(MissedItem(
                message_id=item.message_id, subject=item.subject or "",
                sent_at=item.datetime_sent.timestamp() if item.datetime_sent else since,
                deferred_until=item.deferred_send_time.timestamp() if item.deferred_send_time else None,
                recipients=tuple(dict.fromkeys(recipients)), raw=bytes(item.mime_content or b"")))
        return out

    @staticmethod
    def _get(account: Account, ref: str, fields) -> Message | None:
        result = list(account.fetch(ids=[(ref, None)], only_fields=list(fields)))
        item = result[0] if result else None
        if isinstance(item, ews_errors.ErrorItemNotFound):
            return None
        if isinstance(item, Exception):
            raise item
        return item

    # ------------------------------------------------------------------ reconciliation
    def find_sent(self, message_id: str) -> bool | None:
        """True when a sent copy with this Message-ID is in Sent Items (or still in the Outbox)."""
        return self._call("looking the message up in Sent Items", lambda a: self._find_sent(a, message_id))

    @staticmethod
    def _find_sent(account: Account, message_id: str) -> bool:
        for folder in (account.sent, account.outbox):
            if folder.filter(message_id=message_id).only("id").exists():
                return True
        return False

    # ------------------------------------------------------------------ release
    def release(self, item: ReleaseItem) -> ReleaseReceipt:
        msg = _mime.parse(item.raw)
        plan = _mime.plan_recipients(item, msg)
        # a loss the outbox has on record (this process may not have seen it: a restart since)
        self._unanswered.recall(item.message_id, item.answer_lost_ago)
        ref = item.source_ref
        if ref:
            return self._call("sending the held message", lambda a: self._release_held(a, item, ref, msg, plan))
        return self._call("sending the message", lambda a: self._release_new(a, item, plan))

    def _receipt(self, item: ReleaseItem, how: str, **extra) -> ReleaseReceipt:
        return ReleaseReceipt("exchange", {"account": self.name, "message_id": item.message_id, "via": how, **extra})

    def _send(self, item: ReleaseItem, send, what: str) -> None:
        """Carry out ``send``; a failure after the request may have reached the server (a broken
        connection, a timeout, a server error without an EWS answer) is remembered as a lost answer and
        raised as ``AnswerLost``, so the outbox keeps it on record (a restart keeps the grace too)."""
        try:
            send()
        except Exception as e:
            lost = _http.connection_lost(e)
            answered = isinstance(e, ews_errors.ResponseMessageError | ews_errors.UnauthorizedError) and not lost
            if answered or _http.never_reached(e):  # refused in words, or never reached Exchange: nothing was sent
                raise
            err = self._translate(what, e)
            if not isinstance(err, TransientError):  # e.g. the sign-in refused before the request: as it is
                raise err from None
            self._unanswered.record(item.message_id)
            cause = type(lost or e).__name__
            raise AnswerLost(f"Cannot reach the Exchange server at {self._where()} while {what}: the connection "
                             f"broke after the message was handed over ({cause}), so it may have gone out. It is "
                             "not sent again before SendGuard has looked for it in the mailbox; trying again in "
                             f"{err.retry_after or 0:.0f} s.", retry_after=err.retry_after) from None

    def _release_new(self, account: Account, item: ReleaseItem, plan: _mime.RecipientPlan) -> ReleaseReceipt:
        if self._find_sent(account, item.message_id):
            self._unanswered.forget(item.message_id)
            return self._receipt(item, "already-sent")
        if self._unanswered.check(item.message_id, "Exchange"):  # the grace is over: nothing went out
            log.info("%s: %s is not in the mailbox %.0f s after its send lost its answer; sending it again",
                     self.address, item.message_id, _retry.sent_items_grace())
        message = Message(account=account, folder=account.sent, mime_content=item.raw,
                          bcc_recipients=[_mailbox(b) for b in plan.bcc] or None)
        self._send(item, message.send_and_save, "sending the message")
        return self._receipt(item, "CreateItem")

    def _release_held(self, account: Account, item: ReleaseItem, ref: str, msg,
                      plan: _mime.RecipientPlan) -> ReleaseReceipt:
        fields = ("message_id", "categories", "to_recipients", "cc_recipients", "bcc_recipients", "attachments",
                  "is_draft", "deferred_send_time")
        draft = self._get(account, ref, fields)
        if item.message_id in self._unanswered:  # our send of it lost its answer
            if self._find_sent(account, item.message_id):
                self._unanswered.forget(item.message_id)
                return self._receipt(item, "already-sent")
            self._unanswered.check(item.message_id, "Exchange")  # within the grace: try again later
            if draft is None or not draft.is_draft:  # it left Drafts, yet is nowhere to be found
                raise OutcomeUnknown(
                    f"Exchange lost its answer to the send of this message, and {_retry.sent_items_grace():.0f} s "
                    "later the draft has left Drafts but is not in Sent Items or the Outbox: it may have gone "
                    f"out, so it is not sent again. Check Sent Items, then `sendguard queue resolve "
                    f"{item.outbox_id} --sent` or `--resend`")
            # still a draft after the grace: the send never happened; send it now
        if draft is None or not draft.is_draft:
            if self._find_sent(account, item.message_id):
                return self._receipt(item, "already-sent")
            raise PermanentError("The held message was deleted from the mailbox before it could be sent; "
                                 "nothing was sent.")
        # Attachments the user removed come off the item first (DeleteAttachment), then the item is read
        # again so its change key is current.
        wanted = _mime.attachment_names(msg)
        removed = False
        for att in list(draft.attachments or []):
            name = att.name or ""
            if wanted[name] > 0:
                wanted[name] -= 1
            else:
                att.detach()
                removed = True
        if removed:
            draft = self._get(account, ref, fields)
            if draft is None:
                raise PermanentError("The held message was deleted from the mailbox before it could be sent; "
                                     "nothing was sent.")
        draft.to_recipients = [_mailbox(p) for p in plan.to] or None
        draft.cc_recipients = [_mailbox(p) for p in plan.cc] or None
        draft.bcc_recipients = [_mailbox(p) for p in plan.bcc] or None
        draft.categories = [c for c in (draft.categories or []) if c not in (DRAFT_CATEGORY, TAKEN_CATEGORY)] or None
        update = ["to_recipients", "cc_recipients", "bcc_recipients", "categories"]
        if draft.deferred_send_time is not None:
            # taken from the Outbox: with its future deferred time left on, Exchange would only queue it
            # again; cleared in the same UpdateItem that sends it
            draft.deferred_send_time = None
            update.append("deferred_send_time")
        self._send(item, lambda: draft.send_and_save(update_fields=update), "sending the held message")
        receipt = self._receipt(item, "UpdateItem/SendAndSaveCopy", item_id=item.source_ref)
        if draft.message_id and draft.message_id != item.message_id:
            receipt.detail["internet_message_id"] = draft.message_id
        return receipt
