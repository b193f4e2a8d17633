"""A fake Google for tests: OAuth consent + token endpoints, the Gmail REST API, and ID-token certs.

It speaks the wire format the real google-api-python-client and google-auth-oauthlib use (JSON bodies,
multipart and resumable uploads, PKCE, refresh grants), enforces scopes per access token the way Gmail
does, and records every call so tests can count sends and compare the MIME that arrived.

Start it with ``with FakeGoogle() as google:``; it binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.policy
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

from tests.fakes.outage import Outage

AUTH = "https://www.googleapis.com/auth/"
SEND, COMPOSE, READONLY, METADATA, MODIFY = (
    AUTH + s for s in ("gmail.send", "gmail.compose", "gmail.readonly", "gmail.metadata", "gmail.modify")
)
FULL = "https://mail.google.com/"
# Gmail's scope table (from the discovery document) for the methods the fake serves.
ALLOWED = {
    "messages.send": {SEND, COMPOSE, MODIFY, FULL},
    "messages.list": {READONLY, METADATA, MODIFY, FULL},
    "messages.get": {READONLY, METADATA, MODIFY, FULL},
    "drafts.list": {COMPOSE, READONLY, MODIFY, FULL},
    "drafts.get": {COMPOSE, READONLY, MODIFY, FULL},
    "drafts.create": {COMPOSE, MODIFY, FULL},
    "drafts.update": {COMPOSE, MODIFY, FULL},
    "drafts.send": {COMPOSE, MODIFY, FULL},
    "drafts.delete": {COMPOSE, MODIFY, FULL},
    "profile": {COMPOSE, READONLY, METADATA, MODIFY, FULL},
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SigningKey:
    """An RSA key with a self-signed certificate: signs ID tokens, served as Google's v1 certs."""

    def __init__(self, kid: str = "test-key-1"):
        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-google-certs")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .sign(self.private_key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def sign(self, claims: dict[str, Any]) -> str:
        return google_jwt.encode(self.signer, claims).decode("ascii")


