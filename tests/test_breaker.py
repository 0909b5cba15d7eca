"""Circuit breakers shared through a JetStream KV bucket: two boards on two connections stand for two
runner processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from engine.breaker import Breaker, BreakerBoard, BreakerSettings, kv_key
from engine.errors import CircuitOpen, TargetRejected, TargetServerError, TargetUnavailable

ENDPOINT = "erp_DE"


class Runner:
    """One runner process: its own connection and board."""

    def __init__(self, nc: Any, board: BreakerBoard) -> None:
        self.nc, self.board = nc, board

    @classmethod
    async def start(cls, url: str, bucket: str) -> "Runner":
        nc = await nats.connect(url)
        board = BreakerBoard(nc.jetstream(), bucket)
        await board.start()
        return cls(nc, board)

    async def stop(self) -> None:
        await self.board.stop()
        if not self.nc.is_closed:
            await self.nc.close()


@pytest.fixture
async def runners(nats_url: str, unique: str):
    bucket = f"brk_{unique}"
    a = await Runner.start(nats_url, bucket)
    b = await Runner.start(nats_url, bucket)
    yield a, b
    await a.stop()
    await b.stop()
    nc = await nats.connect(nats_url)
    await nc.jetstream().delete_key_value(bucket)
    await nc.close()


async def reach(breaker: Breaker, state: str, timeout: float = 5.0) -> None:
    """Wait for the on_change callback that reports `state` (returns at once if already there)."""
    if breaker.state == state:
        return
    reached = asyncio.Event()
    unsubscribe = breaker.on_change(lambda new: reached.set() if new == state else None)
    try:
        await asyncio.wait_for(reached.wait(), timeout)
    finally:
        unsubscribe()


async def fail(exc: BaseException) -> None:
    raise exc


async def shared(board: BreakerBoard, endpoint: str = ENDPOINT) -> tuple[dict[str, Any], int]:
    entry = await board.kv.get(kv_key(endpoint))
    return json.loads(entry.value), entry.revision


async def test_failures_on_one_runner_open_the_circuit_on_every_runner(runners):
    """Transient failures recorded by runner A open the endpoint's circuit in runner B too."""
    a, b = runners
    settings = BreakerSettings(failures=3, window="30s")
    ba, bb = a.board.breaker(ENDPOINT, settings), b.board.breaker(ENDPOINT, settings)
    assert a.board.breaker(ENDPOINT, settings) is ba
    b_open = asyncio.create_task(reach(bb, "open"))
    for _ in range(2):
        await ba.record(False, 0.01)
    assert ba.state == "closed" and bb.allow()
    await ba.record(False, 0.01)
    assert ba.state == "open" and not ba.allow()
    await b_open
    assert not bb.allow()
    doc, _ = await shared(a.board)
    assert doc["state"] == "open" and doc["opened_at"] and "3 failures" in doc["reason"]


async def test_call_counts_transient_errors_and_timeouts_then_refuses_with_retry_after(runners):
    """call() counts transient errors and timeouts; once open it raises CircuitOpen without calling."""
    a, _ = runners
    br = a.board.breaker(ENDPOINT, BreakerSettings(failures=3, reset="10s"))
    for exc in (TargetUnavailable("refused"), TimeoutError(), TargetServerError("500")):
        with pytest.raises(type(exc)):
            await br.call(lambda exc=exc: fail(exc))
    assert br.state == "open"
    called = False

    async def target() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(CircuitOpen) as info:
        await br.call(target)
    assert not called
    assert 9.0 < info.value.retry_after <= 10.0
    assert ENDPOINT in str(info.value) and info.value.endpoint == ENDPOINT
    assert a.board.wait(ENDPOINT) == pytest.approx(info.value.retry_after, abs=0.5)


async def test_permanent_errors_prove_the_target_is_up_and_do_not_count(runners):
    """A rejection (4xx) or a bug in the step leaves the circuit closed and the KV untouched."""
    a, _ = runners
    br = a.board.breaker(ENDPOINT, BreakerSettings(failures=2))
    for _ in range(3):
        with pytest.raises(TargetRejected):
            await br.call(lambda: fail(TargetRejected("400 bad request", status=400)))
        with pytest.raises(ValueError):
            await br.call(lambda: fail(ValueError("unexpected shape")))
    assert br.state == "closed"
    with pytest.raises(KeyNotFoundError):  # nothing was ever written
        await a.board.kv.get(kv_key(ENDPOINT))


