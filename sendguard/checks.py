"""The policy engine: a parsed message + a policy + known domains -> the check result.

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
from .errors import CheckFormatError
from .i18n import _
from .rules import content, recipients

if TYPE_CHECKING:  # annotations only: reading a stored check result (``queue list``) loads neither
    from .directory import ListLookup
    from .message import Attachment, ParsedMessage, Recipient
    from .policy import Policy

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
    "suppressed_list_member": _("{target} is on the opt-out list but gets this message through the list {list}, "
                                "and SendGuard cannot remove it from that list"),
}
# confirm.when = "always": an otherwise allowed message still goes to the window
MESSAGES["confirm_always"] = _("Your policy asks you to confirm every message (confirm.when = \"always\")")
# the policy file could not be read and no earlier one was in force: every message waits for the user
MESSAGES["policy_error"] = _("SendGuard cannot use its policy ({target}): every message is held for you until "
                             "it is fixed; tell your administrator")
# a rule failed on this message (a bug): it is held, and what it carries is listed without judgement
MESSAGES["rule_failed"] = _("SendGuard could not finish checking this message ({target}): look at every recipient "
                            "and attachment yourself before you send it")
UNINSPECTED = _("{target} could not be inspected ({why}): check its content yourself")
KIND_NAMES = {"card_number": _("card number"), "my_number": _("My Number"), "body": _("the message body")}


def _field(data: Any, key: str, kind: type | tuple[type, ...], default: Any, where: str) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckFormatError(f"check result: {where}{key} must be {_kind_name(kind)}, not {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", bool: "true or false", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _required(data: Any, key: str, where: str) -> str:
    if key not in data:
        raise CheckFormatError(f"check result: {where}{key} is missing")
    return _field(data, key, str, "", where)  # type: ignore[no-any-return]


def _strings(data: Any, key: str, where: str) -> tuple[str, ...]:
    values = _field(data, key, list, [], where)
    if not all(isinstance(v, str) for v in values):
        raise CheckFormatError(f"check result: {where}{key} must be a list of strings")
    return tuple(values)


def _object(data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise CheckFormatError(f"check result: {where or 'the result'} must be an object, not {type(data).__name__}")
    return data


@dataclass
class Reason:
    rule: str
    action: str
    target: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "action": self.action, "target": self.target, "message": self.message}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> Reason:
        _object(data, where)
        return cls(*(_field(data, key, str, "", where) for key in ("rule", "action", "target", "message")))


# ---------------------------------------------------------------------- the stored check result
# What a check leaves behind (in the outbox, the API, the central server): the JSON of
# ``sendguard check --json``. These classes own that shape: ``to_json`` writes it, ``from_json``
# reads it back (refusing a wrong shape with the key named), and everything else reads the fields.


@dataclass(frozen=True)
class StoredRecipient:
    """One recipient as checked: ``address`` lower-cased, ``domain`` in Unicode, ``list_address`` the
    distribution list it came from (JSON ``list``)."""

    address: str
    display_name: str = ""
    field: str = "to"
    domain: str = ""
    external: bool = False
    flags: tuple[str, ...] = ()
    list_address: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "display_name": self.display_name, "field": self.field,
                               "domain": self.domain, "external": self.external, "flags": list(self.flags)}
        if self.list_address:
            out["list"] = self.list_address
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> StoredRecipient:
        _object(data, where)
        return cls(address=_required(data, "address", where),
                   display_name=_field(data, "display_name", str, "", where),
                   field=_field(data, "field", str, "to", where), domain=_field(data, "domain", str, "", where),
                   external=_field(data, "external", bool, False, where), flags=_strings(data, "flags", where),
                   list_address=_field(data, "list", str, "", where))


@dataclass(frozen=True)
class StoredAttachment:
    """One attachment as checked; ``ref`` is the mail client's own id for it (Outlook, Gmail)."""

    id: str
    filename: str = ""
    size: int = 0
    content_type: str = ""
    sha256: str = ""
    flags: tuple[str, ...] = ()
    ref: str = ""
    uninspected: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "filename": self.filename, "size": self.size,
                               "content_type": self.content_type, "sha256": self.sha256, "flags": list(self.flags)}
        if self.ref:
            out["ref"] = self.ref
        if self.uninspected:
            out["uninspected"] = self.uninspected
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> StoredAttachment:
        _object(data, where)
        return cls(id=_required(data, "id", where), filename=_field(data, "filename", str, "", where),
                   size=_field(data, "size", int, 0, where), content_type=_field(data, "content_type", str, "", where),
                   sha256=_field(data, "sha256", str, "", where), flags=_strings(data, "flags", where),
                   ref=_field(data, "ref", str, "", where), uninspected=_field(data, "uninspected", str, "", where))


