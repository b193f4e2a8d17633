"""``sendguard`` command line (click). Every listing has ``--json``.

User errors are one line on stderr (``click.ClickException``), never a traceback. Commands that
need the web or desktop parts (``serve``, ``demo``, ``server``, ``addin``) are contributed by those
packages through the ``sendguard.commands`` entry point group, so the core imports no UI code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import OWN_PACKAGES, __version__, paths
from .cli_help import Command, Group, UsageError, configured_gettext
from .errors import SendGuardError
from .i18n import _, localize, translator
from .items import Item
from .sources import source_label
from .states import STATES


class LazyModule:
    """A module imported when one of its attributes is first used."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(import_module(self._name), attr)


if TYPE_CHECKING:
    from . import accounts as account_setup
    from . import audit, checks, directory, secrets
    from . import config as configmod
    from . import message as msgmod
    from . import policy as policymod
    from .outbox import Outbox
    from .store import Store
    from .store_read import ReadStore
else:  # each loaded by the first command that uses it: `queue list` and `check` start fast
    account_setup, audit, checks, directory, secrets, configmod, msgmod, policymod = (
        LazyModule(f"sendguard.{name}")
        for name in ("accounts", "audit", "checks", "directory", "secrets", "config", "message", "policy"))

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn SendGuard's own errors into one clean line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SendGuardError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _error_language() -> Callable[[str], str]:
    """The configured language for an error; the system's when the config itself is what is wrong."""
    return configured_gettext()


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


