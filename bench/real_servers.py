"""Benchmark: the hub's ingresses against the production servers they meet (Dovecot, OpenSSH, Mosquitto,
nats-server's MQTT listener) and against the project's simulators, each next to a raw client loop.

    .venv/bin/python bench/real_servers.py [--mails 500] [--files 40] [--file-mb 1] [--messages 5000]

1. IMAP, mails/s: N reply mails (~2 KiB) in INBOX; raw = aioimaplib SELECT, UID FETCH BODY.PEEK[] 16 a time,
   UID MOVE (no JetStream); hub = ImapIngress (fetch, store in JetStream, move), timed until N moved.
   Against Dovecot and the pymap sandbox.
2. SFTP, files/s: N PDFs of --file-mb; raw = paramiko reading each file whole; hub = SftpIngress (Object
   Store put with SHA-256 check, landing, done mark), timed until N fetched. Against OpenSSH and asyncssh.
3. MQTT, messages/s: N QoS 1 messages queued for the hub's persistent session; raw = aiomqtt subscriber
   that acks each; hub = MqttIngress (store in JetStream, then PUBACK). Against Mosquitto and nats-server.
Every server runs on loopback on this machine; one nats-server (embedded) serves the hub. Ratios are
hub/raw on the same server in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import aioimaplib  # noqa: E402
import aiomqtt  # noqa: E402
import nats  # noqa: E402
import paramiko  # noqa: E402

from adapters.imap import ImapEndpointConfig, ImapIngress  # noqa: E402
from adapters.mqtt import MqttEndpointConfig, MqttIngress  # noqa: E402
from adapters.sftp import SftpEndpointConfig, SftpIngress  # noqa: E402
from engine import logs  # noqa: E402
from engine.config import HubConfig  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.ingress import Landing  # noqa: E402
from engine.spec import Flow  # noqa: E402
from engine.streams import ensure_streams  # noqa: E402
from sandbox.mqtt_broker import HUB_PASSWORD, HUB_USER, VENDOR4_PASSWORD, VENDOR4_USER, MqttBroker  # noqa: E402
from sandbox.pdf_generator import PdfGenerator  # noqa: E402
from sandbox.server_process import available  # noqa: E402
from sandbox.sftp_server import SftpServer, write_client_key  # noqa: E402

PASSWORD = "bench-real-pw"
os.environ["BENCH_REAL_PASSWORD"] = PASSWORD


def mail(i: int) -> bytes:
    return (f"From: erp-be@plu.example\r\nTo: hub@plu.example\r\nSubject: re [PLU-CSW-{i}]\r\n"
            f"Message-ID: <bench-{i}-{time.time_ns()}@erp.example>\r\n\r\n" + "reply line\r\n" * 160).encode()


async def imap_raw(server: Any, user: str, count: int) -> float:
    imap = aioimaplib.IMAP4_SSL(server.host, server.imap_port, ssl_context=server.client_context())
    await imap.wait_hello_from_server()
    await imap.login(user, PASSWORD)
    await imap.create("Done")
    began = time.perf_counter()
    await imap.select("INBOX")
    response = await imap.uid_search("ALL")
    uids = [int(u) for u in response.lines[0].split()]
    for start in range(0, len(uids), 16):
        chunk = ",".join(str(u) for u in uids[start:start + 16])
        await imap.uid("fetch", chunk, "(UID BODY.PEEK[])")
        await imap.uid("move", chunk, "Done")
    took = time.perf_counter() - began
    await imap.logout()
    assert len(uids) == count, (len(uids), count)
    return took


async def imap_hub(server: Any, user: str, js: Any, count: int, name: str) -> float:
    flow = Flow.model_validate({"name": name, "source": {"imap": {"endpoint": "mbox"}},
                                "steps": [{"publish": f"{name}.out"}]})
    endpoint = ImapEndpointConfig.model_validate({
        "adapter": "imap", "host": server.host, "port": server.imap_port, "username": user,
        "password": {"env": "BENCH_REAL_PASSWORD"}, "ca_bundle": str(server.ca_file)})
    ingress = ImapIngress(flow, flow.source.imap, endpoint, Landing(flow, js, 10.0, "imap"), None)  # type: ignore[arg-type]
    began = time.perf_counter()
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.moved >= count, timeout=600)
    finally:
        await ingress.stop()
    return time.perf_counter() - began


async def bench_imap(js: Any, count: int) -> None:
    from sandbox.dovecot import DovecotServer
    from sandbox.mail import MailSandbox

    kinds: list[tuple[str, Any]] = [("pymap sandbox", MailSandbox)]
    if available("dovecot"):
        kinds.insert(0, ("Dovecot", DovecotServer))
    for label, cls in kinds:
        async with cls(users={"raw@plu.example": PASSWORD, "hub@plu.example": PASSWORD}) as server:
            for user in ("raw@plu.example", "hub@plu.example"):
                for i in range(count):
                    await server.inject(user, mail(i))
            raw = await imap_raw(server, "raw@plu.example", count)
            hub = await imap_hub(server, "hub@plu.example", js, count, f"bench-imap-{len(label)}-{time.time_ns() % 10**6}")
            version = getattr(server, "version", "pymap")
            print(f"IMAP {label:14} ({version}): raw {count / raw:7.0f} mails/s   hub {count / hub:7.0f} mails/s   "
                  f"hub/raw {raw / hub:.2f}", flush=True)


def sftp_raw(server: Any, key: Path | None, known_hosts: Path, count: int) -> float:
    client = paramiko.SSHClient()
    client.load_system_host_keys(str(known_hosts))
    kwargs: dict[str, Any] = {"key_filename": str(key)} if key else {"password": PASSWORD}
    client.connect(server.host, server.port, username=server.username, look_for_keys=False, allow_agent=False,
                   **kwargs)
    sftp = client.open_sftp()
    began = time.perf_counter()
    names = [a.filename for a in sftp.listdir_attr(server.directory) if a.filename.endswith(".pdf")]
    for name in names:
        with sftp.open(f"{server.directory.rstrip('/')}/{name}", "rb") as fh:
            fh.prefetch()
            while fh.read(1024 * 1024):
                pass
    took = time.perf_counter() - began
    client.close()
    assert len(names) == count, (len(names), count)
    return took


async def sftp_hub(server: Any, key: Path | None, known_hosts: Path, js: Any, count: int, name: str) -> float:
    await js.add_stream(name=f"A_{name}".replace("-", "_"), subjects=[f"ops.alert.{name}"])
    flow = Flow.model_validate({"name": name, "source": {"sftp": {
        "endpoint": "drop", "directory": server.directory, "pattern": r"\.pdf$", "bucket": name, "poll": "0.2s"}},
        "steps": [{"publish": f"{name}.out"}]})
    login = {"private_key": str(key)} if key else {"password": {"env": "BENCH_REAL_PASSWORD"}}
    endpoint = SftpEndpointConfig.model_validate({
        "adapter": "sftp", "host": server.host, "port": server.port, "username": server.username, **login,
        "known_hosts": str(known_hosts)})
    ingress = SftpIngress(flow, flow.source.sftp, endpoint, Landing(flow, js, 10.0, "sftp"), None)  # type: ignore[arg-type]
    began = time.perf_counter()
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.fetched >= count, timeout=600)
    finally:
        await ingress.stop()
    return time.perf_counter() - began


async def bench_sftp(js: Any, count: int, mb: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp:
        base = Path(tmp)
        kinds: list[tuple[str, Any]] = [("asyncssh", None)]
        if available("openssh"):
            kinds.insert(0, ("OpenSSH", "openssh"))
        for label, kind in kinds:
            root = base / label / "drop"
            key: Path | None = None
            if kind == "openssh":
                from sandbox.openssh import OpenSshServer

                server: Any = OpenSshServer(root)
                key = base / label / "id"
                server.authorize_key(write_client_key(key))
                await server.start()
            else:
                server = await SftpServer(root, password=PASSWORD).start()
            try:
                gen = PdfGenerator(root)
                for i in range(count):
                    gen.drop_pdf(f"B-{i:05d}", mb=mb)
                known_hosts = server.write_known_hosts(base / label / "known_hosts")
                raw = await asyncio.to_thread(sftp_raw, server, key, known_hosts, count)
                hub = await sftp_hub(server, key, known_hosts, js, count, f"bench-sftp-{label.lower()}-{time.time_ns() % 10**6}")
            finally:
                await server.close()
            megabytes = count * mb
            print(f"SFTP {label:14} ({server.version}): raw {count / raw:6.1f} files/s ({megabytes / raw:5.0f} MB/s)   "
                  f"hub {count / hub:6.1f} files/s ({megabytes / hub:5.0f} MB/s)   hub/raw {raw / hub:.2f}", flush=True)


async def mqtt_queue(broker: MqttBroker, client_id: str, topic: str, count: int) -> None:
    """Subscribe `client_id` persistently, leave, and queue `count` QoS 1 messages for it."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=client_id, username=HUB_USER, password=HUB_PASSWORD,
                              protocol=aiomqtt.ProtocolVersion.V311, clean_session=False) as c:
        await c.subscribe(f"{topic}/#", qos=1)
    await broker.wait_disconnected(client_id)
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{client_id}", username=VENDOR4_USER,
                              password=VENDOR4_PASSWORD, max_inflight_messages=256) as pub:
        await asyncio.gather(*(pub.publish(f"{topic}/m{i % 50}", b'{"meter": "m%d", "value": %d}' % (i, i), qos=1)
                               for i in range(count)))


