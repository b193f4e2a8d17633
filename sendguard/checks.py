"""The policy engine: a parsed message + a policy + known domains -> the check result (DESIGN §4).

Pure: no I/O, no clock, no database. Each rule is a small function over a shared context; the
verdict is the strongest action among the reasons.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from . import detect
from .i18n import _
from .message import Attachment, ParsedMessage, Recipient
from .policy import Policy

ACTION_RANK = {"allow": 0, "confirm": 1, "approve": 2, "block": 3}
RECIPIENT_FLAGS = ("external", "trusted", "new_domain", "lookalike", "display_name_mismatch", "blocked", "idn")
ATTACHMENT_FLAGS = ("external", "personal_data", "keyword", "executable", "archive", "encrypted",
                    "type_mismatch", "inline")
RULE_IDS = ("external_recipients", "external_attachment", "many_external_recipients", "personal_data",
            "lookalike_domain", "display_name_mismatch", "blocked_domain", "keyword", "new_domain")
_EMAIL_IN_NAME = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)

MESSAGES = {
    "external_recipients": _("{target} is outside your organization"),
    "external_attachment": _("Attachment {target} goes to external recipients"),
    "many_external_recipients": _("{target} external addresses in To/Cc: use Bcc so they cannot see each other"),
    "personal_data": _("Personal data ({kind}) found in {target}"),
    "lookalike_domain": _("{target} looks like {similar} but is a different domain"),
    "display_name_mismatch": _("The display name of {target} shows another address ({shown})"),
    "blocked_domain": _("{target} is in a blocked domain: this message cannot be sent there"),
    "keyword": _("Keyword \u201c{pattern}\u201d found in {target}"),
    "new_domain": _("You have never sent mail to {target} before"),
}
# confirm.when = "always": an otherwise allowed message still goes to the window (DESIGN §4)
MESSAGES["confirm_always"] = _("Your policy asks you to confirm every message (confirm.when = \"always\")")
KIND_NAMES = {"card_number": _("card number"), "my_number": _("My Number"), "body": _("the message body")}


@dataclass
class Reason:
    rule: str
    action: str
    target: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "action": self.action, "target": self.target, "message": self.message}


@dataclass
class RecipientResult:
    recipient: Recipient
    flags: list[str] = field(default_factory=list)

    @property
    def external(self) -> bool:
        return "external" in self.flags

    def to_json(self) -> dict[str, Any]:
        r = self.recipient
        return {"address": r.address, "display_name": r.display_name, "field": r.field, "domain": r.domain,
                "external": self.external, "flags": list(self.flags)}


@dataclass
class AttachmentResult:
    attachment: Attachment
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        a = self.attachment
        out: dict[str, Any] = {"id": a.id, "filename": a.filename, "size": a.size, "content_type": a.content_type,
                               "sha256": a.sha256, "flags": list(self.flags)}
        if a.ref:
            out["ref"] = a.ref
        return out


@dataclass
class CheckResult:
    message: ParsedMessage
    recipients: list[RecipientResult]
    attachments: list[AttachmentResult]
    action: str
    reasons: list[Reason]
    approvers: list[str]
    force_bcc: bool

    @property
    def external_recipients(self) -> list[RecipientResult]:
        return [r for r in self.recipients if r.external]

    def to_json(self) -> dict[str, Any]:
        m = self.message
        out: dict[str, Any] = {
            "message_id": m.message_id,
            "from": m.sender,
            "subject": m.subject,
            "recipients": [r.to_json() for r in self.recipients],
            "attachments": [a.to_json() for a in self.attachments],
            "verdict": {"action": self.action, "approvers": list(self.approvers),
                        "reasons": [r.to_json() for r in self.reasons]},
            "force_bcc": self.force_bcc,
        }
        if m.problems:
            out["problems"] = list(m.problems)
        return out


@lru_cache(maxsize=4096)
def _lookalike(domain: str, known: tuple[str, ...]) -> str | None:
    return detect.lookalike_of(domain, list(known))


class _Context:
    def __init__(self, msg: ParsedMessage, policy: Policy, known_domains: Collection[str],
                 gettext: Callable[[str], str]):
        self.msg = msg
        self.policy = policy
        self.known_domains = known_domains
        self.gettext = gettext
        self.reasons: list[Reason] = []
        self.recipients = [RecipientResult(r) for r in msg.recipients]
        self.attachments = [AttachmentResult(a) for a in msg.attachments]
        self.force_bcc = False

    def add(self, rule: str, action: str, target: str, **fields: str) -> None:
        if self.policy.confirm_when == "never" and action == "confirm":
            action = "allow"
        template = self.gettext(MESSAGES[rule])
        self.reasons.append(Reason(rule, action, target, template.format(target=target, **fields)))

    @property
    def has_external(self) -> bool:
        return any(r.external for r in self.recipients)


def _routed(r: Recipient) -> bool:
    """An address whose local part carries another route (quoted @, %-hack, UUCP bang path)."""
    local = r.address.rpartition("@")[0]
    return any(c in local for c in "@%!")


def addresses_in_name(name: str) -> list[str]:
    """Addresses a display name shows, also in look-alike forms: full-width ＠ and ．, zero-width and
    other invisible characters, spaces around @ and dots (NFKC, format characters and spaces removed)."""
    text = unicodedata.normalize("NFKC", name or "")
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = re.sub(r"\s*([@.])\s*", r"\1", text)
    return [a.lower() for a in _EMAIL_IN_NAME.findall(text)]


def _classify_recipients(ctx: _Context) -> None:
    policy = ctx.policy
    known = tuple(policy.internal_domains) + tuple(policy.trusted_domains)
    for res in ctx.recipients:
        r = res.recipient
        # routing syntax ("x@evil"@corp, x%evil@corp, evil!x@corp) may relay beyond the internal domain
        internal = not _routed(r) and any(detect.in_domain(r.domain, d) for d in policy.internal_domains)
        trusted = not internal and any(detect.in_domain(r.domain, d) for d in policy.trusted_domains)
        blocked = any(detect.in_domain(r.domain, d) for d in policy.blocked_domains)
        flags = res.flags
        if not internal:
            flags.append("external")
        if trusted:
            flags.append("trusted")
        if not internal and not trusted and not blocked and r.domain not in ctx.known_domains:
            flags.append("new_domain")
        similar = None if internal or trusted else _lookalike(r.domain, known)
        if similar:
            flags.append("lookalike")
        shown = addresses_in_name(r.display_name)
        mismatch = [a for a in shown if a != r.address and a != r.written.lower()]
        if mismatch:
            flags.append("display_name_mismatch")
        if blocked:
            flags.append("blocked")
        if r.idn:
            flags.append("idn")
        # reasons, strongest first per recipient
        if blocked:
            ctx.add("blocked_domain", "block", r.address)
        if similar:
            ctx.add("lookalike_domain", policy.lookalike_domain, r.address, similar=similar)
        if mismatch:
            ctx.add("display_name_mismatch", policy.display_name_mismatch, r.address, shown=mismatch[0])
        if not internal:
            action = "confirm" if policy.confirm_when in ("always", "external") else "allow"
            ctx.add("external_recipients", action, r.address)


def _new_domains(ctx: _Context) -> None:
    seen: set[str] = set()
    for res in ctx.recipients:
        domain = res.recipient.domain
        if "new_domain" in res.flags and domain not in seen:
            seen.add(domain)
            ctx.add("new_domain", ctx.policy.new_domain, domain)


def _many_external(ctx: _Context) -> None:
    count = sum(1 for r in ctx.recipients if r.external and r.recipient.field in ("to", "cc"))
    if count >= ctx.policy.many_external_recipients:
        ctx.force_bcc = True
        ctx.add("many_external_recipients", "confirm", str(count))


def _attachments(ctx: _Context) -> None:
    external = ctx.has_external
    for res in ctx.attachments:
        a = res.attachment
        if external and not a.inline:
            res.flags.append("external")
            ctx.add("external_attachment", ctx.policy.external_attachment, a.filename)
        if a.inline:
            res.flags.append("inline")
        res.flags.extend(detect.file_flags(a.filename, a.content_type, a.head, a.data))


def _personal_data(ctx: _Context) -> None:
    gettext = ctx.gettext
    sources: list[tuple[str, str, AttachmentResult | None]] = [
        (gettext(KIND_NAMES["body"]), ctx.msg.subject + "\n" + ctx.msg.body_text, None)
    ]
    sources += [(res.attachment.filename, res.attachment.text, res) for res in ctx.attachments if res.attachment.text]
    for target, text, res in sources:
        kinds = detect.personal_data_kinds(text)
        if not kinds:
            continue
        if res is not None:
            res.flags.append("personal_data")
        kind = ", ".join(gettext(KIND_NAMES[k]) for k in kinds)
        ctx.add("personal_data", ctx.policy.personal_data, target, kind=kind)


def _keywords(ctx: _Context) -> None:
    gettext = ctx.gettext
    for kw in ctx.policy.keywords:
        if kw.regex.search(ctx.msg.subject) or kw.regex.search(ctx.msg.body_text):
            ctx.add("keyword", kw.action, gettext(KIND_NAMES["body"]), pattern=kw.pattern)
        for res in ctx.attachments:
            a = res.attachment
            if kw.regex.search(a.filename) or (a.text and kw.regex.search(a.text)):
                if "keyword" not in res.flags:
                    res.flags.append("keyword")
                ctx.add("keyword", kw.action, a.filename, pattern=kw.pattern)


RULES: tuple[Callable[[_Context], None], ...] = (
    _classify_recipients, _new_domains, _many_external, _attachments, _personal_data, _keywords,
)


def evaluate(
    msg: ParsedMessage,
    policy: Policy,
    known_domains: Collection[str] = (),
    gettext: Callable[[str], str] = str,
) -> CheckResult:
    """Run every rule and return the check result; ``known_domains`` is the sent-to history."""
    ctx = _Context(msg, policy, known_domains, gettext)
    for rule in RULES:
        rule(ctx)
    action = max((r.action for r in ctx.reasons), key=ACTION_RANK.__getitem__, default="allow")
    if action == "allow" and policy.confirm_when == "always":
        ctx.add("confirm_always", "confirm", msg.subject)
        action = "confirm"
    approvers = list(policy.approvers_for(msg.sender)) if action == "approve" else []
    return CheckResult(msg, ctx.recipients, ctx.attachments, action, ctx.reasons, approvers, ctx.force_bcc)