class Context:
    """Lazily opened pieces shared by the subcommands."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._outbox: Outbox | None = None

    @property
    def config(self) -> configmod.Config:
        return configmod.load()

    def gettext(self) -> Callable[[str], str]:
        try:
            lang = self.config.language
        except SendGuardError:
            lang = None
        return translator(lang)

    def policy(self, path: Path | None = None) -> policymod.Policy:
        return policymod.load(path or paths.policy_file(), paths.admin_policy_file())

    @property
    def store(self) -> Store:
        if self._store is None:
            from .store import Store

            self._store = Store(paths.private_file(paths.database_file()))
        return self._store

    def read_store(self) -> ReadStore | None:
        """The store opened for reading only (standard library; no keyring, no migration), or None when
        it is missing or of another schema version: then use ``outbox``/``store``, which set it up."""
        from .store_read import open_store

        return open_store(paths.database_file())

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            from .service import Helper

            helper = Helper(database_url=None)
            self._store = helper.store
            self._outbox = helper.outbox
        return self._outbox


pass_ctx = click.make_pass_decorator(Context, ensure=True)


class PluginGroup(Group):
    """Adds the commands other SendGuard packages register under ``sendguard.commands``."""

    group_class = Group  # its subgroups list their own commands only

    # core command groups that live with their account set-up, loaded only when used
    LAZY = {"gmail": "sendguard.accounts.gmail:gmail_group"}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``sendguard``'s own options (``sendguard --bogus``): their usage errors in the language too."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _in_language(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        """Every command's one-line error in the configured language (``error_texts`` has the templates)."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _in_language(exc) from None
        except click.ClickException as exc:
            # click declares the text Final; rewriting it keeps the exception's class and exit status
            exc.message = localize(exc.message, _error_language())  # type: ignore[misc]
            raise

    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points  # scanning installed packages: only for a plug-in command

        found: dict[str, Any] = {ep.name: ep for ep in entry_points(group="sendguard.commands")}
        for name, target in self.LAZY.items():
            found.setdefault(name, _LazyTarget(target))
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = self._plugins().get(name)
        if ep is None:
            return None
        try:
            return ep.load()  # type: ignore[no-any-return]
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] in OWN_PACKAGES:
                raise  # SendGuard's own code is never optional: a broken import is a bug to see
            reason = str(exc)  # a third-party package of an extra is not installed

            @click.command(name, cls=Command, help=f"(not available: {reason})",
                           context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
            def unavailable() -> None:
                raise click.ClickException(f"`sendguard {name}` is not available: {reason}. "
                                           "Install SendGuard with its extras (make run) first.")

            return unavailable


def _in_language(exc: click.UsageError) -> click.UsageError:
    """A usage error said whole in the configured language (click builds some texts itself: a missing or bad
    parameter), with its usage and "Try ... --help" lines; the same exit status (2)."""
    full = exc.format_message()
    said = localize(full, _error_language())
    if said != full or type(exc).show is click.UsageError.show:
        return UsageError(said, ctx=exc.ctx)
    return exc  # one that shows itself differently (the help for no arguments)


class _LazyTarget:
    def __init__(self, target: str):
        self.target = target

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(import_module(module), attr)


@click.group(cls=PluginGroup)
@click.version_option(__version__, prog_name="sendguard")
def main() -> None:
    """SendGuard: hold outgoing mail, check it, confirm and approve it before it leaves."""


# ---------------------------------------------------------------------- check
def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def render_check(result: checks.StoredCheck, _: Callable[[str], str], item: Item | None = None) -> str:
    """The human-readable check report, grouped External (by domain) / Internal; with ``item``, what was
    removed from it at Send is marked so."""
    lines = [_("From") + ": " + str(result.sender), _("Subject") + ": " + str(result.subject), ""]
    external = [r for r in result.recipients if r.external]
    internal = [r for r in result.recipients if not r.external]
    gone, gone_attachments = item.removed() if item is not None else (set(), set())

    def row(r: checks.StoredRecipient) -> str:
        name = f"{r.display_name} <{r.address}>" if r.display_name else r.address
        flags = [f for f in r.flags if f != "external"] + (["removed"] if Item.is_removed(r, gone) else [])
        return f"    [{r.field.title()}] {name}" + (f"  ({', '.join(_(f) for f in flags)})" if flags else "")

    lines.append(_("External recipients ({count}):").format(count=len(external)))
    by_domain: dict[str, list[checks.StoredRecipient]] = {}
    for r in external:
        by_domain.setdefault(r.domain, []).append(r)
    for domain, rows in by_domain.items():
        lines.append(f"  {domain}")
        lines.extend(row(r) for r in rows)
    lines.append(_("Internal recipients ({count}):").format(count=len(internal)))
    lines.extend(row(r) for r in internal)
    lines.append(_("Attachments ({count}):").format(count=len(result.attachments)))
    for a in result.attachments:
        marks = [*a.flags, *(["removed"] if a.id in gone_attachments else [])]
        flags = f"  ({', '.join(_(f) for f in marks)})" if marks else ""
        lines.append(f"    {a.filename}  {_human_size(a.size)}  {a.content_type}{flags}")
    verdict = result.verdict
    lines += ["", _("Verdict: {action}").format(action=_(verdict.action).upper())]
    if verdict.approvers:
        lines.append(_("Approvers") + ": " + ", ".join(verdict.approvers))
    for reason in verdict.reasons:
        lines.append("  - [" + _(reason.action) + "] " + reason.message)
    if result.force_bcc:
        lines.append("  * " + _("Convert external To/Cc to Bcc"))
    for problem in result.problems:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)