@dataclass(frozen=True)
class Verdict:
    """The strongest action among the reasons, and who may approve when it is ``approve``."""

    action: str = "allow"
    approvers: tuple[str, ...] = ()
    reasons: tuple[Reason, ...] = ()

    def reasons_at(self, *actions: str) -> list[Reason]:
        """The reasons of these actions (e.g. what made a message need approval)."""
        return [r for r in self.reasons if r.action in actions]

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "approvers": list(self.approvers),
                "reasons": [r.to_json() for r in self.reasons]}

    @classmethod
    def from_json(cls, data: Any, where: str = "verdict.") -> Verdict:
        _object(data, where.rstrip("."))
        action = _field(data, "action", str, "allow", where)
        if action not in ACTION_RANK:
            raise CheckFormatError(f"check result: {where}action must be one of {', '.join(ACTION_RANK)}, "
                                   f"not {action!r}")
        reasons = _field(data, "reasons", list, [], where)
        return cls(action, _strings(data, "approvers", where),
                   tuple(Reason.from_json(r, f"{where}reasons[{i}].") for i, r in enumerate(reasons)))


@dataclass(frozen=True)
class StoredCheck:
    """The check result as stored with a message and shown everywhere (``sendguard check --json``).

    ``message_id``/``sender``/``subject`` are None when the message could not be read at all (then
    ``problems`` says why and the verdict holds it).
    """

    recipients: tuple[StoredRecipient, ...] = ()
    attachments: tuple[StoredAttachment, ...] = ()
    verdict: Verdict = field(default_factory=Verdict)
    force_bcc: bool = False
    problems: tuple[str, ...] = ()
    message_id: str | None = None
    sender: str | None = None
    subject: str | None = None

    @property
    def readable(self) -> bool:
        """Whether the message itself was read (else only ``problems`` and the verdict are known)."""
        return self.sender is not None

    @property
    def by_address(self) -> dict[str, StoredRecipient]:
        """Recipients by address (an address listed twice, e.g. also as a list member: its last row)."""
        return {r.address: r for r in self.recipients}

    def attachment(self, att_id: str) -> StoredAttachment | None:
        return next((a for a in self.attachments if a.id == att_id), None)

    @property
    def external_addresses(self) -> set[str]:
        return {r.address for r in self.recipients if r.external}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.readable:
            out.update({"message_id": self.message_id or "", "from": self.sender, "subject": self.subject or ""})
        out.update({"recipients": [r.to_json() for r in self.recipients],
                    "attachments": [a.to_json() for a in self.attachments],
                    "verdict": self.verdict.to_json(), "force_bcc": self.force_bcc})
        if self.problems:
            out["problems"] = list(self.problems)
        return out

    @classmethod
    def from_json(cls, data: Any) -> StoredCheck:
        """Read a stored or submitted check result; ``CheckFormatError`` names the first wrong key."""
        _object(data, "")
        recipients = _field(data, "recipients", list, [], "")
        attachments = _field(data, "attachments", list, [], "")
        return cls(
            recipients=tuple(StoredRecipient.from_json(r, f"recipients[{i}].") for i, r in enumerate(recipients)),
            attachments=tuple(StoredAttachment.from_json(a, f"attachments[{i}].") for i, a in enumerate(attachments)),
            verdict=Verdict.from_json(data.get("verdict") or {}), force_bcc=_field(data, "force_bcc", bool, False, ""),
            problems=_strings(data, "problems", ""), message_id=_field(data, "message_id", str, None, ""),
            sender=_field(data, "from", str, None, ""), subject=_field(data, "subject", str, None, ""))

    @classmethod
    def unreadable(cls, problem: str) -> StoredCheck:
        """A message that could not be read: held for the user with the reason."""
        return cls(verdict=Verdict("confirm"), problems=(problem,))


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
    list_size: int = 0  # members listed for a list (lists.csv or the directory)
    list_problem: str = ""  # why a list could not be expanded (in full), or why the directory could not say
    list_source: str = ""  # the directory that answered ("Exchange", "Microsoft Graph")
    list_unknown: bool = False  # the directory could not be asked whether this is a list

    @property
    def external(self) -> bool:
        return "external" in self.flags

    def stored(self) -> StoredRecipient:
        r = self.recipient
        return StoredRecipient(r.address, r.display_name, r.field, r.domain, self.external, tuple(self.flags),
                               self.list_address)

    def to_json(self) -> dict[str, Any]:
        return self.stored().to_json()


