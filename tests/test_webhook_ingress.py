"""The `webhook:` source (adapters.webhook) in a real Hub on the session nats-server, posted to by vendor 3's
real WebhookSender; the shipped flow files run with this test's own names, paths and subjects."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import pytest_asyncio

from adapters.webhook import WebhookIngress
from engine.runtime import Hub
from sandbox.meters import Vendor3Platform, WebhookSender
from schemas.meter import MeterReading
from transforms.meter_manual import manual_reading
from transforms.meter_vendors import vendor3_message, vendor3_reading
from tests.helpers import StreamReader, project_from, started_hub

SECRET = "vendor3-test-secret"
TOKEN = "field-app-test-token"
os.environ["VENDOR3_WEBHOOK_SECRET"] = SECRET
os.environ["FIELD_APP_TOKEN"] = TOKEN
FLOWS = Path(__file__).resolve().parents[1] / "flows"
DAY = datetime(2026, 11, 2, tzinfo=timezone.utc)
VENDOR3 = Vendor3Platform(meters=200)


def records(first: int, count: int) -> list[dict[str, Any]]:
    """Vendor-3 day readings of meters first..first+count (one each)."""
    return VENDOR3.records(DAY, DAY + timedelta(days=1), range(first, first + count))


def shipped(name: str, unique: str) -> str:
    """A shipped flow file with this test's flow name, path and output subject."""
    text = (FLOWS / f"{name}.yaml").read_text()
    return (text.replace(f"name: {name}", f"name: {name}-{unique}")
                .replace("path: /", f"path: /{unique}/")
                .replace("meter.reading.collected", f"{unique}.reading.collected"))


@pytest_asyncio.fixture
async def js(nats_url: str) -> Any:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest_asyncio.fixture
async def hub(tmp_path: Path, unique: str, nats_url: str) -> Any:
    """A Hub running both shipped webhook flows on one ingress server on a free port."""
    hub = await started_hub(_project(tmp_path, unique), nats_url)
    yield hub
    await hub.stop()


def _project(tmp_path: Path, unique: str) -> Any:
    return project_from(tmp_path, f"""
        http_ingress: {{port: 0}}
        streams:
          - {{name: {unique.upper()}, subjects: ["{unique}.>"]}}
        """, shipped("meter-vendor3-push", unique), shipped("meter-manual-readings", unique))


def push(hub: Hub, unique: str) -> WebhookIngress:
    return hub.ingresses[f"meter-vendor3-push-{unique}"]


def manual(hub: Hub, unique: str) -> WebhookIngress:
    return hub.ingresses[f"meter-manual-readings-{unique}"]


async def landed(js: Any, ingress: WebhookIngress) -> int:
    """Messages HUB_INGRESS holds for the ingress's flow (what was stored, whatever the flow did since)."""
    info = await js.stream_info("HUB_INGRESS", subjects_filter=ingress.landing.subject)
    return sum((info.state.subjects or {}).values())


async def test_a_signed_batch_is_stored_before_202_and_becomes_canonical_readings(hub: Hub, js: Any, unique: str) -> None:
    """Each reading of a signed batch is in JetStream when 202 comes back, and reaches the output subject canonical."""
    ingress = push(hub, unique)
    out = await StreamReader.open(js, f"{unique}.reading.collected")
    async with WebhookSender(ingress.url, SECRET) as sender:
        sent = await sender.send(records(0, 25))
        assert sent.status == 202, sent.text
        assert await landed(js, ingress) == 25
    assert sent.text == '{"stored": 25, "duplicates": 0}'
    readings = [MeterReading.model_validate_json(m.data) for m in await out.wait_for(25)]
    assert {r.meter_id for r in readings} == {r["device"]["id"] for r in records(0, 25)}
    assert {r.source for r in readings} == {"vendor3/push"}
    await out.sub.unsubscribe()
    first = await js.get_last_msg("HUB_INGRESS", ingress.landing.subject)  # as stored, headers and all
    headers = first.headers
    assert headers["content-type"] == "application/json" and headers["Hub-Webhook-Path"] == ingress.path
    assert headers["ce-id"] == headers["Nats-Msg-Id"] == headers["ce-correlationid"]
    assert headers["ce-source"] == f"/plu-hub/ingress/webhook/{ingress.flow.name}" and headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == ingress.landing.subject and headers["traceparent"].startswith("00-")