@main.command()
@click.argument("file", type=click.Path(allow_dash=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the check result as JSON (the shape the API and `queue show --json` use).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Use this policy file instead of $SENDGUARD_HOME/policy.toml.")
@pass_ctx
@user_errors
def check(ctx: Context, file: str, as_json: bool, policy_path: Path | None) -> None:
    """Check a message (a .eml file, or - for standard input) against the policy."""
    if file == "-":
        raw = sys.stdin.buffer.read()
    else:
        if Path(file).is_dir():  # said in one line, as every other unusable FILE (click's own says it in four)
            raise click.ClickException(f"cannot read {file}: it is a folder; give a message file (.eml) or -")
        try:
            raw = Path(file).read_bytes()
        except OSError as exc:
            raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    if policy_path is not None and not policy_path.exists():
        raise click.ClickException(f"{policy_path}: no such policy file")
    pol = ctx.policy(policy_path)
    parsed = msgmod.parse(raw)
    gettext = ctx.gettext()
    try:
        accounts = [a.address for a in ctx.config.accounts if a.address]
        lists = directory.for_accounts(ctx.config.accounts, paths.home())  # as the helper asks its directory
    except SendGuardError:
        accounts, lists = [], None
    known: set[str] = set()
    history = checks.History()
    try:
        if paths.database_file().exists():  # the sent-to history and released threads count too
            store = ctx.read_store()
            if store is None:  # an older store: opened (and migrated) the full way
                outbox = ctx.outbox
                known, history = outbox.known_domains(r.domain for r in parsed.recipients), outbox.history(parsed)
            else:
                with contextlib.closing(store):
                    known = store.known_domains(r.domain for r in parsed.recipients)
                    history = checks.History(store.sent_domains(), store.thread_domains(
                        [m for m in parsed.in_reply_to if m != parsed.message_id]))
        # what the directory says about lists, as the helper's outbox asks it (Outbox.directory_lists)
        answers = directory.answers_for(lists, [r.address for r in parsed.recipients], pol,
                                        marked=parsed.marked_lists)
        try:
            result = checks.evaluate(parsed, pol, known, gettext, history=history, accounts=accounts,
                                     lists=answers).stored()
        except Exception as exc:  # a rule failed (a bug): said in one line, never a verdict it did not reach
            raise click.ClickException(
                f"cannot check {file}: a rule failed on it ({type(exc).__name__}: {exc}); this is a bug in "
                "SendGuard, please report it with the message if you can. The helper holds such a message for "
                "you to check yourself") from None
    finally:
        if lists is not None:
            lists.close()
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(render_check(result, gettext))


# ---------------------------------------------------------------------- queue
def item_details(item: Item, store: Store) -> dict[str, Any]:
    from .runtime import confirm_url

    data = item.summary()
    data["check"] = item.check.to_json() if item.check else None
    data["decision"] = item.decision
    data["approvers"] = item.approvers
    data["approval"] = item.approval
    data["reasons"] = [r.to_json() for r in item.verdict.reasons]
    data["audit"] = [{k: r[k] for k in ("seq", "ts", "event", "actor", "data")} for r in audit.records(store, item.id)]
    data["confirm_url"] = confirm_url(item.id) if item.state == "awaiting_confirmation" else None
    return data


@main.group()
def queue() -> None:
    """Held messages: list, show, confirm, cancel."""


@queue.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only these states (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="Include sent and cancelled messages.")
@pass_ctx
@user_errors
def queue_list(ctx: Context, as_json: bool, states: tuple[str, ...], show_all: bool) -> None:
    """List messages in the outbox (held ones by default)."""
    from .states import HELD_STATES

    wanted = states or (None if show_all else HELD_STATES)
    configmod.load()  # a config.toml in error is refused here as in every command
    store = ctx.read_store()
    if store is None:
        items = ctx.outbox.list(wanted)
    else:
        with contextlib.closing(store):
            items = store.items(wanted)
    if as_json:
        echo_json([i.summary() for i in items])
        return
    gettext = ctx.gettext()
    if not items:
        click.echo(gettext("No held messages."))
        return
    for i in items:
        recipients = [r for r in i.summary()["recipients"] if not r.get("removed")]  # who it goes to
        rcpts = ", ".join(r["address"] for r in recipients[:3])
        more = len(recipients) - 3
        click.echo(f"{i.id}  {i.state:<22} {i.sender}  {i.subject!r}  -> {rcpts}{f' (+{more})' if more > 0 else ''}"
                   f"  [{source_label(i.source, gettext)}]")
        if i.waiting_for:
            click.echo(f"    {i.waiting_for}")


@queue.command("show")
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def queue_show(ctx: Context, item_id: str, as_json: bool) -> None:
    """Show one message: the check result, the decision and its audit trail."""
    item = ctx.outbox.get(item_id)
    data = item_details(item, ctx.store)
    if as_json:
        echo_json(data)
        return
    gettext = ctx.gettext()
    click.echo(f"{item.id}  {gettext(item.state)}")
    click.echo(gettext("Came from") + ": " + source_label(item.source, gettext))
    if item.check and item.check.readable:
        click.echo(render_check(item.check, gettext, item))
    if item.last_error:
        click.echo(f"! {item.last_error}")
    if data["confirm_url"]:
        click.echo(gettext("Confirm in a browser") + ": " + data["confirm_url"])


@queue.command("confirm")
@click.argument("item_id")
@click.option("--remove", "remove", multiple=True, metavar="ADDR", help="Drop this recipient (repeatable).")
@click.option("--remove-attachment", "remove_attachment", multiple=True, metavar="NAME",
              help="Drop this attachment, by file name or id (repeatable).")
@click.option("--bcc", is_flag=True, help="Move external To/Cc recipients into Bcc.")
@click.option("--reconfirmed", is_flag=True,
              help="Answer the second confirmation a 'reconfirm' reason asks for (read the reasons first).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def queue_confirm(ctx: Context, item_id: str, remove: tuple[str, ...], remove_attachment: tuple[str, ...],
                  bcc: bool, as_json: bool, reconfirmed: bool = False) -> None:
    """Confirm a held message (the same as Send in the window)."""
    item = ctx.outbox.confirm(item_id, remove, remove_attachment, bcc, actor=f"cli:{_whoami()}",
                              reconfirmed=reconfirmed)
    if as_json:
        echo_json(item.summary())
    elif item.state == "awaiting_approval":
        click.echo(ctx.gettext()(_("{id}: held for approval by {approvers}")).format(
            id=item.id, approvers=", ".join(item.approvers) or "?"))
    else:
        click.echo(f"{item.id}: {ctx.gettext()(item.state)}")


@queue.command("cancel")
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def queue_cancel(ctx: Context, item_id: str, as_json: bool) -> None:
    """Cancel a held message; it is kept (as cancelled) and can be exported."""
    item = ctx.outbox.cancel(item_id, actor=f"cli:{_whoami()}")
    echo_json(item.summary()) if as_json else click.echo(f"{item.id}: {ctx.gettext()(item.state)}")
    if not as_json and item.last_error and "could not tell" in item.last_error:
        click.echo(f"! {item.last_error}", err=True)


@queue.command("resolve")
@click.argument("item_id")
@click.option("--sent", "sent", is_flag=True, help="It did go out: mark it sent.")
@click.option("--resend", "resend", is_flag=True, help="It did not go out: send it again.")
@pass_ctx
@user_errors
def queue_resolve(ctx: Context, item_id: str, sent: bool, resend: bool) -> None:
    """Settle an interrupted send: one that needs attention, or one SendGuard is still asking about."""
    if sent == resend:
        raise click.UsageError("say either --sent (it went out) or --resend (send it again), not both"
                               if sent else "say --sent (it went out) or --resend (send it again)")
    went_out = sent
    item = ctx.outbox.resolve(item_id, went_out, actor=f"cli:{_whoami()}")
    click.echo(f"{item.id}: {ctx.gettext()(item.state)}")


@queue.command("export")
@click.argument("item_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--final", is_flag=True, help="The message as released (after removals), not as submitted.")
@pass_ctx
@user_errors
def queue_export(ctx: Context, item_id: str, out: Path | None, final: bool) -> None:
    """Export a message as .eml (e.g. a cancelled one, to edit and send again)."""
    item = ctx.outbox.get(item_id, with_bodies=True)
    body = (item.final_raw if final else item.raw) or item.raw
    if body is None:
        raise click.ClickException(f"message {item_id} was purged after the retention period; only its audit "
                                   "records remain")
    if out:
        if not out.parent.is_dir():
            raise click.ClickException(f"cannot write {out}: the folder {out.parent} does not exist")
        try:
            out.write_bytes(body)
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
        click.echo(ctx.gettext()(_("{id}: written to {path}")).format(id=item_id, path=out), err=True)
    else:
        sys.stdout.buffer.write(body)


# ---------------------------------------------------------------------- approvals
@main.group("approvals")
def approvals_group() -> None:
    """Supervisor approval (上長承認): list, approve, reject held messages."""


def _approvals(ctx: Context) -> Any:
    from .approvals import Approvals

    outbox = ctx.outbox
    return Approvals(outbox, outbox.policy)


@approvals_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--as", "approver", default=None, metavar="ADDR", help="Only messages this approver may decide.")
@pass_ctx
@user_errors
def approvals_list(ctx: Context, as_json: bool, approver: str | None) -> None:
    """Messages waiting for approval."""
    items = _approvals(ctx).pending_for(approver)
    rows = []
    for item in items:
        data = item.summary()
        data["approvers"] = item.approvers
        data["reasons"] = [r.to_json() for r in item.verdict.reasons_at("approve", "block")]
        data["expires_at"] = _iso_or_none(item.expires_at)
        rows.append(data)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(ctx.gettext()("Nothing waits for approval."))
    for r in rows:
        reasons = "; ".join(x["message"] for x in r["reasons"])
        click.echo(f"{r['id']}  {r['from']}  {r['subject']!r}  [{', '.join(r['approvers'])}]  {reasons}")


def _iso_or_none(ts: float | None) -> str | None:
    from .store import now_iso

    return now_iso(ts) if ts else None


@approvals_group.command("approve")
@click.argument("item_id")
@click.option("--as", "actor", required=True, metavar="ADDR", help="Your address (must be a named approver).")
@click.option("--comment", default="", help="A note kept in the audit log.")
@pass_ctx
@user_errors
def approvals_approve(ctx: Context, item_id: str, actor: str, comment: str) -> None:
    """Approve a held message; the sender's helper then releases it."""
    item = _approvals(ctx).approve(item_id, actor, comment, via="cli")
    click.echo(ctx.gettext()(_("{id}: {state} by {actor}")).format(id=item.id, state=ctx.gettext()(item.state),
                                                                  actor=actor))


@approvals_group.command("reject")
@click.argument("item_id")
@click.option("--as", "actor", required=True, metavar="ADDR", help="Your address (must be a named approver).")
@click.option("--reason", required=True, help="Why: shown to the sender.")
@pass_ctx
@user_errors
def approvals_reject(ctx: Context, item_id: str, actor: str, reason: str) -> None:
    """Reject a held message with a reason for the sender."""
    item = _approvals(ctx).reject(item_id, actor, reason, via="cli")
    click.echo(ctx.gettext()(_("{id}: {state} by {actor}")).format(id=item.id, state=ctx.gettext()(item.state),
                                                                  actor=actor))


# ---------------------------------------------------------------------- accounts
@main.group()
def accounts() -> None:
    """Mailbox accounts that release (and hold) your mail."""


class AccountKinds(Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(account_setup.ADD_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in account_setup.ADD_COMMANDS:
            return None
        return _guarded_add(account_setup.add_command(name))


def _guarded_add(command: click.Command) -> click.Command:
    """Every ``accounts add KIND``: required values must not be blank, and an existing account of the
    same name is replaced only when asked (``--replace``), before anything (a password, a sign-in) is stored."""
    if any(p.name == "replace" for p in command.params):
        return command
    command.params.append(click.Option(["--replace"], is_flag=True,
                                       help="Replace the account of the same name, if there is one."))
    callback = command.callback
    assert callback is not None

    @functools.wraps(callback)
    def guarded(**kwargs: Any) -> Any:
        replace = kwargs.pop("replace", False)
        for param in command.params:
            value = kwargs.get(param.name or "")
            if isinstance(param, click.Option) and isinstance(value, str) and not value.strip() and (
                    param.required or param.name == "name"):
                raise click.ClickException(f"{param.opts[-1]} must not be empty")
        name = kwargs.get("name")
        try:
            existing = configmod.load().account(name) if name else None
        except SendGuardError as exc:
            raise click.ClickException(str(exc)) from None
        if existing is not None and not replace:
            raise click.ClickException(
                f"an account named {name!r} already exists ({existing.kind}); choose another --name, "
                f"or add --replace to replace it (`sendguard accounts list` shows them)")
        result = callback(**kwargs)
        _tell_running_helper()
        return result

    command.callback = guarded
    return command


def _tell_running_helper() -> None:
    """The running helper reads its accounts at start: say so, or the user believes the change is in force
    (and `sendguard check`, which reads them now, disagrees with what the helper does)."""
    from .instance import running

    pid = running(paths.home())
    if pid is not None:
        try:
            t = translator(configmod.load().language)
        except SendGuardError:
            t = translator(None)
        click.echo(t(_("The running SendGuard helper (process {pid}) uses this change from its next start: "
                        "stop it and start `sendguard serve` again.")).format(pid=pid or "?"))


@accounts.group("add", cls=AccountKinds)
def accounts_add() -> None:
    """Add an account: exchange, graph, gmail or smtp."""


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def accounts_list(ctx: Context, as_json: bool) -> None:
    """List configured accounts (secrets are never shown)."""
    rows = [{"name": a.name, "kind": a.kind, "address": a.address, **a.settings} for a in ctx.config.accounts]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(ctx.gettext()("No accounts: released mail goes to the local Maildir") + f" {paths.sent_dir()}")
    for r in rows:
        click.echo(f"{r['name']}  {r['kind']}  {r['address'] or '*'}")


@accounts.command("remove")
@click.argument("name")
@user_errors
def accounts_remove(name: str) -> None:
    """Remove an account and its stored secrets."""
    cfg = configmod.load()
    account = cfg.account(name)
    if account is None or not configmod.remove_account(name):
        raise click.ClickException(f"no account named {name!r} (see `sendguard accounts list`)")
    for what in ("password", "token", "refresh_token", "token_cache", "client_secret"):
        secrets.delete(account.secret_key(what))
    click.echo(f"removed {name}")
    _tell_running_helper()


# ---------------------------------------------------------------------- audit
@main.group("audit")
def audit_group() -> None:
    """The hash-chained audit log."""


@audit_group.command("verify")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def audit_verify(ctx: Context, as_json: bool) -> None:
    """Check the chain (and the last signed checkpoint); exits 1 and names each bad record when the log
    was tampered with or cut short."""
    path = paths.home() / audit.CHECKPOINT_FILE
    kept = audit.load_checkpoint(ctx.store, path)
    remote = _server_checkpoint(ctx.store)
    problems = audit.verify(ctx.store, audit.latest(kept, remote))
    altered = audit.checkpoint_problem(ctx.store, path)
    if altered:
        problems.append(altered)
    count = audit.count(ctx.store)
    if as_json:
        echo_json({"ok": not problems, "records": count,
                   "problems": [{"seq": p.seq, "message": p.message} for p in problems]})
    elif not problems:
        click.echo(ctx.gettext()(_("audit log intact: {count} records")).format(count=count))
    else:
        for p in problems:
            click.echo(ctx.gettext()(_("record {seq}: {problem}")).format(seq=p.seq, problem=p.message), err=True)
    if problems:
        sys.exit(1)


def _server_checkpoint(store: Any) -> dict[str, Any] | None:
    """The latest checkpoint of this log the central server keeps (None without a server)."""
    from . import central

    client = central.client_from_config()
    if client is None:
        return None
    try:
        found = client.get_checkpoint(store.setting("audit_db_id", str))
    except SendGuardError as exc:
        click.echo(f"note: cannot ask the central server for this log's checkpoint ({exc})", err=True)
        return None
    if found is not None and not audit.valid_checkpoint(store, found):
        click.echo("note: the central server's checkpoint does not match this log's key", err=True)
        return None
    return found


@audit_group.command("export")
@click.option("--json", "as_json", is_flag=True, help="JSON array (the default is JSON lines).")
@click.option("--item", "item_id", default=None, help="Only the records of this message.")
@pass_ctx
@user_errors
def audit_export(ctx: Context, as_json: bool, item_id: str | None) -> None:
    """Export audit records with their hashes, for archiving or a SIEM."""
    rows = audit.records(ctx.store, item_id)
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))


# ---------------------------------------------------------------------- token, doctor
@main.command()
def token() -> None:
    """Print the bearer token for the local API."""
    from .links import api_token

    click.echo(api_token())


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--set-aside-store", "set_aside", is_flag=True,
              help="Only when the store is damaged: rename it (kept beside, never deleted) so SendGuard starts "
                   "with an empty one.")
@pass_ctx
def doctor(ctx: Context, as_json: bool, set_aside: bool) -> None:
    """Diagnose this SendGuard (read-only): files, policies, helper, ports, database, secrets, display.

    Exits 1 when something is wrong; each problem comes with what to do."""
    from .doctor import diagnose

    if set_aside:
        _set_aside_store()

    try:  # read-only: paths.home() would create the home
        t = translator(configmod.load(paths.home_path() / "config.toml").language)
    except SendGuardError:
        t = translator(None)
    findings = diagnose(t)
    if as_json:
        echo_json([f.to_json() for f in findings])
    else:
        marks = {"ok": "[ok]", "warn": "[--]", "fail": "[!!]"}
        for f in findings:
            click.echo(f"{marks[f.status]} {f.check}: {f.detail}")
            if f.fix:
                click.echo(f"       -> {f.fix}")
        problems = sum(1 for f in findings if not f.ok)
        click.echo(t(_("{count} problem(s) found.")).format(count=problems) if problems else t(_("No problems found.")))
    if any(not f.ok for f in findings):
        sys.exit(1)


def _set_aside_store() -> None:
    """Move a damaged store (and its -wal/-shm) aside, named with the time; refuse on a healthy one."""
    import time as _time

    from .errors import StoreDamaged
    from .store import Store

    db = paths.database_file()
    try:
        Store(db).close()
    except StoreDamaged:
        pass
    else:
        raise click.ClickException(f"{db} passes SQLite's integrity check: nothing to set aside")
    stamp = _time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{db}{suffix}")
        if part.exists():
            part.rename(part.with_name(f"{part.name}.damaged-{stamp}"))
    click.echo(f"set aside: {db}.damaged-{stamp} (kept; held messages in it may be recovered with the sqlite3 "
               f"tool's .recover). SendGuard starts with an empty store; the audit chain starts anew.")


# ---------------------------------------------------------------------- policy bundles
@main.group("policy")
def policy_group() -> None:
    """Export or import the policy with its contacts, lists and opt-out files."""


@policy_group.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Export this policy file instead of $SENDGUARD_HOME/policy.toml.")
@user_errors
def policy_export(out: Path, policy_path: Path | None) -> None:
    """Write the policy and the files it names into one zip (OUT)."""
    from . import policy_bundle

    source = policy_path or paths.policy_file()
    if not source.exists():
        raise click.ClickException(f"{source}: no such policy file")
    names = policy_bundle.export(source, out)
    click.echo(f"{out}: {', '.join(names)}")


@policy_group.command("import")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--from", "source_format", type=click.Choice(["sendguard", "flexconfirmmail", "outlookokan"]),
              default="sendguard", help="sendguard: a zip from `sendguard policy export`; flexconfirmmail: its "
              "configuration folder; outlookokan: its settings folder (%APPDATA%\\Noraneko\\OutlookOkan).")
