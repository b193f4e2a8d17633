"""The policy engine: a parsed message + a policy + known domains -> the check result (DESIGN §4).

Pure: no I/O, no clock, no database. Each rule is a small function over a shared context; the
verdict is the strongest action among the reasons.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from . import detect
from .i18n import _
from .message import Attachment, ParsedMessage, Recipient
from .policy import Policy
from .rules import content, recipients

if TYPE_CHECKING:
    from .directory import ListLookup

ACTION_RANK = {"allow": 0, "confirm": 1, "reconfirm": 2, "approve": 3, "block": 4}
RECIPIENT_FLAGS = ("external", "trusted", "new_domain", "lookalike", "display_name_mismatch", "blocked", "idn",
                   "auto_added", "list_member", "suppressed")
ATTACHMENT_FLAGS = ("external", "personal_data", "keyword", "executable", "archive", "encrypted",
                    "type_mismatch", "inline")
RULE_IDS = ("external_recipients", "external_attachment", "many_external_recipients", "personal_data",
            "lookalike_domain", "display_name_mismatch", "blocked_domain", "keyword", "new_domain",
            "reply_new_domain", "missing_attachment", "large_attachment", "name_mismatch",
            "attachment_name_mismatch", "unsafe_attachment", "encrypted_attachment", "sender_account",
            "distribution_list", "bulk_unsubscribe", "address_rule", "auto_cc", "suppressed")
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
    "reply_new_domain": _("This reply adds {target}, a domain that was not in the conversation"),
    "missing_attachment": _("The message mentions an attachment (\u201c{target}\u201d) but has none"),
    "large_attachment": _("Attachments total {target} (limit {limit}): the receiving server may refuse them"),
    "name_mismatch": _("The message is addressed to \u201c{target}\u201d, who is not among the To recipients"),
    "attachment_name_mismatch": _("{target} names {company}, which is not among the recipients"),
    "unsafe_attachment": _("{target} is a program or a disguised file type"),
    "encrypted_attachment": _("{target} is password-protected: send the password another way, or use a "
                              "shared link"),
    "sender_account": _("You are sending from {target}, which is not one of your organization's accounts"),
    "distribution_list": _("{target} is a distribution list ({count} members, shown under it)"),
    "distribution_list_unexpanded": _("{target} is a distribution list whose members SendGuard cannot see"),
    "distribution_list_unseen": _("{target} is a distribution list whose members SendGuard cannot see ({why})"),
    "distribution_list_partial": _("{target} is a distribution list that SendGuard could not expand in full ({why})"),
    "distribution_list_unknown": _("SendGuard could not ask {source} whether {target} is a distribution list "
                                   "({why}): check who receives it"),
    "bulk_unsubscribe": _("Bulk mail to {target} external recipients without an opt-out "
                          "(List-Unsubscribe header or unsubscribe text)"),
    "address_rule": _("{target} matches an address rule of your organization"),
    "auto_cc": _("{target} was added automatically ({field}) by your organization's policy"),
    "suppressed": _("{target} is on the opt-out list and is removed from this message"),
    "suppressed_block": _("{target} is on the opt-out list: this message cannot be sent to it"),
}
# confirm.when = "always": an otherwise allowed message still goes to the window (DESIGN §4)
MESSAGES["confirm_always"] = _("Your policy asks you to confirm every message (confirm.when = \"always\")")
UNINSPECTED = _("{target} could not be inspected ({why}): check its content yourself")
KIND_NAMES = {"card_number": _("card number"), "my_number": _("My Number"), "body": _("the message body")}


@dataclass
class Reason:
    rule: str
    action: str
    target: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "action": self.action, "target": self.target, "message": self.message}


@dataclass(frozen=True)
class History:
    """What SendGuard knows from mail it released, looked up by the caller and handed in as data.

    ``sent_domains``: domains mail was sent to (lookalike references). ``thread_domains``: the
    recipient domains of released mail this message replies to; None when it answers none of them.
    """

    sent_domains: tuple[str, ...] = ()
    thread_domains: frozenset[str] | None = None


@dataclass
class RecipientResult:
    recipient: Recipient
    flags: list[str] = field(default_factory=list)
    list_address: str = ""  # for a list member: the list it was expanded from
    is_list: bool = False
    list_size: int = 0  # members the directory gave for a list
    list_problem: str = ""  # why a list could not be expanded (in full), or why the directory could not say
    list_source: str = ""  # the directory that answered ("Exchange", "Microsoft Graph")
    list_unknown: bool = False  # the directory could not be asked whether this is a list

    @property
    def external(self) -> bool:
        return "external" in self.flags

    def to_json(self) -> dict[str, Any]:
        r = self.recipient
        out: dict[str, Any] = {"address": r.address, "display_name": r.display_name, "field": r.field,
                               "domain": r.domain, "external": self.external, "flags": list(self.flags)}
        if self.list_address:
            out["list"] = self.list_address
        return out


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
        if a.uninspected:
            out["uninspected"] = a.uninspected
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
    problems: list[str] = field(default_factory=list)

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
        if m.problems or self.problems:
            out["problems"] = list(m.problems) + self.problems
        return out


@lru_cache(maxsize=4096)
def _lookalike(domain: str, known: tuple[str, ...]) -> str | None:
    return detect.lookalike_of(domain, list(known))


class _Context:
    def __init__(self, msg: ParsedMessage, policy: Policy, known_domains: Collection[str],
                 gettext: Callable[[str], str], history: History, accounts: Collection[str],
                 lists: Mapping[str, ListLookup] | None = None):
        self.msg = msg
        self.lists = lists or {}  # the directory's answers for recipients (Exchange/Graph lists)
        self.policy = policy
        self.known_domains = known_domains
        self.gettext = gettext
        self.history = history
        self.accounts = {a.lower() for a in accounts}
        self.reasons: list[Reason] = []
        self.recipients = [RecipientResult(r) for r in msg.recipients]
        self.attachments = [AttachmentResult(a) for a in msg.attachments]
        self.force_bcc = False
        self.problems: list[str] = []

    def add(self, rule: str, action: str, target: str, message: str | None = None, key: str | None = None,
            **fields: str) -> None:
        """One reason: ``message`` is the policy's own text if it has one, else the catalog's ``key``."""
        if self.policy.confirm_when == "never" and action == "confirm":
            action = "allow"
        if message is None:
            message = self.gettext(MESSAGES[key or rule]).format(target=target, **fields)
        self.reasons.append(Reason(rule, action, target, message))

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


@lru_cache(maxsize=4096)
def _domain_kind(domain: str, internal_domains: tuple[str, ...], trusted_domains: tuple[str, ...],
                 blocked_domains: tuple[str, ...]) -> tuple[bool, bool, bool]:
    """(internal, trusted, blocked) for a domain; many recipients share a few domains."""
    internal = any(detect.in_domain(domain, d) for d in internal_domains)
    trusted = not internal and any(detect.in_domain(domain, d) for d in trusted_domains)
    return internal, trusted, any(detect.in_domain(domain, d) for d in blocked_domains)


def _classify_recipients(ctx: _Context) -> None:
    policy = ctx.policy
    known = tuple(policy.internal_domains) + tuple(policy.trusted_domains)
    customers = _lookalike_references(policy, ctx.history, ctx.known_domains)
    customer_sets = [_domain_set(group) for group in customers]
    similar_of: dict[str, str | None] = {}  # many recipients share a few domains
    for res in ctx.recipients:
        r = res.recipient
        internal, trusted, blocked = _domain_kind(r.domain, policy.internal_domains, policy.trusted_domains,
                                                  policy.blocked_domains)
        if internal and _routed(r):
            # routing syntax ("x@evil"@corp, x%evil@corp, evil!x@corp) may relay beyond the internal domain
            internal = False
            trusted = any(detect.in_domain(r.domain, d) for d in policy.trusted_domains)
        flags = res.flags
        if not internal:
            flags.append("external")
        if trusted:
            flags.append("trusted")
        if not internal and not trusted and not blocked and r.domain not in ctx.known_domains:
            flags.append("new_domain")
        if r.domain not in similar_of:
            similar_of[r.domain] = _customer_lookalike(r.domain, known, customers, customer_sets)
        similar = None if internal or trusted else similar_of[r.domain]
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


@lru_cache(maxsize=16)
def _contact_domains(contacts: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c.domain for c in contacts if c.domain))


def _lookalike_references(policy: Policy, history: History,
                           known_domains: Collection[str]) -> tuple[tuple[str, ...], ...]:
    """Groups of customer domains: the contacts', the sent-to history's, the known recipients'."""
    groups = []
    if policy.contacts:
        groups.append(_contact_domains(policy.contacts))
    if history.sent_domains:
        groups.append(history.sent_domains)
    if known_domains:
        groups.append(tuple(sorted(known_domains)))
    return tuple(groups)