async def mqtt_raw(broker: MqttBroker, client_id: str, count: int) -> float:
    began = time.perf_counter()
    got = 0
    async with aiomqtt.Client(broker.host, broker.port, identifier=client_id, username=HUB_USER, password=HUB_PASSWORD,
                              protocol=aiomqtt.ProtocolVersion.V311, clean_session=False) as c:
        async for _ in c.messages:
            got += 1
            if got == count:
                break
    return time.perf_counter() - began


async def mqtt_hub(broker: MqttBroker, js: Any, client_id: str, topic: str, count: int, name: str) -> float:
    flow = Flow.model_validate({"name": name, "source": {"mqtt": {"endpoint": "b", "topics": [f"{topic}/#"],
                                                                  "client_id": client_id}},
                                "steps": [{"publish": f"{name}.out"}]})
    endpoint = MqttEndpointConfig.model_validate({"adapter": "mqtt", "host": broker.host, "port": broker.port,
                                                  "tls": False, "username": HUB_USER, "password": {"env": "BENCH_MQTT"}})
    os.environ["BENCH_MQTT"] = HUB_PASSWORD
    ingress = MqttIngress(flow, flow.source.mqtt, endpoint, Landing(flow, js, 10.0, "mqtt"), None)  # type: ignore[arg-type]
    began = time.perf_counter()
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.acked >= count, timeout=600)
    finally:
        await ingress.stop()
    return time.perf_counter() - began


