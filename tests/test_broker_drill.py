"""The broker drill of issue 12, short: a backlog drains through a `call` flow on two `runner.py run`
processes while nats-server is restarted on the same port and store. The full-size drill, and a runner
SIGKILL, are `bench/broker_drill.py` (minutes); `pytest -m drill -s` runs the drills alone and prints
their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.broker_drill import run_drill

pytestmark = pytest.mark.drill


@pytest.mark.parametrize("fault", ["term", "kill"])
async def test_a_broker_restart_mid_drain_loses_repeats_and_dead_letters_nothing(tmp_path: Path, fault: str):
    """SIGTERM or SIGKILL of nats-server a third of the way through 1,500 messages: every message has
    its effect and its output once, nothing is dead-lettered, both runners are still running at the end."""
    figures = await run_drill(fault, 1500, tmp_path, timeout=240)
    print(f"\n{figures.line()}")
    assert figures.effects == 1500 and figures.lost == 0 and figures.outputs == 1500
    assert figures.repeated_effects == 0 and figures.dead_lettered == 0
    assert figures.runner_exit_codes == [0, 0]  # stopped by the drill (SIGTERM), not dead on their own
