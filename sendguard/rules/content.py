"""Rules on what the message says and carries (DESIGN §3.1): the forgotten and the oversized
attachment, unsafe and encrypted files, and the wrong customer named in a salutation or file name."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from .. import detect
from . import names

if TYPE_CHECKING:
    from ..checks import _Context

# The body announces an attachment: ja / en / zh. A negation right after (添付なし) does not count.
ATTACHMENT_WORDS = (
    "添付", "別添", "同封", "添付ファイル", "別紙", "送付いたします資料",
    "attached", "attachment", "attachments", "enclosed", "enclosure", "find attached",
    "附件", "附上", "随附", "隨附", "附檔", "附档",
)
_NEGATION = re.compile(r"^\s*(?:なし|無し|ありません|はありません|不要|はございません)")
_QUOTE_START = re.compile(
    r"^(?:-{2,}\s*(?:original message|元のメッセージ|転送されたメッセージ|forwarded message)|"
    r"on .{4,120} wrote:|.{0,80}(?:さんは書きました|のメッセージ):?$|from:\s|差出人:\s|发件人:\s)",
    re.IGNORECASE | re.MULTILINE,
)
_MB = 1024 * 1024


@lru_cache(maxsize=64)
def _attachment_regex(extra: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for word in ATTACHMENT_WORDS + extra:
        escaped = re.escape(word)
        parts.append(rf"\b{escaped}\b" if word.isascii() else escaped)
    return re.compile("|".join(parts), re.IGNORECASE)


def own_text(body: str) -> str:
    """The part of a body the sender wrote: quoted lines and the quoted original are left out."""
    cut = _QUOTE_START.search(body)
    if cut:
        body = body[: cut.start()]
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith((">", "|")))


def missing_attachment(ctx: _Context) -> None:
    if any(not a.inline for a in ctx.msg.attachments):
        return
    regex = _attachment_regex(ctx.policy.missing_attachment_words)
    text = ctx.msg.subject + "\n" + own_text(ctx.msg.body_text)
    for match in regex.finditer(text):
        if _NEGATION.match(text, match.end()):
            continue
        ctx.add("missing_attachment", ctx.policy.missing_attachment, match.group(0))
        return


def large_attachment(ctx: _Context) -> None:
    total = sum(a.size for a in ctx.msg.attachments)
    limit = ctx.policy.large_attachment_mb * _MB
    if total >= limit:
        ctx.add("large_attachment", ctx.policy.large_attachment, f"{total / _MB:.1f} MB",
                limit=f"{ctx.policy.large_attachment_mb:g} MB")


def unsafe_and_encrypted(ctx: _Context) -> None:
    """Executable content, a disguised type or a direction trick; password-protected files (PPAP)."""
    for res in ctx.attachments:
        flags = res.flags
        name = res.attachment.filename
        if "executable" in flags or ("type_mismatch" in flags and detect.disguised(name, res.attachment.head)):
            ctx.add("unsafe_attachment", ctx.policy.unsafe_attachment, name)
        if "encrypted" in flags:
            ctx.add("encrypted_attachment", ctx.policy.encrypted_attachment, name)


def attachment_name_mismatch(ctx: _Context) -> None:
    """A file name names a contact's company (or domain label) that is not among the recipients."""
    if not ctx.policy.contacts or not ctx.attachments:
        return
    internal = ctx.policy.internal_domains
    recipient_domains = {r.recipient.domain for r in ctx.recipients}
    ours: set[str] = set()  # tokens of the recipients' own companies never count against them
    theirs: dict[str, str] = {}
    for contact in ctx.policy.contacts:
        domain = contact.domain
        if any(detect.in_domain(domain, d) for d in internal):
            continue
        tokens = names.company_tokens(contact.company, detect.registrable(domain)[0])
        if any(detect.in_domain(d, domain) for d in recipient_domains):
            ours.update(tokens)
        else:
            for token in tokens:
                theirs.setdefault(token, contact.company or domain)
    wrong = {t: who for t, who in theirs.items() if t not in ours}
    if not wrong:
        return
    for res in ctx.attachments:
        if res.attachment.inline:
            continue
        for token, who in wrong.items():
            if names.names_in_filename(token, res.attachment.filename):
                ctx.add("attachment_name_mismatch", ctx.policy.attachment_name_mismatch, res.attachment.filename,
                        company=who)
                break


def name_mismatch(ctx: _Context) -> None:
    """The salutation names nobody among the To recipients (display names and contacts)."""
    salutations = names.salutation_names(ctx.msg.body_text[:4000])
    if not salutations:
        return
    to = [r.recipient for r in ctx.recipients if r.recipient.field in ("to", "attendee")] or \
        [r.recipient for r in ctx.recipients]
    for rcpt in to:
        known = [rcpt.display_name]
        contact = ctx.policy.contact_for(rcpt.address)
        if contact is not None:
            known.append(contact.name)
        if any(names.names_match(cands, known, rcpt.local_part) for cands in salutations):
            return
    first = salutations[0][0]
    ctx.add("name_mismatch", ctx.policy.name_mismatch, first)
