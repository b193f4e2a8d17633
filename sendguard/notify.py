"""Notices about approvals: the email each approver gets, and the sender's desktop notification.

On one machine the approver email goes out through the same transport as the sender's mail (their
account, or the Maildir sink by default); with a central server, the server mails approvers itself
through the organization's relay. The email carries a signed, single-use, expiring link to the
approval page: the helper's own web address on one machine, the central server's public address in a company. Each
notice is recorded (table ``notices``) and audited, so a restart sends none twice; a notice that
cannot be sent is retried and the message stays held meanwhile.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from email.message import EmailMessage
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from . import message as msgmod
from .checks import Reason, StoredCheck, StoredRecipient
from .i18n import _
from .mailboxes.base import Mailbox, MailboxError, ReleaseItem
from .outbox import TRANSITIONS, Item, Outbox, State
from .store import audit, notices, now_iso

log = logging.getLogger(__name__)

APPROVAL_REQUEST = "approval_request"
DECISION = "decision"
PREVIEW_CHARS = 2000

# marked for translation; the helper's gettext renders them
SUBJECT = _("[SendGuard] Approval requested: {subject}")
INTRO = _("{sender} wants to send the message below. SendGuard holds it until you approve or reject it.")
DEPUTY_INTRO = _("You receive this as the deputy of {approver}.")
OPEN_LINK = _("Open the approval page (the link works once and expires {deadline}):")
KEEP_LINK = _("The link decides as you: do not forward this mail, and do not reply to it with the link quoted. "
              "To ask {sender} about the message, write them a new mail.")
TITLE_APPROVED = _("SendGuard: approved by {who}")
TITLE_REJECTED = _("SendGuard: rejected by {who}")
TITLE_EXPIRED = _("SendGuard: approval expired")
BODY_APPROVED = _("“{subject}” was approved and is being sent. {comment}")
BODY_REJECTED = _("“{subject}” was not sent. Reason: {reason}. Export it with `sendguard queue export {id}`, "
                  "edit it in your mail program and send it again.")
BODY_EXPIRED = _("Nobody approved “{subject}” in time; it was not sent.")
TITLE_WAITING = _("SendGuard: waiting to learn whether a message went out")
BODY_WAITING = _("Sending “{subject}” was interrupted and the mail service cannot be asked right now. SendGuard "
                 "keeps asking and will not send it twice; see `sendguard queue show {id}`.")


def notice_reasons(item: Item) -> list[Reason]:
    """The reasons that made the message need approval (all reasons if none is of that strength). On the
    central server, also those the sender's helper reported and the server's own policy did not find,
    each saying so (``addin.server``: ``decision["sender_reasons"]``)."""
    strong = item.verdict.reasons_at("approve", "block") + reported_reasons(item)
    return strong or list(item.verdict.reasons)


def reported_reasons(item: Item) -> list[Reason]:
    reported = (item.decision or {}).get("sender_reasons")
    if not isinstance(reported, list):
        return []
    return [Reason(*(str(r.get(k) or "") for k in ("rule", "action", "target", "message")))
            for r in reported if isinstance(r, dict)]


def preview_text(raw: bytes | None, limit: int = PREVIEW_CHARS) -> str:
    """The message body as plain text for a preview (HTML reduced to text), cut to ``limit``."""
    if not raw:
        return ""
    try:
        parsed = msgmod.parse(raw)
    except Exception:  # a preview must never stop an approval
        return ""
    text = (parsed.body_text or "").strip()
    return text if len(text) <= limit else text[:limit] + "…"


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def header_text(value: str, limit: int = 400) -> str:
    """A value safe for one header line: line breaks and other control characters become a space
    (an encoded CR/LF in a subject must never add a header such as Bcc), cut to ``limit``."""
    text = _CONTROL.sub(" ", str(value or "")).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def header_address(value: str) -> str:
    """An address for a header, or "" when it is not one plain address."""
    text = header_text(value, 320)
    name, addr = email.utils.parseaddr(text)
    return addr if addr and "@" in addr and not any(c in addr for c in ' ,;<>"') else ""


def approval_email(item: Item, approver: str, link: str, gettext: Callable[[str], str] = str,
                   deputy_of: str | None = None, deadline: str | None = None,
                   mail_from: str | None = None) -> EmailMessage:
    """The email asking ``approver`` to decide: reasons, recipients, attachments and the link.

    Every header value taken from the message is sanitised (one line, no control characters)."""
    g = gettext
    check = item.check or StoredCheck()
    msg = EmailMessage(policy=email.policy.SMTP)
    sender = header_address(item.sender or item.envelope_from)
    # no Reply-To: the sender: an approver's reply would quote the link to the one who must not hold it
    msg["From"] = header_address(mail_from) if mail_from else (sender or "sendguard@localhost")
    msg["To"] = header_address(approver)
    msg["Subject"] = header_text(g(SUBJECT).format(subject=header_text(item.subject or "")))
    msg["Message-ID"] = email.utils.make_msgid("sendguard-approval")
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-SendGuard-Notice"] = header_text(f"approval-request; item={item.id}")
    lines = [g(INTRO).format(sender=item.sender), ""]
    if deputy_of:
        lines += [g(DEPUTY_INTRO).format(approver=deputy_of), ""]
    lines += [f"{g('Subject')}: {item.subject}", "", f"{g('Why it needs approval')}:"]
    lines += [f"  - {r.message or r.rule}" for r in notice_reasons(item)] or ["  -"]
    recipients = check.recipients or tuple(StoredRecipient(a) for a in item.envelope_to)
    final = {a.lower() for a in item.envelope_to}
    lines += ["", f"{g('Recipients')} ({len(recipients)}):"]
    for r in recipients:
        flags = [f for f in r.flags if f != "external"]
        gone = "" if not final or r.address.lower() in final else f" ({g('removed')})"
        ext = f" [{g('external')}]" if r.external else ""
        lines.append(f"  {r.field.title()}: {r.address}{ext}{gone}" + (f" ({', '.join(flags)})" if flags else ""))
    removed_att = item.removed()[1]
    attachments = [a for a in check.attachments if a.id not in removed_att]
    lines += ["", f"{g('Attachments')} ({len(attachments)}):"]
    for a in attachments:
        marks = f" ({', '.join(a.flags)})" if a.flags else ""
        lines.append(f"  {a.filename}  {a.size} B  {a.content_type}{marks}")
    lines += ["", g(OPEN_LINK).format(deadline=deadline or "?"), link, "",
              g(KEEP_LINK).format(sender=sender or item.sender), ""]
    msg.set_content("\n".join(lines))
    return msg


def _notice_id(item_id: str, kind: str, recipient: str) -> str:
    digest = hashlib.sha256(f"{kind}:{recipient}".encode()).hexdigest()[:10]
    return f"{item_id}-{kind.replace('_', '')}-{digest}"


def already_sent(outbox: Outbox, item_id: str, kind: str) -> set[str]:
    with outbox.store.engine.connect() as conn:
        rows = conn.execute(select(notices.c.recipient).where(notices.c.item_id == item_id,
                                                              notices.c.kind == kind)).all()
    return {r[0] for r in rows}


def record_notice(outbox: Outbox, item_id: str, kind: str, recipient: str, data: dict[str, Any],
                  event: str | None = None) -> bool:
    """Record (and audit) one notice; False when it had already been recorded."""
    try:
        with outbox.store.transaction() as conn:
            conn.execute(insert(notices).values(item_id=item_id, kind=kind, recipient=recipient,
                                                sent_at=time.time()))
            outbox.store.append_audit(conn, event or f"{kind}_notified", "sendguard", item_id,
                                      {"to": recipient, **data})
    except IntegrityError:
        return False
    return True


def approvers_and_deputies(item: Item, approvals: Any) -> list[tuple[str, str | None]]:
    """(address, deputy_of) for each approver of the item and each approver's active deputy."""
    targets: list[tuple[str, str | None]] = []
    for approver in item.approvers:
        targets.append((approver.lower(), None))
        targets += [(d, approver.lower()) for d in approvals.active_deputies(approver)]
    return targets


