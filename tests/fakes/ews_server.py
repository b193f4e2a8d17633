"""A small Exchange Web Services server for tests: SOAP over plain HTTP on 127.0.0.1, port 0.

It answers the operations exchangelib issues for SendGuard's connector (ConvertId for version and
auth probing, GetFolder, FindFolder, CreateFolder, FindItem, GetItem, CreateItem, UpdateItem,
SendItem, MoveItem, DeleteAttachment, Subscribe (pull and streaming), GetEvents, GetStreamingEvents,
Unsubscribe, ExpandDL) with the element names,
namespaces and response envelopes of the EWS schema (messages.xsd / types.xsd) as exchangelib parses them.

The Outbox behaves as Exchange's does: an item submitted with a future ``PidTagDeferredSendTime``
(extended property 0x3FEF, SystemTime) waits in the Outbox and the server itself sends it once that
time has passed (a background ticker, and ``advance`` moves the server's clock); an item submitted
with a future deferred time still set goes back to the Outbox instead of being sent. Items without a
deferred time leave the Outbox after ``submission_delay`` seconds.

State lives in memory. Tests use the Python API to play the user (``put_item``, ``outlook_send``,
``delete_item``) and the network (``fail_next``), and read what was sent from ``sends``.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import getaddresses, make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from lxml import etree

from tests.fakes.model import Attachment
from tests.fakes.outage import Outage

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
NS = {"s": SOAP, "m": M, "t": T}
DEFERRED_SEND_TIME = "0x3fef"  # PidTagDeferredSendTime, PT_SYSTIME

DISTINGUISHED = {
    "root": ("Root", None, None),
    "msgfolderroot": ("Top of Information Store", "root", None),
    "inbox": ("Inbox", "msgfolderroot", "IPF.Note"),
    "drafts": ("Drafts", "msgfolderroot", "IPF.Note"),
    "sentitems": ("Sent Items", "msgfolderroot", "IPF.Note"),
    "outbox": ("Outbox", "msgfolderroot", "IPF.Note"),
    "deleteditems": ("Deleted Items", "msgfolderroot", "IPF.Note"),
}


def _q(tag: str) -> str:
    prefix, _, local = tag.partition(":")
    return f"{{{NS[prefix]}}}{local}"


def _ews_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


def _field_uri(node) -> str:
    """The FieldURI of a path element, or ``ext:<tag>`` for an ExtendedFieldURI (by property tag)."""
    plain = node.find(_q("t:FieldURI"))
    if plain is not None:
        return plain.get("FieldURI")
    ext = node.find(_q("t:ExtendedFieldURI"))
    if ext is not None and ext.get("PropertyTag"):
        return f"ext:{int(ext.get('PropertyTag'), 16):#06x}"
    raise SoapFault("ErrorInvalidPropertyRequest", "This fake server knows only tagged extended properties.")


@dataclass
class Folder:
    id: str
    name: str
    parent: str | None
    folder_class: str | None
    distinguished: str | None = None
    changekey: int = 1


@dataclass
class Item:
    id: str
    folder: str
    subject: str = ""
    to: list[tuple[str, str]] = field(default_factory=list)
    cc: list[tuple[str, str]] = field(default_factory=list)
    bcc: list[tuple[str, str]] = field(default_factory=list)
    sender: tuple[str, str] | None = None
    categories: list[str] = field(default_factory=list)
    message_id: str = ""
    is_draft: bool = True
    body: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    changekey: int = 1
    mime: bytes = b""
    deferred: dt.datetime | None = None  # PidTagDeferredSendTime (UTC)
    queued_at: dt.datetime | None = None  # when it entered the Outbox
    sent_at: dt.datetime | None = None  # DateTimeSent


@dataclass
class Send:
    """One message the server submitted for delivery."""

    operation: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    message_id: str
    attachments: list[str]
    deferred: dt.datetime | None = None  # the item's deferred send time when it went out


class SoapFault(Exception):
    def __init__(self, code: str, message: str, back_off_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.back_off_ms = back_off_ms


class ResponseError(Exception):
    """An error reported inside a ResponseMessage (ResponseClass="Error")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class FakeEWS:
    """The mailbox state plus the HTTP server; use as a context manager."""

    def __init__(self, address: str = "user@example.co.jp", username: str = "user", password: str = "secret",
                 token=None):
        self.address = address
        self.username = username
        self.password = password
        # Bearer tokens accepted instead of the password (OAuth): one token, or a container of valid ones
        # (e.g. the access tokens a FakeGraph sign-in endpoint has issued)
        self.token = token
        self.lock = threading.RLock()
        self.counter = itertools.count(1)
        self.folders: dict[str, Folder] = {}
        self.items: dict[str, Item] = {}
        self.sends: list[Send] = []
        self.requests: list[str] = []  # operation names, in order
        self.failures: list[tuple[str, str, dict]] = []
        self.outage = Outage()  # the whole server down or slow
        self.subscriptions: dict[str, dict] = {}
        self.events: list[tuple[int, str, str, str]] = []  # (seq, kind, item_id, folder_id)
        self.clock_offset = 0.0  # seconds the server's clock runs ahead of the real one (``advance``)
        self.submission_delay = 0.0  # how long an item without a deferred time stays in the Outbox
        self.delivering = True  # False: the transport is stalled, nothing leaves the Outbox
        self.changed = threading.Condition(self.lock)  # notified on every event (streaming subscriptions)
        self.stream_seconds = 60.0  # a streaming connection closes after min(ConnectionTimeout, this)
        # distribution lists in the organisation's directory (ExpandDL): address -> {name, members, hidden}
        self.lists: dict[str, dict] = {}
        self.streams_open = 0
        for key, (name, _parent, cls) in DISTINGUISHED.items():
            fid = self._new_id("F")
            self.folders[fid] = Folder(fid, name, None, cls, distinguished=key)
        for f in self.folders.values():
            parent = DISTINGUISHED[f.distinguished][1]
            f.parent = self.folder_by_key(parent).id if parent else None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._stopped = threading.Event()
        self.ticker = threading.Thread(target=self._tick_forever, daemon=True)

    # ------------------------------------------------------------------ control API for tests
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/EWS/Exchange.asmx"

    def __enter__(self) -> FakeEWS:
        self.thread.start()
        self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def now(self) -> dt.datetime:
        """The server's clock (UTC)."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward and let its transport send whatever became due."""
        with self.lock:
            self.clock_offset += seconds
            self.deliver_due()

    def outlook_send(self, raw: bytes, defer_seconds: float | None = None) -> str:
        """Play Outlook in online mode pressing Send: the item goes to the Outbox, with a deferred send
        time ``defer_seconds`` from now (delay delivery, a defer rule, scheduled send) or none."""
        with self.lock:
            item = self._item_from_mime(raw, self.folder_by_key("outbox").id)
            if defer_seconds is not None:
                item.deferred = self.now() + dt.timedelta(seconds=defer_seconds)
            item.queued_at = self.now()
            self.items[item.id] = item
            self._event("CreatedEvent", item)
            return item.id

    def deliver_due(self) -> list[str]:
        """The server's transport: send every Outbox item whose time has come; returns their ids."""
        with self.lock:
            if not self.delivering:
                return []
            outbox = self.folder_by_key("outbox").id
            now = self.now()
            due = [i for i in self.items_in(outbox)
                   if (i.deferred is not None and i.deferred <= now)
                   or (i.deferred is None and (i.queued_at or now) + dt.timedelta(seconds=self.submission_delay) <= now)]
            for item in due:
                # the Outbox item is gone; the copy in Sent Items is a new item with its own id
                self._event("DeletedEvent", item)
                del self.items[item.id]
                item.id = self._new_id("I")
                self._submit(item, "ServerTransport", self.folder_by_key("sentitems").id)
            return [i.id for i in due]

    def _tick_forever(self) -> None:
        while not self._stopped.wait(0.05):
            self.deliver_due()

    def fail_next(self, operation: str, kind: str, times: int = 1, **detail) -> None:
        """Make the next ``times`` calls of ``operation`` ("*" for any) fail.

        kinds: ``busy`` (SOAP ErrorServerBusy with BackOffMilliseconds), ``http503`` (with Retry-After),
        ``unauthorized`` (HTTP 401), ``drop`` (close the connection without answering), ``drop_after``
        (carry the operation out, then close without answering), or any EWS ResponseCode such as
        ``ErrorQuotaExceeded`` / ``ErrorMessageSizeExceeded`` (reported in the ResponseMessage).
        """
        with self.lock:
            for _ in range(times):
                self.failures.append((operation, kind, detail))

    def folder_by_key(self, key: str) -> Folder:
        return next(f for f in self.folders.values() if f.distinguished == key)

    def folder_by_name(self, name: str) -> Folder | None:
        return next((f for f in self.folders.values() if f.name == name), None)

    def items_in(self, folder_id: str) -> list[Item]:
        return [i for i in self.items.values() if i.folder == folder_id]

    def add_list(self, address: str, members: list[tuple[str, str]] | list[str], name: str = "",
                 hidden: bool = False) -> None:
        """A distribution list in the directory. ``members``: addresses, or (name, address) pairs; a
        member that is itself a list here is answered with MailboxType PublicDL. ``hidden``: its
        membership is hidden (ExpandDL answers with no members), as Exchange's HiddenDLMembership."""
        pairs = [m if isinstance(m, tuple) else ("", m) for m in members]
        self.lists[address.lower()] = {"name": name or address.split("@")[0], "members": pairs, "hidden": hidden}

    def put_item(self, raw: bytes, folder: str = "SendGuard Hold", categories: list[str] | None = None) -> str:
        """Play Outlook: save a draft (parsed from MIME) in a folder given by name or distinguished id."""
        with self.lock:
            target = self.folder_by_name(folder) or self.folder_by_key(folder)
            item = self._item_from_mime(raw, target.id)
            item.categories = list(categories or [])
            self.items[item.id] = item
            self._event("CreatedEvent", item)
            return item.id

    def delete_item(self, item_id: str) -> None:
        with self.lock:
            item = self.items.pop(item_id)
            self._event("DeletedEvent", item)

    # ------------------------------------------------------------------ model helpers
    def _new_id(self, prefix: str) -> str:
        raw = f"{prefix}{next(self.counter):06d}-{uuid.uuid4().hex[:8]}".encode()
        return base64.b64encode(b"AAMkA" + raw).decode()

    def _event(self, kind: str, item: Item) -> None:
        with self.lock:
            seq = len(self.events) + 1
            self.events.append((seq, kind, item.id, item.folder))
            self.changed.notify_all()

    def _item_from_mime(self, raw: bytes, folder_id: str) -> Item:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        item = Item(id=self._new_id("I"), folder=folder_id)
        item.subject = str(msg.get("Subject", ""))
        item.to = [(n, a) for n, a in getaddresses(msg.get_all("To", [])) if a]
        item.cc = [(n, a) for n, a in getaddresses(msg.get_all("Cc", [])) if a]
        item.bcc = [(n, a) for n, a in getaddresses(msg.get_all("Bcc", [])) if a]
        senders = [(n, a) for n, a in getaddresses(msg.get_all("From", [])) if a]
        item.sender = senders[0] if senders else (self.address, self.address)
        item.message_id = str(msg.get("Message-ID", "")).strip() or make_msgid(domain="fake.ews")
        body = msg.get_body(preferencelist=("plain", "html"))
        item.body = body.get_content() if body is not None else ""
        for part in msg.iter_attachments():
            item.attachments.append(Attachment(
                id=self._new_id("A"), name=part.get_filename() or "attachment",
                content_type=part.get_content_type(), content=part.get_payload(decode=True) or b"",
                is_inline=part.get_content_disposition() == "inline", content_id=part.get("Content-ID")))
        item.mime = raw
        return item

    def _mime_of(self, item: Item) -> bytes:
        """The MIME Exchange would generate from the item's current properties."""
        msg = email.message_from_bytes(item.mime, policy=email.policy.default) if item.mime else None
        if msg is None:
            msg = email.message.EmailMessage()
            msg.set_content(item.body)
        for header, values in (("To", item.to), ("Cc", item.cc), ("Bcc", item.bcc)):
            del msg[header]
            if values:
                msg[header] = ", ".join(email.utils.formataddr((n, a)) for n, a in values)
        del msg["Message-ID"]
        msg["Message-ID"] = item.message_id
        del msg["Subject"]
        msg["Subject"] = item.subject
        keep = {a.name for a in item.attachments}
        if msg.is_multipart():
            payload = [p for p in msg.get_payload()
                       if not (p.get_content_disposition() in ("attachment", "inline") and p.get_filename()
                               and p.get_filename() not in keep)]
            msg.set_payload(payload)
        return msg.as_bytes(policy=email.policy.SMTP)

    def _client_submit(self, item: Item, operation: str, save_to: str | None) -> None:
        """A client's send: an item still carrying a future deferred time goes to the Outbox and waits
        (Exchange's behaviour); anything else is delivered now."""
        if item.deferred is not None and item.deferred > self.now():
            self._event("DeletedEvent", item)
            item.folder = self.folder_by_key("outbox").id
            item.queued_at = self.now()
            item.changekey += 1
            self.items[item.id] = item
            self._event("CreatedEvent", item)
            return
        self._submit(item, operation, save_to)

    def _submit(self, item: Item, operation: str, save_to: str | None) -> None:
        """Deliver (record) the item and file the copy; the draft leaves its folder."""
        self.sends.append(Send(operation, [a for _, a in item.to], [a for _, a in item.cc],
                               [a for _, a in item.bcc], item.subject, item.message_id,
                               [a.name for a in item.attachments], item.deferred))
        item.mime = self._mime_of(item)
        item.is_draft = False
        item.sent_at = self.now()
        item.changekey += 1
        if save_to:
            item.folder = save_to
            self.items[item.id] = item
            self._event("CreatedEvent", item)
        else:
            self.items.pop(item.id, None)

    # ------------------------------------------------------------------ HTTP
    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # one write per answer (no Nagle / delayed-ACK stalls)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                self._send(405, b"", {"Allow": "POST"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                fake._handle(self, body)

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                fake.outage.linger()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _authorized(self, handler) -> bool:
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            return user.split("\\")[-1] == self.username and pw == self.password
        if auth.startswith("Bearer ") and self.token is not None:
            return auth[7:] == self.token if isinstance(self.token, str) else auth[7:] in self.token
        return False

    def _take_failure(self, operation: str) -> tuple[str, dict] | None:
        with self.lock:
            for index, (op, kind, detail) in enumerate(self.failures):
                if op in (operation, "*"):
                    del self.failures[index]
                    return kind, detail
        return None

    def _handle(self, handler, body: bytes) -> None:
        outage = self.outage.gate()
        if outage == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if outage == "503":
            handler._send(503, b"Service Unavailable", {"Retry-After": str(self.outage.retry_after)})
            return
        try:
            root = etree.fromstring(body)
            content = root.find(_q("s:Body"))[0]
        except Exception:
            handler._send(400, b"Bad request")
            return
        operation = etree.QName(content).localname
        if not self._authorized(handler):
            challenge = {"WWW-Authenticate": 'Basic realm="127.0.0.1"'}
            if self.token is not None:
                challenge["WWW-Authenticate"] += ', Bearer authorization_uri="https://login.example/common"'
            handler._send(401, b"", challenge)
            return
        version = "Exchange2016"
        header = root.find(_q("s:Header"))
        if header is not None:
            rsv = header.find(_q("t:RequestServerVersion"))
            if rsv is not None:
                version = rsv.get("Version", version)
        self.requests.append(operation)
        failure = self._take_failure(operation)
        if operation == "GetStreamingEvents" and not failure:
            self._stream(handler, content, version)
            return
        if failure:
            kind, detail = failure
            if kind == "unauthorized":
                handler._send(401, b"", {"WWW-Authenticate": 'Basic realm="127.0.0.1"'})
                return
            if kind == "http503":
                handler._send(503, b"Service Unavailable", {"Retry-After": str(detail.get("retry_after", 1))})
                return
            if kind == "drop":
                handler.close_connection = True
                handler.connection.shutdown(2)
                return
            if kind == "busy":
                fault = SoapFault("ErrorServerBusy", "The server cannot service this request right now.",
                                  back_off_ms=detail.get("back_off_ms", 500))
                handler._send(500, self._fault(fault, version), {"Content-Type": "text/xml; charset=utf-8"})
                return
        try:
            method = getattr(self, f"_op_{operation}", None)
            if method is None:
                raise SoapFault("ErrorInvalidRequest", f"The request is invalid: {operation} is not supported.")
            if failure and failure[0].startswith("Error"):
                messages = self._error_message(operation, ResponseError(failure[0], failure[1].get(
                    "message", failure[0])))
            else:
                with self.lock:
                    messages = method(content)
            xml = self._envelope(operation, messages, version)
            status = 200
        except SoapFault as fault:
            xml, status = self._fault(fault, version), 500
        if failure and failure[0] == "drop_after":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        handler._send(status, xml, {"Content-Type": "text/xml; charset=utf-8"})

    # ------------------------------------------------------------------ streaming notifications
    def _stream(self, handler, content, version: str) -> None:
        """GetStreamingEvents: one chunked HTTP answer holding a SOAP envelope per batch of events, then
        one with ConnectionStatus Closed when the connection timeout is over (as Exchange does)."""
        sub_ids = [e.text for e in content.find(_q("m:SubscriptionIds"))]
        minutes = int(content.findtext(_q("m:ConnectionTimeout")) or 1)
        deadline = time.monotonic() + min(minutes * 60.0, self.stream_seconds)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/xml; charset=utf-8")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(data: bytes) -> None:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()

        def doc(status: str, notifications: str = "", error: ResponseError | None = None) -> bytes:
            if error is not None:
                message = self._error_message("GetStreamingEvents", error)
            else:
                message = ('<m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
                           f"</m:ResponseCode>{notifications}<m:ConnectionStatus>{status}</m:ConnectionStatus>"
                           "</m:GetStreamingEventsResponseMessage>")
            return self._envelope("GetStreamingEvents", message, version)

        try:
            with self.lock:
                subs = {sid: self.subscriptions.get(sid) for sid in sub_ids}
                seen = len(self.events)
            if any(sub is None for sub in subs.values()):
                chunk(doc("Closed", error=ResponseError("ErrorSubscriptionNotFound",
                                                        "The specified subscription was not found.")))
                handler.wfile.write(b"0\r\n\r\n")
                return
            with self.lock:
                self.streams_open += 1
            try:
                chunk(doc("OK"))
                while not self._stopped.is_set() and time.monotonic() < deadline:
                    with self.changed:
                        if len(self.events) == seen:
                            self.changed.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                        new, seen = self.events[seen:], len(self.events)
                    parts = []
                    for sid, sub in subs.items():
                        events = "".join(
                            f'<t:{kind}><t:TimeStamp>{_ews_time(self.now())}</t:TimeStamp><t:ItemId Id="{iid}" '
                            f'ChangeKey="CQAAAA=="/><t:ParentFolderId Id="{fid}" ChangeKey="AQAAAA=="/></t:{kind}>'
                            for _seq, kind, iid, fid in new if fid in sub["folders"])
                        if events:
                            parts.append(f"<m:Notification><t:SubscriptionId>{sid}</t:SubscriptionId>{events}"
                                         "</m:Notification>")
                    if parts:
                        chunk(doc("OK", "<m:Notifications>" + "".join(parts) + "</m:Notifications>"))
                chunk(doc("Closed"))
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
            finally:
                with self.lock:
                    self.streams_open -= 1
        except OSError:  # the client went away
            handler.close_connection = True

    # ------------------------------------------------------------------ envelopes
    @staticmethod
    def _server_version(version: str) -> str:
        return (f'<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" '
                f'MinorBuildNumber="6" Version="{version}" xmlns:h="{T}" xmlns="{T}"/>')

    def _envelope(self, operation: str, messages: str, version: str) -> bytes:
        return (f'<?xml version="1.0" encoding="utf-8"?>'
                f'<s:Envelope xmlns:s="{SOAP}"><s:Header>{self._server_version(version)}</s:Header>'
                f'<s:Body><m:{operation}Response xmlns:m="{M}" xmlns:t="{T}"><m:ResponseMessages>'
                f'{messages}</m:ResponseMessages></m:{operation}Response></s:Body></s:Envelope>').encode()

    def _fault(self, fault: SoapFault, version: str) -> bytes:
        extra = ""
        if fault.back_off_ms is not None:
            extra = (f'<t:MessageXml xmlns:t="{T}"><t:Value Name="BackOffMilliseconds">{fault.back_off_ms}'
                     f'</t:Value></t:MessageXml>')
        return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
                f'<faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:{fault.code}'
                f'</faultcode><faultstring xml:lang="en-US">{escape(fault.message)}</faultstring><detail>'
                f'<e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">'
                f'{fault.code}</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/'
                f'services/2006/errors">{escape(fault.message)}</e:Message>{extra}</detail></s:Fault>'
                f'</s:Body></s:Envelope>').encode()

    @staticmethod
    def _ok(operation: str, inner: str = "") -> str:
        return (f'<m:{operation}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                f'{inner}</m:{operation}ResponseMessage>')

    @staticmethod
    def _error_message(operation: str, error: ResponseError) -> str:
        return (f'<m:{operation}ResponseMessage ResponseClass="Error"><m:MessageText>{escape(error.message)}'
                f'</m:MessageText><m:ResponseCode>{error.code}</m:ResponseCode><m:DescriptiveLinkKey>0'
                f'</m:DescriptiveLinkKey></m:{operation}ResponseMessage>')

    # ------------------------------------------------------------------ XML of model objects
    def _folder_xml(self, f: Folder) -> str:
        parent = f'<t:ParentFolderId Id="{f.parent}" ChangeKey="AQAAAA=="/>' if f.parent else ""
        cls = f"<t:FolderClass>{f.folder_class}</t:FolderClass>" if f.folder_class else ""
        total = len(self.items_in(f.id))
        children = sum(1 for c in self.folders.values() if c.parent == f.id)
        dist = f"<t:DistinguishedFolderId>{f.distinguished}</t:DistinguishedFolderId>" if f.distinguished else ""
        return (f'<t:Folder><t:FolderId Id="{f.id}" ChangeKey="AQAAAB{f.changekey:04d}"/>{parent}{cls}'
                f'<t:DisplayName>{escape(f.name)}</t:DisplayName><t:TotalCount>{total}</t:TotalCount>'
                f'<t:ChildFolderCount>{children}</t:ChildFolderCount>{dist}<t:UnreadCount>0</t:UnreadCount>'
                f'</t:Folder>')

    @staticmethod
    def _mailboxes(tag: str, boxes: list[tuple[str, str]]) -> str:
        if not boxes:
            return ""
        inner = "".join(f"<t:Mailbox><t:Name>{escape(n or a)}</t:Name><t:EmailAddress>{escape(a)}</t:EmailAddress>"
                        f"<t:RoutingType>SMTP</t:RoutingType><t:MailboxType>OneOff</t:MailboxType></t:Mailbox>"
                        for n, a in boxes)
        return f"<t:{tag}>{inner}</t:{tag}>"

    def _item_xml(self, item: Item, fields: set[str] | None) -> str:
        """A t:Message in types.xsd element order; ``fields`` None means the default shape."""

        def want(uri: str) -> bool:
            return fields is None or uri in fields

        out = ["<t:Message>"]
        if fields is not None and "item:MimeContent" in fields:
            mime = base64.b64encode(self._mime_of(item)).decode()
            out.append(f'<t:MimeContent CharacterSet="UTF-8">{mime}</t:MimeContent>')
        out.append(f'<t:ItemId Id="{item.id}" ChangeKey="CQAAAB{item.changekey:04d}"/>')
        if want("item:ParentFolderId"):
            out.append(f'<t:ParentFolderId Id="{item.folder}" ChangeKey="AQAAAA=="/>')
        if want("item:ItemClass"):
            out.append("<t:ItemClass>IPM.Note</t:ItemClass>")
        if want("item:Subject"):
            out.append(f"<t:Subject>{escape(item.subject)}</t:Subject>")
        if fields is not None and "item:Body" in fields:
            out.append(f'<t:Body BodyType="Text">{escape(item.body)}</t:Body>')
        if want("item:Attachments") and item.attachments:
            out.append("<t:Attachments>")
            for a in item.attachments:
                cid = f"<t:ContentId>{escape(a.content_id)}</t:ContentId>" if a.content_id else ""
                out.append(f'<t:FileAttachment><t:AttachmentId Id="{a.id}"/><t:Name>{escape(a.name)}</t:Name>'
                           f"<t:ContentType>{escape(a.content_type)}</t:ContentType>{cid}"
                           f"<t:Size>{len(a.content)}</t:Size><t:IsInline>{str(a.is_inline).lower()}"
                           f"</t:IsInline></t:FileAttachment>")
            out.append("</t:Attachments>")
        if want("item:Size"):
            out.append(f"<t:Size>{len(item.mime) or 1024}</t:Size>")
        if want("item:Categories") and item.categories:
            out.append("<t:Categories>" + "".join(f"<t:String>{escape(c)}</t:String>" for c in item.categories)
                       + "</t:Categories>")
        if want("item:IsDraft"):
            out.append(f"<t:IsDraft>{str(item.is_draft).lower()}</t:IsDraft>")
        if want("item:DateTimeSent") and item.sent_at is not None:
            out.append(f"<t:DateTimeSent>{_ews_time(item.sent_at)}</t:DateTimeSent>")
        if want("item:HasAttachments"):
            out.append(f"<t:HasAttachments>{str(bool(item.attachments)).lower()}</t:HasAttachments>")
        if fields is not None and f"ext:{DEFERRED_SEND_TIME}" in fields and item.deferred is not None:
            out.append(f'<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="{DEFERRED_SEND_TIME}" '
                       f'PropertyType="SystemTime"/><t:Value>{_ews_time(item.deferred)}</t:Value>'
                       "</t:ExtendedProperty>")
        if want("message:Sender") and item.sender:
            out.append(self._mailboxes("Sender", [item.sender]))
        if want("message:ToRecipients"):
            out.append(self._mailboxes("ToRecipients", item.to))
        if want("message:CcRecipients"):
            out.append(self._mailboxes("CcRecipients", item.cc))
        if want("message:BccRecipients"):
            out.append(self._mailboxes("BccRecipients", item.bcc))
        if want("message:From") and item.sender:
            out.append(self._mailboxes("From", [item.sender]))
        if want("message:InternetMessageId"):
            out.append(f"<t:InternetMessageId>{escape(item.message_id)}</t:InternetMessageId>")
        out.append("</t:Message>")
        return "".join(out)

    # ------------------------------------------------------------------ request parsing helpers
    def _resolve_folder(self, elem) -> Folder:
        if etree.QName(elem).localname == "DistinguishedFolderId":
            key = elem.get("Id")
            try:
                return self.folder_by_key(key)
            except StopIteration:
                raise ResponseError("ErrorFolderNotFound",
                                    "The specified folder could not be found in the store.") from None
        folder = self.folders.get(elem.get("Id"))
        if folder is None:
            raise ResponseError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
        return folder

    def _get_item(self, elem) -> Item:
        item = self.items.get(elem.get("Id"))
        if item is None:
            raise ResponseError("ErrorItemNotFound", "The specified object was not found in the store.")
        return item

    @staticmethod
    def _requested_fields(shape) -> set[str]:
        fields = set()
        if shape is None:
            return fields
        for uri in shape.iter(_q("t:FieldURI")):
            fields.add(uri.get("FieldURI"))
        for ext in shape.iter(_q("t:ExtendedFieldURI")):
            if ext.get("PropertyTag"):
                fields.add(f"ext:{int(ext.get('PropertyTag'), 16):#06x}")
        return fields

    @staticmethod
    def _parse_mailboxes(elem) -> list[tuple[str, str]]:
        out = []
        if elem is None:
            return out
        for box in elem.iter(_q("t:Mailbox")):
            addr = box.findtext(_q("t:EmailAddress")) or ""
            out.append((box.findtext(_q("t:Name")) or addr, addr))
        return out

    def _matches(self, item: Item, restriction) -> bool:
        if restriction is None:
            return True
        return all(self._eval(item, child) for child in restriction)

    def _field_value(self, item: Item, uri: str):
        return {
            "message:InternetMessageId": item.message_id,
            "item:Subject": item.subject,
            "item:Categories": item.categories,
            "item:IsDraft": item.is_draft,
            "item:DateTimeSent": item.sent_at,
            f"ext:{DEFERRED_SEND_TIME}": item.deferred,
        }.get(uri)

    def _eval(self, item: Item, node) -> bool:
        name = etree.QName(node).localname
        if name == "And":
            return all(self._eval(item, c) for c in node)
        if name == "Or":
            return any(self._eval(item, c) for c in node)
        if name == "Not":
            return not self._eval(item, node[0])
        uri = _field_uri(node)
        value = self._field_value(item, uri)
        if name in ("IsGreaterThan", "IsGreaterThanOrEqualTo", "IsLessThan", "IsLessThanOrEqualTo"):
            const = node.find(f"{_q('t:FieldURIOrConstant')}/{_q('t:Constant')}").get("Value")
            if not isinstance(value, dt.datetime):
                return False  # a missing property never compares
            other = _parse_time(const)
            return {"IsGreaterThan": value > other, "IsGreaterThanOrEqualTo": value >= other,
                    "IsLessThan": value < other, "IsLessThanOrEqualTo": value <= other}[name]
        if name in ("IsEqualTo", "IsNotEqualTo"):
            const = node.find(f"{_q('t:FieldURIOrConstant')}/{_q('t:Constant')}").get("Value")
            if isinstance(value, bool):
                equal = str(value).lower() == const.lower()
            elif isinstance(value, list):
                equal = const in value
            else:
                equal = value == const
            return equal if name == "IsEqualTo" else not equal
        if name == "Contains":
            const = node.find(_q("t:Constant")).get("Value")
            mode = node.get("ContainmentMode", "Substring")
            ignore = "Ignore" in node.get("ContainmentComparison", "")
            values = value if isinstance(value, list) else [value or ""]
            for v in values:
                a, b = (v.lower(), const.lower()) if ignore else (v, const)
                if (mode == "FullString" and a == b) or (mode != "FullString" and b in a):
                    return True
            return False
        if name == "Exists":
            return value is not None and value != "" and value != []
        raise SoapFault("ErrorUnsupportedQueryFilter", f"Restriction {name} is not supported by this server.")

    # ------------------------------------------------------------------ operations
    def _op_ConvertId(self, content) -> str:
        return self._error_message("ConvertId", ResponseError("ErrorInvalidIdMalformed", "Id is malformed."))

    def _op_ResolveNames(self, content) -> str:
        box = (f"<t:Mailbox><t:Name>{escape(self.address)}</t:Name><t:EmailAddress>{escape(self.address)}"
               "</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox>")
        return self._ok("ResolveNames", '<m:ResolutionSet TotalItemsInView="1" IncludesLastItemInRange="true">'
                                        f"<t:Resolution>{box}</t:Resolution></m:ResolutionSet>")

    def _op_ExpandDL(self, content) -> str:
        mailbox = content.find(_q("m:Mailbox"))
        address = (mailbox.findtext(_q("t:EmailAddress")) if mailbox is not None else "") or ""
        found = self.lists.get(address.strip().lower())
        if found is None:  # as Exchange answers for an address that is not a list
            return self._error_message("ExpandDL", ResponseError("ErrorNameResolutionNoResults",
                                                                 "No results were found."))
        members = [] if found["hidden"] else found["members"]
        boxes = "".join(
            f"<t:Mailbox><t:Name>{escape(name or addr)}</t:Name><t:EmailAddress>{escape(addr)}</t:EmailAddress>"
            f"<t:RoutingType>SMTP</t:RoutingType><t:MailboxType>"
            f"{'PublicDL' if addr.lower() in self.lists else 'Mailbox'}</t:MailboxType></t:Mailbox>"
            for name, addr in members)
        return self._ok("ExpandDL", f'<m:DLExpansion TotalItemsInView="{len(members)}" '
                                    f'IncludesLastItemInRange="true">{boxes}</m:DLExpansion>')

    def _op_GetFolder(self, content) -> str:
        out = []
        for ref in content.find(_q("m:FolderIds")):
            try:
                out.append(self._ok("GetFolder", f"<m:Folders>{self._folder_xml(self._resolve_folder(ref))}"
                                                 "</m:Folders>"))
            except ResponseError as e:
                out.append(self._error_message("GetFolder", e))
        return "".join(out)

    def _op_FindFolder(self, content) -> str:
        restriction = content.find(_q("m:Restriction"))
        out = []
        for ref in content.find(_q("m:ParentFolderIds")):
            parent = self._resolve_folder(ref)
            deep = content.get("Traversal") == "Deep"
            found = []
            frontier = [parent.id]
            while frontier:
                pid = frontier.pop()
                for f in self.folders.values():
                    if f.parent == pid:
                        found.append(f)
                        if deep:
                            frontier.append(f.id)
            if restriction is not None:
                found = [f for f in found if self._folder_matches(f, restriction)]
            xml = "".join(self._folder_xml(f) for f in found)
            out.append(self._ok("FindFolder", (
                f'<m:RootFolder IndexedPagingOffset="{len(found)}" TotalItemsInView="{len(found)}" '
                f'IncludesLastItemInRange="true"><t:Folders>{xml}</t:Folders></m:RootFolder>')))
        return "".join(out)

    def _folder_matches(self, folder: Folder, restriction) -> bool:
        for node in restriction.iter(_q("t:IsEqualTo")):
            if node.find(_q("t:FieldURI")).get("FieldURI") == "folder:DisplayName":
                const = node.find(f"{_q('t:FieldURIOrConstant')}/{_q('t:Constant')}").get("Value")
                return folder.name == const
        return True

    def _op_CreateFolder(self, content) -> str:
        parent = self._resolve_folder(content.find(_q("m:ParentFolderId"))[0])
        out = []
        for f in content.find(_q("m:Folders")):
            name = f.findtext(_q("t:DisplayName"))
            if any(x.parent == parent.id and x.name == name for x in self.folders.values()):
                out.append(self._error_message("CreateFolder", ResponseError(
                    "ErrorFolderExists", "A folder with the specified name already exists.")))
                continue
            folder = Folder(self._new_id("F"), name, parent.id, f.findtext(_q("t:FolderClass")) or "IPF.Note")
            self.folders[folder.id] = folder
            out.append(self._ok("CreateFolder", f'<m:Folders><t:Folder><t:FolderId Id="{folder.id}" '
                                                f'ChangeKey="AQAAAB0001"/></t:Folder></m:Folders>'))
        return "".join(out)

    def _op_FindItem(self, content) -> str:
        fields = self._requested_fields(content.find(_q("m:ItemShape"))) | {"item:ParentFolderId"}
        fields.discard("item:MimeContent")
        restriction = content.find(_q("m:Restriction"))
        view = content.find(_q("m:IndexedPageItemView"))
        offset = int(view.get("Offset", 0)) if view is not None else 0
        limit = int(view.get("MaxEntriesReturned", 1000)) if view is not None else 1000
        out = []
        for ref in content.find(_q("m:ParentFolderIds")):
            try:
                folder = self._resolve_folder(ref)
            except ResponseError as e:
                out.append(self._error_message("FindItem", e))
                continue
            found = [i for i in self.items_in(folder.id) if self._matches(i, restriction)]
            page = found[offset:offset + limit]
            last = offset + len(page) >= len(found)
            xml = "".join(self._item_xml(i, fields) for i in page)
            out.append(self._ok("FindItem", (
                f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" TotalItemsInView="{len(found)}" '
                f'IncludesLastItemInRange="{str(last).lower()}"><t:Items>{xml}</t:Items></m:RootFolder>')))
        return "".join(out)

    def _op_GetItem(self, content) -> str:
        fields = self._requested_fields(content.find(_q("m:ItemShape")))
        if content.find(f"{_q('m:ItemShape')}/{_q('t:IncludeMimeContent')}") is not None:
            fields.add("item:MimeContent")
        out = []
        for ref in content.find(_q("m:ItemIds")):
            try:
                item = self._get_item(ref)
                out.append(self._ok("GetItem", f"<m:Items>{self._item_xml(item, fields)}</m:Items>"))
            except ResponseError as e:
                out.append(self._error_message("GetItem", e))
        return "".join(out)

    def _saved_folder(self, content) -> str | None:
        saved = content.find(_q("m:SavedItemFolderId"))
        return self._resolve_folder(saved[0]).id if saved is not None else None

    def _op_CreateItem(self, content) -> str:
        disposition = content.get("MessageDisposition", "SaveOnly")
        saved = self._saved_folder(content)
        out = []
        for elem in content.find(_q("m:Items")):
            mime = elem.findtext(_q("t:MimeContent"))
            if mime:
                item = self._item_from_mime(base64.b64decode(mime), saved or self.folder_by_key("drafts").id)
            else:
                item = Item(id=self._new_id("I"), folder=saved or self.folder_by_key("drafts").id,
                            message_id=make_msgid(domain="fake.ews"), sender=(self.address, self.address))
            subject = elem.findtext(_q("t:Subject"))
            if subject is not None:
                item.subject = subject
            for tag, attr in (("ToRecipients", "to"), ("CcRecipients", "cc")):
                boxes = self._parse_mailboxes(elem.find(_q(f"t:{tag}")))
                if boxes:
                    setattr(item, attr, boxes)
            item.bcc = item.bcc + self._parse_mailboxes(elem.find(_q("t:BccRecipients")))
            cats = elem.find(_q("t:Categories"))
            if cats is not None:
                item.categories = [s.text for s in cats]
            if disposition == "SaveOnly":
                self.items[item.id] = item
                self._event("CreatedEvent", item)
                out.append(self._ok("CreateItem", f'<m:Items><t:Message><t:ItemId Id="{item.id}" '
                                                  f'ChangeKey="CQAAAB{item.changekey:04d}"/></t:Message></m:Items>'))
            else:
                self._submit(item, "CreateItem", saved if disposition == "SendAndSaveCopy" else None)
                out.append(self._ok("CreateItem", "<m:Items/>"))
        return "".join(out)

    def _apply_update(self, item: Item, updates) -> None:
        for change in updates:
            name = etree.QName(change).localname
            uri = _field_uri(change)
            if uri == f"ext:{DEFERRED_SEND_TIME}":
                value = change.findtext(f"{_q('t:Message')}/{_q('t:ExtendedProperty')}/{_q('t:Value')}")
                item.deferred = None if name == "DeleteItemField" or not value else _parse_time(value)
                continue
            local = uri.split(":", 1)[1]
            if name == "DeleteItemField":
                value_elem = None
            else:
                value_elem = change.find(f"{_q('t:Message')}/{_q('t:' + local)}")
            if local in ("ToRecipients", "CcRecipients", "BccRecipients"):
                attr = {"ToRecipients": "to", "CcRecipients": "cc", "BccRecipients": "bcc"}[local]
                setattr(item, attr, self._parse_mailboxes(value_elem))
            elif local == "Categories":
                item.categories = [s.text for s in value_elem] if value_elem is not None else []
            elif local == "Subject":
                item.subject = value_elem.text if value_elem is not None else ""
            elif local == "InternetMessageId":
                raise ResponseError("ErrorInvalidPropertySet", "Set action is invalid for property.")
        item.changekey += 1

    def _op_UpdateItem(self, content) -> str:
        disposition = content.get("MessageDisposition", "SaveOnly")
        out = []
        for change in content.find(_q("m:ItemChanges")):
            try:
                item = self._get_item(change.find(_q("t:ItemId")))
                if not item.is_draft and disposition != "SaveOnly":
                    raise ResponseError("ErrorItemSave", "The item has already been sent.")
                self._apply_update(item, change.find(_q("t:Updates")))
                self._event("ModifiedEvent", item)
                if disposition == "SaveOnly":
                    inner = (f'<m:Items><t:Message><t:ItemId Id="{item.id}" ChangeKey="CQAAAB{item.changekey:04d}"'
                             '/></t:Message></m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>')
                else:
                    sent = self.folder_by_key("sentitems").id if disposition == "SendAndSaveCopy" else None
                    self._client_submit(item, "UpdateItem", sent)
                    inner = "<m:Items/><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>"
                out.append(self._ok("UpdateItem", inner))
            except ResponseError as e:
                out.append(self._error_message("UpdateItem", e))
        return "".join(out)

    def _op_SendItem(self, content) -> str:
        saved = self._saved_folder(content) if content.get("SaveItemToFolder") == "true" else None
        out = []
        for ref in content.find(_q("m:ItemIds")):
            try:
                item = self._get_item(ref)
                if not item.is_draft:
                    raise ResponseError("ErrorItemSave", "The item has already been sent.")
                self._client_submit(item, "SendItem", saved)
                out.append(self._ok("SendItem"))
            except ResponseError as e:
                out.append(self._error_message("SendItem", e))
        return "".join(out)

    def _op_MoveItem(self, content) -> str:
        """Move items; as on Exchange, a moved item gets a new id. An item the transport has already
        sent is gone from the Outbox, so moving it fails with ErrorItemNotFound."""
        target = self._resolve_folder(content.find(_q("m:ToFolderId"))[0])
        out = []
        for ref in content.find(_q("m:ItemIds")):
            try:
                item = self._get_item(ref)
                self._event("DeletedEvent", item)
                del self.items[item.id]
                item.id = self._new_id("I")
                item.folder = target.id
                item.changekey += 1
                item.queued_at = None
                self.items[item.id] = item
                self._event("CreatedEvent", item)
                out.append(self._ok("MoveItem", f'<m:Items><t:Message><t:ItemId Id="{item.id}" '
                                                f'ChangeKey="CQAAAB{item.changekey:04d}"/></t:Message></m:Items>'))
            except ResponseError as e:
                out.append(self._error_message("MoveItem", e))
        return "".join(out)

    def _op_DeleteAttachment(self, content) -> str:
        out = []
        for ref in content.find(_q("m:AttachmentIds")):
            att_id = ref.get("Id")
            owner = next((i for i in self.items.values() if any(a.id == att_id for a in i.attachments)), None)
            if owner is None:
                out.append(self._error_message("DeleteAttachment", ResponseError(
                    "ErrorItemNotFound", "The specified object was not found in the store.")))
                continue
            owner.attachments = [a for a in owner.attachments if a.id != att_id]
            owner.changekey += 1
            out.append(self._ok("DeleteAttachment", f'<m:RootItemId RootItemId="{owner.id}" '
                                                    f'RootItemChangeKey="CQAAAB{owner.changekey:04d}"/>'))
        return "".join(out)

    def _op_Subscribe(self, content) -> str:
        request = content[0]
        folders = [self._resolve_folder(f).id for f in request.find(_q("t:FolderIds"))]
        sub_id = uuid.uuid4().hex
        watermark = str(len(self.events))
        self.subscriptions[sub_id] = {"folders": folders, "watermark": int(watermark)}
        return self._ok("Subscribe", f"<m:SubscriptionId>{sub_id}</m:SubscriptionId>"
                                     f"<m:Watermark>{watermark}</m:Watermark>")

    def _op_Unsubscribe(self, content) -> str:
        self.subscriptions.pop(content.findtext(_q("m:SubscriptionId")), None)
        return self._ok("Unsubscribe")

    def _op_GetEvents(self, content) -> str:
        sub_id = content.findtext(_q("m:SubscriptionId"))
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return self._error_message("GetEvents", ResponseError(
                "ErrorSubscriptionNotFound", "The specified subscription was not found."))
        since = int(content.findtext(_q("m:Watermark")) or sub["watermark"])
        new = [e for e in self.events if e[0] > since and e[3] in sub["folders"]]
        last = str(len(self.events))
        if new:
            events = "".join(
                f"<t:{kind}><t:Watermark>{seq}</t:Watermark><t:TimeStamp>2024-01-01T00:00:00Z</t:TimeStamp>"
                f'<t:ItemId Id="{iid}" ChangeKey="CQAAAA=="/><t:ParentFolderId Id="{fid}" ChangeKey="AQAAAA=="/>'
                f"</t:{kind}>" for seq, kind, iid, fid in new)
            if int(last) != new[-1][0]:
                events += f"<t:StatusEvent><t:Watermark>{last}</t:Watermark></t:StatusEvent>"
        else:
            events = f"<t:StatusEvent><t:Watermark>{last}</t:Watermark></t:StatusEvent>"
        sub["watermark"] = int(last)
        return self._ok("GetEvents", (
            f"<m:Notification><t:SubscriptionId>{sub_id}</t:SubscriptionId><t:PreviousWatermark>{since}"
            f"</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>{events}</m:Notification>"))


__all__ = ["FakeEWS", "Send"]
