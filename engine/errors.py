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
    │   ├── PublishFailed
    │   └── BrokerUnavailable      NATS restarting, electing a leader, unreachable: an outage
    ├── PermanentError             the dead-letter queue
    │   ├── UnparseablePayload     the message's own payload
    │   ├── UnparseableAnswer      the target's answer (not the message's fault, not retried blindly)
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
    """The target or the broker may recover; the message is fine."""

    transient = True

    def __init__(self, message: str, *, step: str | None = None, retry_after: float | None = None):
        super().__init__(message, step=step)
        self.retry_after = retry_after


class TargetTimeout(TransientError):
    """The target did not answer within the step's timeout."""


class TargetUnavailable(TransientError):
    """Connection refused or reset, DNS failure, TLS handshake cut short."""


class TargetServerError(TransientError):
    """The target answered with a server-side failure (HTTP 5xx, SOAP Server fault)."""


class Throttled(TransientError):
    """The target asked us to slow down (HTTP 429, 503 with Retry-After)."""


class SlotsBusy(Throttled):
    """No call was made: this runner's slots for the endpoint (`max_concurrency`) stayed busy. Says
    nothing about the target, so its breaker does not count it."""


class CircuitOpen(TransientError):
    """The endpoint's circuit breaker is open: no call was made."""


class PublishFailed(TransientError):
    """JetStream did not confirm a publish (timeout, no stream leader)."""


class BrokerUnavailable(TransientError):
    """NATS, JetStream, a KV bucket or the Object Store did not answer: the server is restarting,
    electing a leader or unreachable. An outage of the hub's own broker, never the message's fault."""


# --- permanent: will not succeed as it is ------------------------------------------------------


class PermanentError(HubError):
    """Retrying the same message cannot help; it goes to the dead-letter queue."""


class UnparseablePayload(PermanentError):
    """The message's payload is not JSON (or not the format the flow expects)."""


class UnparseableAnswer(PermanentError):
    """The target answered something the hub cannot read (broken or hostile XML, not the agreed format),
    whatever its status code. The message itself may be fine; ops look at the target."""


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
    """Map any exception to the taxonomy; unknown exceptions count as permanent bugs in a step."""
    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, TimeoutError):
        return TargetTimeout(str(exc) or "timed out")
    if isinstance(exc, ConnectionError | OSError):
        return TargetUnavailable(str(exc) or type(exc).__name__)
    return PermanentError(f"{type(exc).__name__}: {exc}")
