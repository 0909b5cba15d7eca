"""The `sftp:` source (adapters.sftp.SftpIngress) against real SFTP servers and a real nats-server.

Every test that talks SFTP runs against OpenSSH (Debian's sshd with its sftp-server, what drops run in
the field) and the project's asyncssh drop: the `server` fixture. OpenSSH logs in by key only (its
passwords are the system's accounts), the sandbox by password.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import posixpath
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import structlog.testing
from pydantic import ValidationError

from engine.adapter import CallContext
from adapters.sftp import RemoteFile, SftpAdapter, SftpEndpointConfig, SftpIngress
from engine.config import HubConfig
from engine.errors import ConfigError, RoutingError
from engine.ingress import Landing
from engine.spec import Flow
from engine.streams import ensure_streams
from sandbox.pdf_generator import PdfGenerator
from sandbox.sftp_server import Janitor, SftpServer, write_client_key
from tests.conftest import require_server
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until

PASSWORD = "sftp-ingress-test-pw"
os.environ["SFTP_INGRESS_TEST_PASSWORD"] = PASSWORD
PATTERN = r"^INV-(?P<invoice_id>[A-Za-z0-9][A-Za-z0-9_-]*)-\d{14}\.pdf$"


class QuickIngress(SftpIngress):
    """Reconnects within a second, so outages in tests end fast."""

    BACKOFF_MAX = 1.0


class SimulatedCrash(BaseException):
    """Ends the ingress between two steps as a killed process would: nothing after it runs."""


MakeIngress = Callable[..., Awaitable[SftpIngress]]


@pytest_asyncio.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, HubConfig())  # HUB_INGRESS and DLQ among them
    yield js
    await nc.close()


SFTP_SERVERS = ["asyncssh", "openssh"]


@pytest_asyncio.fixture(params=SFTP_SERVERS)
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A drop of the test's own, once per server kind: restarts and host key changes touch nobody else."""
    if request.param == "openssh":
        require_server("openssh")
        from sandbox.openssh import OpenSshServer

        srv: Any = OpenSshServer(tmp_path / "drop")
        srv.client_key = tmp_path / "id_hub"
        srv.authorize_key(write_client_key(srv.client_key))
        await srv.start()
    else:
        srv = await SftpServer(tmp_path / "drop", password=PASSWORD).start()
    yield srv
    await srv.close()


def login_of(server: Any) -> dict[str, Any]:
    """The endpoint's login fields for this server: a password for the sandbox, the test's key for OpenSSH."""
    if server.password is not None:
        return {"password": {"env": "SFTP_INGRESS_TEST_PASSWORD"}}
    return {"private_key": str(server.client_key)}


@pytest.fixture
def gen(server: Any) -> PdfGenerator:
    return PdfGenerator(server.root)  # only its drop_* controls: no HTTP needed here


@pytest_asyncio.fixture
async def alerts(js: Any, unique: str) -> AsyncIterator[StreamReader]:
    """The test flow's ops.alert subject, captured by a stream of its own."""
    await js.add_stream(name=f"ALERTS_{unique}", subjects=[f"ops.alert.sftp-{unique}"])
    reader = await StreamReader.open(js, f"ops.alert.sftp-{unique}")
    yield reader
    await reader.sub.unsubscribe()
    await js.delete_stream(f"ALERTS_{unique}")


def endpoint_for(server: Any, known_hosts: Path, **extra: Any) -> SftpEndpointConfig:
    return SftpEndpointConfig.model_validate({
        "adapter": "sftp", "host": server.host, "port": server.port, "username": server.username,
        **login_of(server), "known_hosts": str(known_hosts), "timeout": "5s", **extra})


