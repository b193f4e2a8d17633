"""Rules on what the message says and carries: the forgotten and the oversized
attachment, unsafe and encrypted files, and the wrong customer named in a salutation or file name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .. import detect
from . import names

if TYPE_CHECKING:
    from ..checks import _Context

# The body announces an attachment: ja / en / zh. A word said not to be there does not count: a negation
# right after it (添付なし, 添付ファイルはありません, attachments: none, 附件：无) or right before it (no
# attachment, without attachments, 没有附件, 無附件).
ATTACHMENT_WORDS = (
    "添付", "別添", "同封", "添付ファイル", "別紙", "送付いたします資料",
    "attached", "attachment", "attachments", "enclosed", "enclosure", "find attached",
    "附件", "附上", "随附", "隨附", "附檔", "附档",
)
_NEGATED_AFTER = re.compile(  # used with .match(text, end of the word)
    r"(?:ファイル|資料|書類)?[】\]）)」]?[^\S\n]*[:：]?[^\S\n]*(?:は|が|も)?(?:特に)?"
    r"(?:なし|無し|ない(?!し)|無い|ありません|ございません|不要|(?:いた|致)?しません|して(?:い|お)りません)"
    r"|[^\S\n]*[:：][^\S\n]*(?i:none|n/a|nil)\b"
    r"|[^\S\n]*[:：]?[^\S\n]*(?:无|無|没有|沒有)(?=$|[\s。，,、；;）)】])"
)
_NEGATED_BEFORE = re.compile(  # searched in the few characters before the word
    r"(?:(?i:\bno|\bwithout|\bnothing|\bnot|n't|\bnever)"
    r"(?:[^\S\n]+(?i:an?|any|files?|documents?|is|are|was|were|been|be|being)\b)*[^\S\n]+"
    r"|(?:没有|沒有|没|沒|无|無|不含|未含|未|不带|不帶|无需|無需|不需要)[^\S\n]*)$"
)
_QUOTE_START = re.compile(
    r"^(?:-{2,}\s*(?:original message|元のメッセージ|転送されたメッセージ|forwarded message)|"
    r"on .{4,120} wrote:|.{0,80}(?:さんは書きました|のメッセージ):?$|from:\s|差出人:\s|发件人:\s)",
    re.IGNORECASE | re.MULTILINE,
)
# signature disclaimers mention attachments on every mail ("this e-mail and any attachments are confidential");
# looked for in lower-cased text (re.IGNORECASE over Japanese text cost five times as much)
_DISCLAIMER = re.compile(r"confidential|intended (?:only|solely|recipient)|privileged|disclaimer|機密|秘密|守秘|"
                         r"誤って|誤送信|お心当たり|保密|机密|誤發送")
_MB = 1024 * 1024


@lru_cache(maxsize=64)
def _attachment_regex(extra: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The words as one pattern, and the lower-case words as a plain one: a lower-cased text in which
    that finds none of them (most messages) is passed over, cheaper than the first's alternation."""
    parts = []
    for word in ATTACHMENT_WORDS + extra:
        escaped = re.escape(word)
        parts.append(rf"\b{escaped}\b" if word.isascii() else escaped)
    return (re.compile("|".join(parts), re.IGNORECASE),
            re.compile("|".join(re.escape(w.lower()) for w in ATTACHMENT_WORDS + extra)))


# Text that the quote pattern can match in holds one of these (in the lower-cased text: none of their
# letters has another case-insensitive form); a body without any (most new messages) is not searched.
_QUOTE_MARKS = ("--", "wrote:", "from:", "さんは書きました", "のメッセージ", "差出人:", "发件人:")


def own_text(body: str) -> str:
    """The part of a body the sender wrote: quoted lines and the quoted original are left out."""
    lowered = body.lower()
    cut = _QUOTE_START.search(body) if any(mark in lowered for mark in _QUOTE_MARKS) else None
    if cut:
        body = body[: cut.start()]
        lowered = body.lower()
    disclaimer = _DISCLAIMER.search(lowered) is not None  # once over the whole text: most bodies have none
    if not disclaimer and ">" not in body and "|" not in body:  # no line to leave out (most new messages)
        return "\n".join(body.splitlines())
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith((">", "|"))
                     and not (disclaimer and _DISCLAIMER.search(line.lower())))


