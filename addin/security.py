"""Who may call the API, from where: Host (DNS rebinding), Origin allow-list, bearer tokens, sizes.

Three kinds of credential:
- the API token (``sendguard token``): full access, for scripts and the desktop windows;
- an add-in token from ``POST /api/v1/addin/session``: signed, short-lived, bound to the Origin
  that asked for it;
- a page session: a one-time confirmation link (``/confirm/{id}?t=...``) turns into a signed
  cookie that opens that one message only.
All errors are JSON ``{"error": {"code", "message"}}`` with a proper status.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, current_app, g, jsonify, request, session
from flask.json.provider import DefaultJSONProvider
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import NotFound as NotFoundError

from sendguard import peers
from sendguard.errors import (
    CheckFormatError,
    ConfigError,
    MessageError,
    NeedsReconfirmation,
    NotFound,
    PermissionDenied,
    SendGuardError,
    StateError,
    StoreUnavailable,
)
from sendguard.i18n import localize, translator
from sendguard.links import LinkSigner, api_token, token_matches

F = TypeVar("F", bound=Callable[..., Any])
ADDIN_TOKEN_MAX_AGE = 12 * 3600
ITEM_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
OPEN_PATHS = ("/healthz", "/api/v1/openapi.json", "/api/v1/addin/session")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


LANGUAGE_HEADER = "X-SendGuard-Language"  # the confirmation page's language, for the errors it shows


def error_response(status: int, code: str, message: str) -> Any:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


_STATUS_FOR = ((NotFound, 404, "not_found"), (PermissionDenied, 403, "forbidden"),
               (NeedsReconfirmation, 409, "needs_reconfirmation"), (StateError, 409, "conflict"),
               (MessageError, 422, "bad_message"), (ConfigError, 400, "bad_config"),
               (StoreUnavailable, 503, "store_unavailable"), (CheckFormatError, 400, "bad_check"))


@dataclass
class Principal:
    kind: str  # api | addin | page | approver | helper (central server: a user's helper token)
    items: list[str] = field(default_factory=list)
    who: str = ""
    sid: str = ""  # an add-in session: the items it created are its own, nothing else

    def may_see(self, item_id: str) -> bool:
        return self.kind != "page" or item_id in self.items

    @property
    def key(self) -> str:
        """One name per credential (long polls are counted per credential)."""
        return f"{self.kind}:{self.sid or self.who or ','.join(self.items[-3:])}"


class LongPolls:
    """Bounds long polls: a few at a time per credential, and a share of the server's threads in all.

    A long poll holds a worker thread; without a bound a dozen ``?wait=60`` requests starve
    ``/healthz`` and the real users. Two kinds of waiting request:

    - interactive ones (an add-in waiting for its check) are refused (503) when ``total`` wait already;
    - background ones (a helper's polls: a fleet has hundreds) hold a thread only while fewer than
      ``background`` of them and fewer than ``total`` in all wait. Beyond that ``hold(..., background=True)``
      yields False: the caller answers at once with what there is now and tells the helper when to ask
      again (``short_poll_after``), so helpers degrade to short polling instead of being refused, and
      the background polls never take the threads the interactive ones need.

    The per-credential bound is the same for both (429 beyond it).
    """

    SHORT_POLL = 2.0  # seconds between a degraded helper's polls, at least
    SHORT_POLL_RATE = 40.0  # degraded polls per second per process we aim not to exceed (spaces them out)
    SHORT_POLL_MAX = 15.0

    def __init__(self, per_credential: int = 2, total: int = 16, unit: str = "credential",
                 background: int | None = None):
        self.per_credential = per_credential
        self.total = total
        self.background = max(1, total * 2 // 3) if background is None else background
        self.unit = unit  # what one key stands for, in the refusal
        self._held: dict[str, int] = {}
        self._held_background = 0
        self._short: dict[str, float] = {}  # key -> when it was last answered at once (degraded)
        self._lock = threading.Lock()

    def waiting(self, key: str | None = None) -> int:
        """How many requests wait now: of ``key``, or in all."""
        with self._lock:
            return self._held.get(key, 0) if key is not None else sum(self._held.values())

    def short_polling(self, within: float = 30.0) -> int:
        """How many credentials were answered at once (instead of waiting) in the last ``within`` s."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for at in self._short.values() if now - at <= within)

    def short_poll_after(self) -> float:
        """When a degraded poller should ask again: SHORT_POLL, longer when many poll (so that they
        together ask about SHORT_POLL_RATE times a second), with jitter so they do not come in step."""
        spread = max(self.SHORT_POLL, self.short_polling() / self.SHORT_POLL_RATE)
        return round(min(self.SHORT_POLL_MAX, spread) * random.uniform(1.0, 1.3), 2)

    @contextmanager
    def hold(self, key: str, background: bool = False) -> Iterator[bool]:
        """Count one waiting request of ``key``; yields True if it may wait (False: background request
        over the budget, answer it at once). 429 beyond the per-credential bound, 503 for an interactive
        request over the total."""
        with self._lock:
            if self._held.get(key, 0) >= self.per_credential:
                raise ApiError(429, "too_many_waits", f"at most {self.per_credential} waiting requests per "
                                                      f"{self.unit}: wait for an answer before asking again")
            full = sum(self._held.values()) >= self.total
            if background and (full or self._held_background >= self.background):
                now = time.monotonic()
                self._short[key] = now
                if len(self._short) > 4096:  # forget the quiet ones (bounded memory)
                    self._short = {k: at for k, at in self._short.items() if now - at <= 30.0}
                granted = False
            elif full:
                raise ApiError(503, "busy", "the server is answering too many waiting requests: retry shortly")
            else:
                self._held[key] = self._held.get(key, 0) + 1
                self._held_background += int(background)
                granted = True
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._held[key] -= 1
                    self._held_background -= int(background)
                    if not self._held[key]:
                        del self._held[key]


def long_poll(who: Principal | None) -> Any:
    """The app's long-poll bound for this caller (a context manager)."""
    polls: LongPolls = current_app.extensions["sendguard_long_polls"]
    return polls.hold(who.key if who else "anonymous")


POLL_AFTER_HEADER = "X-SendGuard-Poll-After"  # on a poll answered at once: ask again after this many seconds


@contextmanager
def background_poll(who: Principal | None, wait: float) -> Iterator[float]:
    """A helper's long poll: yields how long it may wait - ``wait``, or 0 when the server's wait budget
    for helpers is full. Then the answer (what there is now) carries ``X-SendGuard-Poll-After``: the
    helper asks again after that many seconds (it short-polls) instead of being refused."""
    if not wait:
        yield 0.0
        return
    polls: LongPolls = current_app.extensions["sendguard_long_polls"]
    with polls.hold(who.key if who else "anonymous", background=True) as granted:
        if not granted:
            g.sendguard_poll_after = polls.short_poll_after()
        yield wait if granted else 0.0


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def other_local_user() -> int | None:
    """The uid of the other local user whose program made this request, or None (this user's, or a system
    that cannot tell: see ``sendguard.peers``)."""
    return peers.foreign_user(str(request.remote_addr or ""), int(request.environ.get("REMOTE_PORT") or 0))


def other_user_refused(uid: int) -> str:
    return (f"this SendGuard helper serves its own user's programs only (this request is another local user's, "
            f"uid {uid})")


def _origin_allowed(origin: str) -> bool:
    if origin in current_app.config["EXTRA_ORIGINS"]:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    if host not in [h.strip("[]") for h in current_app.config["ALLOWED_HOSTS"]]:
        return False
    # same server: the origin's port must be the one this request came in on. The Host's port is read as a
    # URL reads it, so "[::1]:8765" has one too (counting colons found none there, and let a page on any
    # other loopback port in: cookies are the same for every port of a host).
    try:
        req_port = urlsplit("//" + request.host).port
        port = parts.port
    except ValueError:  # "http://localhost:8765.evil.example": no port at all, not ours
        return False
    origin_port = port or (443 if parts.scheme == "https" else 80)
    return req_port is None or origin_port == req_port


def addin_signer() -> LinkSigner:
    return LinkSigner(current_app.config["SECRET_KEY"], "addin")


def expected_api_token() -> str:
    token = current_app.config.get("API_TOKEN")
    if not token:
        token = api_token()
        current_app.config["API_TOKEN"] = token
    return str(token)


def principal() -> Principal | None:
    """The caller, from the Authorization header or the page session; None if anonymous."""
    if "principal" in g:
        return g.principal  # type: ignore[no-any-return]
    found: Principal | None = None
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
        verify_helper = current_app.config.get("HELPER_TOKEN_VERIFIER")
        if given and token_matches(given, expected_api_token()):
            found = Principal("api")
        elif given and verify_helper and (helper_user := verify_helper(given)):
            # central server: a per-user helper token acts for that one user only
            found = Principal("helper", who=str(helper_user).lower())
        elif given:
            try:
                claims = addin_signer().load(given, "addin", ADDIN_TOKEN_MAX_AGE)
            except PermissionDenied:
                raise ApiError(401, "invalid_token", "the bearer token is not valid or has expired: "
                                                     "get the token with `sendguard token`") from None
            origin = request.headers.get("Origin")
            if origin and claims.get("origin") and origin != claims["origin"]:
                raise ApiError(403, "token_origin", "this add-in token was issued to another origin")
            if not claims.get("sid") or (current_app.config.get("ADDIN_NEEDS_USER") and not claims.get("user")):
                raise ApiError(401, "invalid_token", "this add-in token is from an older version: "
                                                     "ask for a new one (POST /api/v1/addin/session)")
            found = Principal("addin", who=str(claims.get("user") or ""), sid=str(claims["sid"]))
    elif session.get("approver"):
        found = Principal("approver", who=str(session["approver"]))
    elif session.get("items"):
        found = Principal("page", items=list(session["items"]))
    g.principal = found
    return found


def require(*kinds: str) -> Callable[[F], F]:
    """Endpoint decorator: the caller must hold one of ``kinds`` of credential."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = principal()
            if who is None:
                raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>' "
                                                    "(the token is printed by `sendguard token`)")
            if who.kind not in kinds:
                raise ApiError(403, "forbidden", f"a {who.kind} credential cannot do this")
            item_id = kwargs.get("item_id")
            if item_id and not who.may_see(item_id):
                raise ApiError(403, "forbidden", "this page may act on its own message only")
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def grant_item(item_id: str) -> None:
    """Let this browser session act on one message (after a valid one-time link)."""
    items = list(session.get("items", []))
    if item_id not in items:
        items.append(item_id)
    session["items"] = items[-50:]
    session.permanent = False


class TooDeep(ValueError):
    """JSON nested deeper than the parser's recursion limit."""


class NumberTooLong(ValueError):
    """A JSON integer with more digits than Python converts (``sys.get_int_max_str_digits``)."""

    def __init__(self, digits: int):
        self.digits = digits
        super().__init__(f"a JSON number of {digits} digits is too long to read")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # the JSON scanner only hands over digits: this is the int-string length limit
        raise NumberTooLong(len(text.lstrip("-"))) from None


class JSONProvider(DefaultJSONProvider):
    """The apps' JSON (``app.json``), which every ``request.get_json`` reads with: a document nested too
    deeply to read is bad JSON like any other (``ValueError``), not a RecursionError answered 500."""

    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_int", _parse_int)
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise TooDeep("JSON nested too deeply") from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


def json_body(example: str, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object. A body that cannot be read as one is a 400 ``bad_json`` saying what was
    wrong and what to send, and nothing is done: it is never taken for ``{}`` (a confirm read as ``{}``
    sent the message without the removals the user asked for). With ``optional`` a request without
    any body reads as ``{}``."""
    raw = request.get_data(cache=True)
    if optional and not raw:
        return {}
    send = f"nothing was done; send a JSON object such as {example} with Content-Type: application/json"
    if not request.is_json:
        sent = f"as {request.mimetype}" if request.mimetype else "without a Content-Type"
        raise ApiError(400, "bad_json", f"the request body was sent {sent}: {send}")
    if not raw.strip():
        raise ApiError(400, "bad_json", f"the request body is empty: {send}")
    try:
        data = current_app.json.loads(raw)
    except TooDeep:
        raise ApiError(400, "bad_json", f"the request body is JSON nested too deeply to read: {send}") from None
    except NumberTooLong as exc:
        limit = sys.get_int_max_str_digits()
        raise ApiError(400, "bad_json", f"the request body holds a number too long to read ({exc.digits} digits; "
                                        f"at most {limit}): {send}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} "
                                        f"column {exc.colno}; cut short?): {send}") from None
    except ValueError:  # UnicodeDecodeError
        raise ApiError(400, "bad_json", f"the request body is not UTF-8 text: {send}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", f"the request body is {_json_kind(data)}, not a JSON object: {send}")
    return data


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz" or \
        request.accept_mimetypes.best == "application/json"


def _limit_streamed_body(limit: int | None) -> None:
    """A body without Content-Length (chunked) is read here, at most ``limit`` bytes: one byte more is
    a 413, whatever the transfer encoding. (Cut silently, a card number at its end went unchecked.)"""
    environ = request.environ
    if not limit or request.content_length is not None or "wsgi.input_terminated" not in environ:
        return  # with a length, werkzeug refuses oversize bodies itself; without either there is no body
    stream = environ["wsgi.input"]
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


# The Outlook add-in's own files are loaded inside Office's frames; every other page refuses framing.
FRAMED_PATHS = ("/addin/",)


def _no_framing(response: Any) -> None:
    """``frame-ancestors 'none'`` (and X-Frame-Options for old browsers): no site can frame a page and
    trick a click on Approve or Send."""
    response.headers["X-Frame-Options"] = "DENY"
    csp = response.headers.get("Content-Security-Policy", "")
    if "frame-ancestors" not in csp:
        response.headers["Content-Security-Policy"] = (csp.rstrip("; ") + "; " if csp else "") + \
            "frame-ancestors 'none'"


class RedactTokens(logging.Filter):
    """Access logs never show link or token values (``/confirm/ID?t=...``, ``/approve/ID?t=...``)."""

    PATTERN = re.compile(r"([?&](?:t|token|access_token|code)=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def redact_access_logs() -> None:
    for name in ("werkzeug", "gunicorn.access", "waitress"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


SESSION_HOURS = 12  # a web session (approver, confirmation page) ends this long after it was last written


def _session_still_valid() -> bool:
    """An approver signed in with a helper token's login link stays signed in while that token is valid
    (a revoked token ends its sign-ins too, within the verifier's cache time)."""
    via = session.get("via")
    if not via or not session.get("approver"):
        return True
    verify = current_app.config.get("HELPER_TOKEN_VERIFIER")
    user = verify.user_of_hash(str(via)) if verify is not None else None
    return user is not None and user == str(session["approver"]).lower()


def init_app(app: Flask) -> None:
    redact_access_logs()
    app.permanent_session_lifetime = timedelta(hours=SESSION_HOURS)  # Flask checks every cookie's age with it
    app.extensions["sendguard_long_polls"] = LongPolls(app.config.get("LONG_POLLS_PER_CREDENTIAL", 2),
                                                       app.config.get("LONG_POLLS_TOTAL", 16),
                                                       background=app.config.get("LONG_POLLS_BACKGROUND"))

    @app.before_request
    def _guard() -> Any:
        host = _host_name(request.host)
        allowed = [h.lower() for h in app.config["ALLOWED_HOSTS"]]
        if host not in allowed:
            return error_response(421, "host_not_allowed",
                                  f"Host {host!r} is not served here; use one of {', '.join(allowed)}")
        origin = request.headers.get("Origin")
        if origin is not None and not _origin_allowed(origin):
            return error_response(403, "origin_not_allowed", f"requests from {origin!r} are not allowed")
        if app.config.get("OWN_USER_ONLY") and app.config["SESSION_COOKIE_NAME"] in request.cookies:
            # A browser sends a host's cookies to every port of it: a page session made on this helper
            # reaches any program another local user listens with on loopback. Here it opens nothing.
            foreign = other_local_user()
            if foreign is not None:
                app.logger.warning("refused a web session from another local user's program (uid %s)", foreign)
                return error_response(403, "forbidden", other_user_refused(foreign))
        _limit_streamed_body(app.config["MAX_CONTENT_LENGTH"])
        if not _session_still_valid():
            session.clear()
        return None

    @app.url_value_preprocessor
    def _valid_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
        item_id = (values or {}).get("item_id")
        if item_id is not None and not ITEM_ID.fullmatch(str(item_id)):  # ($ alone lets "abc\n" through)
            # never let a malformed id reach the database (an over-long one was a 500 with the SQL logged)
            raise NotFoundError(f"no message {str(item_id)[:40]!r}: ids are 1-32 letters, digits, - or _")

    @app.after_request
    def _headers(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        poll_after = g.get("sendguard_poll_after")
        if poll_after is not None and response.status_code == 200:
            response.headers[POLL_AFTER_HEADER] = f"{poll_after:g}"
        if response.mimetype == "text/html" and not request.path.startswith(FRAMED_PATHS):
            _no_framing(response)
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(SendGuardError)
    def _core_error(exc: SendGuardError) -> Any:
        message = str(exc)
        lang = request.headers.get(LANGUAGE_HEADER)
        if lang:  # the confirmation page asks for its own language (other clients get the English text)
            message = localize(message, translator(lang))
        for cls, status, code in _STATUS_FOR:
            if isinstance(exc, cls):
                return error_response(status, code, message)
        return error_response(400, "error", message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if not wants_json():
            return exc
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(
            exc.code or 500, "http_error")
        message = exc.description or exc.name
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
            message = f"the request body is larger than {limit} MB"
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        if isinstance(exc, DBAPIError) and (isinstance(exc, OperationalError) or exc.connection_invalidated):
            app.logger.warning("database unavailable: %s", str(exc.orig or exc).splitlines()[0])
            return error_response(503, "database_unavailable", "SendGuard's database cannot be reached right now "
                                  "(restarting?); nothing was changed. Try again in a moment.")
        app.logger.exception("unexpected error")
        return error_response(500, "internal", f"SendGuard hit an internal error ({type(exc).__name__}); "
                                               "the message stays held. See the helper's log.")
