"""The command line as ops use it: validate's exit codes, run's clean start and stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parents[1]
RUNNER = [sys.executable, str(ROOT / "runner.py")]

CONFIG = """\
nats: {{embedded: {{data_dir: "{store}"}}}}
streams:
  - {{name: IN, subjects: ["in.>"]}}
  - {{name: OUT, subjects: ["out.>"]}}
logging: {{level: info, format: json}}
"""
FLOW = """\
name: relay
source: {subject: in.x}
steps:
  - transform: readings.passthrough
  - publish: out.x
"""


def setup(tmp: Path, flow: str = FLOW) -> list[str]:
    (tmp / "flows").mkdir()
    (tmp / "flows" / "relay.yaml").write_text(flow)
    (tmp / "config.yaml").write_text(CONFIG.format(store=tmp / "store"))
    return ["--config", str(tmp / "config.yaml"), "--flows", str(tmp / "flows")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_validate_reports_file_and_line_and_exits_2(tmp_path: Path) -> None:
    args = setup(tmp_path, FLOW.replace("publish: out.x", "publish: nowhere.x"))
    done = subprocess.run([*RUNNER, "validate", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{tmp_path / 'flows' / 'relay.yaml'}:5: steps[1].publish.subject: no stream in config captures" in done.stderr


def test_validate_ok_lists_the_flows(tmp_path: Path) -> None:
    done = subprocess.run([*RUNNER, "validate", *setup(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ok: 1 flow(s)" in done.stdout and "relay" in done.stdout


def test_run_refuses_to_start_on_invalid_config(tmp_path: Path) -> None:
    args = setup(tmp_path, FLOW.replace("transform: readings.passthrough", "transform: readings.nope"))
    done = subprocess.run([*RUNNER, "run", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown transform 'readings.nope'" in done.stderr and "refusing to start" in done.stderr
    assert not (tmp_path / "store").exists()  # no broker was started


async def test_run_serves_flows_and_sigterm_stops_everything(tmp_path: Path) -> None:
    """`run` starts the embedded broker and the flows; SIGTERM drains, exits 0, leaves no process."""
    proc = await asyncio.create_subprocess_exec(*RUNNER, "run", *setup(tmp_path), stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    events: dict[str, dict] = {}
    try:
        async with asyncio.timeout(30):
            while "hub_started" not in events:
                line = await proc.stderr.readline()
                assert line, "runner exited before starting"
                event = json.loads(line)
                events[event["event"]] = event
        server_pid = events["embedded_nats_started"]["pid"]
        url = (tmp_path / "store" / "hub.url").read_text()
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.publish("in.x", b'{"hello": "world"}', headers={"ce-id": "one"})
        sub = await js.subscribe("out.x", ordered_consumer=True)
        msg = await sub.next_msg(timeout=10)
        assert json.loads(msg.data) == {"hello": "world"} and msg.headers["ce-correlationid"] == "one"
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = (await proc.stderr.read()).decode()
        assert "flow_stopped" in rest and "embedded_nats_stopped" in rest
        assert not alive(server_pid)
        assert not (tmp_path / "store" / "hub.url").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_help_teaches_the_commands() -> None:
    done = subprocess.run([*RUNNER, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for word in ("validate", "run", "demo", "docs", "examples:", "exit codes"):
        assert word in done.stdout
