"""The helper's side of the central server protocol (``sendguard server``).

A helper with ``[server] url`` in config.toml and its per-user token in the keyring (an admin
issues it with ``sendguard server token issue --user ADDR``; ``sendguard server connect URL --token T``
stores it):

- submits each message that went to ``awaiting_approval`` (``POST /api/v1/central/requests``;
  idempotent, so a retry after a lost answer is harmless); the server itself emails the approvers
  their signed links, which never pass through this helper;
- long-polls the server for decisions on this user's requests (``GET /api/v1/central/decisions?wait=N``)
  and acknowledges each once applied, backing off while the server is unreachable;
- applies a decision with the outbox's own transition (``awaiting_approval`` -> ``approved``), which
  succeeds once only: a decision seen twice, or after a restart, changes nothing, and the release
  worker sends the message exactly once.

The server keeps every decision in PostgreSQL before it answers, so a server restart loses none.
Nothing here decides anything by itself: while the server cannot be reached, messages stay held.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from sqlalchemy import insert, select, update

from . import config as configmod
from . import paths, secrets
from .errors import NotFound, PermissionDenied, SendGuardError, StateError
from .outbox import APPROVAL_OUTCOMES, Item, Outbox, State
from .store import central_requests, outbox
from .waiting import REFUSED_NOTE, SERVER_SENDS

log = logging.getLogger(__name__)

TOKEN_KEY = "server-token"
LONG_POLL = 20.0
# a helper keeps an approval request this much longer than the server before it gives up locally
LOCAL_GRACE = 3600.0


DECISION_KEY = "server-decision-key"  # keyring: the server's Ed25519 public key, pinned at connect


def decision_payload(item_id: str, sha256: str, approval: dict[str, Any], recipients: list[str]) -> dict[str, Any]:
    """What the server signs for an approval: this message (its content hash) to these envelope
    recipients, approved, by whom, when."""
    return {"id": item_id, "sha256": sha256, "recipients": sorted({r.lower() for r in recipients}),
            "decision": "approved", "by": str(approval.get("by") or ""), "at": str(approval.get("at") or "")}


def _canonical(data: Any) -> bytes:
    import json

    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign_decision(private_key: Any, payload: dict[str, Any]) -> str:
    return base64.b64encode(private_key.sign(_canonical(payload))).decode("ascii")


def decision_problem(public_key: str | None, item_id: str, raw: bytes | None, approval: dict[str, Any] | None,
                     recipients: list[str]) -> str | None:
    """Why an approval may not release this message (None: the server signed it for exactly this content)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    approval = approval or {}
    signed, signature = approval.get("signed"), approval.get("signature")
    if not public_key:
        return "no pinned key of the central server: run `sendguard server connect URL --token T` again"
    if not isinstance(signed, dict) or not isinstance(signature, str):
        return "the approval carries no signature of the central server"
    expected = decision_payload(item_id, hashlib.sha256(raw or b"").hexdigest(), signed, recipients)
    if signed != expected:
        if signed.get("recipients") != expected["recipients"]:
            return "the signed approval is for other recipients"
        return "the signed approval is for another message or other content"
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key)).verify(base64.b64decode(signature),
                                                                                 _canonical(signed))
    except (InvalidSignature, ValueError):
        return "the approval's signature is not the central server's"
    return None


# a request the server refused (not: could not be reached) is asked again no sooner than this: its answer
# stands until something changes on the server (a token, a policy), and asking each round only filled both
# logs and held up the hand-over of the next messages
REFUSED_RETRY_SECONDS = 600.0
REFUSED = "refused"  # central_requests.server_state of a refused request

# what the helper shows for a message the central server keeps and sends itself (``last_error`` is the
# line that says what SendGuard waits for)
HANDED_OVER = "Waiting for approval: the central server keeps this message and sends it itself once approved"


def server_releases(item: Item) -> bool:
    """Is this a message the central server sends itself (its answer at hand-over said so)?"""
    return (item.decision or {}).get("release") == "server"


def waiting_note(state: str, approval: dict[str, Any], server_error: Any) -> str:
    """The line the helper shows for a message the server sends itself, from the server's status."""
    waiting = f"{SERVER_SENDS} (approved by {approval.get('by') or 'the approver'})"
    if state == "releasing":
        return f"{waiting}; the server is sending it now"
    if state == "failed":
        return f"{waiting}; the server could not send it yet and tries again: {server_error or 'no reason given'}"
    if state == "needs_attention":
        return (f"{waiting}; the server could not send it and will not try again by itself: "
                f"{server_error or 'no reason given'}. Ask your administrator")
    if state == "approved":
        return waiting
    return HANDED_OVER


