"""The demo's last section: what ops see of the run that just happened. It scrapes the hub's /metrics
(parsed with prometheus-client's parser, as Prometheus would), asks /healthz and /readyz, gathers
`runner.py status` the way the command does, prints them, and checks that the numbers agree with
what the demo itself saw happen."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from typing import Any, Callable

import aiohttp
import nats
from prometheus_client.parser import text_string_to_metric_families

from engine.clock import SYSTEM
from engine.status import collect_status, render
from engine.store_view import consumer_backlog, flow_sources

SHOWN = ("contract-switch-request", "contract-switch-track", "contract-switch-notify", "meter-reading-to-crm",
         "tariff-quote")


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


async def _quiet(hub: Any, seconds: float) -> bool:
    """Until nothing waits in any flow's stream and no runner holds a message (the demo's earlier
    sections may still be finishing): a server query per flow, so polled."""
    deadline = time.monotonic() + seconds
    sources = flow_sources(hub.project)
    while time.monotonic() < deadline:
        held = any(len(getattr(getattr(r, "feed", None), "held", ())) for r in hub.runners.values())
        backlogs = await asyncio.gather(*(consumer_backlog(hub.nc, s) for s in sources))
        if not held and not any(b is not None and b.pending for b in backlogs):
            return True
        await asyncio.sleep(0.1)
    return False


def _counts(hub: Any) -> dict[str, tuple[int, int, int]]:
    return {name: (r.stats.received, r.stats.acked, r.stats.failed) for name, r in hub.runners.items()}


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def section_ops(hub: Any, check: Callable[[bool, str], None], dead_letters: list[Any], crm: Any,
                      number: int = 14) -> None:
    """`dead_letters`: every record the demo saw arrive on `dlq.>`; `crm`: the CRM bridge (HttpSink),
    whose `applied` holds each reading it took once; `number`: the section's place in the demo."""
    print(f"\n  {number}. What ops see: /metrics, /healthz, /readyz and `runner.py status`")
    server = hub.ops.server
    if server is None:
        check(False, "the hub serves /metrics (config ops.http.port is set)")
        return
    quiet = await _quiet(hub, 30.0)
    before = _counts(hub)
    async with aiohttp.ClientSession() as session:
        health, _ = await _get(session, server.url + "/healthz")
        ready, ready_body = await _get(session, server.url + "/readyz")
        code, text = await _get(session, server.url + "/metrics")
    after = _counts(hub)
    samples = _samples(text)
    print(f"       $ curl {server.url}/readyz   -> {ready} {ready_body}")
    print(f"       $ curl {server.url}/metrics | grep -E 'done_total|dead_letters_total'   ({len(text.splitlines())} lines)")
    for s in samples.get("hub_flow_messages_done_total", []):
        if s.labels["flow"] in SHOWN:
            print(f"         hub_flow_messages_done_total{{flow=\"{s.labels['flow']}\"}} {s.value:g}")
    for s in samples.get("hub_flow_dead_letters_total", []):
        print(f"         hub_flow_dead_letters_total{{flow=\"{s.labels['flow']}\",error_class=\"{s.labels['error_class']}\"}}"
              f" {s.value:g}")
    check(health == 200 and ready == 200 and code == 200, "/healthz and /readyz answer 200; /metrics is served")

    scraped = {name: (_value(samples, "hub_flow_messages_received_total", flow=name),
                      _value(samples, "hub_flow_messages_done_total", flow=name),
                      _value(samples, "hub_flow_message_failures_total", flow=name)) for name in hub.runners}
    # a redelivery due now may land during the scrape: the scrape lies between the counts before and after it
    mismatched = [name for name in hub.runners
                  if not all(b <= s <= a for b, s, a in zip(before[name], scraped[name], after[name]))]
    check(quiet and not mismatched, f"the scrape's counts of all {len(hub.runners)} flows are the runners' own"
          + (f" (differ: {', '.join(mismatched)})" if mismatched else "") + ("" if quiet else " (never quiet)"))

    seen = Counter(m.headers.get("Hub-Dlq-Flow") for m in dead_letters if m.headers)
    counted = Counter()
    for s in samples.get("hub_flow_dead_letters_total", []):
        counted[s.labels["flow"]] += int(s.value)
    check(+counted == +seen and sum(seen.values()) > 0,
          f"dead letters counted by the runner agree with the {sum(seen.values())} records the demo saw "
          f"on dlq.> ({', '.join(f'{f} {n}' for f, n in sorted(seen.items()))})")
    done = _value(samples, "hub_flow_messages_done_total", flow="meter-reading-to-crm")
    applied = len(crm.applied)
    check(done == applied, f"meter-reading-to-crm: {done:g} messages done on /metrics, "
          f"{applied} readings the CRM bridge applied")
    calls = _value(samples, "hub_call_duration_seconds_count", endpoint="crm_readings")
    errors = _value(samples, "hub_call_errors_total", endpoint="crm_readings")
    check(calls >= applied + errors and errors > 0,
          f"crm_readings: {calls:g} call tries timed, {errors:g} of them failed (the 503s and the outage)")

    nc = await nats.connect(hub.servers[0], name="demo-ops")
    try:
        now = SYSTEM.now()
        status = await collect_status(nc, nc.jetstream(), hub.project, now)
    finally:
        await nc.close()
    print("       $ runner.py status")
    print(textwrap.indent(render(status, now), "       "))
    by_flow = {f["flow"]: f for f in status["flows"]}
    agree = [name for name, f in by_flow.items()
             if f["dead_letters"] != _value(samples, "hub_dead_letter_messages", flow=name)
             or (f["pending"] is not None and f["pending"] != _value(samples, "hub_consumer_pending_messages", flow=name))]
    check(status["running"] and len(status["runners"]) == 1 and status["runners"][0]["ready"] and not agree,
          "`runner.py status` sees the one ready runner and agrees with /metrics on dead letters and backlog")
