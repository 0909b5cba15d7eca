"""The `http` adapter against a real HTTP server (sandbox.http_sink) on a free port: no mocks."""

from __future__ import annotations

import socket
import time
from email.utils import formatdate

import pytest
import pytest_asyncio

from engine.adapter import CallContext, Services
from adapters.http import HttpAdapter, HttpEndpointConfig, parse_retry_after
from engine.errors import (
    ConfigError,
    RoutingError,
    TargetRejected,
    TargetServerError,
    TargetTimeout,
    TargetUnavailable,
    Throttled,
)
from sandbox.http_sink import HttpSink

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sink():
    server = await HttpSink().start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def _clean_sink(sink):
    sink.reset()
    yield
    sink.reset()


@pytest_asyncio.fixture(loop_scope="session")
async def make_adapter():
    started: list[HttpAdapter] = []

    async def make(base_url: str, **config) -> HttpAdapter:
        config = HttpEndpointConfig(adapter="http", base_url=base_url, **config)
        adapter = HttpAdapter("powersales", config, Services())
        await adapter.start()
        started.append(adapter)
        return adapter

    yield make
    for adapter in started:
        await adapter.close()


def ctx(timeout: float = 5.0) -> CallContext:
    return CallContext(
        {"ce-id": "msg-1", "ce-correlationid": "corr-1", "traceparent": TRACEPARENT, "ce-type": "x"},
        msg_id="msg-1", correlation_id="corr-1", timeout=timeout,
    )


async def test_post_sends_json_to_templated_path_with_correlation_headers(sink, make_adapter):
    """A POST carries the payload as JSON to the path filled from the payload, with the message's ids."""
    adapter = await make_adapter(sink.url, path="/contracts/{contract_id}/switch")
    payload = {"contract_id": "C 42/7", "tariff": "green-24"}

    answer = await adapter.call(None, payload, ctx())

    assert answer == {"ok": True, "received": 1}
    (got,) = await sink.wait_for(1)
    assert got.method == "POST"
    assert got.raw_path == "/contracts/C%2042%2F7/switch"  # the field is URL-encoded as one segment
    assert got.body == payload
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["ce-id"] == "msg-1"
    assert got.headers["ce-correlationid"] == "corr-1"
    assert got.headers["traceparent"] == TRACEPARENT
    assert got.headers["X-Correlation-Id"] == "corr-1"
    assert got.headers["Idempotency-Key"] == "msg-1"
    assert "ce-type" not in got.headers


async def test_get_sends_flat_payload_as_query_without_path_fields(sink, make_adapter):
    """A GET operation puts the payload's other fields in the query string and overrides the path."""
    adapter = await make_adapter(
        sink.url, operations={"GetTariff": {"method": "GET", "path": "/tariffs/{postcode}"}},
    )

    await adapter.call("GetTariff", {"postcode": "10115", "segment": "home", "green": True, "x": None}, ctx())

    (got,) = await sink.wait_for(1)
    assert (got.method, got.path, got.body) == ("GET", "/tariffs/10115", None)
    assert got.query == {"segment": "home", "green": "true"}


async def test_echo_answer_comes_back_parsed(sink, make_adapter):
    """A JSON answer is returned as data."""
    adapter = await make_adapter(sink.url + "/", path="echo")
    assert await adapter.call(None, {"a": [1, 2], "b": "é"}, ctx()) == {"a": [1, 2], "b": "é"}


async def test_secret_header_is_read_from_the_environment(sink, make_adapter, monkeypatch):
    """A header given as {env: X} is resolved at start and sent on every call."""
    monkeypatch.setenv("TEST_POWERSALES_TOKEN", "s3cret")
    adapter = await make_adapter(
        sink.url,
        headers={"Authorization": {"env": "TEST_POWERSALES_TOKEN", "prefix": "Bearer "}, "X-Client": "hub"},
    )

    await adapter.call(None, {}, ctx())

    (got,) = await sink.wait_for(1)
    assert got.headers["Authorization"] == "Bearer s3cret"
    assert got.headers["X-Client"] == "hub"


