"""Recipient rules: automatic Cc/Bcc, distribution lists, address rules, the
suppression list, the sender account, replies that add a domain, and bulk mail without an opt-out."""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING

from .. import detect

if TYPE_CHECKING:
    from ..checks import _Context
    from ..message import Recipient

_OPT_OUT = re.compile(r"配信停止|配信解除|購読解除|登録解除|受信拒否|unsubscribe|opt[- ]?out|退订|取消订阅|退訂", re.IGNORECASE)
_BULK_PRECEDENCE = ("bulk", "list", "junk")


def _recipient(address: str, name: str, field_name: str) -> Recipient | None:
    """``message.make_recipient``, with the MIME layer imported when a rule first adds someone: reading a
    stored check result (``sendguard queue list``) imports this module but never needs it."""
    from ..message import make_recipient

    return make_recipient(address, name, field_name)


def _present(ctx: _Context) -> set[str]:
    return {r.recipient.address for r in ctx.recipients}


def auto_cc(ctx: _Context) -> None:
    """[[rules.auto_cc]]: add the configured Cc/Bcc when a recipient, keyword or attachment matches."""
    if not ctx.policy.auto_cc:
        return
    from ..checks import RecipientResult

    addresses = [r.address for r in ctx.msg.recipients]
    text = ctx.msg.subject + "\n" + ctx.msg.body_text
    has_attachment = any(not a.inline for a in ctx.msg.attachments)
    for rule in ctx.policy.auto_cc:
        fired = rule.unconditional or (
            any(fnmatch.fnmatchcase(a, p) for a in addresses for p in rule.when_recipient)
            or (rule.when_keyword is not None and rule.when_keyword.search(text) is not None)
            or (rule.when_attachment and has_attachment))
        if not fired:
            continue
        present = _present(ctx)
        for field_name, wanted in (("cc", rule.cc), ("bcc", rule.bcc)):
            for address in wanted:
                if address in present:
                    continue
                rcpt = _recipient(address, "", field_name)
                if rcpt is None:
                    continue
                present.add(rcpt.address)
                ctx.recipients.append(RecipientResult(rcpt, ["auto_added"]))
                ctx.add("auto_cc", "allow", rcpt.address, field=field_name.title())


def expand_lists(ctx: _Context) -> None:
    """Distribution lists from lists.csv, else from the mail server's directory (Exchange ExpandDL,
    Graph group members): members are listed under the list (flag ``list_member``). A member that is a
    list in lists.csv is expanded in turn, its members listed under it; each address is listed once, so
    lists that contain each other end. A recipient the directory could not be asked about is marked,
    never taken for a single address."""
    if not ctx.policy.lists and not ctx.lists:
        return
    from ..checks import RecipientResult

    present = _present(ctx)
    for res in ctx.recipients:  # (the loop reaches the members appended below: nested lists)
        address = res.recipient.address
        dist = ctx.policy.list_for(address)
        if dist is not None:
            members: list[tuple[str, str]] = [(m, "") for m in dist.members]
            res.list_size = len(members)
        else:
            found = ctx.lists.get(address)
            if found is None or found.is_list is False:
                continue
            res.list_source, res.list_problem = found.source, found.why
            if found.is_list is None:
                res.list_unknown = True
                continue
            members = [(m.address, m.name) for m in found.members]
            res.list_size = len(members)
            if members and not found.expanded and not res.list_problem:
                res.list_problem = "incomplete"
        res.is_list = True
        for member, name in members:
            if member in present:
                continue
            rcpt = _recipient(member, name, res.recipient.field)
            if rcpt is None:
                continue
            present.add(rcpt.address)
            ctx.recipients.append(RecipientResult(rcpt, ["list_member"], list_address=address))


