"""Unknown outcomes of non-idempotent calls (DESIGN principle 10).

An endpoint declares its creates `idempotent: false` (engine/adapter.py). When such a call fails after
its request may have reached the target (engine/errors.may_have_taken_effect), sending it again could
create twice, so it is not retried blindly:

- with a `verify` on the call step, a lookup decides: done (its answer stands in for the lost one),
  not done (the call may be sent again), or still unknown (VerifyPending: verified again on the
  redeliver schedule, OutcomeUnknown when the schedule is spent);
- without one, OutcomeUnknown at once: the DLQ, with what ops need to reconcile.

What a message learnt about such a call survives its redeliveries in the failure history
(engine/failures.py): an answer it got before a later step failed (used again, not called again)
or an outcome still unknown (verified first, never resent blindly).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import jmespath
import jmespath.exceptions
import orjson
import structlog

from engine.errors import HubError, OutcomeUnknown, VerifyPending, may_have_taken_effect
from engine.spec import CallStep, VerifySpec

DONE, NOT_DONE, UNKNOWN = "done", "not done", "unknown"
log = structlog.get_logger("hub.call")
ANSWER_KEEP = 64 * 1024  # bytes of a create's answer kept for a redelivery; bigger: verified again instead


class Verifier:
    """A call step's compiled `verify`."""

    def __init__(self, spec: VerifySpec) -> None:
        self.spec = spec
        self._done = jmespath.compile(spec.done).search
        self._not_done = jmespath.compile(spec.not_done).search

    def request(self, payload: Any, call_body: Any) -> Any:
        """What the verify call sends: its own `input` key of the payload, else the call's body."""
        if self.spec.input is None:
            return call_body
        if not isinstance(payload, dict) or self.spec.input not in payload:
            raise OutcomeUnknown(f"verify `input: {self.spec.input}` is not in the payload: cannot look the "
                                 "effect up")
        return payload[self.spec.input]

    def decide(self, answer: Any) -> str:
        if self._done(answer):
            return DONE
        if self._not_done(answer):
            return NOT_DONE
        return UNKNOWN


def unknown_outcome(where: str, cause: HubError, *, verified: str = "", key: str | None = None) -> OutcomeUnknown:
    """The DLQ error for a create whose effect nobody could establish: everything ops need to reconcile."""
    text = (f"{where}: the request may have reached the target and its answer was lost "
            f"({cause.error_class}: {cause}); not sent again. {verified or 'No verify is configured.'} "
            f"Check the target (idempotency key {key}) before a replay: replay only if it did not happen.")
    return OutcomeUnknown(text)


def still_unknown(where: str, why: str, key: str | None) -> VerifyPending:
    return VerifyPending(f"{where}: outcome still unknown after a lost answer ({why}); verified again later, "
                         f"never resent blindly (idempotency key {key})")


def remembered(answer: Any) -> dict[str, Any]:
    """What a message keeps of a create that succeeded, in case a later step fails: the answer when small."""
    try:
        if len(orjson.dumps(answer, default=str)) <= ANSWER_KEEP:
            return {"answer": answer}
    except TypeError:
        pass
    return {"unknown": "answer too large to keep; verified on redelivery"}


def needs_verdict(err: HubError, unsafe: bool) -> bool:
    return unsafe and may_have_taken_effect(err)


def keep(env: Any, label: str, outcome: dict[str, Any]) -> None:
    """Note what a non-idempotent call left behind; written to the history if the message fails."""
    if env.outcomes is None:
        env.outcomes = {}
    env.outcomes[label] = outcome


async def verdict(verifier: Verifier, call: Callable[[str, Any, float], Awaitable[Any]], env: Any, body: Any,
                  where: str, key: str, timeout: float, **fields: Any) -> Any:
    """Ask the verify operation: its answer when the call took effect, NOT_DONE when it did not;
    VerifyPending when the lookup fails or cannot tell."""
    spec = verifier.spec
    try:
        answer = await call(spec.operation, verifier.request(env.payload, body), spec.timeout or timeout)
    except HubError as exc:
        raise still_unknown(where, f"verify {spec.operation} failed: {exc.error_class}: {exc}", key) from exc
    decided = verifier.decide(answer)
    log.info("outcome_verified", msg_id=env.msg_id, where=where, verdict=decided, **fields)
    if decided == DONE:
        return answer
    if decided == NOT_DONE:
        return NOT_DONE
    raise still_unknown(where, f"verify {spec.operation} answered neither done nor not done", key)


