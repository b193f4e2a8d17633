"""What a mailbox connector raises when it fails (see ``base``): the outbox decides from the class what
happens to the message (retry, wait for a sign-in, give up, ask the user)."""

from __future__ import annotations

from ..errors import SendGuardError


class MailboxError(SendGuardError):
    """A connector failed; ``user_message`` tells the user what to do."""

    retryable = False


class TransientError(MailboxError):
    """Server unreachable, throttled, 5xx: nothing was sent; try again later."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class AnswerLost(TransientError):
    """The send request may have reached the service but its answer was lost (the connection broke after
    the hand-over, a timeout, a gateway 5xx): the message may have gone out. The outbox records it as
    such (the ``failed`` audit record carries ``answer_lost``), and the next releases look for the message
    before they send anything (``ReleaseItem.answer_lost_ago``)."""


class AuthError(MailboxError):
    """Wrong password, expired or revoked token: the user must sign in again; mail stays held."""

    retryable = True


class PermanentError(MailboxError):
    """The server refused this message for good (too large, mailbox full, rejected recipient)."""


class OutcomeUnknown(MailboxError):
    """The connection broke after the server may have taken the message, and the server cannot be asked
    (an SMTP relay after DATA): sending again could send twice, so the user decides."""
