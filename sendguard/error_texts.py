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
    # click's own usage errors (its texts are English; recognised here like SendGuard's)
    _("Invalid value for {param}: {value} is not one of {choices}."),
    _("Invalid value for {param}: {value} is not a valid integer."),
    _("No such command {name}."),
    _("No such option {name}."),
    _("No such option {name}. Did you mean {suggestion}?"),
    _("Missing argument {name}."),
    _("Missing option {name}."),
    _("Got unexpected extra argument ({args})"),
    _("Got unexpected extra arguments ({args})"),
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
    _("cannot check {file}: a rule failed on it ({kind}: {error}); this is a bug in SendGuard, please report it "
      "with the message if you can. The helper holds such a message for you to check yourself"),
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
    # policy.toml and config.toml: what a value or a table must be
    _("{value} is not one of {choices}"),
    _("expected true or false, got {value}"),
    _("expected a whole number, got {value}"),
    _("expected a number, got {value}"),
    _("{value} is out of range {low}-{high}"),
    _("write it as a {what} table"),
    _("unknown setting; a keyword has pattern, action and message"),
    _("unknown setting; {what} has {known}"),
    _("unknown section; known: {known}"),
    _("expected a table like [{section}]"),
    _("unknown setting; known in [{section}]: {known}"),
    _("unknown setting; known: {known}"),
    _("unknown setting"),
    _("expected a table"),
    _("an empty pattern matches nothing; remove it"),
    _("expected text, got {value}"),
    _("expected a non-empty regular expression"),
    _("bad regular expression {pattern}: {error}"),
    _("expected a list of strings, got {value}"),
    _("{value} is not a domain name (write it like example.co.jp)"),
    _("{value} is a public suffix, shared by every organization registered under it: write your own domain "
      "(like example.co.jp)"),
    _("{value} names no setting: write section.key as in the policy file (e.g. \"rules.personal_data\", "
      "\"organization.*\")"),
    _("list {value} is not an email address"),
    _("member {value} is not an email address"),
    _("{value} is not an email address or *@domain"),
    _("{value} is not an email address"),
    _("{path} is larger than {mb} MB"),
    _("write address rules as [[rules.address]] tables"),
    _("each [[rules.address]] needs match patterns"),
    _("write automatic Cc/Bcc as [[rules.auto_cc]] tables"),
    _("each [[rules.auto_cc]] needs cc or bcc addresses"),
    _("write keywords as [[rules.keywords]] tables"),
    _("each [[rules.keywords]] needs a non-empty pattern"),
    _("write routes as [[approval.route]] tables"),
    _("each [[approval.route]] has only senders and approvers"),
    _("each [[approval.route]] needs senders and approvers"),
    _("write deputies as [[approval.deputies]] tables"),
    _("each [[approval.deputies]] has approver, deputy, start and end"),
    _("start {start} is after end {end}"),
    _("this rule asks for approval, but [approval] approvers is empty: nobody could approve such "
      "a message. Add approvers = [\"boss@example.com\"] under [approval], or set the rule to "
      "confirm or block"),
    _("this rule asks for approval, but [approval] approvers is empty (the [[approval.route]] "
      "tables cover only some senders): nobody could approve such a message. Add approvers = "
      "[\"boss@example.com\"] under [approval], or set the rule to confirm or block"),
    _("not UTF-8 or Shift_JIS text; save the file as UTF-8 CSV"),
    _("bad CSV: {error}"),
    _("empty file; the first line must be the header {header}"),
    _("the file is empty; SendGuard keeps the policy it last read from it, as an editor may still be "
      "writing it. To run without these rules, write a comment line such as \"# no rules\" in the file, "
      "or restart SendGuard"),
    _("the file is gone; SendGuard keeps the policy it last read from it, as an editor may be saving it by "
      "replacing the file. To run on the built-in rules, restart SendGuard"),
    _("the first line must be the header {header}, found {found}"),
    _("expected {expected}, got {kind} {value}"),
    _("{value} is not a language SendGuard speaks; one of {languages} (or leave it out to follow "
      "the system)"),
    _("{value} is not a browser extension origin like chrome-extension://<32 letters a-p> (see "
      "chrome://extensions)"),
    _("{value} is not a loopback address: the helper listens on this machine only (127.0.0.1, ::1 "
      "or localhost); the networked component is the central server (`sendguard server`)"),
    _("port {port} out of range 0-65535"),
    _("write accounts as [[accounts]] tables"),
    _("each account needs name and kind"),
    _("unknown kind {kind}; one of {kinds}"),
    _("expand_lists is true or false, for exchange and graph accounts only (it lets SendGuard ask "
      "the server who is on a distribution list)"),
    _("unknown policy value {name}; known: {known}"),
    _("expected a REG_DWORD 0 or 1"),
    _("cannot read the managed preferences: {error}"),
    _("expected a dictionary of policy tables"),
    # policy bundles and imports
    _("unexpected file {name} in the bundle (only policy.toml and files/)"),
    _("the bundle is larger than 64 MB unpacked"),
    _("no policy.toml in the bundle (make one with `sendguard policy export`)"),
    _("not a policy bundle (zip): {error}"),
    _("not a folder (give the folder holding Common.txt and TrustedDomains.txt)"),
    _("no FlexConfirmMail files here ({names})"),
    _("expected Key = Value, got {line}"),
    _("expected yes/no, got {value}"),
    _("{path} is a folder: give the zip from `sendguard policy export`"),
    # the command line
    _("`sendguard {name}` is not available: {reason}. Install SendGuard with its extras (make "
      "run) first."),
    _("say either --sent (it went out) or --resend (send it again), not both"),
    _("say --sent (it went out) or --resend (send it again)"),
    _("say what happened: --sent (it went out) or --resend (send it again)"),
    _("{db} passes SQLite's integrity check: nothing to set aside"),
    _("--out {folder}: no such folder; create it first (nothing was written)"),
    _("cannot write to {folder}: {error}"),
    _("cannot write the machine CA in {folder}: {error} (run as root/Administrator)"),
    _("no certificates yet: run `sendguard addin certs install`"),
    # accounts add
    _("{value} is not an email address."),
    _("{value} is not an http(s) URL."),
    _("{value} must be an https URL."),
    _("--tenant {value} is not a tenant id or domain."),
    _("Give exactly one of --server URL or --autodiscover."),
    _("Use either --password-stdin or --oauth, not both."),
    _("Give --password-stdin (the password is read from standard input) or --oauth."),
    _("--oauth needs --client-id (the application registered for SendGuard)."),
    _("No password on standard input."),
    _("no password on standard input"),
    _("--username needs --password-stdin (the password goes to the keyring)"),
    _("OAuth client file {path}: no such file."),
    _("OAuth client file {path}: not readable JSON ({error})."),
    _("No OAuth client for Gmail: pass --client-secrets FILE (a Desktop-app client from Google "
      "Cloud console), or have your admin install gmail-client.json."),
    _("Consent was denied in the browser: SendGuard cannot send mail as {address} without it. Run "
      "the command again and choose Allow."),
    _("No answer from the browser within 5 minutes; run the command again."),
    _("Sign-in failed: {error}."),
    _("No Gmail account yet: run `sendguard accounts add gmail --address ADDR`."),
    _("Several Gmail accounts: choose one with --account NAME."),
    _("No Gmail account {name}; see `sendguard accounts list`."),
    _("Account not added."),
    _("Give either --client-secrets (browser sign-in) or --authorized-user, not both."),
    _("--drafts-label must not be empty."),
    _("Google returned no refresh token: remove SendGuard at "
      "https://myaccount.google.com/permissions and run the command again."),
    _("SendGuard was not allowed to send email as {address}: run the command again and tick "
      "\"Send email on your behalf\"."),
    # the central server's commands
    _("say which database: --database postgresql://user@host/db, or set $SENDGUARD_DATABASE_URL, "
      "or [server] database in config.toml"),
    _("--bind {value}: write it as HOST:PORT, e.g. 0.0.0.0:8800"),
    _("cannot prepare the database {database}: {error}"),
    _("with port 0, give --public-url or --ready-file"),
    _("cannot migrate {database}: {error}"),
    _("cannot open the database {database}: {error}"),
    _("{value} is not a message id (see `sendguard server releases list`)"),
    _("message {id} is sent by its sender's helper, not by this server"),
    # Gmail sign-in
    _("You signed in to Google as {signed_in}, not {address}: mail from {address} would be sent "
      "by {signed_in}'s Gmail ({address} must be a send-as address there). Sign in as {address}, "
      "or pass --yes to accept."),
    _("OAuth client file {path}: expected a Google 'installed' (Desktop app) client with "
      "client_id and client_secret."),
    _("Google refused the sign-in ({error}: {detail})."),
    _("--authorized-user {path}: not readable JSON ({error})."),
    _("--authorized-user {path}: missing {fields} (expected google-auth's authorized_user JSON)."),
    _("--authorized-user {path}: token_uri {uri} must be https."),
    _("--authorized-user {path}: Google refused its refresh token ({error}); issue a new one."),
    _("--authorized-user {path}: no such file."),
    _("Cannot reach Google's token endpoint {url}: {error}"),
    _("SendGuard was not allowed to manage your drafts (needed by --drafts): run the command "
      "again and tick it, or leave out --drafts."),
    _("--drafts cannot be combined with --reconcile headers: a token with gmail.metadata cannot "
      "read drafts (Gmail refuses RAW and FULL formats and searches). Use --reconcile search or "
      "--reconcile off."),
    _("Cannot store the Gmail token in {store}: {error}"),
    _("Account {name} has no OAuth client recorded: add it again with `sendguard accounts add "
      "gmail`."),
    # the central server's limits
    _("{name}={value}: write a whole number of waiting requests per server process, e.g. 12"),
    _("{name}={value}: write 0 or more waiting requests per server process"),
    # settings files of other add-ins
    _("not UTF-8, UTF-16 or Shift_JIS text"),
    _("not UTF-8 or Shift_JIS text (OutlookOkan saves UTF-8)"),
    _("not a folder (give OutlookOkan's settings folder, %APPDATA%\\Noraneko\\OutlookOkan)"),
    _("no OutlookOkan settings here (expected files such as Whitelist.csv, GeneralSetting.csv, "
      "AlertAddressList.csv)"),
    _("expected True or False, got {value}"),
    _("expected CC or BCC, got {value}"),
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