def missing_attachment(ctx: _Context) -> None:
    if any(not a.inline for a in ctx.msg.attachments):
        return
    regex, any_word = _attachment_regex(ctx.policy.missing_attachment_words)
    text = ctx.msg.subject + "\n" + own_text(ctx.msg.body_text)
    if not any_word.search(text.lower()):
        return
    for match in regex.finditer(text):
        start = match.start()
        if _NEGATED_AFTER.match(text, match.end()) or _NEGATED_BEFORE.search(text, max(0, start - 40), start):
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
    """Executable content, a disguised type or a direction trick; password-protected files (PPAP). Files
    uuencoded into the body get the same rules as the files attached."""
    for res in ctx.attachments:
        _file_rules(ctx, res.attachment.filename, res.flags, res.attachment.head)
    for hidden in ctx.msg.hidden_files:
        _file_rules(ctx, hidden.name, hidden.flags, hidden.head)


def _file_rules(ctx: _Context, name: str, flags: Sequence[str], head: bytes) -> None:
    if "executable" in flags or ("type_mismatch" in flags and detect.disguised(name, head)):
        ctx.add("unsafe_attachment", ctx.policy.unsafe_attachment, name)
    if "encrypted" in flags:
        ctx.add("encrypted_attachment", ctx.policy.encrypted_attachment, name)


_WORD = re.compile(r"[a-z0-9]+")  # an ASCII token that is one word of a file name (acorp in acorp_quote.xlsx)
_WORDS = re.compile(r"[a-z0-9]+(?: [a-z0-9]+)+")  # a Latin company name of several words (names.company_tokens)
_TOKEN_CACHE: dict[int, tuple[object, list[tuple[str, tuple[str, ...], str]]]] = {}


def _contact_tokens(contacts: tuple[Any, ...], internal: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], str]]:
    """(domain, name tokens, company) per external contact, worked out once per loaded policy."""
    hit = _TOKEN_CACHE.get(id(contacts))
    if hit is not None and hit[0] is contacts:
        return hit[1]
    out = []
    for contact in contacts:
        domain = contact.domain
        if any(detect.in_domain(domain, d) for d in internal):
            continue
        tokens = tuple(names.company_tokens(contact.company, detect.registrable(domain)[0]))
        if tokens:
            out.append((domain, tokens, contact.company or domain))
    if len(_TOKEN_CACHE) > 8:
        _TOKEN_CACHE.clear()
    _TOKEN_CACHE[id(contacts)] = (contacts, out)
    return out


def attachment_name_mismatch(ctx: _Context) -> None:
    """A file name names a contact's company (or domain label) that is not among the recipients."""
    files = [res for res in ctx.attachments if not res.attachment.inline]
    if not ctx.policy.contacts or not files:
        return
    recipient_suffixes: set[str] = set()
    for res in ctx.recipients:
        labels = res.recipient.domain.split(".")
        recipient_suffixes.update(".".join(labels[i:]) for i in range(len(labels)))
    ours: set[str] = set()  # tokens of the recipients' own companies never count against them
    theirs: dict[str, str] = {}
    for domain, tokens, who in _contact_tokens(ctx.policy.contacts, ctx.policy.internal_domains):
        if domain in recipient_suffixes:
            ours.update(tokens)
        else:
            for token in tokens:
                theirs.setdefault(token, who)
    wrong = {t: who for t, who in theirs.items() if t not in ours}
    # looked up as whole words of the file name; a name of several words (acme widgets) also as a run of
    # file-name words written together (Acme_Widgets, Acme Widgets), never as one of its words alone
    words: dict[str, str] = {}
    runs: dict[str, str] = {}
    others = []
    longest = 1
    for token in wrong:
        if _WORD.fullmatch(token):
            words[token] = token
        elif _WORDS.fullmatch(token):
            parts = token.split(" ")
            words.setdefault("".join(parts), token)
            runs.setdefault("".join(parts), token)
            longest = max(longest, len(parts))
        else:
            others.append(token)
    for file in files:
        forms = names.filename_forms(file.attachment.filename)
        found = None
        if words:
            found = _found_in_words(_WORD.findall(forms[0]), words, runs, longest)
        if found is None:
            found = next((t for t in others if names.token_in(t, forms)), None)
        if found is not None:
            ctx.add("attachment_name_mismatch", ctx.policy.attachment_name_mismatch, file.attachment.filename,
                    company=wrong[found])


def _found_in_words(file_words: list[str], words: dict[str, str], runs: dict[str, str], longest: int) -> str | None:
    """The token a file name's words name: one word, or 2..``longest`` words in a row joined."""
    for word in file_words:
        if word in words:
            return words[word]
    for size in range(2, min(longest, len(file_words)) + 1):
        for i in range(len(file_words) - size + 1):
            joined = "".join(file_words[i:i + size])
            if joined in runs:
                return runs[joined]
    return None


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