@lru_cache(maxsize=16)
def _domain_set(domains: Collection[str]) -> frozenset[str]:
    """The same few reference groups come back for every message: build each set once."""
    return frozenset(domains)


def _customer_lookalike(domain: str, ours: tuple[str, ...], customers: tuple[tuple[str, ...], ...],
                        customer_sets: list[frozenset[str]]) -> str | None:
    """The domain ``domain`` imitates: ours and trusted ones always count; contacts' and sent-to
    domains only when ``domain`` is not one of them itself (mail to a known customer is not a typo)."""
    similar = _lookalike(domain, ours)
    if similar or not customers:
        return similar
    labels = domain.split(".")
    suffixes = [".".join(labels[i:]) for i in range(len(labels))]
    if any(suffix in known for known in customer_sets for suffix in suffixes):
        return None
    for group in customers:
        similar = _lookalike(domain, group)
        if similar:
            return similar
    return None


def _new_domains(ctx: _Context) -> None:
    seen: set[str] = set()
    for res in ctx.recipients:
        domain = res.recipient.domain
        if "new_domain" in res.flags and domain not in seen:
            seen.add(domain)
            ctx.add("new_domain", ctx.policy.new_domain, domain)


def _many_external(ctx: _Context) -> None:
    count = sum(1 for r in ctx.recipients
                if r.external and r.recipient.field in ("to", "cc") and not r.list_address
                and "auto_added" not in r.flags)
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
        res.flags.extend(f for f in detect.file_flags(a.filename, a.content_type, a.head, a.data)
                         if f not in res.flags)
        for flag in a.flags:
            if flag not in res.flags:
                res.flags.append(flag)
        if a.uninspected:  # fail closed: a file that could not be read is never shown as checked
            ctx.problems.append(ctx.gettext(UNINSPECTED).format(target=a.filename, why=a.uninspected))


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
        message = kw.message or None
        if kw.regex.search(ctx.msg.subject) or kw.regex.search(ctx.msg.body_text):
            ctx.add("keyword", kw.action, gettext(KIND_NAMES["body"]), message, pattern=kw.pattern)
        for res in ctx.attachments:
            a = res.attachment
            if kw.regex.search(a.filename) or (a.text and kw.regex.search(a.text)):
                if "keyword" not in res.flags:
                    res.flags.append("keyword")
                ctx.add("keyword", kw.action, a.filename, message, pattern=kw.pattern)