class FakeGoogle:
    def __init__(
        self,
        email: str = "alice@example.com",
        client_id: str = "test-client.apps.example",
        client_secret: str = "test-secret",
    ):
        self.email = email
        self.clients = {client_id: client_secret}
        self.client_id, self.client_secret = client_id, client_secret
        self.key = SigningKey()
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.messages: dict[str, dict[str, Any]] = {}  # gmail id -> {raw, labels, thread, seq}
        self.drafts: dict[str, str] = {}  # draft id -> gmail message id
        self.sends: list[dict[str, Any]] = []  # every message that went out: {method, raw, upload, id}
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []  # (route, http method, query)
        self.codes: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.outage = Outage()  # the whole service (sign-in included) down or slow
        self.consent = "allow"  # allow | deny
        self.drop_scopes: set[str] = set()  # scopes the user unticks on the consent screen
        self.search_lag = 0  # the newest N messages are not yet in the search index
        self.access_token_lifetime = 3600
        self.on_send: Callable[[dict[str, Any]], None] | None = None
        self.after: dict[str, Callable[[], None]] = {}  # route -> what happens right after it (autosave...)
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> FakeGoogle:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        fake = self

        class Handler(_Handler):
            google = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-google", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def auth_uri(self) -> str:
        return self.url + "o/oauth2/auth"

    @property
    def token_uri(self) -> str:
        return self.url + "token"

    @property
    def certs_url(self) -> str:
        return self.url + "oauth2/v1/certs"

    def client_file(self) -> dict[str, Any]:
        return {
            "installed": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "auth_uri": self.auth_uri,
                "token_uri": self.token_uri,
                "redirect_uris": ["http://localhost"],
            }
        }

    # -- test helpers --------------------------------------------------------------------------------

    def issue_refresh_token(self, scopes: list[str], email: str | None = None) -> str:
        token = "1//rt-" + secrets.token_urlsafe(16)
        self.refresh_tokens[token] = {
            "scopes": set(scopes),
            "email": email or self.email,
            "client_id": self.client_id,
            "revoked": False,
        }
        return token

    def write_authorized_user(self, path: Path, scopes: list[str], *, typed: bool = False) -> str:
        """Write google-auth's authorized-user JSON for a new refresh token (as an admin would); returns it."""
        token = self.issue_refresh_token(scopes)
        data = {"type": "authorized_user"} if typed else {}
        data.update(client_id=self.client_id, client_secret=self.client_secret, refresh_token=token,
                    token_uri=self.token_uri)
        path.write_text(json.dumps(data))
        return token

    def revoke_all(self) -> None:
        with self.lock:
            for info in self.refresh_tokens.values():
                info["revoked"] = True
            self.access_tokens.clear()

    def expire_access_tokens(self) -> None:
        with self.lock:
            self.access_tokens.clear()

    def fail(
        self,
        route: str,
        status: int,
        *,
        reason: str = "backendError",
        message: str = "fake failure",
        times: int = 1,
        after: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` calls to ``route`` answer ``status``; ``after`` = do the work first."""
        self.faults.append(
            {
                "route": route,
                "status": status,
                "reason": reason,
                "message": message,
                "times": times,
                "after": after,
                "headers": headers or {},
            }
        )

    def add_draft(self, raw: bytes, labels: tuple[str, ...] = ("SendGuard",)) -> str:
        with self.lock:
            mid = self._store(raw, {"DRAFT", *labels})
            draft_id = f"r-{next(self.ids)}"
            self.drafts[draft_id] = mid
            return draft_id

    def autosave(self, draft_id: str, raw: bytes) -> str:
        """What Gmail's autosave does: the draft keeps its id, its message gets a new id; returns it."""
        with self.lock:
            old = self.drafts[draft_id]
            mid = self._store(raw, set(self.messages[old]["labels"]))
            self.messages[mid]["thread"] = self.messages[old]["thread"]
            del self.messages[old]
            self.drafts[draft_id] = mid
            return mid

    def sent(self) -> list[dict[str, Any]]:
        return list(self.sends)

    def route_count(self, route: str) -> int:
        return sum(1 for r, _m, _q in self.calls if r == route)

    def sign_id_token(self, **claims: Any) -> str:
        now = int(time.time())
        base = {"iss": "https://accounts.google.com", "iat": now, "exp": now + 3600}
        base.update(claims)
        return self.key.sign(base)

    # -- state -----------------------------------------------------------------------------------------

    def _store(self, raw: bytes, labels: set[str]) -> str:
        mid = f"m{next(self.ids):06x}"
        headers = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
        if not headers.get("Message-ID"):
            raw = f"Message-ID: <{mid}@fake.mail.gmail.com>\r\n".encode() + raw
        self.messages[mid] = {"raw": raw, "labels": set(labels), "thread": f"t{mid}", "seq": next(self.ids)}
        return mid

    def message_id_header(self, mid: str) -> str:
        headers = BytesParser(policy=email.policy.default).parsebytes(
            self.messages[mid]["raw"], headersonly=True
        )
        return str(headers.get("Message-ID", "")).strip()

    def _newest_first(self, label: str | None) -> list[str]:
        ids = [m for m, v in self.messages.items() if label is None or label in v["labels"]]
        return sorted(ids, key=lambda m: self.messages[m]["seq"], reverse=True)


class _Handler(BaseHTTPRequestHandler):
    google: FakeGoogle
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.google.outage.linger()
        self.send_response(status)
        if body is not None and not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, reason: str, extra: dict[str, str] | None = None) -> None:
        statuses = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            413: "INVALID_ARGUMENT",
            429: "RESOURCE_EXHAUSTED",
            500: "INTERNAL",
            503: "UNAVAILABLE",
        }
        self._send(
            status,
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": statuses.get(status, "UNKNOWN"),
                    "errors": [{"message": message, "domain": "global", "reason": reason}],
                }
            },
            extra,
        )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = url.path
        body = self._body()
        outage = self.google.outage.gate()
        if outage == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if outage == "503":
            self._error(503, "The service is currently unavailable.", "backendError",
                        {"Retry-After": str(self.google.outage.retry_after)})
            return
        try:
            if path == "/o/oauth2/auth":
                return self._authorize(query)
            if path == "/token":
                return self._token(body)
            if path == "/oauth2/v1/certs":
                return self._send(200, {self.google.key.kid: self.google.key.cert_pem})
            if path.startswith("/upload/session/"):
                return self._upload_chunk(path.rsplit("/", 1)[1], body)
            m = re.match(r"^/(upload/|resumable/upload/)?gmail/v1/users/me/(.*)$", path)
            if not m:
                return self._error(404, f"no route {path}", "notFound")
            self._gmail(method, m.group(2), query, body, upload=bool(m.group(1)))
        except Exception as exc:  # a bug in the fake must show up, not hang the client
            self._error(500, f"fake server error: {exc!r}", "backendError")
            raise

    # -- OAuth ------------------------------------------------------------------------------------------

    def _authorize(self, q: dict[str, list[str]]) -> None:
        g = self.google
        one = {k: v[0] for k, v in q.items()}
        redirect = one.get("redirect_uri", "")
        if one.get("client_id") not in g.clients or not redirect.startswith("http://localhost:"):
            return self._send(400, b"invalid client or redirect_uri")
        if one.get("response_type") != "code" or one.get("code_challenge_method") != "S256":
            return self._send(400, b"expected response_type=code with PKCE S256")
        params: dict[str, str] = {"state": one.get("state", "")}
        if g.consent == "deny":
            params["error"] = "access_denied"
        else:
            scopes = [s for s in one.get("scope", "").split() if s not in g.drop_scopes]
            code = "4/code-" + secrets.token_urlsafe(12)
            g.codes[code] = {
                "client_id": one["client_id"],
                "redirect_uri": redirect,
                "scopes": scopes,
                "challenge": one.get("code_challenge"),
                "offline": one.get("access_type") == "offline",
            }
            params.update(code=code, scope=" ".join(scopes))
        self._send(302, b"", {"Location": redirect + "?" + urllib.parse.urlencode(params)})

    def _token(self, body: bytes) -> None:
        g = self.google
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if g.clients.get(form.get("client_id", "")) != form.get("client_secret"):
            return self._send(
                401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
            )
        grant = form.get("grant_type")
        with g.lock:
            if grant == "authorization_code":
                info = g.codes.pop(form.get("code", ""), None)
                if info is None or info["redirect_uri"] != form.get("redirect_uri"):
                    return self._send(400, {"error": "invalid_grant", "error_description": "Bad code."})
                verifier = form.get("code_verifier", "")
                challenge = (
                    base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                )
                if challenge != info["challenge"]:
                    return self._send(400, {"error": "invalid_grant", "error_description": "PKCE mismatch."})
                scopes = info["scopes"]
                refresh = g.issue_refresh_token(scopes) if info["offline"] else None
            elif grant == "refresh_token":
                rt = g.refresh_tokens.get(form.get("refresh_token", ""))
                if rt is None or rt["revoked"]:
                    return self._send(
                        400,
                        {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
                    )
                scopes, refresh = sorted(rt["scopes"]), None
            else:
                return self._send(400, {"error": "unsupported_grant_type"})
            access = "ya29.fake-" + secrets.token_urlsafe(16)
            g.access_tokens[access] = {
                "scopes": set(scopes),
                "expires": time.time() + g.access_token_lifetime,
            }
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": g.access_token_lifetime,
            "token_type": "Bearer",
            "scope": " ".join(scopes),
        }
        if refresh:
            answer["refresh_token"] = refresh
        if "openid" in scopes:
            answer["id_token"] = g.sign_id_token(
                aud=g.client_id, sub="1234567890", email=g.email, email_verified=True
            )
        self._send(200, answer)

    # -- Gmail ----------------------------------------------------------------------------------------

    def _route(self, method: str, rest: str) -> tuple[str, str | None]:
        table = [
            ("POST", r"messages/send", "messages.send"),
            ("GET", r"messages", "messages.list"),
            ("GET", r"messages/([^/]+)", "messages.get"),
            ("GET", r"drafts", "drafts.list"),
            ("POST", r"drafts", "drafts.create"),
            ("POST", r"drafts/send", "drafts.send"),
            ("GET", r"drafts/([^/]+)", "drafts.get"),
            ("PUT", r"drafts/([^/]+)", "drafts.update"),
            ("DELETE", r"drafts/([^/]+)", "drafts.delete"),
            ("GET", r"profile", "profile"),
        ]
        for verb, pattern, name in table:
            m = re.fullmatch(pattern, rest)
            if m and verb == method:
                return name, (m.group(1) if m.groups() else None)
        return "", None

    def _gmail(self, method: str, rest: str, query: dict[str, list[str]], body: bytes, upload: bool) -> None:
        g = self.google
        route, ident = self._route(method, rest)
        if not route:
            return self._error(404, f"Method not found: {method} {rest}", "notFound")
        g.calls.append((route, method, query))
        auth = self.headers.get("Authorization", "")
        token = g.access_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if token is None or token["expires"] < time.time():
            return self._error(
                401,
                "Request had invalid authentication credentials.",
                "authError",
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        scopes = token["scopes"]
        if not scopes & ALLOWED[route]:
            return self._error(
                403, "Request had insufficient authentication scopes.", "insufficientPermissions"
            )
        fault = next((f for f in g.faults if f["route"] == route and f["times"] > 0), None)
        if fault and not fault["after"]:
            fault["times"] -= 1
            return self._error(fault["status"], fault["message"], fault["reason"], fault["headers"])
        if upload:
            kind = query.get("uploadType", [""])[0]
            if kind == "resumable":
                session = secrets.token_hex(8)
                meta = json.loads(body) if body.strip() else {}
                g.uploads[session] = {
                    "route": route,
                    "ident": ident,
                    "meta": meta,
                    "data": b"",
                    "total": int(self.headers.get("X-Upload-Content-Length") or -1),
                    "query": query,
                    "scopes": scopes,
                }
                return self._send(200, b"", {"Location": f"{g.url}upload/session/{session}"})
            meta, raw = self._parse_upload(kind, body)
            return self._finish(route, ident, query, meta, raw, f"upload-{kind}", scopes, fault)
        meta = json.loads(body) if body.strip() else {}
        self._finish(route, ident, query, meta, None, "json", scopes, fault)

    def _parse_upload(self, kind: str, body: bytes) -> tuple[dict[str, Any], bytes]:
        if kind == "media":
            return {}, body
        ctype = self.headers.get("Content-Type", "")
        msg = BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        parts = list(msg.iter_parts())
        meta = json.loads(parts[0].get_content()) if parts[0].get_content().strip() else {}
        return meta, parts[1].get_payload(decode=True)

    def _upload_chunk(self, session: str, body: bytes) -> None:
        g = self.google
        up = g.uploads.get(session)
        if up is None:
            return self._error(404, "no such upload session", "notFound")
        g.calls.append(("upload.chunk", "PUT", {}))
        crange = self.headers.get("Content-Range", "")
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", crange)
        if m:
            start = int(m.group(1))
            if start != len(up["data"]):
                return self._send(400, b"chunk out of order")
            up["data"] += body
            total = m.group(3)
            if total != "*":
                up["total"] = int(total)
        if up["total"] < 0 or len(up["data"]) < up["total"]:
            return self._send(308, b"", {"Range": f"bytes=0-{len(up['data']) - 1}"})
        del g.uploads[session]
        self._finish(
            up["route"],
            up["ident"],
            up["query"],
            up["meta"],
            up["data"],
            "upload-resumable",
            up["scopes"],
            None,
        )

    def _finish(
        self,
        route: str,
        ident: str | None,
        query: dict[str, list[str]],
        meta: dict[str, Any],
        raw: bytes | None,
        upload: str,
        scopes: set[str],
        fault: dict[str, Any] | None,
    ) -> None:
        g = self.google
        with g.lock:
            status, answer = self._act(route, ident, query, meta, raw, upload, scopes)
            if status == 200 and route in g.after:
                g.after[route]()
        if fault and fault["after"] and status == 200:
            fault["times"] -= 1
            return self._error(fault["status"], fault["message"], fault["reason"], fault["headers"])
        if status != 200:
            return self._error(status, answer["message"], answer["reason"])
        self._send(200, answer)

    def _act(
        self,
        route: str,
        ident: str | None,
        query: dict[str, list[str]],
        meta: dict[str, Any],
        raw: bytes | None,
        upload: str,
        scopes: set[str],
    ) -> tuple[int, dict[str, Any]]:
        g = self.google
        q1 = {k: v[0] for k, v in query.items()}
        if route == "messages.send":
            raw = raw if raw is not None else unb64url(meta.get("raw", ""))
            if not raw:
                return 400, {
                    "message": "'raw' RFC822 payload message string or uploading message via /upload/* "
                    "URL required",
                    "reason": "invalidArgument",
                }
            if len(raw) > 36_700_160:
                return 413, {"message": "Request Entity Too Large", "reason": "uploadTooLarge"}
            mid = g._store(raw, {"SENT"})
            thread = meta.get("threadId")
            if thread:
                g.messages[mid]["thread"] = thread
            record = {"method": route, "raw": raw, "upload": upload, "id": mid, "threadId": thread}
            g.sends.append(record)
            if g.on_send:
                g.on_send(record)
            return 200, {"id": mid, "threadId": g.messages[mid]["thread"], "labelIds": ["SENT"]}
        if route == "messages.list":
            labels = query.get("labelIds", [])
            ids = g._newest_first(None)
            ids = [m for m in ids if all(lab in g.messages[m]["labels"] for lab in labels)]
            if q1.get("includeSpamTrash") not in ("true", "True"):
                ids = [m for m in ids if "TRASH" not in g.messages[m]["labels"]]
            if "q" in q1:
                if METADATA in scopes:
                    return 403, {
                        "message": "Metadata scope does not support 'q' parameter",
                        "reason": "forbidden",
                    }
                indexed = set(g._newest_first(None)[g.search_lag :])
                ids = [m for m in ids if m in indexed and self._matches(m, q1["q"])]
            ids = ids[: int(q1.get("maxResults", 100))]
            out: dict[str, Any] = {"resultSizeEstimate": len(ids)}
            if ids:
                out["messages"] = [{"id": m, "threadId": g.messages[m]["thread"]} for m in ids]
            return 200, out
        if route == "messages.get":
            if ident not in g.messages:
                return 404, {"message": "Requested entity was not found.", "reason": "notFound"}
            fmt = q1.get("format", "full")
            if METADATA in scopes and fmt not in ("metadata", "minimal"):
                return 403, {
                    "message": "Metadata scope doesn't allow format " + fmt.upper(),
                    "reason": "forbidden",
                }
            return 200, self._message(ident, fmt, query.get("metadataHeaders", []))
        if route == "drafts.create":
            raw = raw if raw is not None else unb64url(meta.get("message", {}).get("raw", ""))
            draft_id = g.add_draft(raw, ())
            return 200, {"id": draft_id, "message": {"id": g.drafts[draft_id]}}
        if route == "drafts.list":
            ids = sorted(g.drafts, key=lambda d: g.messages[g.drafts[d]]["seq"], reverse=True)
            if "q" in q1:
                ids = [d for d in ids if self._matches(g.drafts[d], q1["q"])]
            out = {"resultSizeEstimate": len(ids)}
            if ids:
                out["drafts"] = [
                    {"id": d, "message": {"id": g.drafts[d], "threadId": g.messages[g.drafts[d]]["thread"]}}
                    for d in ids
                ]
            return 200, out
        if route == "drafts.delete":
            if ident not in g.drafts:
                return 404, {"message": "Requested entity was not found.", "reason": "notFound"}
            del g.messages[g.drafts.pop(ident)]
            return 200, {}
        if route in ("drafts.get", "drafts.update", "drafts.send"):
            draft_id = ident if route != "drafts.send" else meta.get("id")
            if draft_id not in g.drafts:
                return 404, {"message": "Requested entity was not found.", "reason": "notFound"}
            mid = g.drafts[draft_id]
            if route == "drafts.get":
                return 200, {"id": draft_id, "message": self._message(mid, q1.get("format", "full"), [])}
            if route == "drafts.update":
                raw = raw if raw is not None else unb64url(meta.get("message", {}).get("raw", ""))
                labels = g.messages[mid]["labels"]
                del g.messages[mid]
                new = g._store(raw, labels)
                g.drafts[draft_id] = new
                return 200, {"id": draft_id, "message": {"id": new, "labelIds": sorted(labels)}}
            del g.drafts[draft_id]
            g.messages[mid]["labels"] = {"SENT"}
            g.messages[mid]["seq"] = next(g.ids)
            record = {
                "method": route,
                "raw": g.messages[mid]["raw"],
                "upload": upload,
                "id": mid,
                "draft_id": draft_id,
            }
            g.sends.append(record)
            if g.on_send:
                g.on_send(record)
            return 200, {"id": mid, "threadId": g.messages[mid]["thread"], "labelIds": ["SENT"]}
        if route == "profile":
            return 200, {"emailAddress": g.email, "messagesTotal": len(g.messages)}
        return 404, {"message": "not served by the fake", "reason": "notFound"}

    def _matches(self, mid: str, q: str) -> bool:
        g = self.google
        for term in q.split():
            key, _, value = term.partition(":")
            value = value.strip('"')
            if key == "rfc822msgid":
                if g.message_id_header(mid).strip("<>") != value.strip("<>"):
                    return False
            elif key == "label":
                if value not in g.messages[mid]["labels"]:
                    return False
            else:
                return False
        return True

    def _message(self, mid: str, fmt: str, wanted: list[str]) -> dict[str, Any]:
        g = self.google
        msg = g.messages[mid]
        out: dict[str, Any] = {
            "id": mid,
            "threadId": msg["thread"],
            "labelIds": sorted(msg["labels"]),
            "snippet": "",
            "sizeEstimate": len(msg["raw"]),
            "internalDate": str(msg["seq"]),
        }
        if fmt == "raw":
            out["raw"] = b64url(msg["raw"])
        elif fmt in ("metadata", "full"):
            parsed = BytesParser(policy=email.policy.default).parsebytes(msg["raw"], headersonly=True)
            names = {w.lower() for w in wanted}
            out["payload"] = {
                "headers": [
                    {"name": k, "value": str(v)} for k, v in parsed.items() if not names or k.lower() in names
                ]
            }
        return out