class DecisionUnverified(SendGuardError):
    """A decision the central server did not sign for this message's content: never applied."""


class CentralUnavailable(SendGuardError):
    """The central server cannot be reached (or answered 5xx): nothing was decided."""


def token_for(url: str | None = None) -> str | None:
    return secrets.get(TOKEN_KEY)


def client_from_config(cfg: configmod.Config | None = None) -> CentralClient | None:
    """A client for the configured server, or None when approvals run embedded (no ``[server] url``)."""
    try:
        cfg = cfg or configmod.load(paths.home() / "config.toml")
    except SendGuardError:
        return None
    if not cfg.server_url:
        return None
    return CentralClient(cfg.server_url, token_for(cfg.server_url))


POLL_AFTER_HEADER = "X-SendGuard-Poll-After"  # the server's hint on a poll it answered at once
MAX_POLL_AFTER = 60.0


class CentralClient:
    """Talks to the central server with the user's helper token (requests, JSON)."""

    def __init__(self, url: str, token: str | None, timeout: float = 15.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = session or requests.Session()
        self._local = threading.local()  # the last poll's hint, per polling thread

    @property
    def poll_after(self) -> float | None:
        """After this thread's last poll (``decisions``/``relay_pending``): seconds to wait before the next
        one, when the server answered at once instead of waiting (its wait budget was full); else None."""
        return getattr(self._local, "poll_after", None)

    def _poll(self, path: str, wait: float, params: dict[str, Any]) -> Any:
        self._local.poll_after = None
        response = self._call("GET", path, params={**params, "wait": f"{wait:g}"}, timeout=wait + self.timeout,
                              _response=True)
        hint = response.headers.get(POLL_AFTER_HEADER)
        if hint is not None:
            try:
                self._local.poll_after = min(MAX_POLL_AFTER, max(0.5, float(hint)))
            except ValueError:  # a garbled hint: ask again at the slowest pace
                self._local.poll_after = MAX_POLL_AFTER
        return response.json()

    def _call(self, method: str, path: str, timeout: float | None = None, _response: bool = False,
              **kwargs: Any) -> Any:
        if not self.token:
            raise PermissionDenied(f"no token for the central server {self.url}: ask your administrator for one "
                                   "(`sendguard server token issue --user ADDR`) and store it with "
                                   f"`sendguard server connect {self.url} --token TOKEN`")
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            response = self.http.request(method, self.url + path, headers=headers, timeout=timeout or self.timeout,
                                         **kwargs)
        except requests.RequestException as exc:
            raise CentralUnavailable(f"cannot reach the central server {self.url}: {type(exc).__name__}; "
                                     "nothing was decided, the message stays held") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise CentralUnavailable(f"the central server {self.url} answered {response.status_code}; "
                                     "nothing was decided, the message stays held")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            text = error.get("message") or f"HTTP {response.status_code}"
            if response.status_code in (401, 403):
                raise PermissionDenied(f"central server: {text}")
            if response.status_code == 404:
                raise NotFound(f"central server: {text}")
            if response.status_code == 409:
                raise StateError(f"central server: {text}")
            raise SendGuardError(f"central server: {text}")
        return response if _response else body

    # ------------------------------------------------------------------ the sender's helper
    def submit(self, item: Item, raw: bytes | None) -> dict[str, Any]:
        payload = {
            "id": item.id, "sender": item.sender, "subject": item.subject, "message_id": item.message_id,
            "envelope_from": item.envelope_from, "recipients": item.envelope_to,
            "check": item.check.to_json() if item.check else None,
            "decision": item.decision, "source": item.source, "created_at": item.created_at,
            "raw": base64.b64encode(raw or b"").decode("ascii"), "sha256": hashlib.sha256(raw or b"").hexdigest(),
        }
        return self._call("POST", "/api/v1/central/requests", json=payload)  # type: ignore[no-any-return]

    def statuses(self, ids: list[str]) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/central/requests",  # type: ignore[no-any-return]
                          params={"ids": ",".join(ids)})

    def decisions(self, wait: float = 0.0, skip: list[str] | None = None) -> list[dict[str, Any]]:
        """Decided, not yet acknowledged requests of this user; waits up to ``wait`` s for one."""
        return self._poll("/api/v1/central/decisions", wait,  # type: ignore[no-any-return]
                          {"skip": ",".join(skip or [])}) or []

    def relay_pending(self, wait: float = 0.0) -> list[dict[str, Any]]:
        """This user's Outlook checks relayed by the server, taken by this helper; waits up to ``wait`` s."""
        return self._poll("/api/v1/central/relay/pending", wait, {}) or []  # type: ignore[no-any-return]

    def ack(self, ids: list[str]) -> None:
        self._call("POST", "/api/v1/central/decisions/ack", json={"ids": ids})

    def cancel(self, item_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/central/requests/{item_id}/cancel", json={})  # type: ignore[no-any-return]

    def released(self, item_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/central/requests/{item_id}/released",  # type: ignore[no-any-return]
                          json={})

    # ------------------------------------------------------------------ the approver's helper
    def pending(self, approver: str | None = None) -> list[Item]:
        params = {"approver": approver} if approver else {}
        return [item_from_json(d) for d in self._call("GET", "/api/v1/approvals", params=params)]

    def decide(self, item_id: str, decision: str, actor: str, text: str = "") -> Item:
        body = {"as": actor, "comment" if decision == "approve" else "reason": text}
        return item_from_json(self._call("POST", f"/api/v1/approvals/{item_id}/{decision}", json=body))

    def put_checkpoint(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/central/audit-checkpoint", json=checkpoint)  # type: ignore[no-any-return]

    def get_checkpoint(self, db: str) -> dict[str, Any] | None:
        return self._call("GET", "/api/v1/central/audit-checkpoint",  # type: ignore[no-any-return]
                          params={"db": db})

    def decision_key(self) -> str:
        return str(self._call("GET", "/api/v1/central/decision-key")["ed25519"])

    def login_link(self) -> str:
        return str(self._call("POST", "/api/v1/central/login-link", json={})["url"])


def item_from_json(data: dict[str, Any]) -> Item:
    """An ``Item`` (no bodies) from the server's JSON, for the CLI and windows of the approver's helper."""
    check = data.get("check") or {"recipients": data.get("recipients", []), "attachments": data.get("attachments", []),
                                  "verdict": {"action": data.get("verdict", "approve"), "approvers": [],
                                              "reasons": data.get("reasons", [])}}
    return Item(
        id=data["id"], state=data["state"], source=data.get("source", "central"), source_ref=None, account=None,
        owner=data.get("from", ""), envelope_from=data.get("from", ""),
        envelope_to=[r["address"] for r in data.get("recipients", [])], message_id="",
        sender=data.get("from", ""), subject=data.get("subject", ""), check_json=check, decision=data.get("decision"),
        approvers=list(data.get("approvers") or []), approval=data.get("approval"), release_after=0.0,
        expires_at=data.get("expires_at"), attempts=0, last_error=data.get("last_error"),
        created_at=_ts(data.get("created_at")), updated_at=_ts(data.get("updated_at")), purged=False,
    )


def _ts(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        from datetime import datetime

        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return 0.0
    return 0.0


# for how long in a round, and how often, cancels the server refuses while it sends the message are asked again
CANCEL_RETRY_SECONDS = 5.0
CANCEL_RETRY_EVERY = 0.1


class CentralSync:
    """Keeps the helper's held-for-approval messages and the central server in step (one thread)."""

    def __init__(self, outbox_: Outbox, client: CentralClient, on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        self.outbox = outbox_
        self.client = client
        self.on_change = on_change
        self.clock = clock
        self.backoff = 0.5
        self.max_backoff = 15.0
        self.long_poll = LONG_POLL
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._withdrawing = threading.Lock()
        self._unknown: set[str] = set()
        self._checkpoint_at = -1e9
        self._unverified: set[str] = set()
        self._server_key: str | None = None
        self._threads: list[threading.Thread] = []

    def server_key(self) -> str | None:
        """The server's decision-signing public key: pinned in the keyring (at connect, else first use)."""
        if self._server_key is None:
            self._server_key = secrets.get(DECISION_KEY)
            if not self._server_key:
                self._server_key = self.client.decision_key()
                secrets.put(DECISION_KEY, self._server_key)
        return self._server_key

    def release_guard(self, item: Item) -> None:
        """Before a message decided on the central server is released: the approval must be the server's
        signature over exactly this content (a database edited to say "approved" releases nothing).
        A message the server sends itself (``[approval] release = "server"``) is never released here."""
        if server_releases(item):
            raise PermissionDenied("the central server sends this message itself once it is approved; "
                                   "this helper never releases it")
        # with a central server every approval is the server's: one without its signature (an edited
        # database, or a record from before the server) releases nothing
        why = decision_problem(self.server_key(), item.id, item.final_raw or item.raw, item.approval,
                               item.envelope_to)
        if why:
            raise PermissionDenied(f"not released: {why}")

    # ------------------------------------------------------------------ bookkeeping
    def _rows(self) -> dict[str, dict[str, Any]]:
        with self.outbox.store.engine.connect() as conn:
            rows = conn.execute(select(central_requests)).mappings().all()
        return {r["item_id"]: dict(r) for r in rows}

    def _save(self, item_id: str, **values: Any) -> None:
        values["updated_at"] = self.clock()
        with self.outbox.store.transaction() as conn:
            found = conn.execute(select(central_requests.c.item_id)
                                 .where(central_requests.c.item_id == item_id)).first()
            if found:
                conn.execute(update(central_requests).where(central_requests.c.item_id == item_id).values(**values))
            else:
                conn.execute(insert(central_requests).values(item_id=item_id, server_url=self.client.url, **values))


    # ------------------------------------------------------------------ one round
    def submit_new(self) -> int:
        """Hand every not-yet-submitted approval request to the server; returns how many went."""
        rows = self._rows()
        count = 0
        refused: SendGuardError | None = None
        for item in self.outbox.list(["awaiting_approval"], limit=10_000):
            row = rows.get(item.id)
            if row and row.get("submitted_at") and row.get("server_url") == self.client.url:
                continue
            if (row and row.get("server_state") == REFUSED and row.get("server_url") == self.client.url
                    and self.clock() - float(row.get("updated_at") or 0) < REFUSED_RETRY_SECONDS):
                continue  # its refusal stands for now (the message says why)
            full = self.outbox.get(item.id, with_bodies=True)
            content = full.final_raw or full.raw
            try:
                answer = self.client.submit(item, content)
            except CentralUnavailable:
                raise  # nothing else would get through either: the loop backs off
            except SendGuardError as exc:  # the server refused this one: it stays held, the others still go
                self._refused(item, exc)
                refused = refused or exc
                continue
            self._accepted(item, answer, hashlib.sha256(content or b"").hexdigest())
            count += 1
        if refused is not None:
            raise refused  # the helper shows the server's reason until it is dealt with
        return count

    def _refused(self, item: Item, exc: SendGuardError) -> None:
        """The server will not take this request: it stays held here, with the server's reason where the
        user sees it (window, ``queue show``), and is asked again in ``REFUSED_RETRY_SECONDS``."""
        log.error("the central server refused approval request %s (asked again in %.0f min): %s", item.id,
                  REFUSED_RETRY_SECONDS / 60, exc)
        self._save(item.id, server_state=REFUSED, submitted_at=None, last_error=str(exc))
        note = (f"{REFUSED_NOTE} ({exc}). It stays held here and "
                f"SendGuard asks the server again every {REFUSED_RETRY_SECONDS / 60:.0f} minutes: ask your "
                "administrator, or cancel it")
        with self.outbox.store.transaction() as conn:
            conn.execute(update(outbox).where(outbox.c.id == item.id, outbox.c.state == "awaiting_approval")
                         .values(last_error=note, updated_at=self.clock()))
        self.on_change()

    def _accepted(self, item: Item, answer: dict[str, Any], sha256: str | None = None) -> None:
        # approval links never come here: the server mails each approver their own (so the sender,
        # who owns this database, cannot open one)
        self._save(item.id, submitted_at=self.clock(), server_state=answer.get("state"), last_error=None)
        approvers = [a.lower() for a in answer.get("approvers") or item.approvers]
        expires = answer.get("expires_at")
        values: dict[str, Any] = {"approvers": approvers, "last_error": None}  # (a refusal's note is over)
        if isinstance(expires, int | float):
            values["expires_at"] = float(expires) + LOCAL_GRACE
        detail: dict[str, Any] = {"server": self.client.url, "approvers": approvers,
                                  "server_state": answer.get("state")}
        if answer.get("release") == "server":
            # the server keeps the message and sends it itself once approved: this helper never will
            values["decision"] = {**(item.decision or {}), "release": "server", "server_sha256": answer.get("sha256")}
            values["last_error"] = HANDED_OVER
            detail.update(release="server", sha256=answer.get("sha256"))
            if sha256 and answer.get("sha256") != sha256:
                detail["content_differs"] = True  # the server keeps the first copy it was given
                log.error("%s: the central server keeps other content than this helper holds (SHA-256 %s, here "
                          "%s); the server sends the copy the approver sees", item.id, answer.get("sha256"), sha256)
        with self.outbox.store.transaction() as conn:
            conn.execute(update(outbox).where(outbox.c.id == item.id, outbox.c.state == "awaiting_approval")
                         .values(**values))
            self.outbox.store.append_audit(conn, "approval_submitted", "sendguard", item.id, detail, ts=self.clock())
        try:
            self.apply(answer)
        except DecisionUnverified as exc:  # the poll meets it again; it stays held meanwhile
            log.error("%s", exc)
        self.on_change()

    def poll(self, wait: float | None = None) -> int:
        """Long-poll the server for decisions on this user's requests; apply them, then acknowledge.

        The server repeats a decision until it is acknowledged, and applying is idempotent, so a
        crash or a lost answer anywhere in between neither loses nor doubles a decision.
        """
        self.withdraw_cancelled()
        statuses = self.client.decisions(wait=self.long_poll if wait is None else wait,
                                         skip=sorted(self._unknown)[:500])
        applied, seen = 0, []
        for status in statuses:
            item_id = str(status.get("id"))
            try:
                self.outbox.get(item_id)
            except NotFound:
                self._unknown.add(item_id)  # another helper of this user holds it: leave it to that one
                continue
            try:
                applied += int(self.apply(status))
            except DecisionUnverified as exc:  # stays held and unacknowledged; said once
                if item_id not in self._unverified:
                    self._unverified.add(item_id)
                    log.error("%s", exc)
                self._unknown.add(item_id)
                continue
            seen.append(item_id)
        if seen:
            self.client.ack(seen)
        return applied

    def withdraw_cancelled(self) -> None:
        with self._withdrawing:  # both loops call this; one cancel per message reaches the server
            self._withdraw_cancelled()

    def _withdraw_cancelled(self) -> None:
        waiting = []
        for item_id, row in self._rows().items():
            if row.get("server_state") in (State.AWAITING_APPROVAL, State.APPROVED, State.FAILED, State.NEEDS_ATTENTION):
                try:
                    item = self.outbox.get(item_id)
                except NotFound:
                    continue
                if row.get("server_state") != "awaiting_approval" and not server_releases(item):
                    continue  # approved here: report_released tells the server once it is sent
                if item.state != "awaiting_approval":
                    waiting.append(item_id)
        # the server refuses a cancel while it is handing the message to its relay (it cannot tell yet
        # whether it went): those are asked again at once and often for a while, so that each lands in the
        # moment that attempt fails, before the next one starts (a slow relay would otherwise be caught
        # sending at every round); what is still refused then is asked again next round
        deadline = time.monotonic() + CANCEL_RETRY_SECONDS
        while waiting:
            waiting = [item_id for item_id in waiting if not self._tell_server_gone(item_id)]
            if not waiting or time.monotonic() >= deadline or self._stop.wait(CANCEL_RETRY_EVERY):
                return

    def _tell_server_gone(self, item_id: str) -> bool:
        """The sender cancelled a message the server still shows as waiting: withdraw it there. False when
        the server refused as it is sending the message this moment (ask again, or hear that it was sent)."""
        try:
            item = self.outbox.get(item_id)
        except NotFound:
            return True
        if item.state != "cancelled":
            self._save(item_id, server_state=item.state)
            return True
        try:
            answer = self.client.cancel(item_id)
        except StateError:
            if server_releases(item):
                return False
            answer = {"state": "gone"}
        except NotFound:
            answer = {"state": "gone"}
        self._save(item_id, server_state=answer.get("state"))
        return True

    def apply(self, status: dict[str, Any]) -> bool:
        """Apply one server decision to the local outbox; True if it changed something (at most once)."""
        state = status.get("state")
        item_id = status.get("id")
        if item_id and status.get("release") == "server":
            return self._apply_server_release(str(item_id), status)
        if not item_id or state not in (*APPROVAL_OUTCOMES, State.SENT):
            return False
        if state == State.SENT:  # released already (the server heard it from us): nothing to do here
            state = "approved"
        approval = dict(status.get("approval") or {})
        approval["server"] = self.client.url
        if state == "approved":
            try:
                raw = self.outbox.get(item_id, with_bodies=True)
            except NotFound:
                return False
            approval["signed"], approval["signature"] = status.get("signed"), status.get("signature")
            why = decision_problem(self.server_key(), item_id, raw.final_raw or raw.raw, approval, raw.envelope_to)
            if why:
                raise DecisionUnverified(f"decision on {item_id} not applied: {why}")
        try:
            if state == "expired":
                self.outbox.transition(item_id, "expire", "central-server", {"server": self.client.url})
            else:
                values: dict[str, Any] = {"approval": approval}
                if state == "approved":
                    values["release_after"] = self.clock()
                step = "approve" if state == "approved" else "reject"
                self.outbox.transition(item_id, step, str(approval.get("by") or "central-server"), approval,
                                       **values)
        except (StateError, NotFound):
            return False  # already applied (or the sender cancelled meanwhile): never twice
        self._save(item_id, server_state=state)
        self.on_change()
        return True

    def _apply_server_release(self, item_id: str, status: dict[str, Any]) -> bool:
        """A message the server sends itself: show here what the server did; never release it here."""
        state = str(status.get("state") or "")
        approval = {**(status.get("approval") or {}), "server": self.client.url, "released_by": "server"}
        try:
            item = self.outbox.get(item_id)
        except NotFound:
            return False
        try:
            if state == State.SENT and item.state in (State.AWAITING_APPROVAL, State.NEEDS_ATTENTION):
                self.outbox.transition(item_id, "released_by_server", "central-server",
                                       {"server": self.client.url, "by": approval.get("by")},
                                       approval=approval, last_error=None)
                with self.outbox.store.transaction() as conn:
                    self.outbox.store.record_sent_domains(conn, item.envelope_to, self.clock())
            elif state == State.SENT and item.state != State.SENT:
                # the sender cancelled (or it expired) here while the server was already sending it: the
                # state here stays final, but the record must say that it went out (once: the two rounds
                # that follow the server can both hear it, and only the first writes the note)
                note = "The central server had already started sending it: it was sent"
                with self.outbox.store.transaction() as conn:
                    noted = conn.execute(update(outbox).where(
                        outbox.c.id == item_id, outbox.c.last_error.is_distinct_from(note)).values(
                        last_error=note, updated_at=self.clock())).rowcount
                    if noted:
                        self.outbox.store.append_audit(conn, "released_by_server", "central-server", item_id,
                                                       {"server": self.client.url, "by": approval.get("by"),
                                                        "state_here": item.state}, ts=self.clock())
                if not noted:
                    return False
                self.outbox._notify(item_id)
            elif state in (State.REJECTED, State.EXPIRED):
                values: dict[str, Any] = {"last_error": None}
                if state == State.REJECTED:
                    values["approval"] = approval
                self.outbox.transition(item_id, "reject" if state == State.REJECTED else "expire",
                                       str(approval.get("by") or "central-server"), approval, **values)
            elif state == "cancelled":
                self._save(item_id, server_state=state)
                return False
            elif item.state == State.AWAITING_APPROVAL:
                # approved and waiting to be sent by the server, or the server cannot send it yet
                note = waiting_note(state, approval, status.get("last_error"))
                if note == item.last_error:
                    return False
                with self.outbox.store.transaction() as conn:
                    conn.execute(update(outbox).where(outbox.c.id == item_id, outbox.c.state == State.AWAITING_APPROVAL)
                                 .values(last_error=note, expires_at=None if state != State.AWAITING_APPROVAL
                                         else item.expires_at, updated_at=self.clock()))
                    if state == "approved":
                        self.outbox.store.append_audit(conn, "approved_for_server_release", "central-server", item_id,
                                                       {"server": self.client.url, "by": approval.get("by")},
                                                       ts=self.clock())
                self.outbox._notify(item_id)
            else:
                return False
        except (StateError, NotFound):
            if state in (State.REJECTED, State.EXPIRED):  # settled here already (e.g. cancelled): stop asking
                self._save(item_id, server_state=state)
            return False
        self._save(item_id, server_state=state)
        self.on_change()
        return True

    def follow_server_releases(self) -> int:
        """Ask the server about the messages it sends itself (approved, sent, or held up at its relay)."""
        settled = (State.SENT, State.CANCELLED, State.REJECTED, State.EXPIRED)
        ids = []
        for item_id, row in self._rows().items():
            if row.get("server_state") in settled:
                continue
            try:
                item = self.outbox.get(item_id)
            except NotFound:
                continue
            # a message cancelled here while the server was already sending it is followed too
            if server_releases(item) and item.state in (State.AWAITING_APPROVAL, State.CANCELLED):
                ids.append(item_id)
        changed = 0
        for start in range(0, len(ids), 200):
            for status in self.client.statuses(ids[start:start + 200]):
                changed += int(self.apply(status))
        return changed

    def report_released(self) -> None:
        """Tell the server which approved messages went out (its records show them as sent)."""
        rows = self._rows()
        for item_id, row in rows.items():
            if row.get("server_state") != "approved":
                continue
            try:
                item = self.outbox.get(item_id)
            except NotFound:
                continue
            if item.state != "sent":
                continue
            try:
                self.client.released(item_id)
            except (StateError, NotFound):
                pass
            self._save(item_id, server_state="sent")

    def step(self, wait: float | None = None) -> None:
        """One full round (tests and ``sendguard`` commands use it; the helper runs two loops)."""
        refused = self._submit_refused()
        self.report_released()
        self.follow_server_releases()
        self.poll(wait)
        if refused is not None:
            raise refused

    # ------------------------------------------------------------------ the threads
    def _loop(self, work: Callable[[], Any], idle: threading.Event | None) -> None:
        delay = self.backoff
        while not self._stop.is_set():
            try:
                self.last_error = None
                work()
                delay = self.backoff
                if idle is not None:
                    idle.wait(2.0)
                    idle.clear()
                elif self.client.poll_after:  # the server could not hold the poll: ask again when it says
                    self._stop.wait(self.client.poll_after)
            except CentralUnavailable as exc:
                self.last_error = str(exc)
                log.warning("%s; retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(self.max_backoff, delay * 2)
            except SendGuardError as exc:
                self.last_error = str(exc)
                log.error("central server sync: %s", exc)
                self._stop.wait(self.max_backoff)
            except Exception:
                log.exception("central server sync failed")
                self._stop.wait(self.max_backoff)

    def _submit_round(self) -> None:
        # a cancel is told at once (the listener kicks this loop): the decisions poll may be waiting out
        # its full length, and a server that sends approved mail itself must not send what was stopped
        self.withdraw_cancelled()
        refused = self._submit_refused()
        self.report_released()
        self.follow_server_releases()
        self.report_checkpoint()
        if refused is not None:  # said on the message and in the log; the loop goes on as after any round
            self.last_error = str(refused)

    def _submit_refused(self) -> SendGuardError | None:
        """``submit_new``, returning (not raising) the server's refusal of a request, so that the rest of
        the round still runs; the server unreachable is raised at once."""
        try:
            self.submit_new()
        except CentralUnavailable:
            raise
        except SendGuardError as exc:
            return exc
        return None

    def report_checkpoint(self, every: float = 60.0) -> None:
        """Hand the audit log's signed head to the server now and then (it keeps the latest)."""
        from . import audit

        if time.monotonic() - self._checkpoint_at < every:
            return
        self._checkpoint_at = time.monotonic()
        self.client.put_checkpoint(audit.checkpoint(self.outbox.store))

    def start(self) -> CentralSync:
        """Two daemon threads: one submits (woken by ``kick``), one long-polls for decisions."""
        with self.outbox.store.transaction() as conn:  # older versions kept the approvers' links here
            conn.execute(update(central_requests).where(central_requests.c.links.is_not(None)).values(links=None))
        for name, work, idle in (("submit", self._submit_round, self._kick),
                                 ("poll", lambda: self.poll(), None)):
            thread = threading.Thread(target=self._loop, args=(work, idle), name=f"sendguard-central-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop; a long poll in flight ends by itself (the threads are daemons)."""
        self._stop.set()
        self._kick.set()
        for thread in self._threads:
            thread.join(1.0)

    def kick(self) -> None:
        """Something changed here (a message now awaits approval, one was sent): sync soon."""
        self._kick.set()
