"""`runner.py status`: ops' one screen. Per flow: rate, errors, backlog, lag, dead letters, waits;
the circuits; the waits nearest their deadline; which runners answer and whether they are ready.

Two sources, joined: every running runner answers a request on `ops.status_subject` with what only
it knows (its counters and rates, engine/operations.Operations.report); the store answers the rest
(engine/store_view.py), so a stopped hub's store still shows backlog, dead letters, circuits and
waits, read-only.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

from engine.breaker import kv_key
from engine.store_view import breaker_states, consumer_backlog, dead_letter_depths, flow_sources, pending_waits

GATHER = 1.0         # s: longest wait for runners to answer
QUIET = 0.25         # s: after the last answer, this long with none more ends the wait


async def runner_reports(nc: Any, subject: str, wait: float = GATHER) -> list[dict[str, Any]]:
    """The reports of every runner that answers within `wait` (none at once when no runner listens)."""
    reports: list[dict[str, Any]] = []
    arrived = asyncio.Event()
    nobody = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        if msg.headers and msg.headers.get("Status") == "503" and not msg.data:
            nobody.set()  # NATS' no-responders notice: nothing subscribes to the subject
            return
        try:
            report = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(report, dict) and "runner" in report:  # not, e.g., a stream's publish ack
            reports.append(report)
            arrived.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not nobody.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            arrived.clear()
            waiters = [asyncio.ensure_future(arrived.wait()), asyncio.ensure_future(nobody.wait())]
            done, pending = await asyncio.wait(waiters, timeout=min(remaining, QUIET) if reports else remaining,
                                               return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
            if not done:
                break  # quiet since the last answer (or nobody answered in time)
    finally:
        await sub.unsubscribe()
    return sorted(reports, key=lambda r: r.get("runner", ""))


def _since(record: dict[str, Any]) -> str | None:
    at = record.get("opened_at") if record.get("state") != "closed" else None
    at = at or record.get("at")
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds") if at else None


async def collect_status(nc: Any, js: Any, project: Any, now: datetime, *, gather: float = GATHER,
                         near: float = 6 * 3600.0) -> dict[str, Any]:
    """The whole screen as data (`--json`): runners, flows, circuits, waits near their deadline."""
    reports = await runner_reports(nc, project.config.ops.status_subject, gather)
    sources = flow_sources(project)
    backlogs = dict(zip((s.flow for s in sources),
                        await asyncio.gather(*(consumer_backlog(nc, s) for s in sources), return_exceptions=True)))
    dead = await dead_letter_depths(js, project.config.dlq.stream)
    waits = await pending_waits(js)
    shared = await breaker_states(js)
    flows = []
    for lf in project.flows:
        name = lf.flow.name
        mine = [r["flows"][name] for r in reports if name in r.get("flows", {})]
        backlog = backlogs.get(name)
        backlog = None if isinstance(backlog, BaseException) else backlog
        flows.append({
            "flow": name, "source": next(iter(type(lf.flow.source).model_fields)),
            "runners": len(mine), "consuming": sum(1 for m in mine if m.get("consuming")),
            "rate_per_s": round(sum(m.get("rate_per_s", 0.0) for m in mine), 3) if mine else None,
            "errors_per_min": round(sum(m.get("errors_per_min", 0.0) for m in mine), 3) if mine else None,
            "done": sum(m.get("done", 0) for m in mine), "failed": sum(m.get("failed", 0) for m in mine),
            "pending": backlog.pending if backlog else None,
            "unacked": backlog.ack_pending if backlog else None,
            "lag_s": round(backlog.lag_seconds, 3) if backlog else None,
            "dead_letters": dead.get(name, 0),
            "waits": sum(1 for w in waits if w.get("flow") == name)})
    circuits = []
    for name, cfg in sorted(project.endpoints.items()):
        if cfg.circuit_breaker is None:
            continue
        record = shared.get(kv_key(name), {})
        circuits.append({"endpoint": name, "state": record.get("state", "closed"), "since": _since(record),
                         "reason": record.get("reason", "")})
    horizon = (now + timedelta(seconds=near)).isoformat()
    soon = sorted((w for w in waits if w.get("deadline_at") and w["deadline_at"] <= horizon),
                  key=lambda w: w["deadline_at"])
    return {"at": now.isoformat(timespec="seconds"), "running": bool(reports),
            "runners": [{k: r.get(k) for k in ("runner", "uptime_s", "ready", "nats", "checks", "ops_url")}
                        for r in reports],
            "flows": flows, "circuits": circuits, "waits": len(waits),
            "waits_near_deadline": [{k: w.get(k) for k in ("flow", "key", "since", "deadline_at", "checks")}
                                    | {"overdue": w["deadline_at"] < now.isoformat()} for w in soon]}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def render(status: dict[str, Any], now: datetime) -> str:
    """The screen, at most ~100 columns wide."""
    out = []
    runners = status["runners"]
    if runners:
        ready = sum(1 for r in runners if r.get("ready"))
        out.append(f"PLU hub status at {status['at']}   {len(runners)} runner(s) answering, {ready} ready")
        for r in runners:
            failing = [f"{k}: {v}" for k, v in (r.get("checks") or {}).items() if v != "ok"]
            out.append(f"  {r['runner']:<34} up {_duration(r.get('uptime_s')):<8} "
                       f"{'ready' if r.get('ready') else 'NOT READY':<9} nats {r.get('nats')}"
                       + (f"   ({'; '.join(failing)})" if failing else "")
                       + (f"   {r['ops_url']}/metrics" if r.get("ops_url") else ""))
    else:
        out.append(f"PLU hub status at {status['at']}   no runner answered: the hub is stopped "
                   "(backlog, dead letters, circuits and waits read from its store)")
    out.append("")
    out.append(f"{'FLOW':<27}{'RUNNERS':>8}{'RATE/s':>9}{'ERR/min':>9}{'PENDING':>9}{'UNACKED':>9}"
               f"{'LAG':>8}{'DLQ':>6}{'WAITS':>7}")
    for f in status["flows"]:
        consumers = f"{f['consuming']}/{f['runners']}" if f["runners"] else "-"
        flag = "!" if f["dead_letters"] or (f["runners"] and f["consuming"] < f["runners"]) else " "
        out.append(f"{flag}{f['flow'][:26]:<26}{consumers:>8}{_num(f['rate_per_s'], '{:.1f}'):>9}"
                   f"{_num(f['errors_per_min'], '{:.1f}'):>9}{_num(f['pending']):>9}{_num(f['unacked']):>9}"
                   f"{_duration(f['lag_s']) if f['lag_s'] else ('0s' if f['lag_s'] == 0 else '-'):>8}"
                   f"{f['dead_letters']:>6}{f['waits'] or '':>7}")
    out.append("")
    by_state: dict[str, list[dict[str, Any]]] = {}
    for c in status["circuits"]:
        by_state.setdefault(c["state"], []).append(c)
    out.append("CIRCUITS")
    for state in ("open", "half_open"):
        for c in by_state.get(state, []):
            out.append(f"  {state.upper():<10} {c['endpoint']:<16} since {(c['since'] or '?')[11:19]}  {c['reason'][:60]}")
    closed = [c["endpoint"] for c in by_state.get("closed", [])]
    line = "  closed    "
    for name in closed:  # wrapped: the screen stays about 100 columns wide
        if len(line) + len(name) + 1 > 100:
            out.append(line)
            line = "            "
        line += " " + name
    if closed:
        out.append(line)
    out.append("")
    near = status["waits_near_deadline"]
    out.append(f"WAITS  {status['waits']} pending" + (", nearest deadlines:" if near else ", none near its deadline"))
    for w in near[:10]:
        left = (datetime.fromisoformat(w["deadline_at"]) - now).total_seconds()
        when = f"OVERDUE by {_duration(left)}" if left < 0 else f"deadline in {_duration(left)}"
        out.append(f"  {w['flow'][:26]:<26} {str(w['key'])[:24]:<24} since {str(w['since'])[:16]:<16}  {when:<22}"
                   f" checks {w.get('checks')}")
    if len(near) > 10:
        out.append(f"  ... and {len(near) - 10} more (--json lists them all)")
    return "\n".join(out)