async def test_slow_successful_calls_count_as_failures(runners):
    """Calls slower than slow_call return their result but open the circuit like failures."""
    a, b = runners
    settings = BreakerSettings(failures=2, slow_call="50ms")
    br, bb = a.board.breaker(ENDPOINT, settings), b.board.breaker(ENDPOINT, settings)

    async def slow() -> str:
        await asyncio.sleep(0.08)  # the simulated target's latency
        return "late answer"

    assert await br.call(slow) == "late answer"
    assert br.state == "closed"
    await br.record(True, 0.2)
    assert br.state == "open" and "slow call" in br.reason
    await reach(bb, "open")


async def test_a_successful_probe_after_reset_closes_the_circuit_everywhere(runners):
    """After reset one runner wins the move to half-open; one probe at a time per process; its success closes all."""
    a, b = runners
    settings = BreakerSettings(failures=1, reset="200ms")
    ba, bb = a.board.breaker(ENDPOINT, settings), b.board.breaker(ENDPOINT, settings)
    await ba.record(False, 0.01)
    await reach(bb, "open")
    _, opened_rev = await shared(a.board)
    await asyncio.gather(reach(ba, "half_open"), reach(bb, "half_open"))
    _, half_rev = await shared(a.board)
    assert half_rev == opened_rev + 1  # both timers tried the CAS; exactly one write won
    assert ba.allow() and bb.allow()

    release, started = asyncio.Event(), asyncio.Event()

    async def probe() -> str:
        started.set()
        await release.wait()
        return "pong"

    probing = asyncio.create_task(ba.call(probe))
    await started.wait()
    assert not ba.allow()  # the probe slot of this process is taken
    with pytest.raises(CircuitOpen):
        await ba.call(probe)
    b_closed = asyncio.create_task(reach(bb, "closed"))
    release.set()
    assert await probing == "pong"
    assert ba.state == "closed"
    await b_closed
    doc, _ = await shared(b.board)
    assert doc["state"] == "closed" and doc["failures"] == []


async def test_a_failed_probe_reopens_the_circuit(runners):
    """A probe failure reopens with a new opened_at, seen by the other runner, and the cycle repeats."""
    a, b = runners
    settings = BreakerSettings(failures=1, reset="200ms")
    ba, bb = a.board.breaker(ENDPOINT, settings), b.board.breaker(ENDPOINT, settings)
    await ba.record(False, 0.01)
    first, _ = await shared(a.board)
    await reach(bb, "half_open")
    b_reopened = asyncio.create_task(reach(bb, "open"))
    with pytest.raises(TargetUnavailable):
        await bb.call(lambda: fail(TargetUnavailable("still down")))
    assert bb.state == "open"
    await asyncio.wait_for(b_reopened, 5)
    await reach(ba, "open")
    second, _ = await shared(a.board)
    assert second["opened_at"] > first["opened_at"] and second["reason"].startswith("probe failed")
    await reach(ba, "half_open")


async def test_concurrent_failures_from_two_runners_are_all_counted(runners):
    """Compare-and-set: failures recorded at once by both runners are all in the shared window."""
    a, b = runners
    settings = BreakerSettings(failures=30, window="1m")
    ba, bb = a.board.breaker(ENDPOINT, settings), b.board.breaker(ENDPOINT, settings)
    await asyncio.gather(*(br.record(False, 0.01) for _ in range(10) for br in (ba, bb)))
    doc, _ = await shared(a.board)
    assert doc["state"] == "closed" and len(doc["failures"]) == 20
    b_open = asyncio.create_task(reach(bb, "open"))
    await asyncio.gather(*(br.record(False, 0.01) for _ in range(5) for br in (ba, bb)))
    await asyncio.wait_for(b_open, 5)
    assert ba.state == "open"


async def test_successes_while_closed_write_nothing(runners):
    """The hot path: a success in a closed circuit with no failure counted leaves the KV as it was;
    after a failure, the first success clears the count once and the rest write nothing."""
    a, _ = runners
    br = a.board.breaker(ENDPOINT, BreakerSettings(failures=5))

    async def ok() -> int:
        return 1

    for _ in range(20):
        await br.record(True, 0.01)
        assert await br.call(ok) == 1
    with pytest.raises(KeyNotFoundError):
        await shared(a.board)  # nothing was ever written
    await br.record(False, 0.01)
    before = await shared(a.board)
    await br.record(True, 0.01)
    cleared = await shared(a.board)
    assert cleared[0]["failures"] == [] and cleared[1] > before[1]
    for _ in range(20):
        assert await br.call(ok) == 1
    assert await shared(a.board) == cleared


