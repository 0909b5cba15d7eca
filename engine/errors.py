"""The one error taxonomy of the hub.

Adapters translate protocol failures (HTTP status, SOAP fault, SMTP code, SFTP error) into these
classes; retry, breaker and dead-letter policies look only at them. Transient means "the same
message may succeed later"; permanent means "it cannot succeed as it is".

    HubError
    ├── TransientError             wait and try again (in-process retry, then delayed redelivery)
    │   ├── TargetTimeout
    │   ├── TargetUnavailable
    │   ├── TargetServerError
    │   ├── Throttled
    │   │   └── SlotsBusy
    │   ├── CircuitOpen
    │   ├── VerifyPending          a non-idempotent call's outcome: its `verify` could not decide yet
    │   ├── StreamFull             a stream at its limits with `discard: new` refused a message
    │   └── BrokerUnavailable      NATS restarting, electing a leader, unreachable: an outage
    │       └── PublishFailed      JetStream did not confirm a publish
    ├── PermanentError             the dead-letter queue
    │   ├── UnparseablePayload     the message's own payload
    │   ├── PayloadTooLarge        headers + body over the server's max_payload
    │   ├── UnparseableAnswer      the target's answer (not the message's fault, not retried blindly)
    │   ├── PublishRefused         JetStream refused to store a message (e.g. over the stream's max_msg_size)
    │   ├── ValidationFailed
    │   ├── TargetRejected
    │   ├── BusinessError
    │   ├── TransformFailed
    │   ├── MaxDeliveriesExceeded
    │   ├── RoutingError
    │   ├── DeadlineExceeded
    │   └── OutcomeUnknown         a non-idempotent call may or may not have taken effect
    ├── NotYet                     an `until` condition, not a failure
    └── ConfigError
"""

from __future__ import annotations

import nats.errors
import nats.js.errors


class HubError(Exception):
    """Base of every error the hub raises on purpose."""

    transient: bool = False

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.endpoint: str | None = None  # set by the call step: which target failed

    @property
    def error_class(self) -> str:
        """Stable name used in logs, DLQ records and alerts."""
        return type(self).__name__


# --- transient: wait and try again -------------------------------------------------------------


class TransientError(HubError):
    """The target or the broker may recover; the message is fine.

    `sent` says whether the request may have reached the target: False when nothing left this process
    (connection refused, DNS, TLS handshake), True or None (unknown) when it may have. Adapters set it;
    the hub resends a non-idempotent operation only when it is False (engine/outcomes.py)."""

    transient = True

    def __init__(self, message: str, *, step: str | None = None, retry_after: float | None = None,
                 sent: bool | None = None):
        super().__init__(message, step=step)
        self.retry_after = retry_after
        self.sent = sent


class TargetTimeout(TransientError):
    """The target did not answer within the step's timeout (the request may have reached it)."""


class TargetUnavailable(TransientError):
    """Connection refused or reset, DNS failure, TLS handshake cut short; `sent=False` when the request
    never left (refused, DNS, handshake), so a non-idempotent operation may be resent."""


class TargetServerError(TransientError):
    """The target answered with a server-side failure (HTTP 5xx, SOAP Server fault)."""


class Throttled(TransientError):
    """The target asked us to slow down (HTTP 429, 503 with Retry-After)."""


class SlotsBusy(Throttled):
    """No call was made: this runner's slots for the endpoint (`max_concurrency`) stayed busy. Says
    nothing about the target, so its breaker does not count it."""


class CircuitOpen(TransientError):
    """The endpoint's circuit breaker is open: no call was made."""


class VerifyPending(TransientError):
    """A non-idempotent call failed after its request may have reached the target, and its `verify`
    could not tell yet whether it took effect (the verify call failed, or its answer said neither done
    nor not done). Checked again on the redeliver schedule, never resent blindly; when the schedule is
    spent the message is dead-lettered as OutcomeUnknown."""


class StreamFull(TransientError):
    """A stream at its limits with `discard: new` (a stream the hub does not manage, or a KV bucket at its
    max_bytes) refused a message: JetStream's 503 with err_code 10077 ("maximum messages exceeded",
    "maximum bytes exceeded", "... per subject exceeded"). Not an outage: the broker answered, and the
    same message is stored once room frees, so it is retried on the flow's schedule and then
    dead-lettered, naming the stream's reason, instead of being waited for without end."""


class BrokerUnavailable(TransientError):
    """NATS, JetStream, a KV bucket or the Object Store did not answer: the server is restarting,
    electing a leader or unreachable. An outage of the hub's own broker, never the message's fault:
    never dead-lettered, never counted against a schedule or a breaker."""


class PublishFailed(BrokerUnavailable):
    """JetStream did not confirm a publish (timeout, no stream leader, connection down)."""


# --- permanent: will not succeed as it is ------------------------------------------------------


class PermanentError(HubError):
    """Retrying the same message cannot help; it goes to the dead-letter queue."""


class UnparseablePayload(PermanentError):
    """The message's payload is not JSON (or not the format the flow expects)."""


class PayloadTooLarge(PermanentError):
    """A message's headers and body together exceed the server's `max_payload`: publishing it would make
    nats-server close the connection, so it is refused before it is sent."""


