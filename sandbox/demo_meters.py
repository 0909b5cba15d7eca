"""The smart-meter parts of `runner.py demo`: vendor 3's signed webhook, vendor 4 on MQTT and a field
agent's reading (section 11), the monthly pull from the four platforms (12), and the rules on the
readings: one per meter and time, month totals and forecasts, a key-customer candidate (13).

The platforms, the MQTT broker and the webhook secrets are started by sandbox/demo_more.Outside.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sandbox.demo_more import FIELD_TOKEN, VENDOR3_SECRET, Check, Outside
from sandbox.mqtt_broker import VENDOR4_PASSWORD, VENDOR4_USER

COLD_STORE_METER, COLD_STORE_SITE = "V3-COLD-0001", "INST-COLD-1"


def site_directory(outside: Outside) -> dict[str, dict[str, Any]]:
    """What the CRM knows of the meter platforms' sites (GET /sites/<id> on the CRM bridge), and the
    cold store section 13 pushes for."""
    sites = {COLD_STORE_SITE: {"site_id": COLD_STORE_SITE, "account_id": "A-UK-COLD-1", "kind": "business"}}
    for vendor, platform in outside.platforms.items():
        for i in range(platform.source.meters):
            meter = platform.source.meter(i)
            sites[meter.site_id] = {"site_id": meter.site_id, "account_id": f"A-{vendor}-{i}", "kind": meter.profile}
    return sites


async def section_push(readings: Any, hub: Any, outside: Outside, check: Check, wait_until: Any,
                       deadline: float) -> None:
    print("\n  11. Vendor 3 pushes signed readings, vendor 4 publishes on MQTT, a field agent sends one")
    from datetime import datetime, timedelta, timezone

    import aiohttp

    from sandbox.meters import MqttPublisher, Vendor3Platform, Vendor4Platform, WebhookSender

    before = len(readings.messages)
    push, manual = hub.ingresses["meter-vendor3-push"], hub.ingresses["meter-manual-readings"]
    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    batch = Vendor3Platform(meters=10).records(day, day + timedelta(days=1))
    async with WebhookSender(push.url, VENDOR3_SECRET) as sender:
        sent = await sender.send(batch)
        forged = await sender.send(batch, bad_signature=True)
        replayed = await sender.replay(sent)
    reading = {"meter_id": "M-BE-FIELD-1", "site_id": "S-BE-7", "read_at": day.isoformat(), "value": 4711.2,
               "unit": "kWh"}
    async with aiohttp.ClientSession() as http:
        async with http.post(manual.url, json=reading, headers={"Authorization": f"Bearer {FIELD_TOKEN}"}) as r:
            manual_status = r.status
    assert outside.mqtt is not None
    pushed = Vendor4Platform(meters=5).records(day, day + timedelta(days=1))
    async with MqttPublisher(outside.mqtt.host, outside.mqtt.port, username=VENDOR4_USER,
                             password=VENDOR4_PASSWORD) as publisher:
        await publisher.publish_many(pushed)
    print(f"       signed batch of {len(batch)}: {sent.status}; forged: {forged.status}; replayed: "
          f"{replayed.status}; manual reading: {manual_status}; {len(pushed)} published on MQTT (QoS 1)")
    want = len(batch) + 1 + len(pushed)
    ok = await wait_until(lambda: len(readings.messages) >= before + want, [readings.changed], deadline)
    new = [json.loads(m.data) for m in readings.messages[before:]]
    sources = sorted({n["source"] for n in new})
    check(ok and sent.status == 202 and manual_status == 202 and len(new) == want,
          f"{len(new)} readings stored before they were acknowledged, canonical on meter.reading.received "
          f"({', '.join(sources)})")
    check(forged.status == 401 and replayed.status == 409, "a forged signature (401) and a replay (409) stored nothing")


async def section_monthly_pull(js: Any, records: Any, hub: Any, check: Check, wait_until: Any,
                               deadline: float) -> None:
    print("\n  12. Ops run the monthly meter pull now (scheduled for the 2nd, 03:00 Europe/Brussels)")
    from datetime import datetime, timezone

    from zoneinfo import ZoneInfo

    from engine.schedule import publish_ticks

    now = datetime.now(timezone.utc)  # a first run: last month, from its first midnight in each vendor's zone
    year, month = now.year - (now.month == 1), (now.month - 2) % 12 + 1
    flow = next(lf.flow for lf in hub.project.flows if lf.flow.name == "meter-vendor-pulls")
    entries = list(flow.source.each)  # the vendors as the flow declares them: format and zone each
    vendors = [e["vendor"] for e in entries]
    first = {e["vendor"]: datetime(year, month, 1, tzinfo=ZoneInfo(e["zone"])) for e in entries}
    print(f"       $ runner.py trigger meter-vendor-pulls --only vendor=… --payload '{{\"from\": "
          f"\"{year}-{month:02d}-01…\"}}'   (a first run: last month, inside the platforms' 3 months)")
    before = len(records.messages)
    started = time.monotonic()
    await publish_ticks(js, flow, "demo", manual=True,
                        payloads=[{**e, "from": first[e["vendor"]].isoformat()} for e in entries])
    ours = lambda: [json.loads(m.data) for m in records.messages[before:]  # noqa: E731
                    if json.loads(m.data).get("flow") == "meter-vendor-pulls"]
    ok = await wait_until(lambda: len(ours()) >= len(vendors), [records.changed], deadline)
    took = time.monotonic() - started
    rows = sorted(ours(), key=lambda r: r["checkpoint"])
    print(f"       {'vendor':<10}{'pages':>6}{'readings':>10}{'vendor total':>14}  matched")
    for r in rows:
        total = "-" if r["erp_total"] is None else r["erp_total"]
        print(f"       {r['checkpoint'].split(':')[1]:<10}{r['pages']:>6}{r['items']:>10}{total:>14}  {r['matched']}")
    count = sum(r["items"] for r in rows)
    check(ok and count > 0 and all(r["matched"] is not False for r in rows),
          f"{count} readings pulled from {len(vendors)} platforms in {took:.1f}s, each paged its own way, a "
          "reconciliation record per vendor")


RULE_FLOWS = ("meter-reading-dedupe", "meter-month-totals", "meter-reading-forecast", "meter-keycustomer-detect")


async def settled(js: Any, durables: tuple[str, ...], deadline: float) -> bool:
    """Until each flow's consumer has nothing pending or unacknowledged (a consumer-info query: no event says so)."""
    while time.monotonic() < deadline:
        infos = [await js.consumer_info("METER", d) for d in durables]
        if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
            return True
        await asyncio.sleep(0.05)
    return False