async def test_a_bad_signature_or_a_stale_timestamp_is_401_and_stores_nothing(hub: Hub, js: Any, unique: str) -> None:
    """A signature the secret did not make, a stale one, or none at all is refused with 401 before any store."""
    ingress = push(hub, unique)
    async with WebhookSender(ingress.url, SECRET) as sender:
        forged = await sender.send(records(0, 5), bad_signature=True)
        stale = await sender.send(records(0, 5), age=301)
        future = await sender.send(records(0, 5), age=-400)
    async with aiohttp.ClientSession() as session, session.post(ingress.url, json={"readings": []}) as unsigned:
        assert unsigned.status == 401
    assert (forged.status, stale.status, future.status) == (401, 401, 401)
    assert "stale" in stale.text and "stale" in future.text
    assert ingress.refused == {"bad_signature": 1, "stale": 2, "missing_signature": 1}
    assert await landed(js, ingress) == 0 and ingress.stored == 0


async def test_a_replayed_request_is_409_and_another_runner_stores_nothing_new(
        hub: Hub, js: Any, unique: str, tmp_path: Path, nats_url: str) -> None:
    """The same signed bytes again are refused by the runner that saw them and dropped as duplicates by any other."""
    ingress = push(hub, unique)
    async with WebhookSender(ingress.url, SECRET) as sender:
        first = await sender.send(records(0, 10))
        again = await sender.replay(first)
    assert (first.status, again.status) == (202, 409)
    assert "replayed" in again.text and ingress.refused == {"replayed": 1}
    (tmp_path / "other").mkdir()
    other = await started_hub(_project(tmp_path / "other", unique), nats_url)  # a second runner, its own server
    try:
        assert push(other, unique).server is not push(hub, unique).server
        async with WebhookSender(push(other, unique).url, SECRET) as sender:
            elsewhere = await sender.replay(first)
        assert elsewhere.status == 202 and elsewhere.text == '{"stored": 0, "duplicates": 10}'
    finally:
        await other.stop()
    assert await landed(js, ingress) == 10


