"""Strings that reach gettext through a variable or an indirect call, marked here for ``pybabel extract``.

Never imported: the flag, action and state names that ``sendguard check``/``queue`` and the pages
translate at run time (``_(flag)``), and CLI lines written as ``ctx.gettext()("...")``.
"""

from sendguard.i18n import _

RECIPIENT_FLAGS = (_("external"), _("trusted"), _("new_domain"), _("lookalike"), _("display_name_mismatch"),
                   _("blocked"), _("idn"), _("auto_added"), _("list_member"), _("suppressed"))
ATTACHMENT_FLAGS = (_("external"), _("personal_data"), _("keyword"), _("executable"), _("archive"),
                    _("encrypted"), _("type_mismatch"), _("inline"))
ACTIONS = (_("allow"), _("confirm"), _("reconfirm"), _("approve"), _("block"), _("reject"))
STATES = (_("received"), _("awaiting_confirmation"), _("confirmed"), _("awaiting_approval"), _("approved"),
          _("rejected"), _("releasing"), _("sent"), _("cancelled"), _("expired"), _("failed"),
          _("needs_attention"))
CLI = (_("No held messages."), _("held for approval by"), _("Nothing waits for approval."),
       _("No accounts: released mail goes to the local Maildir"), _("Confirm in a browser"))