async def section_meter_rules(js: Any, readings: Any, records: Any, totals: Any, forecasts: Any, candidates: Any,
                              hub: Any, check: Check, wait_until: Any, deadline: float) -> None:
    print("\n  13. The rules on the readings: one per meter and time, month totals, forecasts, key customers")
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from sandbox.meters import Vendor3Platform, WebhookSender

    await settled(js, RULE_FLOWS, deadline)
    received = [json.loads(m.data) for m in readings.messages]
    pulled = [r for r in received if r["source"].endswith("/pull") and r.get("interval_start")]
    pushed = {(r["meter_id"], r["register"], r["read_at"]) for r in received if r["source"].endswith("/push")}
    pull_items = sum(r["items"] for r in map(lambda m: json.loads(m.data), records.messages)
                     if r.get("flow") == "meter-vendor-pulls")
    registers = {(r["meter_id"], r["register"]) for r in pulled}
    ok = await wait_until(lambda: len(forecasts.messages) >= len(registers), [forecasts.changed], deadline)
    keys = [(r["meter_id"], r["register"], r["read_at"]) for r in received]
    dropped = pull_items - len(pulled)
    check(len(keys) == len(set(keys)) and dropped == len(pushed) and dropped > 0,
          f"every reading once on meter.reading.received: the pull's {dropped} copies of the readings vendors 3 "
          "and 4 pushed in section 11 were dropped (KV per meter register, not the stream's 2-minute window)")
    month = json.loads(totals.messages[0].data)["month"] if totals.messages else "?"
    example = json.loads(forecasts.messages[0].data) if forecasts.messages else {}
    total = next((json.loads(m.data) for m in totals.messages
                  if json.loads(m.data)["meter_id"] == example.get("meter_id")
                  and json.loads(m.data)["register"] == example.get("register")), {})
    if example:
        print(f"       e.g. {example['meter_id']} {example['register']}: {month} {total.get('total')} "
              f"{example['unit']} -> forecast {example['value']} {example['unit']} until {example['read_at']}")
    check(ok and len(forecasts.messages) == len(registers),
          f"{len(totals.messages)} meter registers completed {month}; {len(forecasts.messages)} forecasts for the "
          "next month on meter.reading.forecast")

    london, today = ZoneInfo("Europe/London"), datetime.now(timezone.utc)
    end = datetime(today.year, today.month, 1, tzinfo=london)   # vendor 3's days are London days
    back = end - timedelta(days=85)
    start = datetime(back.year, back.month, 1, tzinfo=london)   # the first of the month three months back
    records = []
    for record in Vendor3Platform(meters=8).records(start, end, meters=range(7, 8)):  # a business meter ...
        record = json.loads(json.dumps(record))
        record["device"] = {"id": COLD_STORE_METER, "installation": COLD_STORE_SITE}
        record["reading"]["value"] = record["reading"]["value"] * 3 // 2  # ... of a cold store: half as much again
        records.append(record)
    before = len(candidates.messages)
    async with WebhookSender(hub.ingresses["meter-vendor3-push"].url, VENDOR3_SECRET) as sender:
        sent = [await sender.send(records[i:i + 40]) for i in range(0, len(records), 40)]
    print(f"       vendor 3 pushes {len(records)} daily readings of a cold store ({COLD_STORE_SITE}), "
          f"{start:%B} to {end - timedelta(days=1):%B}: {', '.join(sorted({str(d.status) for d in sent}))}")
    ok = await wait_until(lambda: len(candidates.messages) > before, [candidates.changed], deadline)
    ok = ok and await settled(js, RULE_FLOWS, deadline)
    new = [json.loads(m.data) for m in candidates.messages[before:]]
    if new:
        months = ", ".join(f"{m} {kwh:,.0f} kWh" for m, kwh in new[0]["months"].items())
        print(f"       crm.keycustomer.candidate: {new[0]['site_id']} (account {new[0]['account_id']}): {months}")
    check(ok and len(new) == 1 and new[0]["site_id"] == COLD_STORE_SITE,
          "one key-customer candidate, once: the cold store, above 5,000 kWh in three months (the CRM says "
          "it is a business); no other site raised one")