async def bench_mqtt(js: Any, count: int) -> None:
    backends = ["nats"] + (["mosquitto"] if available("mosquitto") else [])
    for backend in backends:
        async with MqttBroker(backend=backend) as broker:
            await mqtt_queue(broker, "raw", "raw", count)
            raw = await mqtt_raw(broker, "raw", count)
            await mqtt_queue(broker, "hub", "hub", count)
            hub = await mqtt_hub(broker, js, "hub", "hub", count, f"bench-mqtt-{backend}-{time.time_ns() % 10**6}")
            print(f"MQTT {backend:14} ({broker.version}): raw {count / raw:7.0f} msg/s   hub {count / hub:7.0f} msg/s   "
                  f"hub/raw {raw / hub:.2f}", flush=True)


async def run(args: argparse.Namespace) -> None:
    with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=10)
        await ensure_streams(js, HubConfig())
        try:
            if args.mails:
                await bench_imap(js, args.mails)
            if args.files:
                await bench_sftp(js, args.files, args.file_mb)
            if args.messages:
                await bench_mqtt(js, args.messages)
        finally:
            await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=500, help="mails per IMAP run (0 skips IMAP)")
    parser.add_argument("--files", type=int, default=40, help="files per SFTP run (0 skips SFTP)")
    parser.add_argument("--file-mb", type=float, default=1.0, help="size of each PDF")
    parser.add_argument("--messages", type=int, default=5000, help="messages per MQTT run (0 skips MQTT)")
    args = parser.parse_args()
    logs.configure("error", "console")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
