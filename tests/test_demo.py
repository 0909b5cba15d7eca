"""The README's main job: `runner.py demo` passes on any date, and says so.

The default run plays the demo at three fixed instants, so the outcome cannot depend on the day CI runs:
mid-month in summer time and the first hour of a year through `--at`, and the spring DST night with the
whole process's wall clock moved by time-machine (the demo's default "now"; nats-server, a separate
process, keeps the real time, so this also proves nothing compares its timestamps with ours).
`pytest -m demo_calendar` plays it at every edge: month starts and ends, the year's end, both DST
nights, 29 February, summer and winter (minutes: not in the default run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LIMIT = 270  # s: within pytest-timeout's 300 s (pyproject.toml), so a stuck demo fails here with its output

# a launcher that moves the process's clock before anything is imported, then runs `runner.py demo`
TRAVEL = """
import sys, time_machine
from datetime import datetime
sys.path.insert(0, {root!r})
with time_machine.travel(datetime.fromisoformat({at!r}), tick=True):
    import runner
    sys.exit(runner.main(["demo"]))
"""

# instant -> what it covers (UTC; Brussels and London change clocks at 01:00Z on the same nights)
EDGES = {
    "2027-01-15T10:00:00Z": "winter, mid-month",
    "2027-02-01T00:30:00Z": "a month's first hour (01:30 in Berlin and Rome)",
    "2027-01-31T23:30:00Z": "a month's last hour in London, the next month's first in Berlin",
    "2027-04-30T23:30:00Z": "the last UTC hour of April: already May everywhere on summer time",
    "2026-12-31T23:30:00Z": "the year's end: 2027 in Berlin, still 2026 in London",
    "2027-01-01T00:30:00Z": "the first hour of a year",
    "2027-03-28T00:30:00Z": "the spring DST night, before the jump (01:30 CET)",
    "2027-03-28T01:30:00Z": "the spring DST night, after the jump (03:30 CEST, 02:30 BST)",
    "2027-10-31T00:30:00Z": "the autumn DST night, first of the repeated hours (02:30 CEST, 01:30 BST)",
    "2027-10-31T01:30:00Z": "the autumn DST night, second of the repeated hours (02:30 CET, 01:30 GMT)",
    "2028-02-29T12:00:00Z": "29 February",
    "2028-03-01T00:30:00Z": "the first hour after a leap February (its 29 days are pulled)",
    "2027-07-15T10:00:00Z": "summer, mid-month",
    "2026-03-29T01:30:00Z": "a spring DST night in the past (the clock runs from an earlier instant)",
    "2026-10-25T01:30:00Z": "an autumn DST night in the past, second of the repeated hours",
}


def run_demo(command: list[str]) -> str:
    """Run a demo command from the project root; fail with its output unless every check passed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_LIMIT, cwd=ROOT)
    except subprocess.TimeoutExpired as stuck:
        printed = (stuck.stdout or b"").decode(errors="replace")  # bytes here, whatever text= says
        pytest.fail(f"the demo did not finish in {RUN_LIMIT} s:\n{printed[-3000:]}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout and "demo passed" in done.stdout
    return done.stdout


def as_of(output: str) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith("as of ")).split()[2]


@pytest.mark.parametrize("at", ["2027-07-15T10:00:00Z", "2027-01-01T00:30:00Z"], ids=["summer", "new-year"])
def test_the_demo_passes_every_check_as_of_a_given_instant(at: str) -> None:
    """`runner.py demo --at X` runs the whole scenario as of X (it says so) and passes every check."""
    output = run_demo([sys.executable, str(ROOT / "runner.py"), "demo", "--at", at])
    assert as_of(output).startswith(at[:16])


def test_the_demo_passes_with_the_process_clock_moved_to_the_spring_dst_night() -> None:
    """With the whole process's wall clock at 01:30Z on the night clocks go forward (time-machine), the
    demo's default "now" is that night and every check passes."""
    at = "2027-03-28T01:30:00+00:00"
    output = run_demo([sys.executable, "-c", TRAVEL.format(root=str(ROOT), at=at)])
    assert as_of(output).startswith("2027-03-28T01:3")


def test_a_bad_instant_is_a_usage_error_naming_the_form() -> None:
    """`--at` without an offset, or not a time at all, exits 2 and shows an instant to copy."""
    for bad in ("2027-03-28T01:30", "yesterday"):
        done = subprocess.run([sys.executable, str(ROOT / "runner.py"), "demo", "--at", bad], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 2 and "--at" in done.stderr, done.stderr
        assert "2027-03-28T01:30:00Z" in done.stderr or "add Z or +01:00" in done.stderr, done.stderr


@pytest.mark.demo_calendar
@pytest.mark.parametrize("at", list(EDGES))
def test_the_demo_passes_at_every_calendar_edge(at: str) -> None:
    """At month starts and ends, the year's end, both DST nights, 29 February, summer and winter."""
    output = run_demo([sys.executable, str(ROOT / "runner.py"), "demo", "--at", at])
    assert as_of(output).startswith(at[:16])


@pytest.mark.demo_calendar
@pytest.mark.parametrize("at", ["2027-10-31T01:30:00+00:00", "2028-02-29T12:00:00+00:00", "2026-12-31T23:30:00+00:00"],
                         ids=["autumn-repeated-hour", "29-february", "year-end"])
def test_the_demo_passes_with_the_process_clock_moved(at: str) -> None:
    """The same with the process's own clock moved (time-machine), not through `--at`."""
    output = run_demo([sys.executable, "-c", TRAVEL.format(root=str(ROOT), at=at)])
    assert as_of(output).startswith(at[:15])