def notify_approvers(outbox: Outbox, targets_for: Callable[[Item], list[tuple[str, str | None]]],
                     mailbox_for: Callable[[Item], Mailbox], link_for: Callable[[Item, str], str | None],
                     gettext: Callable[[str], str] = str, mail_from: str | None = None) -> int:
    """Email every approver (and active deputy) of each held message who was not emailed yet.

    ``targets_for(item)`` names them as (address, deputy_of); ``link_for(item, address)`` gives the
    signed link, or None while it cannot be made yet: those are tried again on the next round.
    ``mail_from`` (the central server's own address) replaces the sender as the From of the email.
    Each message is on its own: one that cannot be turned into an email is logged and audited once
    and never holds up the others.
    """
    sent = 0
    for item in outbox.list([State.AWAITING_APPROVAL], limit=10_000):
        try:
            sent += _notify_item(outbox, item, targets_for, mailbox_for, link_for, gettext, mail_from)
        except Exception as exc:
            if record_notice(outbox, item.id, "approval_error", type(exc).__name__[:300],
                             {"error": f"{type(exc).__name__}: {exc}"[:500]}, event="approval_notice_failed"):
                log.exception("cannot build the approval email for %s (the others go on)", item.id)
    return sent


def _notify_item(outbox: Outbox, item: Item, targets_for: Callable[[Item], list[tuple[str, str | None]]],
                 mailbox_for: Callable[[Item], Mailbox], link_for: Callable[[Item, str], str | None],
                 gettext: Callable[[str], str], mail_from: str | None) -> int:
    done = already_sent(outbox, item.id, APPROVAL_REQUEST)
    wanted = [(to, of) for to, of in dict(targets_for(item)).items() if to not in done]
    if not wanted:
        return 0
    sent = 0
    full = outbox.get(item.id, with_bodies=True)
    deadline = now_iso(item.expires_at)[:16].replace("T", " ") + " UTC" if item.expires_at else None
    for to, deputy_of in wanted:
        link = link_for(item, to)
        if not link:
            continue
        msg = approval_email(full, to, link, gettext, deputy_of, deadline, mail_from)
        raw = msg.as_bytes()
        try:
            mailbox = mailbox_for(item)
            mailbox.release(ReleaseItem(
                outbox_id=_notice_id(item.id, APPROVAL_REQUEST, to), message_id=str(msg["Message-ID"]),
                raw=raw, envelope_from=header_address(mail_from or item.sender or item.envelope_from),
                recipients=(to,), source="notice"))
        except MailboxError as exc:
            log.warning("cannot email approver %s about %s yet: %s", to, item.id, exc)
            continue
        if record_notice(outbox, item.id, APPROVAL_REQUEST, to,
                         {"via": getattr(mailbox, "name", "?"), "deputy_of": deputy_of}):
            sent += 1
    return sent


