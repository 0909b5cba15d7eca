"""The README's main job: `runner.py demo` passes on this machine and says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_passes_every_check() -> None:
    # within pytest-timeout's 300 s (pyproject.toml), so a stuck demo fails here with what it printed
    try:
        done = subprocess.run([sys.executable, str(ROOT / "runner.py"), "demo"], capture_output=True, text=True,
                              timeout=270, cwd=ROOT)
    except subprocess.TimeoutExpired as stuck:
        printed = (stuck.stdout or b"").decode(errors="replace")  # bytes here, whatever text= says
        pytest.fail(f"the demo did not finish in 270 s:\n{printed[-3000:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout and "demo passed" in done.stdout
