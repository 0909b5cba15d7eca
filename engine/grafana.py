"""A Grafana dashboard over the runner metrics (engine/metrics.py), generated so it names only metrics
that exist (tests check every expression against the catalogue).

Import docs/grafana-dashboard.json into Grafana and pick the Prometheus data source. The JetStream
gauges are the same from every runner, so they are aggregated with max(); counters and histograms
are summed over the runners.
"""

from __future__ import annotations

from typing import Any

FLOW = 'flow=~"$flow"'

# (title, unit, [(PromQL, legend)], width, kind)
PANELS: list[tuple[str, str, list[tuple[str, str]], int, str]] = [
    ("Messages done per second", "ops", [(f"sum by (flow) (rate(hub_flow_messages_done_total{{{FLOW}}}[5m]))", "{{flow}}")], 12, "timeseries"),
    ("Received, filtered, duplicates and published per second", "ops", [
        (f"sum by (flow) (rate(hub_flow_messages_received_total{{{FLOW}}}[5m]))", "{{flow}} received"),
        (f"sum by (flow) (rate(hub_flow_messages_filtered_total{{{FLOW}}}[5m]))", "{{flow}} filtered"),
        (f"sum by (flow) (rate(hub_flow_messages_duplicate_total{{{FLOW}}}[5m]))", "{{flow}} duplicate"),
        (f"sum by (flow) (rate(hub_flow_messages_published_total{{{FLOW}}}[5m]))", "{{flow}} published")], 12, "timeseries"),
    ("Messages held in the runners", "short", [(f"sum by (flow) (hub_flow_in_flight_messages{{{FLOW}}})", "{{flow}}")], 12, "timeseries"),
    ("Failed deliveries per second", "ops", [(f"sum by (flow) (rate(hub_flow_message_failures_total{{{FLOW}}}[5m]))", "{{flow}}")], 12, "timeseries"),
    ("Backlog: not yet delivered", "short", [(f"max by (flow) (hub_consumer_pending_messages{{{FLOW}}})", "{{flow}}")], 8, "timeseries"),
    ("Unacknowledged (in work or waiting to come back)", "short", [(f"max by (flow) (hub_consumer_ack_pending_messages{{{FLOW}}})", "{{flow}}")], 8, "timeseries"),
    ("Lag: oldest unacknowledged message", "s", [(f"max by (flow) (hub_consumer_lag_seconds{{{FLOW}}})", "{{flow}}")], 8, "timeseries"),
    ("Dead letters waiting for ops", "short", [(f"max by (flow) (hub_dead_letter_messages{{{FLOW}}}) > 0", "{{flow}}")], 8, "timeseries"),
    ("Dead-lettered per hour, by error class", "short", [(f"sum by (flow, error_class) (increase(hub_flow_dead_letters_total{{{FLOW}}}[1h]))", "{{flow}} {{error_class}}")], 8, "timeseries"),
    ("Redeliveries and waits per second", "ops", [
        (f"sum by (flow) (rate(hub_flow_redeliveries_total{{{FLOW}}}[5m]))", "{{flow}} redeliver"),
        (f"sum by (flow, reason) (rate(hub_flow_messages_waited_total{{{FLOW}}}[5m]))", "{{flow}} wait ({{reason}})")], 8, "timeseries"),
    ("Message duration p50 / p99 (delivery to settlement)", "s", [
        (f"histogram_quantile(0.5, sum by (le, flow) (rate(hub_flow_message_duration_seconds_bucket{{{FLOW}}}[5m])))", "{{flow}} p50"),
        (f"histogram_quantile(0.99, sum by (le, flow) (rate(hub_flow_message_duration_seconds_bucket{{{FLOW}}}[5m])))", "{{flow}} p99")], 12, "timeseries"),
    ("Step duration p99", "s", [(f"histogram_quantile(0.99, sum by (le, flow, step) (rate(hub_flow_step_duration_seconds_bucket{{{FLOW}}}[5m])))", "{{flow}} {{step}}")], 12, "timeseries"),
    ("Outside call p99 by endpoint and operation", "s", [("histogram_quantile(0.99, sum by (le, endpoint, operation) (rate(hub_call_duration_seconds_bucket[5m])))", "{{endpoint}} {{operation}}")], 12, "timeseries"),
    ("Outside call errors per second", "ops", [("sum by (endpoint, error_class) (rate(hub_call_errors_total[5m]))", "{{endpoint}} {{error_class}}")], 12, "timeseries"),
    ("Circuits not closed", "short", [('max by (endpoint, state) (hub_endpoint_circuit_state{state!="closed"}) > 0', "{{endpoint}} {{state}}")], 8, "timeseries"),
    ("Calls in flight and slots busy", "short", [
        ("sum by (endpoint) (hub_endpoint_calls_in_flight)", "{{endpoint}} in flight"),
        ("sum by (endpoint) (hub_endpoint_slots_busy)", "{{endpoint}} slots busy")], 8, "timeseries"),
    ("In-process retries per second", "ops", [(f"sum by (flow) (rate(hub_flow_call_attempts_total{{{FLOW}}}[5m]) - rate(hub_flow_calls_total{{{FLOW}}}[5m]))", "{{flow}}")], 8, "timeseries"),
    ("Waits in `until` steps and the oldest", "short", [
        (f"max by (flow) (hub_until_waits{{{FLOW}}})", "{{flow}} waits"),
        (f"max by (flow) (hub_until_oldest_wait_seconds{{{FLOW}}}) / 3600", "{{flow}} oldest (h)")], 12, "timeseries"),
    ("Ingress: items and bytes stored per second", "short", [
        ("sum by (flow) (rate(hub_ingress_items_stored_total[5m]))", "{{flow}} items"),
        ("sum by (flow) (rate(hub_ingress_stored_bytes_total[5m]))", "{{flow}} bytes"),
        ("sum by (flow) (rate(hub_ingress_quarantined_total[5m]))", "{{flow}} quarantined")], 12, "timeseries"),
    ("Runners ready / connected", "short", [
        ("sum(hub_runner_ready)", "ready"), ("sum(hub_nats_connected)", "connected to NATS"),
        ("count(hub_runner_ready)", "runners")], 8, "stat"),
    ("Flows not consuming (per runner)", "short", [(f"sum by (flow) (1 - hub_flow_consuming{{{FLOW}}}) > 0", "{{flow}}")], 8, "timeseries"),
    ("Runner CPU and memory", "short", [
        ("rate(process_cpu_seconds_total[5m])", "{{instance}} CPU s/s"),
        ("process_resident_memory_bytes / 1e6", "{{instance}} RSS MB")], 8, "timeseries"),
]


def _panel(i: int, x: int, y: int, title: str, unit: str, targets: list[tuple[str, str]], width: int,
           kind: str) -> dict[str, Any]:
    return {
        "id": i + 1, "type": kind, "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}
        if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [{"refId": chr(65 + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict[str, Any]:
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width, kind) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(_panel(i, x, y, title, unit, targets, width, kind))
        x += width
    return {
        "title": "PLU integration hub", "uid": "plu-hub", "tags": ["plu-hub", "nats", "integration"],
        "description": "Generated by `runner.py docs` from engine/grafana.py over the metrics in engine/metrics.py.",
        "schemaVersion": 39, "version": 1, "editable": True, "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s", "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "flow", "type": "query", "label": "flow", "multi": True, "includeAll": True, "allValue": ".*",
             "datasource": {"type": "prometheus", "uid": "${datasource}"}, "refresh": 2,
             "query": {"query": "label_values(hub_flow_messages_received_total, flow)", "refId": "flows"},
             "definition": "label_values(hub_flow_messages_received_total, flow)",
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard (for tests)."""
    out = [t["expr"] for p in board["panels"] for t in p["targets"]]
    out += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return out