async def known_outcome(pipeline: Any, env: Any, spec: Any, label: str, body: Any) -> Any:
    """A non-idempotent call an earlier delivery made: its kept answer; else (its outcome was lost) the
    verify's verdict, and a new call (through `pipeline`) only once the verify says it did not happen."""
    from engine.adapter import CallContext
    from engine.subjects import render

    prior = env.prior[label]
    keep(env, label, prior)  # until decided otherwise, a failure keeps what was known
    if "answer" in prior:
        return prior["answer"]
    name = render(spec.endpoint, env.payload)
    where, key = f"{name}: {spec.operation or 'call'}", env.idem_key or env.msg_id
    verifier = pipeline._verifiers.get(label)
    if verifier is None:
        raise unknown_outcome(where, VerifyPending(prior.get("unknown", "outcome unknown")), key=key)
    adapter, breaker = pipeline.adapters[name], pipeline.breakers.get(name)

    async def call(op: str, payload: Any, seconds: float) -> Any:
        ctx = CallContext(env.headers, key, env.correlation_id, seconds)
        once = lambda: adapter.call(op, payload, ctx)  # noqa: E731
        return await (breaker.call(once, env.msg_id) if breaker is not None else once())

    timeout = spec.timeout or getattr(adapter.config, "timeout", None) or 30.0
    answer = await verdict(verifier, call, env, body, where, key, timeout, flow=pipeline.flow.name)
    if answer is NOT_DONE:
        answer = await pipeline.call_endpoint(env, spec.endpoint, spec.operation, spec.timeout, body, label=label)
    keep(env, label, remembered(answer))
    return answer


def _operation_problem(project: Any, name: str, operation: str | None) -> str | None:
    from engine.registry import load_adapters

    endpoint = project.endpoints[name]
    return load_adapters()[endpoint.adapter](name, endpoint, None).check_operation(operation)


def check_verify(step: CallStep, loc: tuple[Any, ...], project: Any, candidates: list[str],
                 bad: Callable[[Any, str], None]) -> None:
    """Validation of a call step's `verify`, each problem with its path: the operation exists on every
    endpoint the call can reach, the expressions compile, and the call is a non-idempotent one."""
    spec = step.call.verify
    if spec is None:
        return
    vloc = loc + ("verify",)
    for key in ("done", "not_done"):
        try:
            jmespath.compile(getattr(spec, key))
        except jmespath.exceptions.JMESPathError as exc:
            bad(vloc + (key,), f"not a valid JMESPath expression: {str(exc).splitlines()[0]}")
    for name in candidates:
        why = _operation_problem(project, name, spec.operation)
        if why:
            bad(vloc + ("operation",), f"endpoint {name}: {why}")
    idempotent = [n for n in candidates if project.endpoints[n].is_idempotent(step.call.operation)]
    if candidates and len(idempotent) == len(candidates):
        op = step.call.operation
        bad(vloc, f"verify is only used for a non-idempotent operation, and {', '.join(idempotent)} "
            f"declare{'s' if len(idempotent) == 1 else ''} {op or 'its calls'} idempotent; declare "
            f"`idempotent: {('{' + op + ': false}') if op else 'false'}` on the endpoint, or drop the verify")


def check_declared(name: str, endpoint: Any, bad: Callable[[Any, str], None]) -> None:
    """An endpoint's `idempotent` map names operations the endpoint has (a typo would leave a create
    resent blindly)."""
    if not isinstance(endpoint.idempotent, dict):
        return
    from engine.registry import load_adapters

    adapter = load_adapters()[endpoint.adapter](name, endpoint, None)
    for operation in endpoint.idempotent:
        why = adapter.check_operation(operation)
        if why:
            bad(("idempotent", operation), why)