async def test_missing_secret_fails_start_with_a_config_error(sink, monkeypatch):
    """An unset secret variable stops the endpoint from starting instead of sending an empty header."""
    monkeypatch.delenv("TEST_ABSENT_TOKEN", raising=False)
    adapter = HttpAdapter("powersales", HttpEndpointConfig(
        adapter="http", base_url=sink.url, headers={"Authorization": {"env": "TEST_ABSENT_TOKEN"}}), Services())
    with pytest.raises(ConfigError, match="TEST_ABSENT_TOKEN"):
        await adapter.start()


async def test_500_is_a_transient_server_error(sink, make_adapter):
    """HTTP 500 maps to TargetServerError, which retry policies treat as transient."""
    adapter = await make_adapter(sink.url)
    sink.fail_next(1, status=500, body="database on fire")
    with pytest.raises(TargetServerError, match="500.*database on fire") as err:
        await adapter.call(None, {"x": 1}, ctx())
    assert err.value.transient


async def test_503_with_retry_after_is_throttled(sink, make_adapter):
    """HTTP 503 with Retry-After: 7 maps to Throttled carrying retry_after 7 seconds."""
    adapter = await make_adapter(sink.url)
    sink.fail_next(1, status=503, retry_after=7)
    with pytest.raises(Throttled) as err:
        await adapter.call(None, {"x": 1}, ctx())
    assert err.value.retry_after == 7


@pytest.mark.parametrize(("status", "error"), [
    (429, Throttled), (408, TargetTimeout), (502, TargetServerError), (400, TargetRejected), (409, TargetRejected),
])
async def test_status_codes_map_onto_the_taxonomy(sink, make_adapter, status, error):
    """Each HTTP status family lands on its error class."""
    adapter = await make_adapter(sink.url)
    sink.fail_next(1, status=status)
    with pytest.raises(error):
        await adapter.call(None, {"x": 1}, ctx())


async def test_404_is_rejected_with_status_and_body_snippet(sink, make_adapter):
    """HTTP 404 maps to TargetRejected (permanent) with the status and at most 300 characters of body."""
    adapter = await make_adapter(sink.url)
    sink.set_status(404, body="no such contract: C-42 " + "x" * 1000)
    with pytest.raises(TargetRejected) as err:
        await adapter.call(None, {"x": 1}, ctx())
    assert err.value.status == 404
    assert not err.value.transient
    message = str(err.value)
    assert "no such contract: C-42" in message
    assert len(message.split("404 Not Found: ", 1)[1]) <= 300


async def test_slow_target_times_out(sink, make_adapter):
    """A target slower than the call's timeout raises TargetTimeout."""
    adapter = await make_adapter(sink.url)
    sink.set_delay(2.0)
    started = time.perf_counter()
    with pytest.raises(TargetTimeout):
        await adapter.call(None, {"x": 1}, ctx(timeout=0.2))
    assert time.perf_counter() - started < 1.5


async def test_closed_port_is_unavailable(make_adapter):
    """Nobody listening on the port maps to TargetUnavailable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = await make_adapter(f"http://127.0.0.1:{port}")
    with pytest.raises(TargetUnavailable):
        await adapter.call(None, {"x": 1}, ctx())


async def test_missing_template_field_is_a_routing_error(sink, make_adapter):
    """A path field absent from the payload raises RoutingError naming the field, and nothing is sent."""
    adapter = await make_adapter(sink.url, path="/contracts/{contract_id}")
    with pytest.raises(RoutingError, match="contract_id"):
        await adapter.call(None, {"tariff": "green"}, ctx())
    assert sink.count == 0


async def test_check_operation_names_unknown_operations(sink):
    """Config validation gets an error text for an operation the endpoint does not declare."""
    adapter = HttpAdapter("powersales", HttpEndpointConfig(
        adapter="http", base_url=sink.url, operations={"GetTariff": {"method": "GET", "path": "/t"}}), Services())
    assert adapter.check_operation("GetTariff") is None
    assert adapter.check_operation(None) is None
    text = adapter.check_operation("GetTarif")
    assert text and "GetTarif" in text and "GetTariff" in text


def test_retry_after_accepts_seconds_and_http_dates():
    """Retry-After is read as delta-seconds or as an HTTP date; garbage gives None."""
    now = time.time()
    assert parse_retry_after("7") == 7
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
