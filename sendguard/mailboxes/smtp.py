"""Release through an SMTP relay (STARTTLS or implicit TLS, AUTH with the password from keyring).

An SMTP server cannot be asked afterwards whether it took a message, so ``find_sent`` answers None
and an interrupted release goes to ``needs_attention`` for the user to decide. The relay's 2xx reply to
the end of DATA is the hand-over: whatever QUIT gets after it (an error reply, a dropped connection, no
answer) is logged and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

from .. import secrets
from ..config import Account
from .base import AuthError, OutcomeUnknown, PermanentError, ReleaseItem, ReleaseReceipt, TransientError

log = logging.getLogger(__name__)

SECURITY = ("starttls", "ssl", "none")


@contextlib.contextmanager
def _session(client: smtplib.SMTP, where: str) -> Iterator[smtplib.SMTP]:
    """Like ``with client:``, but QUIT never raises: ``smtplib.SMTP.__exit__`` raises for a reply other
    than 221, which would turn a message the relay took (2xx after DATA) into a retry or a refusal, and
    would hide the real error of a failed send."""
    try:
        yield client
    finally:
        try:
            code, resp = client.docmd("QUIT")
            if code != 221:
                log.info("the SMTP relay %s answered QUIT with %s %s", where, code,
                         resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp)
        except (smtplib.SMTPException, OSError) as exc:
            log.info("the SMTP relay %s did not answer QUIT (%s)", where, exc or type(exc).__name__)
        finally:
            client.close()


class SmtpRelay:
    kind = "smtp"

    def __init__(self, name: str, host: str, port: int, security: str = "starttls", username: str | None = None,
                 password: str | None = None, timeout: float = 60.0, cafile: str | None = None,
                 password_key: str | None = None):
        self.name = name
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self.password = password
        # the keyring entry of the password: read again after the relay refused the login (the user may
        # have stored a new one meanwhile), so a running helper needs no restart
        self.password_key = password_key
        self._reread_password = False
        self.timeout = timeout
        self.cafile = cafile

    @classmethod
    def from_account(cls, account: Account, home: Path) -> SmtpRelay:
        s = account.settings
        username = s.get("username")
        key = account.secret_key("password") if username else None
        return cls(account.name, s.get("host", "localhost"), int(s.get("port", 587)), s.get("security", "starttls"),
                   username, secrets.get(key) if key else None, float(s.get("timeout", 60)), s.get("cafile"),
                   password_key=key)

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def release(self, item: ReleaseItem) -> ReleaseReceipt:
        where = f"{self.host}:{self.port}"
        in_data = False  # once DATA is under way the relay may have the message
        try:
            if self.security == "ssl":
                client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                        context=self._context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with _session(client, where):
                if self.security == "starttls":
                    client.starttls(context=self._context())
                if self.username:
                    if self.password_key and (self._reread_password or self.password is None):
                        self.password = secrets.get(self.password_key)
                        self._reread_password = False
                    if self.password is None:
                        raise AuthError(f"no password stored for {self.username} on {where}: run "
                                        f"`sendguard accounts add smtp --name {self.name} ...` again")
                    client.login(self.username, self.password)
                client.ehlo_or_helo_if_needed()
                code, resp = client.mail(item.envelope_from)
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, resp, item.envelope_from)
                refused = {}
                for rcpt in item.recipients:
                    code, resp = client.rcpt(rcpt)
                    if code not in (250, 251):
                        refused[rcpt] = (code, resp)
                if len(refused) == len(item.recipients):
                    client.rset()
                    raise smtplib.SMTPRecipientsRefused(refused)
                in_data = True
                code, resp = client.data(item.raw)
                if not 200 <= code < 300:  # the reply to the end of DATA: 2xx = the relay has it
                    raise smtplib.SMTPDataError(code, resp)
        except smtplib.SMTPAuthenticationError as exc:
            self._reread_password = True
            raise AuthError(f"{where} refused the login for {self.username}: check the password "
                            f"({exc.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError("the relay refused every recipient: "
                                 + ", ".join(f"{a} ({c})" for a, (c, _m) in exc.recipients.items())) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            if 400 <= exc.smtp_code < 500:
                raise TransientError(f"{where} answered {exc.smtp_code} {text}; will retry") from None
            raise PermanentError(f"{where} refused the message: {exc.smtp_code} {text}") from None
        except (TimeoutError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError, OSError) as exc:
            if in_data:
                raise OutcomeUnknown(
                    f"the connection to the SMTP relay {where} broke while the message was being handed over "
                    f"({exc or type(exc).__name__}); the relay may have sent it and cannot be asked. Check with "
                    f"a recipient or the relay's log, then `sendguard queue resolve {item.outbox_id} --sent` or "
                    "`--resend`") from None
            raise TransientError(f"cannot reach the SMTP relay {where}: {exc}; will retry") from None
        return ReleaseReceipt("smtp", {"relay": where, "refused": sorted(refused)})

    def close(self) -> None:
        """Nothing to let go of: every release is a connection of its own."""

    def find_sent(self, message_id: str) -> bool | None:
        return None