class UnparseableAnswer(PermanentError):
    """The target answered something the hub cannot read (broken or hostile XML, not the agreed format),
    whatever its status code. The message itself may be fine; ops look at the target."""


class PublishRefused(PermanentError):
    """JetStream refused to store a message for good (a 400, e.g. err_code 10054: over the stream's own
    `max_msg_size`): sending it again cannot help; ops change the stream or the flow and replay."""


class ValidationFailed(PermanentError):
    """The payload does not match the flow's schema; the text names the field."""


class TargetRejected(PermanentError):
    """The target refused the request (HTTP 4xx, SOAP Client fault)."""

    def __init__(self, message: str, *, step: str | None = None, status: int | None = None):
        super().__init__(message, step=step)
        self.status = status


class BusinessError(PermanentError):
    """The target accepted the call but reported a business failure in its answer."""


class TransformFailed(PermanentError):
    """A transform raised on this payload (a bug or an unexpected shape)."""


class MaxDeliveriesExceeded(PermanentError):
    """JetStream gave up on a message that never got an outcome (a worker crashed or hung on it)."""


class RoutingError(PermanentError):
    """A template (endpoint or subject) could not be resolved from the payload."""


class DeadlineExceeded(PermanentError):
    """An `until` wait outlived its give_up age: what it waited for never happened."""


class OutcomeUnknown(PermanentError):
    """A non-idempotent call failed after the request may have reached the target (a timeout, a reset
    after sending) and nothing could verify whether it took effect: not resent blindly, ops reconcile."""


# --- not an error: an outcome ------------------------------------------------------------------


class NotYet(HubError):
    """An `until` step's condition is not met yet: the message goes back to JetStream for a later
    check. Never dead-lettered, never counted as a failure."""

    transient = True

    def __init__(self, spec: object, *, step: str | None = None) -> None:
        super().__init__("waiting: condition not met yet", step=step)
        self.spec = spec


# --- configuration -----------------------------------------------------------------------------


class ConfigError(HubError):
    """Flow or environment configuration is invalid; carries every issue found."""

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


def classify(exc: BaseException) -> HubError:
    """Map any exception to the taxonomy.

    Errors of nats-py (a NATS, JetStream, KV or Object Store operation) are the broker's outage, except
    the few that say the message itself cannot be sent (too big, a bad subject or header). Other I/O
    errors (timeouts, OSError, EOF) are transient. Anything else is a bug in a step (a transform, an
    adapter): permanent, named by its type, so it reaches the DLQ instead of looping."""
    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, nats.errors.Error):
        return _nats_error(exc)
    if isinstance(exc, TimeoutError):
        return TargetTimeout(str(exc) or "timed out")
    if isinstance(exc, ConnectionError | OSError | EOFError):
        return TargetUnavailable(str(exc) or type(exc).__name__)
    return PermanentError(f"{type(exc).__name__}: {exc}")


# nats-py errors that are about the message, not the broker's health
_MESSAGE_FAULTS = (nats.errors.BadSubjectError, nats.errors.BadHeaderError, nats.errors.NotJSMessageError)


STREAM_FULL = 10077        # JSStreamStoreFailedF: at max_msgs / max_bytes / max_msgs_per_subject, discard new
MESSAGE_TOO_BIG = 10054    # JSStreamMessageExceedsMaximumErr: over the stream's max_msg_size


def _refused(exc: nats.js.errors.APIError) -> bool:
    """A stream's own limit said no. 10077 also carries store failures (a disk error): those stay outages."""
    return exc.err_code == MESSAGE_TOO_BIG or (exc.err_code == STREAM_FULL and "exceeded" in (exc.description or ""))


def _nats_error(exc: nats.errors.Error) -> HubError:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, nats.js.errors.APIError) and _refused(exc):
        refusal = f"JetStream refused to store it: {exc.description} (err_code {exc.err_code})"
        return StreamFull(refusal) if exc.err_code == STREAM_FULL else PublishRefused(refusal)
    if isinstance(exc, nats.errors.MaxPayloadError):
        return PayloadTooLarge(text)
    if isinstance(exc, _MESSAGE_FAULTS):
        return PermanentError(text)
    if isinstance(exc, nats.js.errors.BadRequestError):
        # a JetStream API 400 (e.g. a KV compare-and-set lost) is an answer, not an outage; callers
        # that expect one catch it before it gets here, so one that escapes is a bug
        return PermanentError(text)
    # no responders, no stream response, timeouts, closed/reconnecting/draining connections, 503 "JetStream
    # system temporarily unavailable" (err 10008), 500s, a stream or bucket not found mid-restart
    return BrokerUnavailable(text)


def is_broker_fault(exc: BaseException) -> bool:
    """Whether `exc` means the hub's broker is (for now) out of reach: wait and try the same again."""
    return isinstance(exc, BrokerUnavailable) or (
        isinstance(exc, nats.errors.Error) and isinstance(_nats_error(exc), BrokerUnavailable))


def may_have_taken_effect(err: HubError) -> bool:
    """A failed call whose request may have reached the target: no answer came back after it was sent
    (a timeout, a connection reset). An answer, even a 5xx, says what happened; a refusal to connect
    (`sent=False`) says nothing was sent."""
    return isinstance(err, TargetTimeout | TargetUnavailable) and err.sent is not False
