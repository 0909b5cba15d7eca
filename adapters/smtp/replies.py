"""SMTP reply codes and aiosmtplib failures mapped onto the hub's one error taxonomy.

SMTP says itself what is worth retrying: 4xx is "try again later" (transient), 5xx is "not as it is"
(permanent). 421 (service closing) and 452 (insufficient storage, too many recipients) are the server
asking us to slow down, so they are Throttled; an authentication refusal gets its own clear text
because it is a configuration problem, not a problem with the message.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from adapters.http import snippet
from engine.errors import (HubError, TargetRejected, TargetServerError, TargetTimeout, TargetUnavailable, Throttled,
                           ValidationFailed)

THROTTLE_CODES = frozenset({421, 452})


def reply_error(where: str, code: int, text: str) -> HubError:
    """A negative SMTP reply as a taxonomy error: 4xx transient, 5xx permanent (with the server's text)."""
    message = f"{where}: {code} {snippet(text)}"
    if 400 <= code < 500:
        return Throttled(message) if code in THROTTLE_CODES else TargetServerError(message)
    return TargetRejected(message, status=code)


def refused_error(where: str, refused: list[aiosmtplib.SMTPRecipientRefused]) -> HubError:
    """Every recipient was refused: permanent when any refusal is 5xx, else transient (all 4xx)."""
    detail = "; ".join(f"{r.recipient}: {r.code} {snippet(r.message, 120)}" for r in refused)
    message = f"{where}: all recipients refused: {detail}"
    codes = [r.code for r in refused]
    if any(c >= 500 for c in codes):
        return TargetRejected(message, status=max(codes))
    return Throttled(message) if any(c in THROTTLE_CODES for c in codes) else TargetServerError(message)


def send_error(where: str, exc: BaseException, username: str | None, timeout: float) -> HubError:
    """Any failure of a send as a taxonomy error; `exc` is never a HubError already."""
    if isinstance(exc, TimeoutError):  # aiosmtplib's SMTPTimeoutError is one, so is asyncio.timeout's
        return TargetTimeout(f"{where}: no answer within {timeout:g}s")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        if 400 <= exc.code < 500:
            return TargetServerError(f"{where}: authentication temporarily failed for {username}: {exc.code} "
                                     f"{snippet(exc.message)}")
        return TargetRejected(f"{where}: authentication failed for {username}: {exc.code} {snippet(exc.message)}",
                              status=exc.code)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return refused_error(where, exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):  # MAIL, DATA, a greeting of 421/554 …
        return reply_error(where, exc.code, exc.message)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TargetUnavailable(f"{where}: TLS certificate not trusted ({exc.verify_message}); check ca_bundle")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):  # e.g. STARTTLS required but not offered
        return TargetRejected(f"{where}: {snippet(str(exc))} (check `security`)")
    if isinstance(exc, ConnectionError | OSError | aiosmtplib.SMTPException):
        return TargetUnavailable(f"{where}: {type(exc).__name__}: {snippet(str(exc) or 'connection lost')}")
    if isinstance(exc, ValueError | UnicodeError):  # an address aiosmtplib cannot put in MAIL/RCPT
        return ValidationFailed(f"{where}: {snippet(str(exc))}")
    raise exc