@pytest_asyncio.fixture
async def make_ingress(js: Any, unique: str, alerts: StreamReader, tmp_path: Path) -> AsyncIterator[MakeIngress]:
    """Builds, starts and finally stops an ingress for a flow and bucket of this test's own."""
    started: list[SftpIngress] = []

    async def make(server: Any, known_hosts: Path | None = None, login: dict[str, Any] | None = None,
                   cls: type[SftpIngress] = QuickIngress, **spec: Any) -> SftpIngress:
        known_hosts = known_hosts or server.write_known_hosts(tmp_path / "known_hosts")
        flow = Flow.model_validate({"name": f"sftp-{unique}", "source": {"sftp": {
            "endpoint": "drop", "directory": server.directory, "pattern": PATTERN, "bucket": f"b{unique}",
            "poll": "0.2s", **spec}}, "steps": [{"publish": f"{unique}.pdf"}]})
        endpoint = endpoint_for(server, known_hosts, **(login or {}))
        ingress = cls(flow, flow.source.sftp, endpoint, Landing(flow, js, 5.0, "sftp"), None)  # type: ignore[arg-type]
        await ingress.start()
        started.append(ingress)
        return ingress

    yield make
    for ingress in started:
        await ingress.stop()


async def landed(js: Any, ingress: SftpIngress) -> list[dict[str, Any]]:
    """Every landing record JetStream holds for the ingress's flow, in order."""
    subject = ingress.landing.subject
    info = await js.stream_info("HUB_INGRESS", subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    if not count:
        return []
    reader = await StreamReader.open(js, subject)
    try:
        return [json.loads(m.data) for m in await reader.wait_for(count, timeout=5)]
    finally:
        await reader.sub.unsubscribe()


async def object_bytes(js: Any, bucket: str, name: str) -> bytes:
    out = io.BytesIO()
    await (await js.object_store(bucket)).get(name, writeinto=out)
    return out.getvalue()


async def refuse_chunks(js: Any, bucket: str) -> None:
    """Make the bucket's stream refuse every chunk over 1 KiB (a real JetStream refusal, as a full store gives)."""
    from adapters.sftp.transfer import object_store

    await object_store(js, bucket)
    config = (await js.stream_info(f"OBJ_{bucket}")).config
    config.max_msg_size = 1024
    await js.update_stream(config)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the endpoint ------------------------------------------------------------------------------

def test_the_endpoint_needs_known_hosts_and_a_login_and_cannot_be_called() -> None:
    """known_hosts is required, a password or key must be given, and calling the endpoint is a RoutingError."""
    base = {"adapter": "sftp", "host": "127.0.0.1", "username": "hub"}
    with pytest.raises(ValidationError, match="known_hosts"):
        SftpEndpointConfig.model_validate({**base, "password": "x"})
    with pytest.raises(ValidationError, match="password or a private_key"):
        SftpEndpointConfig.model_validate({**base, "known_hosts": "kh"})
    config = SftpEndpointConfig.model_validate({**base, "known_hosts": "kh", "password": {"env": "X"}})
    assert config.circuit_breaker is None and config.port == 22
    adapter = SftpAdapter("pdf_drop", config, None)  # type: ignore[arg-type]
    assert "source only" in (adapter.check_operation(None) or "")
    with pytest.raises(RoutingError, match="source only"):
        asyncio.run(adapter.call(None, {}, CallContext({}, "id", "id", 1.0)))


async def test_a_missing_known_hosts_file_stops_the_start_with_a_clear_error(
        server: Any, make_ingress: MakeIngress, tmp_path: Path) -> None:
    """Without its known_hosts file the ingress does not start: the error names the file and how to pin the key."""
    with pytest.raises(ConfigError, match=r"known_hosts file .*nowhere does not exist: pin the server's host key"):
        await make_ingress(server, tmp_path / "nowhere")


# --- fetching ----------------------------------------------------------------------------------

async def test_pdfs_are_fetched_once_with_the_checksum_of_the_file(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress) -> None:
    """Each PDF lands once with its invoice id, size and SHA-256, and the Object Store holds exactly its bytes."""
    paths = [gen.drop_pdf("DE-INV-000001"), gen.drop_pdf("FR-INV-000002", mb=3), gen.drop_pdf("IT-INV-000003")]
    ingress = await make_ingress(server)
    await ingress.wait_for(lambda i: i.fetched == 3)
    await ingress.wait_for(lambda i: i.state == "listing")  # at least one more look at the same files
    await ingress.wait_for(lambda i: i.state == "idle")
    records = {r["invoice_id"]: r for r in await landed(js, ingress)}
    assert sorted(records) == ["DE-INV-000001", "FR-INV-000002", "IT-INV-000003"]
    for path in paths:
        record = next(r for r in records.values() if r["file_name"] == path.name)
        assert (record["size"], record["sha256"]) == (path.stat().st_size, sha(path))
        assert record["bucket"] == ingress.spec.bucket and record["object"] == path.name
        stored = await object_bytes(js, record["bucket"], record["object"])
        assert hashlib.sha256(stored).hexdigest() == sha(path)
    assert (ingress.fetched, ingress.duplicates, ingress.quarantined, ingress.failed) == (3, 0, 0, 0)
    assert ingress.bytes == sum(p.stat().st_size for p in paths)


class OverBound:
    """Watches tracemalloc from a thread: the first time Python holds more than `bound` bytes, it notes
    which source files hold the most, so a failure says where the memory was. It found paramiko's
    prefetch buffering the whole file when its request thread fell behind the reader on a loaded
    machine (peak 51 MiB, 1 run in 5 with two CPU hogs beside it); adapters/sftp/session.ReadAhead
    sends the requests from the reader instead (0 in 8 under the same load)."""

    def __init__(self, bound: int) -> None:
        self.bound, self.where = bound, ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "OverBound":
        tracemalloc.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        tracemalloc.stop()

    def _watch(self) -> None:
        while not self._done.wait(0.002) and not self.where:
            if tracemalloc.get_traced_memory()[0] > self.bound:
                top = tracemalloc.take_snapshot().statistics("filename")[:5]
                self.where = "; ".join(f"{s.traceback[0].filename}: {s.size / 2**20:.1f} MiB" for s in top)


async def test_a_50_mb_pdf_is_streamed_without_holding_it_in_memory(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress) -> None:
    """Python's peak allocation while a 50 MiB PDF goes into the Object Store stays a fraction of its size."""
    path = gen.drop_pdf("BIG-50", mb=50)
    with OverBound(12 * 1024 * 1024) as watch:
        ingress = await make_ingress(server)
        await ingress.wait_for(lambda i: i.fetched == 1, timeout=20)
        _, peak = tracemalloc.get_traced_memory()
    [record] = await landed(js, ingress)
    assert record["sha256"] == sha(path) and record["size"] > 50 * 1024 * 1024
    # measured ~5 MiB, the in-process SFTP server included
    assert peak < watch.bound, f"peak {peak / 2**20:.1f} MiB; over the bound first in: {watch.where}"


@pytest.mark.parametrize("crash_after", ["put", "stored"])
async def test_a_crash_between_steps_neither_loses_the_file_nor_announces_it_twice(
        tmp_path: Path, nats_url: str, js: Any, server: Any, gen: PdfGenerator, unique: str,
        crash_after: str) -> None:
    """A hub dying after the object put or after the landing (before the done mark) fetches the file again
    on restart; the flow still announces it exactly once, with the file's checksum."""
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    login = ("password: {env: SFTP_INGRESS_TEST_PASSWORD}" if server.password is not None
             else f"private_key: {server.client_key}")
    config = f"""
        streams:
          - {{name: T_{unique}, subjects: ["{unique}.>", "ops.alert.drop-{unique}"]}}
        endpoints:
          drop: {{adapter: sftp, host: 127.0.0.1, port: {server.port}, username: {server.username},
                  {login}, known_hosts: {known_hosts}, timeout: 5s}}
        """
    flow = f"""
        name: drop-{unique}
        source: {{sftp: {{endpoint: drop, directory: '{server.directory}', pattern: '{PATTERN}', bucket: b{unique},
                         poll: 0.2s}}}}
        steps:
          - publish: {unique}.pdf.available
        """
    project = project_from(tmp_path, config, flow)
    hub = await started_hub(project, nats_url)
    announced = await StreamReader.open(js, f"{unique}.pdf.available")
    crashed = asyncio.Event()

    async def crash(step: str, remote: RemoteFile) -> None:
        if step == crash_after:
            crashed.set()
            raise SimulatedCrash(step)

    try:
        hub.ingresses[f"drop-{unique}"].between_steps = crash
        path = gen.drop_pdf("DE-INV-000042", mb=1)
        async with asyncio.timeout(10):
            await crashed.wait()
    finally:
        await hub.stop()
    hub = await started_hub(project, nats_url)
    try:
        again = hub.ingresses[f"drop-{unique}"]
        await again.wait_for(lambda i: i.fetched == 1)
        assert again.duplicates == (1 if crash_after == "stored" else 0)
        await wait_until(lambda: settled(js, "HUB_INGRESS", f"drop-{unique}"))
        [msg] = await announced.wait_for(1)
        await again.wait_for(lambda i: i.state == "idle")
    finally:
        await hub.stop()
    assert len(announced.messages) == 1 and json.loads(msg.data)["sha256"] == sha(path)
    assert hashlib.sha256(await object_bytes(js, f"b{unique}", path.name)).hexdigest() == sha(path)


# --- the connection ----------------------------------------------------------------------------

async def test_a_server_restart_is_one_outage_after_which_the_ingress_reconnects_and_goes_on(
        server: Any, gen: PdfGenerator, make_ingress: MakeIngress) -> None:
    """While the server is down the ingress backs off with one warning; back up, it reconnects and fetches
    what arrived meanwhile; a connection the server drops later is re-established the same way."""
    ingress = await make_ingress(server)
    gen.drop_pdf("DE-INV-000100")
    await ingress.wait_for(lambda i: i.fetched == 1)
    with structlog.testing.capture_logs() as logs:
        await server.stop()
        gen.drop_pdf("DE-INV-000101")
        await ingress.wait_for(lambda i: i.state == "down")
        await ingress.wait_for(lambda i: i.state == "connecting")
        await ingress.wait_for(lambda i: i.state == "down")  # a second failed attempt: still one warning
        await server.start()
        await ingress.wait_for(lambda i: i.fetched == 2, timeout=10)
    assert ingress.reconnects == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["sftp_unavailable"]
    await ingress.wait_for(lambda i: i.state == "idle")
    assert await server.drop_connections() == 1
    gen.drop_pdf("DE-INV-000102")
    await ingress.wait_for(lambda i: i.fetched == 3, timeout=10)
    assert ingress.reconnects == 2 and ingress.failed == 0


async def test_an_unknown_host_key_is_refused_with_its_fingerprint_and_nothing_is_fetched(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, alerts: StreamReader,
        tmp_path: Path) -> None:
    """A known_hosts file without the server's key: the login is refused naming host, port and the offered
    fingerprint, the file stays unfetched, known_hosts is left as it was and an sftp_host_key alert fires."""
    pinned = tmp_path / "known_hosts"
    pinned.write_text(f"[127.0.0.1]:2222 {SftpServer(tmp_path / 'other').host_key_line}\n")  # another host only
    before = pinned.read_text()
    gen.drop_pdf("DE-INV-000200")
    with structlog.testing.capture_logs() as logs:
        ingress = await make_ingress(server, pinned)
        await ingress.wait_for(lambda i: i.state == "refused")
        [alert] = await alerts.wait_for(1)
    fingerprint = server.host_key.get_fingerprint("sha256")
    error = ingress.last_error or ""
    assert f"127.0.0.1:{server.port}" in error and fingerprint in error and "never accepted automatically" in error
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["sftp_refused"]
    body = json.loads(alert.data)
    assert (body["alert"], body["state"]) == ("sftp_host_key", "firing") and fingerprint in body["error"]
    assert ingress.fetched == 0 and await landed(js, ingress) == [] and server.logins == []
    assert pinned.read_text() == before


async def test_a_changed_host_key_is_refused_until_known_hosts_is_corrected(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, alerts: StreamReader,
        tmp_path: Path) -> None:
    """After the server restarts with a new host key, the ingress refuses it naming both fingerprints and
    fetches nothing; once ops pin the new key the same ingress (re-reading known_hosts) resumes."""
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    ingress = await make_ingress(server, known_hosts)
    gen.drop_pdf("DE-INV-000300")
    await ingress.wait_for(lambda i: i.fetched == 1)
    old = server.host_key.get_fingerprint("sha256")
    await server.restart(new_host_key=True)
    new = server.host_key.get_fingerprint("sha256")
    gen.drop_pdf("DE-INV-000301")
    await ingress.wait_for(lambda i: i.state == "refused", timeout=10)
    error = ingress.last_error or ""
    assert f"offered ssh-ed25519 {new}, but {known_hosts} pins ssh-ed25519 {old}" in error
    assert ingress.fetched == 1 and len(await landed(js, ingress)) == 1
    server.write_known_hosts(known_hosts)
    await ingress.wait_for(lambda i: i.fetched == 2, timeout=10)
    events = [(json.loads(m.data)["alert"], json.loads(m.data)["state"]) for m in await alerts.wait_for(2)]
    assert events == [("sftp_host_key", "firing"), ("sftp_host_key", "resolved")]


async def test_a_private_key_logs_in_without_any_password(
        js: Any, server: Any, gen: PdfGenerator, unique: str, alerts: StreamReader, tmp_path: Path) -> None:
    """An endpoint with only `private_key` logs in by public key and fetches like a password login."""
    server.authorize_key(write_client_key(tmp_path / "id_ed25519"))
    flow = Flow.model_validate({"name": f"sftp-{unique}", "source": {"sftp": {
        "endpoint": "drop", "directory": server.directory, "pattern": PATTERN, "bucket": f"b{unique}", "poll": "0.2s"}},
        "steps": [{"publish": f"{unique}.pdf"}]})
    endpoint = SftpEndpointConfig.model_validate({
        "adapter": "sftp", "host": server.host, "port": server.port, "username": server.username,
        "private_key": str(tmp_path / "id_ed25519"), "known_hosts": str(server.write_known_hosts(tmp_path / "kh"))})
    ingress = QuickIngress(flow, flow.source.sftp, endpoint, Landing(flow, js, 5.0, "sftp"), None)  # type: ignore[union-attr]
    gen.drop_pdf("DE-INV-000250")
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.fetched == 1)
    finally:
        await ingress.stop()
    assert server.logins == [(server.username, "publickey")]