RULES: tuple[Callable[[_Context], None], ...] = (
    # who gets it: added and expanded recipients are classified like the others
    recipients.auto_cc, recipients.expand_lists, _classify_recipients, recipients.address_rules,
    recipients.suppression, recipients.distribution_list, _new_domains, recipients.reply_new_domain,
    _many_external, recipients.bulk_unsubscribe, recipients.sender_account,
    # what it carries and says
    _attachments, content.unsafe_and_encrypted, content.large_attachment, content.missing_attachment,
    content.attachment_name_mismatch, content.name_mismatch, _personal_data, _keywords,
)


def evaluate(
    msg: ParsedMessage,
    policy: Policy,
    known_domains: Collection[str] = (),
    gettext: Callable[[str], str] = str,
    *,
    history: History | None = None,
    accounts: Collection[str] = (),
    lists: Mapping[str, ListLookup] | None = None,
) -> CheckResult:
    """Run every rule and return the check result.

    ``known_domains``: recipient domains found in the sent-to history; ``history``: all sent-to
    domains and the thread this message answers; ``accounts``: the user's configured sending addresses;
    ``lists``: what the mail server's directory said about recipients (``sendguard.directory``).
    """
    ctx = _Context(msg, policy, known_domains, gettext, history or History(), accounts, lists)
    for rule in RULES:
        rule(ctx)
    action = max((r.action for r in ctx.reasons), key=ACTION_RANK.__getitem__, default="allow")
    if action == "allow" and policy.confirm_when == "always":
        ctx.add("confirm_always", "confirm", msg.subject)
        action = "confirm"
    approvers = list(policy.approvers_for(msg.sender)) if action == "approve" else []
    return CheckResult(msg, ctx.recipients, ctx.attachments, action, ctx.reasons, approvers, ctx.force_bcc,
                       ctx.problems)