async def test_one_message_retried_counts_once_and_a_success_in_between_starts_over(runners):
    """Poison is not an outage: one message failing ten times, in-process and redelivered, counts
    once; failures of different messages separated by successes never open the circuit; failures of
    different messages in a row do."""
    a, _ = runners
    br = a.board.breaker(ENDPOINT, BreakerSettings(failures=3, window="1m"))

    async def fail() -> None:
        raise TargetServerError("SOAP Server fault: always the same")

    async def ok() -> int:
        return 1

    for _ in range(10):
        with pytest.raises(TargetServerError):
            await br.call(fail, key="poison-1")
    assert br.state == "closed"
    for n in range(5):
        with pytest.raises(TargetServerError):
            await br.call(fail, key=f"poison-{n}")
        await br.call(ok, key=f"good-{n}")
    assert br.state == "closed"
    opened = asyncio.create_task(reach(br, "open"))
    for n in range(3):
        with pytest.raises(TargetServerError):
            await br.call(fail, key=f"outage-{n}")
    await asyncio.wait_for(opened, 5)


async def test_the_hubs_own_broker_faults_do_not_count_against_a_target(runners):
    """A NATS timeout or a closed connection inside a call says nothing about the target."""
    import nats.errors

    a, _ = runners
    br = a.board.breaker(ENDPOINT, BreakerSettings(failures=1))

    async def broker_down() -> None:
        raise nats.errors.ConnectionClosedError()

    for n in range(3):
        with pytest.raises(nats.errors.ConnectionClosedError):
            await br.call(broker_down, key=f"m{n}")
    assert br.state == "closed"


async def test_a_runner_started_later_loads_the_open_state(runners, nats_url: str):
    """A board that starts while a circuit is open knows it before its first call."""
    a, _ = runners
    settings = BreakerSettings(failures=1, reset="1m")
    await a.board.breaker(ENDPOINT, settings).record(False, 0.01)
    late = await Runner.start(nats_url, a.board.bucket)
    try:
        br = late.board.breaker(ENDPOINT, settings)
        assert br.state == "open" and not br.allow() and br.retry_after() > 50
    finally:
        await late.stop()


async def test_an_unreachable_kv_never_fails_the_caller_and_the_process_still_protects_itself(runners):
    """With its connection gone, a runner logs, decides locally and raises nothing from record()."""
    a, _ = runners
    br = a.board.breaker("power-sales/tariffs", BreakerSettings(failures=2))
    await a.nc.close()
    await br.record(False, 0.01)
    await br.record(False, 0.01)
    assert br.state == "open" and not br.allow()


def test_settings_use_duration_units_and_refuse_unknown_keys():
    """Durations need units; typos are errors, not silent defaults."""
    s = BreakerSettings.model_validate({"failures": 3, "slow_call": "2s", "reset": "500ms"})
    assert (s.slow_call, s.reset, s.window, s.half_open_probes) == (2.0, 0.5, 30.0, 1)
    with pytest.raises(ValueError):
        BreakerSettings.model_validate({"reset": 30})
    with pytest.raises(ValueError):
        BreakerSettings.model_validate({"failure": 3})


@pytest.mark.parametrize(("retry_after", "delivered", "expected"), [
    (0.0, 2, 1.0),     # the reset just elapsed: come back soon (0.5 s floor, doubled), not after 30 s
    (5.0, 1, 5.0), (5.0, 3, 20.0),
    (None, 1, 30.0),   # the circuit did not say: half a minute
])
def test_an_open_circuit_sends_a_message_back_for_the_time_it_says(retry_after, delivered, expected) -> None:
    """The outage wait follows the circuit's own Retry-After, doubled per delivery (few deliveries
    for a long outage); a circuit whose reset just elapsed answers 0, which is not 'unknown'."""
    from engine.errors import CircuitOpen
    from engine.failures import FailureHandler
    from engine.spec import Flow

    flow = Flow.model_validate({"name": "f", "source": {"subject": "a.b"}, "steps": [{"publish": "c.d"}]})
    handler = FailureHandler(flow, js=None, stream="S", publish_timeout=1.0)
    assert handler.outage_delay(CircuitOpen("open", retry_after=retry_after), delivered) == expected
