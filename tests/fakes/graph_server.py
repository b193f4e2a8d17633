"""A small Microsoft Graph mail endpoint plus a Microsoft identity platform (v2.0) sign-in endpoint.

Both run in one HTTPS server on 127.0.0.1, port 0, with a throw-away CA (msal accepts https
authorities only). ``ca_file`` is the CA to trust. Routes:

- ``/{tenant}/v2.0/.well-known/openid-configuration``, ``/{tenant}/oauth2/v2.0/devicecode``,
  ``/{tenant}/oauth2/v2.0/token`` (device_code and refresh_token grants) for msal;
- ``/v1.0/me/mailFolders...``, ``/v1.0/me/messages...``, ``/v1.0/me/sendMail`` and the attachment upload
  session URL, ``/v1.0/groups?$filter=mail eq '...'`` and ``/v1.0/groups/{id}/transitiveMembers`` (the
  directory: they need GroupMember.Read.All, Group.Read.All or Directory.Read.All among the token's
  scopes, else 403 Authorization_RequestDenied), with Graph's JSON shapes (``value``/``@odata.nextLink``
  collections, ``{"error": {"code", "message"}}`` errors, 202 for send, 429 with ``Retry-After``).

The Outbox behaves as Exchange Online's does: a message sent with a future deferred send time
(``singleValueExtendedProperties`` ``SystemTime 0x3FEF``: Outlook's delay delivery, scheduled send)
waits in the Outbox and the server sends it itself once that time has passed (a background ticker;
``advance`` moves the server's clock); ``/send`` on a message still carrying a future deferred time
puts it in the Outbox instead of sending it. ``/move`` gives the message a new id, as Graph does.

Tests play the user with ``put_item``/``outlook_send``/``delete_item`` and the network with
``fail_next``; ``sends`` is what went out.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import itertools
import json
import re
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import getaddresses, make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.model import Attachment
from tests.fakes.outage import Outage

CHUNK = 320 * 1024  # upload sessions take ranges in multiples of 320 KiB (last one excepted)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1/localhost signed by it: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SendGuard test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@dataclass
class Message:
    id: str
    folder: str
    subject: str = ""
    to: list[tuple[str, str]] = field(default_factory=list)
    cc: list[tuple[str, str]] = field(default_factory=list)
    bcc: list[tuple[str, str]] = field(default_factory=list)
    sender: tuple[str, str] = ("", "")
    categories: list[str] = field(default_factory=list)
    internet_message_id: str = ""
    is_draft: bool = True
    body: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    mime: bytes = b""
    deferred: dt.datetime | None = None  # SystemTime 0x3FEF (UTC)
    queued_at: dt.datetime | None = None  # when it entered the Outbox
    sent_at: dt.datetime | None = None  # sentDateTime


DEFERRED_ID = "SystemTime 0x3fef"  # how Graph names PidTagDeferredSendTime in singleValueExtendedProperties


def _graph_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


@dataclass
class Send:
    route: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    internet_message_id: str
    attachments: list[str]
    attachment_sizes: list[int]
    deferred: dt.datetime | None = None  # the message's deferred send time when it went out


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _server_context(cert, key) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class _TrackingServer(ThreadingHTTPServer):
    """Remembers its open connections so a certificate switch can end them (a kept-alive connection
    would otherwise go on with the old certificate's session). A connection accepted (its handshake
    done) before the switch but not yet handed to a thread is ended too."""

    def __init__(self, *args, **kwargs):
        self.open_connections: set = set()
        self.generation = 0  # bumped by every certificate switch
        self._accepted: dict = {}  # connection -> generation at accept
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self):
        plain, address = self.socket.accept()
        with self._connections_lock:  # the certificate this connection's handshake uses, and its generation
            context, generation = self.context, self.generation
        # the handshake runs in the accepting thread: a client that stalls in it must not stop the server
        plain.settimeout(10)
        try:
            request = context.wrap_socket(plain, server_side=True)
        except BaseException:
            plain.close()
            raise
        request.settimeout(None)
        with self._connections_lock:
            self._accepted[request] = generation
        return request, address

    def process_request(self, request, client_address):
        with self._connections_lock:
            stale = self._accepted.pop(request, self.generation) != self.generation
            if not stale:
                self.open_connections.add(request)
        if stale:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def switch(self, context: ssl.SSLContext) -> None:
        """Present another certificate from now on and end every connection made with the old one."""
        with self._connections_lock:
            self.context = context
        self.drop_connections()

    def drop_connections(self) -> None:
        with self._connections_lock:
            self.generation += 1
            connections, self.open_connections = list(self.open_connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeGraph:
    def __init__(self, address: str = "user@contoso.example", tenant: str = "contoso.example",
                 client_id: str = "11111111-2222-3333-4444-555555555555"):
        self.address = address
        self.tenant = tenant
        self.client_id = client_id
        self.lock = threading.RLock()
        self.counter = itertools.count(1)
        self.tmp = tempfile.TemporaryDirectory()
        self.ca_file, cert, key = make_tls(Path(self.tmp.name))
        self.folders: dict[str, dict] = {}
        for well_known, name in (("msgfolderroot", "Top of Information Store"), ("inbox", "Inbox"),
                                 ("drafts", "Drafts"), ("sentitems", "Sent Items"), ("outbox", "Outbox"),
                                 ("deleteditems", "Deleted Items")):
            self.folders[self._id("F")] = {"displayName": name, "wellKnown": well_known, "parent": None}
        self.messages: dict[str, Message] = {}
        self.sends: list[Send] = []
        self.requests: list[str] = []  # "METHOD /path" without query
        self.failures: list[tuple[str, str, dict]] = []
        self.outage = Outage()  # the whole service (sign-in included) down or slow
        self.access_tokens: dict[str, float] = {}  # token -> expiry (epoch)
        self.token_scopes: dict[str, str] = {}  # token -> the scopes it was issued for
        self.groups: dict[str, dict] = {}  # id -> {"mail", "displayName", "members": [directory objects]}
        self.consented: set[str] = {"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"}
        self.member_page_limit = 999
        self.refresh_tokens: set[str] = set()
        self.token_lifetime = 3600
        self.grants: list[str] = []
        self.uploads: dict[str, dict] = {}
        self.clock_offset = 0.0  # seconds the server's clock runs ahead of the real one (``advance``)
        self.submission_delay = 0.0  # how long a message without a deferred time stays in the Outbox
        # How sendMail files what it accepted (Exchange Online does it asynchronously, later under load):
        # "at_once" (sent and in Sent Items before the 202), "outbox" (queued in the Outbox, sent by the
        # transport after ``submission_delay``) or "hidden" (in no folder at all until it is sent, after
        # ``submission_delay``): the 202 only says the request was accepted.
        self.sendmail_filing = "at_once"
        self.accepted: list[Message] = []  # "hidden": accepted by sendMail, not in any folder yet
        self.delivering = True  # False: the transport is stalled, nothing leaves the Outbox
        self.unsynced: set[str] = set()  # drafts Outlook (Cached Exchange Mode) has not uploaded yet
        self.translate_allowed = False  # translateExchangeIds needs User.ReadBasic.All, which the app lacks
        self._stopped = threading.Event()
        self.ticker = threading.Thread(target=self._tick_forever, daemon=True)
        self.httpd = _TrackingServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.tls, self._cert_pair = context, (cert, key)
        self.httpd.context = context  # each connection's handshake happens in get_request
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    # ------------------------------------------------------------------ control API
    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def graph_endpoint(self) -> str:
        return f"{self.base}/v1.0"

    @property
    def authority(self) -> str:
        return f"{self.base}/{self.tenant}"

    def __enter__(self) -> FakeGraph:
        self.thread.start()
        self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.tmp.cleanup()

    def fail_next(self, route: str, kind: str, times: int = 1, **detail) -> None:
        """Fail the next ``times`` requests whose "METHOD /path" contains ``route`` ("*" for any).

        kinds: ``429`` / ``503`` (with Retry-After: ``retry_after``), ``401``, ``drop`` (close without an
        answer), ``drop_after`` (carry out, then close), or ``status:code`` e.g. ``413:ErrorMessageSizeExceeded``.
        """
        with self.lock:
            for _ in range(times):
                self.failures.append((route, kind, detail))

    def change_certificate(self) -> None:
        """The server now presents a certificate from another CA (a TLS-inspecting proxy, a mistake, an
        attack): a client that trusts ``ca_file`` must refuse it. ``restore_certificate`` undoes it."""
        other = Path(self.tmp.name) / "other"
        other.mkdir(exist_ok=True)
        _ca, cert, key = make_tls(other)
        # as a server that switches its certificate does: open connections end, every client must
        # connect (and check the new certificate) again
        self.httpd.switch(_server_context(cert, key))

    def restore_certificate(self) -> None:
        self.httpd.switch(_server_context(*self._cert_pair))

    def add_group(self, mail: str, members: list, name: str = "") -> str:
        """A group (distribution list) in the directory; ``members`` are addresses, (name, address) pairs
        or the mail of another group added before (nested: listed in transitiveMembers with its members)."""
        gid = str(uuid.uuid4())
        objects: list[dict] = []
        for m in members:
            name_, address = m if isinstance(m, tuple) else ("", m)
            nested = next((g for g in self.groups.values() if g["mail"].lower() == address.lower()), None)
            if nested is not None:
                objects.append({"@odata.type": "#microsoft.graph.group", "id": nested["id"], "mail": nested["mail"],
                                "displayName": nested["displayName"]})
                objects.extend(o for o in nested["members"] if o not in objects)
            else:
                objects.append({"@odata.type": "#microsoft.graph.user", "id": str(uuid.uuid4()), "mail": address,
                                "displayName": name_ or address.split("@")[0],
                                "userPrincipalName": address})
        self.groups[gid] = {"id": gid, "mail": mail, "displayName": name or mail.split("@")[0], "members": objects}
        return gid

    def revoke(self) -> None:
        """The admin revoked the user's sessions: every access and refresh token stops working."""
        with self.lock:
            self.access_tokens.clear()
            self.refresh_tokens.clear()

    def folder_id(self, key: str) -> str:
        for fid, f in self.folders.items():
            if fid == key or f.get("wellKnown") == key.lower() or f["displayName"] == key:
                return fid
        raise KeyError(key)

    def in_folder(self, key: str) -> list[Message]:
        fid = self.folder_id(key)
        return [m for m in self.messages.values() if m.folder == fid]

    def put_item(self, raw: bytes, folder: str = "SendGuard Hold", categories: list[str] | None = None,
                 msg_id: str | None = None, unsynced: bool = False) -> str:
        """Store a message (``msg_id``: its REST id; ``unsynced``: saved by Outlook in Cached Exchange
        Mode and not on the server until ``sync``)."""
        with self.lock:
            msg = self._from_mime(raw, self.folder_id(folder))
            if msg_id:
                msg.id = msg_id
            if unsynced:
                self.unsynced.add(msg.id)
            msg.categories = list(categories or [])
            self.messages[msg.id] = msg
            return msg.id

    def sync(self, message_id: str) -> None:
        """Outlook uploaded the draft: from now on Graph finds it."""
        with self.lock:
            self.unsynced.discard(message_id)

    @staticmethod
    def ews_id(rest_id: str) -> str:
        """The EWS form of a REST id (what getItemIdAsync gives the Outlook add-in)."""
        return rest_id.replace("-", "/").replace("_", "+")

    def delete_item(self, message_id: str) -> None:
        with self.lock:
            del self.messages[message_id]

    def now(self) -> dt.datetime:
        """The server's clock (UTC)."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward and let its transport send whatever became due."""
        with self.lock:
            self.clock_offset += seconds
            self.deliver_due()

    def outlook_send(self, raw: bytes, defer_seconds: float | None = None) -> str:
        """Play Outlook (or Outlook on the web) pressing Send: the message goes to the Outbox, with a
        deferred send time ``defer_seconds`` from now (delay delivery, scheduled send) or none."""
        with self.lock:
            msg = self._from_mime(raw, self.folder_id("outbox"))
            if defer_seconds is not None:
                msg.deferred = self.now() + dt.timedelta(seconds=defer_seconds)
            msg.queued_at = self.now()
            self.messages[msg.id] = msg
            return msg.id

    def deliver_due(self) -> list[str]:
        """The server's transport: send every Outbox message whose time has come; returns their ids."""
        with self.lock:
            if not self.delivering:
                return []
            now = self.now()
            delay = dt.timedelta(seconds=self.submission_delay)
            due = [m for m in self.in_folder("outbox")
                   if (m.deferred is not None and m.deferred <= now)
                   or (m.deferred is None and (m.queued_at or now) + delay <= now)]
            for msg in due:
                # the Outbox item is gone; the copy in Sent Items is a new item with its own id
                del self.messages[msg.id]
                msg.id = self._id("M")
                self._submit(msg, "ServerTransport")
            filed = [m for m in self.accepted if (m.queued_at or now) + delay <= now]
            for msg in filed:
                self.accepted.remove(msg)
                self._submit(msg, "sendMail")
            return [m.id for m in due + filed]

    def _tick_forever(self) -> None:
        while not self._stopped.wait(0.05):
            self.deliver_due()

    # ------------------------------------------------------------------ model
    def _id(self, prefix: str) -> str:
        return _b64url(f"AAMk{prefix}{next(self.counter):05d}{uuid.uuid4().hex[:10]}".encode())

    def _from_mime(self, raw: bytes, folder: str) -> Message:
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        msg = Message(id=self._id("M"), folder=folder, mime=raw)
        msg.subject = str(parsed.get("Subject", ""))
        for header, attr in (("To", "to"), ("Cc", "cc"), ("Bcc", "bcc")):
            setattr(msg, attr, [(n, a) for n, a in getaddresses(parsed.get_all(header, [])) if a])
        senders = [(n, a) for n, a in getaddresses(parsed.get_all("From", [])) if a]
        msg.sender = senders[0] if senders else ("", self.address)
        msg.internet_message_id = str(parsed.get("Message-ID", "")).strip() or make_msgid(domain="fake.graph")
        body = parsed.get_body(preferencelist=("plain", "html"))
        msg.body = body.get_content() if body is not None else ""
        for part in parsed.iter_attachments():
            msg.attachments.append(Attachment(self._id("A"), part.get_filename() or "attachment",
                                              part.get_content_type(), part.get_payload(decode=True) or b"",
                                              part.get_content_disposition() == "inline", part.get("Content-ID")))
        return msg

    def _mime(self, msg: Message) -> bytes:
        parsed = email.message_from_bytes(msg.mime, policy=email.policy.default)
        for header, values in (("To", msg.to), ("Cc", msg.cc), ("Bcc", msg.bcc)):
            del parsed[header]
            if values:
                parsed[header] = ", ".join(email.utils.formataddr(v) for v in values)
        del parsed["Message-ID"]
        parsed["Message-ID"] = msg.internet_message_id
        if parsed.is_multipart():
            keep = {a.name for a in msg.attachments}
            parsed.set_payload([p for p in parsed.get_payload() if not p.get_filename() or p.get_filename() in keep])
        return parsed.as_bytes(policy=email.policy.SMTP)

    @staticmethod
    def _recipients(boxes) -> list[dict]:
        return [{"emailAddress": {"name": n or a, "address": a}} for n, a in boxes]

    def _json(self, msg: Message) -> dict:
        return {
            "@odata.etag": f'W/"{msg.id[-8:]}"', "id": msg.id, "parentFolderId": msg.folder,
            "subject": msg.subject, "isDraft": msg.is_draft, "categories": list(msg.categories),
            "internetMessageId": msg.internet_message_id, "hasAttachments": bool(msg.attachments),
            "from": {"emailAddress": {"name": msg.sender[0], "address": msg.sender[1]}},
            "toRecipients": self._recipients(msg.to), "ccRecipients": self._recipients(msg.cc),
            "bccRecipients": self._recipients(msg.bcc),
            "body": {"contentType": "text", "content": msg.body},
            "sentDateTime": _graph_time(msg.sent_at) if msg.sent_at else None,
        }

    def _shaped(self, msg: Message, query: dict) -> dict:
        """The message as $select and $expand ask for it (only the 0x3FEF extended property expands)."""
        data = self._select(self._json(msg), query)
        expand = query.get("$expand", "")
        if expand:
            if not expand.startswith("singleValueExtendedProperties"):
                raise GraphError(400, "BadRequest", f"Unsupported $expand {expand}")
            m = re.search(r"id eq '([^']*)'", expand)
            wanted = m.group(1).lower() if m else None
            props = []
            if msg.deferred is not None and wanted in (None, DEFERRED_ID.lower()):
                props.append({"id": DEFERRED_ID, "value": _graph_time(msg.deferred)})
            if props:
                data["singleValueExtendedProperties"] = props
        return data

    def _submit(self, msg: Message, route: str) -> None:
        self.sends.append(Send(route, [a for _, a in msg.to], [a for _, a in msg.cc], [a for _, a in msg.bcc],
                               msg.subject, msg.internet_message_id, [a.name for a in msg.attachments],
                               [len(a.content) for a in msg.attachments], msg.deferred))
        msg.mime = self._mime(msg)
        msg.is_draft = False
        msg.sent_at = self.now()
        msg.folder = self.folder_id("sentitems")
        self.messages[msg.id] = msg

    # ------------------------------------------------------------------ HTTP plumbing
    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length) if length else b""
                fake._dispatch(self, body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def reply(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None,
                      content_type: str = "application/json"):
                body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
                fake.outage.linger()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if body:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _take_failure(self, line: str):
        with self.lock:
            for index, (route, kind, detail) in enumerate(self.failures):
                if route == "*" or route in line:
                    del self.failures[index]
                    return kind, detail
        return None

    def _dispatch(self, h, body: bytes) -> None:
        split = urlsplit(h.path)
        path = unquote(split.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        line = f"{h.command} {path}"
        is_identity = "/oauth2/" in path or "/.well-known/" in path
        outage = self.outage.gate()
        if outage == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if outage == "503":
            h.reply(503, {"error": {"code": "ServiceUnavailable", "message": "The service is unavailable."}},
                    {"Retry-After": str(self.outage.retry_after)})
            return
        if not is_identity:
            self.requests.append(line)
        failure = None if is_identity else self._take_failure(line)
        if failure:
            kind, detail = failure
            if kind in ("429", "503"):
                h.reply(int(kind), {"error": {"code": "TooManyRequests" if kind == "429" else "ServiceUnavailable",
                                              "message": "Please retry after the time given."}},
                        {"Retry-After": str(detail.get("retry_after", 1))})
                return
            if kind == "401":
                h.reply(401, {"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired."}})
                return
            if kind == "drop":
                h.close_connection = True
                h.connection.shutdown(2)
                return
            if ":" in kind:
                status, code = kind.split(":", 1)
                h.reply(int(status), {"error": {"code": code, "message": detail.get("message", code)}})
                return
        try:
            if is_identity:
                status, payload, headers = self._identity(h, path, body)
            else:
                self._check_token(h)
                with self.lock:
                    status, payload, headers = self._graph(h, path, query, body)
        except GraphError as e:
            status, payload, headers = e.status, {"error": {"code": e.code, "message": e.message}}, e.headers
        if failure and failure[0] == "drop_after":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if isinstance(payload, bytes):
            h.reply(status, raw=payload, headers=headers, content_type="message/rfc822")
        else:
            h.reply(status, payload, headers)

    # ------------------------------------------------------------------ identity platform
    def _issue(self, scope: str) -> dict:
        access, refresh = uuid.uuid4().hex, uuid.uuid4().hex
        self.access_tokens[access] = time.time() + self.token_lifetime
        self.token_scopes[access] = scope
        self.refresh_tokens.add(refresh)
        now = int(time.time())
        oid, tid = "00000000-0000-0000-0000-0000000000aa", "00000000-0000-0000-0000-0000000000bb"
        id_claims = {"iss": f"{self.base}/{tid}/v2.0", "aud": self.client_id, "iat": now, "nbf": now,
                     "exp": now + 3600, "oid": oid, "sub": "subject", "tid": tid,
                     "preferred_username": self.address, "name": "Test User"}
        id_token = ".".join([_b64url(b'{"alg":"none","typ":"JWT"}'), _b64url(json.dumps(id_claims).encode()), ""])
        return {"token_type": "Bearer", "scope": scope, "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime, "access_token": access, "refresh_token": refresh,
                "id_token": id_token,
                "client_info": _b64url(json.dumps({"uid": oid, "utid": tid}).encode())}

    def _identity(self, h, path: str, body: bytes):
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        prefix = f"/{self.tenant}"
        if path == f"{prefix}/v2.0/.well-known/openid-configuration":
            base = f"{self.base}{prefix}"
            return 200, {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "token_endpoint": f"{base}/oauth2/v2.0/token",
                         "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                         "response_types_supported": ["code", "id_token", "code id_token"],
                         "scopes_supported": ["openid", "profile", "email", "offline_access"]}, {}
        if not path.startswith(prefix + "/"):
            raise GraphError(400, "invalid_tenant", f"AADSTS90002: Tenant '{path.split('/')[1]}' not found.")
        if form.get("client_id") != self.client_id:
            return 400, {"error": "unauthorized_client",
                         "error_description": "AADSTS700016: Application not found in the directory."}, {}
        if path == f"{prefix}/oauth2/v2.0/devicecode":
            return 200, {"device_code": uuid.uuid4().hex, "user_code": "ABCD-EFGH",
                         "verification_uri": "https://microsoft.com/devicelogin", "expires_in": 900, "interval": 1,
                         "message": "To sign in, open https://microsoft.com/devicelogin and enter ABCD-EFGH."}, {}
        if path == f"{prefix}/oauth2/v2.0/token":
            grant = form.get("grant_type", "")
            self.grants.append(grant)
            with self.lock:
                if grant == "urn:ietf:params:oauth:grant-type:device_code":
                    return 200, self._issue(form.get("scope", "")), {}
                if grant == "refresh_token":
                    if form.get("refresh_token") not in self.refresh_tokens:
                        return 400, {"error": "invalid_grant", "suberror": "bad_token",
                                     "error_description": "AADSTS50173: The provided grant has expired due to it "
                                                          "being revoked."}, {}
                    self.refresh_tokens.discard(form["refresh_token"])
                    return 200, self._issue(form.get("scope", "")), {}
            return 400, {"error": "unsupported_grant_type", "error_description": grant}, {}
        raise GraphError(404, "NotFound", path)

    def _check_token(self, h) -> None:
        if "/uploadSessions/" in h.path:
            return  # the upload URL carries its own authorization and must be called without a token
        auth = h.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        expiry = self.access_tokens.get(token)
        if expiry is None or expiry < time.time():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")

    # ------------------------------------------------------------------ Graph mail API
    @staticmethod
    def _odata_eq(filter_text: str, prop: str) -> str | None:
        m = re.search(prop + r" eq '((?:[^']|'')*)'", filter_text)
        return m.group(1).replace("''", "'") if m else None

    def _message(self, mid: str) -> Message:
        if "+" in mid:  # an EWS id ('/' in one splits the path, so it is not found)
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        msg = self.messages.get(mid)
        if msg is None or mid in self.unsynced:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return msg

    def _collection(self, items: list[dict], query: dict, path: str) -> dict:
        top = int(query.get("$top", 10))
        skip = int(query.get("$skip", 0))
        page = items[skip:skip + top]
        out = {"@odata.context": f"{self.graph_endpoint}/$metadata#{path}", "value": page}
        if skip + top < len(items):
            # like Graph's, the link carries the query's other options ($filter, $select, $expand)
            # ``path`` is the request's path, /v1.0 included: the link is absolute, as Graph's are
            out["@odata.nextLink"] = f"{self.base}{path}?$top={top}&$skip={skip + top}" + "".join(
                f"&{key}={quote(query[key])}" for key in ("$filter", "$select", "$expand") if key in query)
        return out

    def _select(self, data: dict, query: dict) -> dict:
        if "$select" not in query:
            return data
        keys = set(query["$select"].split(",")) | {"id", "@odata.etag"}
        return {k: v for k, v in data.items() if k in keys}

    def _filter_messages(self, msgs: list[Message], query: dict) -> list[Message]:
        f = query.get("$filter")
        if not f:
            return msgs
        mid = self._odata_eq(f, "internetMessageId")
        if mid is not None:
            msgs = [m for m in msgs if m.internet_message_id == mid]
        cat = re.search(r"categories/any\(c:c eq '((?:[^']|'')*)'\)", f)
        if cat:
            msgs = [m for m in msgs if cat.group(1).replace("''", "'") in m.categories]
        sent = re.search(r"sentDateTime ge (\S+)", f)
        if sent:
            since = _parse_time(sent.group(1))
            msgs = [m for m in msgs if m.sent_at is not None and m.sent_at >= since]
        return msgs

    def _graph(self, h, path: str, query: dict, body: bytes):
        method = h.command
        if path.startswith("/uploadSessions/"):
            return self._upload(h, path.split("/")[2], body)
        if path == "/v1.0/groups" or path.startswith("/v1.0/groups/"):
            return self._groups(h, method, path[len("/v1.0/groups"):].strip("/").split("/"), query, path)
        if not path.startswith("/v1.0/me/"):
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{path}'.")
        parts = path[len("/v1.0/me/"):].split("/")
        data = json.loads(body) if body and h.headers.get("Content-Type", "").startswith("application/json") else None
        if parts[0] == "mailFolders":
            return self._mail_folders(method, parts[1:], query, data, path)
        if parts[0] == "sendMail" and method == "POST":
            msg = self._from_mime(self._mime_body(h, body), self.folder_id("drafts"))
            if self.sendmail_filing == "outbox":  # queued for the transport, as outlook_send does
                msg.folder, msg.queued_at = self.folder_id("outbox"), self.now()
                self.messages[msg.id] = msg
            elif self.sendmail_filing == "hidden":
                msg.folder, msg.queued_at = "", self.now()
                self.accepted.append(msg)
            else:
                self._submit(msg, "sendMail")
            return 202, None, {}
        if parts[0] == "messages":
            return self._messages(h, method, parts[1:], query, data, body, path)
        if parts[0] == "translateExchangeIds" and method == "POST":
            if not self.translate_allowed:
                raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            if (data or {}).get("sourceIdType") != "ewsId" or (data or {}).get("targetIdType") != "restId":
                raise GraphError(400, "BadRequest", "unsupported id types")
            return 200, {"value": [{"sourceId": i, "targetId": i.replace("/", "-").replace("+", "_")}
                                   for i in data.get("inputIds") or []]}, {}
        raise GraphError(400, "BadRequest", f"Unsupported segment {parts[0]}")

    def _groups(self, h, method, parts, query, path):
        if method != "GET":
            raise GraphError(405, "Request_BadRequest", "Only reads of the directory are supported here.")
        token = h.headers.get("Authorization", "")[7:]
        granted = {s.rsplit("/", 1)[-1] for s in self.token_scopes.get(token, "").split()}
        if not granted & self.consented & {"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"}:
            raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        if parts == [""]:
            mail = self._odata_eq(query.get("$filter", ""), "mail")
            if mail is None:
                raise GraphError(400, "Request_UnsupportedQuery", "Unsupported query.")
            found = [{"id": g["id"], "displayName": g["displayName"], "mail": g["mail"]}
                     for g in self.groups.values() if g["mail"].lower() == mail.lower()]
            return 200, self._collection([self._select(g, query) for g in found], query, path), {}
        group = self.groups.get(parts[0])
        if group is None:
            raise GraphError(404, "Request_ResourceNotFound", f"Resource '{parts[0]}' does not exist.")
        if parts[1:] == ["transitiveMembers"]:
            # Graph may give fewer than $top per page: the client must follow @odata.nextLink
            query = {**query, "$top": str(min(int(query.get("$top", 100)), self.member_page_limit))}
            members = [{"@odata.type": m["@odata.type"], **self._select(m, query)} for m in group["members"]]
            return 200, self._collection(members, query, path), {}
        raise GraphError(400, "BadRequest", f"Unsupported segment {'/'.join(parts[1:])}")

    def _mime_body(self, h, body: bytes) -> bytes:
        if not h.headers.get("Content-Type", "").startswith("text/plain"):
            raise GraphError(400, "ErrorMimeContentInvalid", "MIME content must be sent as base64 text/plain.")
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise GraphError(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.") \
                from None

    def _mail_folders(self, method, parts, query, data, path):
        if not parts or parts == [""]:
            if method == "GET":
                name = self._odata_eq(query.get("$filter", ""), "displayName")
                top = [(fid, f) for fid, f in self.folders.items()
                       if f["parent"] is None and f.get("wellKnown") != "msgfolderroot"]
                if name is not None:
                    top = [(fid, f) for fid, f in top if f["displayName"] == name]
                return 200, self._collection([self._folder_json(fid) for fid, _ in top], query, path), {}
            if method == "POST":
                name = data["displayName"]
                if any(f["displayName"] == name and f["parent"] is None for f in self.folders.values()):
                    raise GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
                fid = self._id("F")
                self.folders[fid] = {"displayName": name, "parent": None}
                return 201, self._folder_json(fid), {}
        fid = self.folder_id(parts[0])
        if len(parts) == 1 and method == "GET":
            return 200, self._folder_json(fid), {}
        if len(parts) == 2 and parts[1] == "messages" and method == "GET":
            msgs = self._filter_messages([m for m in self.messages.values() if m.folder == fid], query)
            return 200, self._collection([self._shaped(m, query) for m in msgs], query, path), {}
        raise GraphError(400, "BadRequest", "Unsupported mailFolders request")

    def _folder_json(self, fid: str) -> dict:
        f = self.folders[fid]
        count = sum(1 for m in self.messages.values() if m.folder == fid)
        return {"id": fid, "displayName": f["displayName"], "parentFolderId": None, "childFolderCount": 0,
                "unreadItemCount": 0, "totalItemCount": count, "isHidden": False}

    def _messages(self, h, method, parts, query, data, body, path):
        if not parts or parts == [""]:
            if method == "GET":
                msgs = self._filter_messages(list(self.messages.values()), query)
                return 200, self._collection([self._select(self._json(m), query) for m in msgs], query, path), {}
            if method == "POST":
                msg = self._from_mime(self._mime_body(h, body), self.folder_id("drafts"))
                self.messages[msg.id] = msg
                return 201, self._json(msg), {}
        msg = self._message(parts[0])
        rest = parts[1:]
        if not rest:
            if method == "GET":
                return 200, self._shaped(msg, query), {}
            if method == "PATCH":
                for prop in data.get("singleValueExtendedProperties") or []:
                    if prop.get("id", "").lower() != DEFERRED_ID.lower():
                        raise GraphError(400, "BadRequest", "This fake server knows only SystemTime 0x3FEF.")
                    msg.deferred = _parse_time(prop["value"]) if prop.get("value") else None
                for key, attr in (("toRecipients", "to"), ("ccRecipients", "cc"), ("bccRecipients", "bcc")):
                    if key in data:
                        setattr(msg, attr, [(r["emailAddress"].get("name", ""), r["emailAddress"]["address"])
                                            for r in data[key] or []])
                if "categories" in data:
                    msg.categories = list(data["categories"])
                if "internetMessageId" in data and not msg.is_draft:
                    raise GraphError(400, "ErrorInvalidPropertyUpdateSentMessage", "Update is not allowed.")
                return 200, self._json(msg), {}
            if method == "DELETE":
                del self.messages[msg.id]
                return 204, None, {}
        if rest == ["$value"] and method == "GET":
            return 200, self._mime(msg), {}
        if rest == ["send"] and method == "POST":
            if not msg.is_draft:
                raise GraphError(400, "ErrorInvalidOperation", "The message has already been sent.")
            if msg.deferred is not None and msg.deferred > self.now():
                msg.folder = self.folder_id("outbox")  # Exchange waits for the deferred time
                msg.queued_at = self.now()
                return 202, None, {}
            self._submit(msg, "send")
            return 202, None, {}
        if rest == ["move"] and method == "POST":
            # a moved message gets a new id; one the transport already sent is gone from the Outbox
            target = self.folder_id(data["destinationId"])
            del self.messages[msg.id]
            msg.id = self._id("M")
            msg.folder = target
            msg.queued_at = None
            self.messages[msg.id] = msg
            return 201, self._json(msg), {}
        if rest and rest[0] == "attachments":
            return self._attachments(method, msg, rest[1:], data, query, path)
        raise GraphError(400, "BadRequest", "Unsupported messages request")

    def _attachments(self, method, msg: Message, rest, data, query, path):
        if not rest:
            if method == "GET":
                items = [{"@odata.type": "#microsoft.graph.fileAttachment", "id": a.id, "name": a.name,
                          "contentType": a.content_type, "size": len(a.content), "isInline": a.is_inline}
                         for a in msg.attachments]
                return 200, self._collection([self._select(i, query) for i in items], query, path), {}
            if method == "POST":
                content = base64.b64decode(data["contentBytes"])
                if len(content) > 3 * 1024 * 1024:
                    raise GraphError(413, "ErrorRequestEntityTooLarge",
                                     "The attachment is larger than 3 MB; use an upload session.")
                att = Attachment(self._id("A"), data["name"], data.get("contentType", "application/octet-stream"),
                                 content, data.get("isInline", False), data.get("contentId"))
                msg.attachments.append(att)
                return 201, {"id": att.id, "name": att.name, "size": len(content)}, {}
        if rest == ["createUploadSession"] and method == "POST":
            item = data["AttachmentItem"]
            sid = uuid.uuid4().hex
            self.uploads[sid] = {"message": msg.id, "name": item["name"], "size": int(item["size"]),
                                 "contentType": item.get("contentType", "application/octet-stream"),
                                 "isInline": item.get("isInline", False), "contentId": item.get("contentId"),
                                 "data": bytearray()}
            return 201, {"uploadUrl": f"{self.base}/uploadSessions/{sid}?authtoken={uuid.uuid4().hex}",
                         "expirationDateTime": "2099-01-01T00:00:00Z", "nextExpectedRanges": ["0-"]}, {}
        if len(rest) == 1 and method == "DELETE":
            before = len(msg.attachments)
            msg.attachments = [a for a in msg.attachments if a.id != rest[0]]
            if len(msg.attachments) == before:
                raise GraphError(404, "ErrorItemNotFound", "The attachment was not found.")
            return 204, None, {}
        raise GraphError(400, "BadRequest", "Unsupported attachments request")

    def _upload(self, h, sid: str, body: bytes):
        if h.headers.get("Authorization"):
            raise GraphError(401, "InvalidAuthenticationToken", "Do not send an Authorization header here.")
        session = self.uploads.get(sid)
        if session is None or h.command != "PUT":
            raise GraphError(404, "ErrorItemNotFound", "Upload session not found.")
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", h.headers.get("Content-Range", ""))
        if not m:
            raise GraphError(400, "InvalidContentRange", "Content-Range is missing or malformed.")
        start, end, total = map(int, m.groups())
        if start != len(session["data"]) or total != session["size"] or end - start + 1 != len(body):
            raise GraphError(416, "InvalidRange", "The range does not follow the bytes received so far.")
        if end + 1 < total and len(body) % CHUNK:
            raise GraphError(400, "InvalidChunkSize", "Ranges must be multiples of 320 KiB.")
        session["data"] += body
        if len(session["data"]) < total:
            return 200, {"expirationDateTime": "2099-01-01T00:00:00Z",
                         "nextExpectedRanges": [f"{len(session['data'])}-"]}, {}
        msg = self._message(session["message"])
        att = Attachment(self._id("A"), session["name"], session["contentType"], bytes(session["data"]),
                         session["isInline"], session["contentId"])
        msg.attachments.append(att)
        del self.uploads[sid]
        return 201, None, {"Location": f"{self.graph_endpoint}/me/messages('{msg.id}')/attachments('{att.id}')"}