@user_errors
def policy_import(bundle: Path, source_format: str) -> None:
    """Validate a bundle from `sendguard policy export` (or another tool's settings), then use it."""
    from . import policy_bundle

    if source_format == "flexconfirmmail":
        loaded, notes = policy_bundle.import_flexconfirmmail(bundle, paths.home())
        for note in notes:
            click.echo(f"note: {note}")
        click.echo(f"{paths.policy_file()}: imported from FlexConfirmMail ({len(loaded.internal_domains)} internal "
                   f"domains, {len(loaded.address_rules)} address rules, {len(loaded.keywords)} keywords)")
        return
    if source_format == "outlookokan":
        _import_outlookokan(bundle)
        return
    if bundle.is_dir():
        raise click.ClickException(f"{bundle} is a folder: give the zip from `sendguard policy export`")
    loaded = policy_bundle.import_bundle(bundle, paths.home())
    click.echo(f"{paths.policy_file()}: imported ({len(loaded.contacts)} contacts, {len(loaded.lists)} lists, "
               f"{len(loaded.suppression.addresses) + len(loaded.suppression.domains)} opt-out entries)")


@policy_group.command("import-outlookokan")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@user_errors
def policy_import_outlookokan(folder: Path) -> None:
    """Same as `policy import --from outlookokan FOLDER`: OutlookOkan's CSV settings into the policy."""
    _import_outlookokan(folder)


def _import_outlookokan(folder: Path) -> None:
    from . import outlookokan

    loaded, report = outlookokan.import_folder(folder, paths.home())
    for line in report.mapped:
        click.echo(f"mapped: {line}")
    for line in report.not_mapped:
        click.echo(f"not mapped: {line}")
    click.echo(f"{paths.policy_file()}: imported from OutlookOkan ({len(loaded.internal_domains)} internal domains, "
               f"{len(loaded.address_rules)} address rules, {len(loaded.keywords)} keywords, {len(loaded.auto_cc)} "
               f"automatic Cc/Bcc rules, {len(loaded.contacts)} contacts, "
               f"{len(loaded.suppression.addresses) + len(loaded.suppression.domains)} opt-out entries)")


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


if __name__ == "__main__":  # pragma: no cover
    main()