async def test_the_manual_readings_path_takes_a_bearer_token_and_refuses_everything_else(
        hub: Hub, js: Any, unique: str) -> None:
    """A wrong or missing token is 401, GET 405, an oversized body 413, non-JSON 400; the right token stores a canonical manual reading."""
    ingress = manual(hub, unique)
    reading = {"meter_id": "RADAR-1", "site_id": "SITE-1", "read_at": "2026-11-02T09:30:00+01:00",
               "value": 1234.5, "unit": "kWh"}
    out = await StreamReader.open(js, f"{unique}.reading.collected")
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async def post(body: Any = None, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
            async with session.post(ingress.url, json=body, data=data, headers=headers) as answer:
                return answer.status

        assert await post(reading, {"Authorization": "Bearer not-the-token"}) == 401
        assert await post(reading) == 401
        async with session.get(ingress.url, headers=good) as answer:
            assert answer.status == 405 and answer.headers["Allow"] == "POST"
        assert await post(data=b"x" * 70_000, headers=good) == 413
        assert await post(data=b"{not json", headers=good) == 400
        assert await landed(js, ingress) == 0
        assert await post(reading, good) == 202
    [msg] = await out.wait_for(1)
    assert MeterReading.model_validate_json(msg.data).model_dump(by_alias=True, mode="json") == {
        "meter_id": "RADAR-1", "site_id": "SITE-1", "register": "1-0:1.8.0", "interval_start": None, "read_at": "2026-11-02T08:30:00Z",
        "value": 1234.5, "unit": "kWh", "quality": "actual", "source": "manual", "zone": None}
    assert ingress.refused == {"bad_token": 1, "missing_token": 1, "method": 1, "too_large": 1, "invalid_json": 1}
    await out.sub.unsubscribe()


async def test_a_store_failure_is_503_and_the_senders_retry_then_succeeds(hub: Hub, js: Any, unique: str) -> None:
    """When JetStream does not confirm, the answer is 503 with Retry-After, and the same request sent again is stored."""
    ingress = push(hub, unique)
    subject = ingress.landing.subject
    ingress.landing.subject = f"{unique}-nostream.x"  # no stream captures it: every publish fails at once
    async with WebhookSender(ingress.url, SECRET) as sender:
        try:
            failed = await sender.send(records(0, 8))
        finally:
            ingress.landing.subject = subject
        retried = await sender.replay(failed)  # byte for byte: the signature of an unstored request is released
    assert failed.status == 503 and '"failed": 8' in failed.text
    assert retried.status == 202 and retried.text == '{"stored": 8, "duplicates": 0}'
    assert await landed(js, ingress) == 8


async def test_two_webhook_flows_share_one_server_that_the_last_one_closes(
        tmp_path: Path, unique: str, nats_url: str) -> None:
    """Both flows of a runner listen on one port; a stopped flow's path answers 404, and the last stop closes the port."""
    hub = await started_hub(_project(tmp_path, unique), nats_url)
    try:
        first, second = push(hub, unique), manual(hub, unique)
        assert first.server is second.server and first.url.startswith(second.server.url + "/")
        url = second.url
        await first.stop()
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={}, headers={"Authorization": "Bearer x"}) as answer:
                assert answer.status == 401  # still served
            async with session.post(url.replace("/readings/manual", "/webhooks/vendor3/readings"), json={}) as answer:
                assert answer.status == 404
    finally:
        await hub.stop()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(url, json={})


async def test_the_same_reading_in_two_requests_is_one_message(hub: Hub, js: Any, unique: str) -> None:
    """A reading pushed twice in two separately signed requests is stored once; the second answer counts it a duplicate."""
    ingress = push(hub, unique)
    out = await StreamReader.open(js, f"{unique}.reading.collected")
    async with WebhookSender(ingress.url, SECRET) as sender:
        one = await sender.send(records(0, 6))
        two = await sender.send(records(3, 6))  # meters 3..5 again, 6..8 new
    assert (one.text, two.text) == ('{"stored": 6, "duplicates": 0}', '{"stored": 3, "duplicates": 3}')
    assert await landed(js, ingress) == 9
    messages = await out.wait_for(9)
    assert len({m.data for m in messages}) == 9
    await out.sub.unsubscribe()


def test_a_pushed_reading_has_the_pulled_readings_identity() -> None:
    """Push and pull of one vendor-3 reading differ only in `source`, so the publish id collapses them."""
    record = records(7, 1)[0]
    pushed = vendor3_message(record)
    pulled = {**vendor3_reading(record), "zone": "Europe/London"}  # the pull stamps its `each` entry's zone
    assert {**pushed, "source": None} == {**pulled, "source": None}
    assert (pushed["source"], pulled["source"]) == ("vendor3/push", "vendor3/pull")


def test_a_manual_reading_defaults_its_register_by_medium_and_needs_an_offset() -> None:
    """A gas reading without a register gets the gas volume register; a read time without an offset is refused."""
    gas = manual_reading({"meter_id": "G1", "site_id": "S1", "read_at": "2026-11-02T10:00:00Z", "value": 1500,
                          "unit": "dm3"})
    assert (gas["register"], gas["value"], gas["unit"]) == ("7-0:3.0.0", 1.5, "m3")
    with pytest.raises(ValueError, match="offset"):
        manual_reading({"meter_id": "E1", "site_id": "S1", "read_at": "2026-11-02T10:00:00", "value": 1, "unit": "kWh"})