async def test_a_wrong_password_is_refused_as_a_login_error(
        server: Any, make_ingress: MakeIngress, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A password (or, for OpenSSH, a key) the server refuses leaves the ingress `refused` with the user named,
    not retrying in a storm."""
    monkeypatch.setenv("SFTP_INGRESS_TEST_PASSWORD", "wrong")
    login = None
    if server.password is None:
        write_client_key(tmp_path / "id_unknown")
        login = {"private_key": str(tmp_path / "id_unknown")}
    ingress = await make_ingress(server, login=login)
    await ingress.wait_for(lambda i: i.state == "refused")
    assert f"login of {server.username!r} refused" in (ingress.last_error or "") and server.logins == []


# --- quarantine, deadlines, losses ---------------------------------------------------------------

async def test_a_misnamed_file_and_a_non_pdf_are_quarantined_once_with_the_reason(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, unique: str) -> None:
    """Each refused file is dead-lettered directly with its reason and its bytes kept under quarantine/;
    the good PDF beside them lands normally and nothing is reported twice."""
    bad_name, not_pdf = gen.drop_bad_name(), gen.drop_not_pdf("DE-INV-000400")
    good = gen.drop_pdf("DE-INV-000401")
    dead = await StreamReader.open(js, f"dlq.sftp-{unique}")
    try:
        ingress = await make_ingress(server)
        await ingress.wait_for(lambda i: i.quarantined == 2 and i.fetched == 1)
        await ingress.wait_for(lambda i: i.state == "listing")
        await ingress.wait_for(lambda i: i.state == "idle")
        records = {json.loads(m.data)["file_name"]: m for m in await dead.wait_for(2)}
    finally:
        await dead.sub.unsubscribe()
    assert sorted(records) == sorted([bad_name.name, not_pdf.name]) and len(dead.messages) == 2
    named, content = records[bad_name.name], records[not_pdf.name]
    assert "does not match the pattern" in named.headers["Hub-Quarantine"]
    assert named.headers["Hub-Dlq-Error-Class"] == "ValidationFailed"
    assert content.headers["Hub-Quarantine"].startswith("content is not a PDF: it starts with b'<html'")
    assert content.headers["Hub-Dlq-Error-Class"] == "UnparseablePayload"
    assert content.headers["Hub-Dlq-Subject"] == ingress.landing.subject
    for path, msg in ((bad_name, named), (not_pdf, content)):
        body = json.loads(msg.data)
        assert body["object"] == "quarantine/" + path.name and body["sha256"] == sha(path)
        assert await object_bytes(js, body["bucket"], body["object"]) == path.read_bytes()
    [record] = await landed(js, ingress)
    assert record["file_name"] == good.name and ingress.quarantined == 2


async def test_a_file_deleted_by_the_janitor_before_it_was_fetched_is_reported_by_name(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, alerts: StreamReader,
        unique: str) -> None:
    """While the Object Store refuses the file, the janitor deletes it: `sftp_file_lost` names it, once."""
    await refuse_chunks(js, f"b{unique}")
    path = gen.drop_pdf("DE-INV-000500", mb=0.2)
    janitor = Janitor(server.root, lifetime=1.0, interval=0.1).start()
    try:
        ingress = await make_ingress(server, lifetime="1s", warn_before="0.5s")
        await janitor.wait_deleted(path.name, timeout=10)
        await ingress.wait_for(lambda i: i.lost == 1, timeout=5)
    finally:
        await janitor.stop()
    by_alert = {json.loads(m.data)["alert"]: json.loads(m.data) for m in await alerts.wait_for(2)}
    lost = by_alert["sftp_file_lost"]
    assert lost["file"] == server.remote(path.name) and lost["state"] == "firing" and "max" in lost["error"].lower()
    assert by_alert["sftp_deadline"]["file"] == server.remote(path.name)  # it was due before it went
    assert ingress.failed >= 1 and ingress.fetched == 0 and await landed(js, ingress) == []


async def test_a_file_near_its_deadline_raises_one_alert_however_often_it_fails(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, alerts: StreamReader,
        unique: str) -> None:
    """A file 23 h old that cannot be stored raises `sftp_deadline` once with its age and the error, across polls."""
    await refuse_chunks(js, f"b{unique}")
    path = gen.drop_pdf("DE-INV-000600", mb=0.2)
    old = time.time() - 23 * 3600
    os.utime(path, (old, old))
    ingress = await make_ingress(server, lifetime="24h", warn_before="2h")
    [alert] = await alerts.wait_for(1)
    await ingress.wait_for(lambda i: i.failed >= 3)
    body = json.loads(alert.data)
    assert (body["alert"], body["file"], body["state"]) == ("sftp_deadline", server.remote(path.name), "firing")
    assert 23 * 3600 - 5 < body["age"] < 23 * 3600 + 60 and 3500 < body["deleted_in"] < 3605
    assert "not stored" in body["error"] and len(alerts.messages) == 1 and ingress.deadline_alerts == 1


# --- names as servers really list them -----------------------------------------------------------

def drop_bytes_named(server: Any, name: bytes, content: bytes) -> bytes:
    """A file whose name is raw bytes (any but / and NUL, as POSIX file systems allow); answers its path
    as SFTP clients see it."""
    with open(os.fsencode(server.root) + b"/" + name, "wb") as fh:
        fh.write(content)
    return posixpath.join(os.fsencode(server.directory), name)


async def test_a_name_that_is_not_utf8_is_quarantined_by_its_bytes_and_the_drop_goes_on(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, alerts: StreamReader,
        unique: str) -> None:
    """A file named with a byte that is not UTF-8 is quarantined with its bytes and an alert, once; the PDFs
    beside it land and the ingress keeps its one session (it blocked the whole drop before)."""
    bad = drop_bytes_named(server, b"INV-DE-INV-000700-20250101120000-\xff\xfe.pdf", b"%PDF-1.4 latin-1 named\n")
    good = [gen.drop_pdf("DE-INV-000701"), gen.drop_pdf("DE-INV-000702")]
    dead = await StreamReader.open(js, f"dlq.sftp-{unique}")
    try:
        ingress = await make_ingress(server)
        await ingress.wait_for(lambda i: i.fetched == 2 and i.quarantined == 1)
        await ingress.wait_for(lambda i: i.state == "listing")
        await ingress.wait_for(lambda i: i.state == "idle")
        [record] = await dead.wait_for(1)
        [alert] = await alerts.wait_for(1)
    finally:
        await dead.sub.unsubscribe()
    body = json.loads(record.data)
    assert bytes.fromhex(body["path_bytes_hex"]) == bad
    assert "not valid UTF-8" in record.headers["Hub-Quarantine"] and "\\xff\\xfe" in body["file_name"]
    assert await object_bytes(js, body["bucket"], body["object"]) == b"%PDF-1.4 latin-1 named\n"
    notice = json.loads(alert.data)
    assert (notice["alert"], notice["path_bytes_hex"]) == ("sftp_quarantined", body["path_bytes_hex"])
    assert sorted(r["file_name"] for r in await landed(js, ingress)) == sorted(p.name for p in good)
    assert len(server.logins) == 1 and ingress.reconnects == 0 and len(dead.messages) == 1


async def test_full_width_digits_do_not_pass_a_digit_pattern(
        js: Any, server: Any, gen: PdfGenerator, make_ingress: MakeIngress, unique: str) -> None:
    """`\\d{14}` in the pattern means ASCII digits: a name with full-width digits (valid UTF-8) is quarantined."""
    odd = server.root / "INV-DE-INV-000710-\uff12\uff10\uff12\uff15\uff10\uff11\uff10\uff11\uff11\uff12\uff10\uff10\uff10\uff10.pdf"
    odd.write_bytes(b"%PDF-1.4 full-width\n")
    good = gen.drop_pdf("DE-INV-000711")
    ingress = await make_ingress(server)
    await ingress.wait_for(lambda i: i.fetched == 1 and i.quarantined == 1)
    [record] = await landed(js, ingress)
    assert record["file_name"] == good.name


class SlowlyBackingOff(SftpIngress):
    """The production doubling from a shorter start, so several attempts fit in a test."""

    BACKOFF_START = 0.05
    BACKOFF_MAX = 0.4


async def test_a_session_that_fails_after_login_does_not_reset_the_backoff(
        server: Any, make_ingress: MakeIngress, tmp_path: Path) -> None:
    """A server that accepts the login but cannot list the drop is one outage: attempts add up, the wait
    doubles and one warning is logged (a reset after each login made it 1.5 logins a second, for ever)."""
    with structlog.testing.capture_logs() as logs:
        ingress = await make_ingress(server, directory=server.directory + "/missing", cls=SlowlyBackingOff)
        await ingress.wait_for(lambda i: i.attempts >= 4, timeout=10)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["sftp_unavailable"]
    assert "does not exist" in (ingress.last_error or "") and ingress.reconnects == 0
    assert ingress.outage._backoff == SlowlyBackingOff.BACKOFF_MAX  # 0.05, 0.1, 0.2, 0.4: doubled, not reset
