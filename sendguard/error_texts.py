"""The errors users meet most, as templates: ``i18n.localize`` says them in the user's language.

SendGuard's errors are built in English where they happen, with the values that make them specific
(an id, a state, a file). Each template below is the English text with those values as
``{placeholders}``: ``localize`` recognises an error by its template, translates the template through
the catalogs and puts the same values back (a value that is itself a known word, such as a state or
an action, is translated too). An error without a template here stays English; ``tests/test_i18n.py``
checks that each template still matches what the code says.
"""

from __future__ import annotations

from .i18n import _

TEMPLATES: tuple[str, ...] = (
    # the outbox (queue confirm/cancel/resolve/export, the window, the page)
    _("no message {id} in the outbox (see `sendguard queue list`)"),
    _("message {id} is {state}: cannot {verb} it now"),
    _("message {id} has no attachment {name} (attachments: {names})"),
    _("message {id} has no recipient {address}"),
    _("{address} gets this message through the list {list}: remove {list} instead"),
    _("{address} was added by your organization's policy and cannot be removed"),
    _("message {id} cannot be sent: {address} is blocked by policy; remove it or cancel the message"),
    _("message {id} needs a second confirmation: {reason}. Confirm again with --reconfirmed (the window asks it "
      "after the checkboxes)"),
    _("message {id} is being sent right now: cannot {verb} it; see `sendguard queue show {id}` in a moment"),
    _("message {id} waits for approval"),
    _("message {id} was purged after the retention period; only its audit records remain"),
    # reading messages
    _("the message has no recipients: add To, Cc or Bcc addresses"),
    _("cannot read {file}: {error}"),
    _("{path}: no such policy file"),
    _("cannot write {path}: the folder {folder} does not exist"),
    _("cannot write {path}: {error}"),
    # approvals and links
    _("message {id} was already {decision} by {actor} at {at}"),
    _("message {id} expired without a decision and was not sent"),
    _("message {id} is {state}, not awaiting approval"),
    _("{actor} is not an approver for message {id}; its approvers are: {approvers}"),
    _("nobody (set [approval] approvers in policy.toml)"),
    _("{actor} sent message {id}: approving your own message is not allowed here ([approval] allow_self_approval "
      "= false); another approver must decide"),
    _("approving your own message needs a comment saying why"),
    _("a rejection needs a reason the sender can act on"),
    _("this link has expired: ask for a new one"),
    _("this link is not valid (altered or incomplete): open the link from the original email or ask for a new one"),
    _("this link belongs to another message"),
    _("this link has already been used"),
    # accounts and the helper
    _("no account named {name} (see `sendguard accounts list`)"),
    _("{option} must not be empty"),
    _("an account named {name} already exists ({kind}); choose another --name, or add --replace to replace it "
      "(`sendguard accounts list` shows them)"),
    _("SendGuard is already running for {home} ({who} holds {lock}); stop that one first, or use another "
      "SENDGUARD_HOME"),
    _("process {pid}"),
    _("another process"),
    # the central server
    _("{url} refused this token. Use the helper token your administrator issued for you on the server (`sendguard "
      "server token issue --user ADDR`), not the local API token."),
    _("cannot reach {url} ({reason}): check the address and that the server is running; this helper's settings "
      "were not changed"),
    _("cannot use {url} with this token: {error}"),
)

# What a refused action was, put into "cannot {verb} it": said as a verb, so marked with "(verb)" for the
# translators (the same English word is also an action or a state name elsewhere in the catalogs).
VERBS: dict[str, str] = {
    "cancel": _("(verb) cancel"), "confirm": _("(verb) confirm"), "mark as sent": _("(verb) mark as sent"),
    "release": _("(verb) release"), "send again": _("(verb) send again"), "expire": _("(verb) expire"),
    "check": _("(verb) check"), "fail": _("(verb) fail"), "hold for approval": _("(verb) hold for approval"),
    "re-route": _("(verb) re-route"), "reconcile": _("(verb) reconcile"), "approve": _("(verb) approve"),
    "reject": _("(verb) reject"), "resolve": _("(verb) resolve"),
}
