"""The README's main job: `runner.py demo` passes on this machine and says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_passes_every_check() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "runner.py"), "demo"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout and "demo passed" in done.stdout
