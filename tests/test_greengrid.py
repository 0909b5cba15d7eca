"""Each row of GreenGrid's error-handling table is expressible as a flow and passes `validate`."""

from __future__ import annotations

from pathlib import Path

from engine.validation import flow_files, load_project

HERE = Path(__file__).parent / "greengrid"


def test_every_greengrid_row_validates_with_its_policies() -> None:
    project = load_project(HERE / "config.yaml", flow_files(HERE / "flows"))
    flows = {lf.flow.name: lf.flow for lf in project.flows}
    assert len(flows) == 7
    assert flows["gg-sync-lookup"].on_error.retry == [0.2, 1.0]
    assert flows["gg-sync-lookup"].steps[0].call.fallback is not None  # type: ignore[union-attr]
    assert project.endpoints["powersales"].circuit_breaker.slow_call == 2.0  # type: ignore[union-attr]
    assert flows["gg-near-real-time"].on_error.retry == [1.0, 5.0, 30.0] and flows["gg-near-real-time"].on_error.dead_letter
    assert flows["gg-nightly-batch"].alerts.dead_letters == 1  # type: ignore[union-attr]
    assert flows["gg-webhook-storm"].limits.rate == 250000 / 3600 and len(flows["gg-webhook-storm"].on_error.retry) == 3
    assert flows["gg-event-driven"].alerts.latency == 0.5  # type: ignore[union-attr]
    assert flows["gg-sync-crm-to-erp"].idempotency.key == "{account_id}:{revision}"