def distribution_list(ctx: _Context) -> None:
    """A recipient is a list: say so; under ``block`` a list whose members are unknown (or only partly
    known, or that the directory could not be asked about) is refused."""
    action = ctx.policy.distribution_list
    for res in ctx.recipients:
        address = res.recipient.address
        if res.list_unknown:
            ctx.add("distribution_list", action, address, key="distribution_list_unknown",
                    source=res.list_source or "the directory", why=res.list_problem)
            continue
        if not res.is_list:
            continue
        dist = ctx.policy.list_for(address)
        count = len(dist.members) if dist else res.list_size
        if count and not res.list_problem:
            ctx.add("distribution_list", "confirm" if action == "block" else action, address, count=str(count))
        elif res.list_problem:
            key = "distribution_list_partial" if count else "distribution_list_unseen"
            ctx.add("distribution_list", action, address, key=key, why=res.list_problem)
        else:
            ctx.add("distribution_list", action, address, key="distribution_list_unexpanded")


def address_rules(ctx: _Context) -> None:
    """[[rules.address]]: every matching rule applies, with its own message when it has one."""
    for rule in ctx.policy.address_rules:
        for res in ctx.recipients:
            address = res.recipient.address
            if not rule.applies_to(address):
                continue
            if rule.action == "block" and "blocked" not in res.flags:
                res.flags.append("blocked")
            ctx.add("address_rule", rule.action, address, message=rule.message or None)


def suppression(ctx: _Context) -> None:
    """送信除外リスト: opted-out recipients are flagged ``suppressed``; removed or blocked by policy. A list
    member cannot be removed (the mail server expands the list): under ``remove`` the user is asked
    explicitly (``reconfirm``: even where ``confirm.when = "never"``), never told it was removed."""
    sup = ctx.policy.suppression
    if not sup.addresses and not sup.domains:
        return
    for res in ctx.recipients:
        address = res.recipient.address
        if not sup.matches(address):
            continue
        res.flags.append("suppressed")
        if sup.action == "block":
            ctx.add("suppressed", "block", address, key="suppressed_block")
        elif res.list_address:
            ctx.add("suppressed", "reconfirm", address, key="suppressed_list_member", list=res.list_address)
        else:
            ctx.add("suppressed", "confirm", address)


def sender_account(ctx: _Context) -> None:
    """From is neither in the internal domains nor one of the configured accounts."""
    policy = ctx.policy
    sender = ctx.msg.sender
    if not sender or (not policy.internal_domains and not ctx.accounts):
        return  # nothing configured to compare with
    domain = sender.rpartition("@")[2]
    if any(detect.in_domain(domain, d) for d in policy.internal_domains) or sender in ctx.accounts:
        return
    ctx.add("sender_account", policy.sender_account, sender)


def reply_new_domain(ctx: _Context) -> None:
    """A reply to mail SendGuard released adds an external domain that was not in that thread."""
    thread = ctx.history.thread_domains
    if thread is None:
        return
    seen: set[str] = set()
    for res in ctx.recipients:
        domain = res.recipient.domain
        if not res.external or "trusted" in res.flags or res.list_address or domain in seen:
            continue
        if any(detect.in_domain(domain, d) for d in thread):
            continue
        seen.add(domain)
        ctx.add("reply_new_domain", ctx.policy.reply_new_domain, domain)


def bulk_unsubscribe(ctx: _Context) -> None:
    """Bulk mail (many external recipients or Precedence: bulk) with no opt-out (特定電子メール法). List
    members count: the law is about who receives it. A list whose members are listed counts as them."""
    external = sum(1 for r in ctx.recipients
                   if r.external and "auto_added" not in r.flags and not (r.is_list and r.list_size))
    bulk = external >= ctx.policy.bulk_min_recipients or ctx.msg.precedence in _BULK_PRECEDENCE
    if not bulk or ctx.msg.list_unsubscribe or _OPT_OUT.search(ctx.msg.body_text):
        return
    ctx.add("bulk_unsubscribe", ctx.policy.bulk_unsubscribe, str(external))