# ---------------------------------------------------------------------- the sender's side
def decision_text(item: Item, gettext: Callable[[str], str] = str) -> tuple[str, str]:
    """(title, body) telling the sender what became of their message."""
    g = gettext
    a = item.approval or {}
    who = a.get("by", "?")
    if a.get("on_behalf_of"):
        who = f"{who} ({a['on_behalf_of']})"
    subject = item.subject or item.id
    if a.get("decision") == "approved":
        return (g(TITLE_APPROVED).format(who=who),
                g(BODY_APPROVED).format(subject=subject, comment=a.get("comment") or "").strip())
    if a.get("decision") == "rejected":
        return (g(TITLE_REJECTED).format(who=who),
                g(BODY_REJECTED).format(subject=subject, reason=a.get("reason") or "", id=item.id))
    return g(TITLE_EXPIRED), g(BODY_EXPIRED).format(subject=subject)


class DecisionWatcher:
    """Finds approval decisions on the sender's messages (made in any process) and tells the sender once.

    Reads the audit log forward from a cursor; the ``notices`` table keeps it from telling twice
    across restarts.
    """

    EVENTS = tuple(TRANSITIONS[step].event for step in ("approve", "reject", "expire"))

    def __init__(self, outbox: Outbox, notifier: Callable[[str, str], Any], gettext: Callable[[str], str] = str,
                 listeners: Iterable[Callable[[Item], Any]] = ()):
        self.outbox = outbox
        self.notifier = notifier
        self.gettext = gettext
        self.listeners = list(listeners)
        self.cursor = 0

    def poll(self) -> list[Item]:
        query = select(audit.c.seq, audit.c.item_id).where(audit.c.seq > self.cursor,
                                                          audit.c.event.in_(self.EVENTS)).order_by(audit.c.seq)
        with self.outbox.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        told = []
        for seq, item_id in rows:
            self.cursor = max(self.cursor, seq)
            if not item_id:
                continue
            try:
                item = self.outbox.get(item_id)
            except Exception:
                continue
            if not record_notice(self.outbox, item_id, DECISION, item.sender or "(sender)",
                                 {"decision": (item.approval or {}).get("decision", "expired")}):
                continue
            title, body = decision_text(item, self.gettext)
            try:
                self.notifier(title, body)
            except Exception:  # a notification failure never touches the message
                log.exception("desktop notification failed")
            for listener in self.listeners:
                listener(item)
            told.append(item)
        return told


def desktop_notify(title: str, body: str) -> bool:
    """Show a desktop notification with the platform's own tool; False (logged) when there is none."""
    log.info("%s: %s", title, body)
    try:
        if sys.platform == "darwin" and shutil.which("osascript"):
            script = f"display notification {_applescript(body)} with title {_applescript(title)}"
            subprocess.run(["osascript", "-e", script], timeout=5, check=False)
            return True
        if sys.platform == "win32":
            return _windows_toast(title, body)
        if shutil.which("notify-send") and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            subprocess.run(["notify-send", "--app-name=SendGuard", title, body], timeout=5, check=False)
            return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot show a desktop notification: %s", exc)
    return False


def _applescript(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _windows_toast(title: str, body: str) -> bool:
    """A Windows toast through PowerShell's WinRT bridge (no extra package)."""
    def esc(text: str) -> str:
        return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                .replace("'", "''"))

    script = (
        "[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType=WindowsRuntime]"
        " | Out-Null; $x = [Windows.Data.Xml.Dom.XmlDocument]::new(); "
        f"$x.LoadXml('<toast><visual><binding template=\"ToastGeneric\"><text>{esc(title)}</text>"
        f"<text>{esc(body)}</text></binding></visual></toast>'); "
        "[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier('SendGuard')"
        ".Show([Windows.UI.Notifications.ToastNotification]::new($x))"
    )
    try:
        subprocess.run(["powershell", "-NoProfile", "-Command", script], timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return True