@dataclass
class AttachmentResult:
    attachment: Attachment
    flags: list[str] = field(default_factory=list)

    def stored(self) -> StoredAttachment:
        a = self.attachment
        return StoredAttachment(a.id, a.filename, a.size, a.content_type, a.sha256, tuple(self.flags), a.ref or "",
                                a.uninspected or "")

    def to_json(self) -> dict[str, Any]:
        return self.stored().to_json()


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

    def stored(self) -> StoredCheck:
        """What is kept of this check with the message (and shown by ``check --json``)."""
        m = self.message
        return StoredCheck(
            recipients=tuple(r.stored() for r in self.recipients),
            attachments=tuple(a.stored() for a in self.attachments),
            verdict=Verdict(self.action, tuple(self.approvers), tuple(self.reasons)), force_bcc=self.force_bcc,
            problems=(*m.problems, *self.problems), message_id=m.message_id, sender=m.sender, subject=m.subject)

    def to_json(self) -> dict[str, Any]:
        return self.stored().to_json()


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
    if "@" not in text:  # (the usual name: nothing below can make one)
        return []
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
    # addresses shown to each other in To/Cc: list members are not (the list address is); bulk mail counts them
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
        (gettext(KIND_NAMES["body"]), "\n".join((ctx.msg.subject, ctx.msg.body_text, ctx.msg.hidden_text)), None)
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
        if kw.regex.search(ctx.msg.subject) or kw.regex.search(ctx.msg.body_text) or \
                (ctx.msg.hidden_text and kw.regex.search(ctx.msg.hidden_text)):
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
    if policy.load_error:
        ctx.add("policy_error", "confirm", policy.load_error)
    action = max((r.action for r in ctx.reasons), key=ACTION_RANK.__getitem__, default="allow")
    if action == "allow" and policy.confirm_when == "always":
        ctx.add("confirm_always", "confirm", msg.subject)
        action = "confirm"
    approvers = list(policy.approvers_for(msg.sender)) if action == "approve" else []
    return CheckResult(msg, ctx.recipients, ctx.attachments, action, ctx.reasons, approvers, ctx.force_bcc,
                       ctx.problems)


def unfinished(msg: ParsedMessage, policy: Policy, error: str, gettext: Callable[[str], str] = str) -> CheckResult:
    """The result for a message a rule failed on (a bug in SendGuard): held for the user with the error,
    who still sees every recipient and attachment it carries to tick, unjudged. A recipient counts as
    external unless its domain is one of the organization's (no other rule is run)."""
    ctx = _Context(msg, policy, (), gettext, History(), ())
    for res in ctx.recipients:
        internal = _domain_kind(res.recipient.domain, policy.internal_domains, policy.trusted_domains,
                                policy.blocked_domains)[0]
        if not internal or _routed(res.recipient):
            res.flags.append("external")
    ctx.add("policy_error", "confirm", error, key="rule_failed")
    return CheckResult(msg, ctx.recipients, ctx.attachments, "confirm", ctx.reasons, [], False, ctx.problems)
