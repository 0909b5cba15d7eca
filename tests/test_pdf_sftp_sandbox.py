"""The SFTP drop (asyncssh server, janitor) and the PDF Generator simulator, read with paramiko as the hub will."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import paramiko
import pypdf
import pytest
import pytest_asyncio

from sandbox.pdf_generator import FILE_NAME, PdfGenerator
from sandbox.sftp_server import Janitor, SftpServer, write_client_key

PASSWORD = "drop-secret"
INVOICE = {"invoiceId": "DE-INV-000123", "customerName": "Jürgen Müller", "amount": "91.05", "currency": "EUR",
           "lines": [{"text": "Energy May", "amount": "78.55"}, {"text": "Base fee", "amount": "12.50"}]}


# --- paramiko, the hub's client (blocking: always called through asyncio.to_thread) -----------------

@contextlib.contextmanager
def sftp(server: SftpServer, known_hosts: Path, **auth: object) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session that trusts only the pinned known_hosts file and never adds keys."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    auth = auth or {"password": PASSWORD}
    client.connect("127.0.0.1", server.port, username=auth.pop("username", "hub"), look_for_keys=False,
                   allow_agent=False, timeout=5, banner_timeout=5, auth_timeout=5, **auth)
    try:
        yield client.open_sftp()
    finally:
        client.close()


def listing(server: SftpServer, known_hosts: Path, path: str = "/", **auth: object) -> list[str]:
    with sftp(server, known_hosts, **auth) as s:
        return sorted(s.listdir(path))


def fetch(server: SftpServer, known_hosts: Path, path: str) -> bytes:
    with sftp(server, known_hosts) as s, s.open(path, "rb") as fh:
        fh.prefetch()
        return fh.read()


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    return path, write_client_key(path)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory, keys):
    srv = await SftpServer(tmp_path_factory.mktemp("sftp"), password=PASSWORD, authorized_keys=[keys[1]]).start()
    yield srv
    await srv.stop()


@pytest.fixture
def known_hosts(server, tmp_path) -> Path:
    return server.write_known_hosts(tmp_path / "known_hosts")


@pytest_asyncio.fixture(loop_scope="session")
async def lone_server(tmp_path):
    """A server of the test's own, for restarts and host key changes."""
    srv = await SftpServer(tmp_path / "lone", password=PASSWORD).start()
    yield srv
    await srv.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def generator(server):
    gen = await PdfGenerator(server.root / "invoices", delay=0.2).start()
    yield gen
    await gen.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(generator):
    generator.reset()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
    generator.reset()


# --- the SFTP server ---------------------------------------------------------------------------

async def test_password_login_lists_and_reads_files_with_the_host_key_pinned(server, known_hosts):
    """With RejectPolicy and the server's known_hosts line, paramiko logs in by password and reads a file."""
    (server.root / "hello.txt").write_bytes(b"hello drop")
    assert "hello.txt" in await asyncio.to_thread(listing, server, known_hosts)
    assert await asyncio.to_thread(fetch, server, known_hosts, "/hello.txt") == b"hello drop"
    assert ("hub", "password") in server.logins


async def test_public_key_login_works_and_wrong_credentials_are_refused(server, known_hosts, keys, tmp_path):
    """The authorised key logs in; a wrong password, a wrong user and an unknown key are refused."""
    await asyncio.to_thread(listing, server, known_hosts, key_filename=str(keys[0]))
    assert ("hub", "publickey") in server.logins
    stranger = tmp_path / "stranger"
    write_client_key(stranger)
    failures = server.auth_failures
    for auth in ({"password": "guess"}, {"username": "root", "password": PASSWORD},
                 {"key_filename": str(stranger)}):
        with pytest.raises(paramiko.AuthenticationException):
            await asyncio.to_thread(listing, server, known_hosts, **auth)
    assert server.auth_failures >= failures + 3


async def test_an_unknown_host_is_refused_not_added(server, tmp_path):
    """An empty known_hosts file with RejectPolicy refuses the server and adds nothing."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        await asyncio.to_thread(listing, server, empty)
    assert empty.read_text() == ""


async def test_restart_keeps_port_and_files_and_a_changed_host_key_is_refused(lone_server, tmp_path):
    """After a restart with the same key the pinned client reads the old files; with a new key it is refused."""
    pinned = lone_server.write_known_hosts(tmp_path / "known_hosts")
    port, old_line = lone_server.port, lone_server.known_hosts_line
    (lone_server.root / "INV-1-20250101000000.pdf").write_bytes(b"%PDF-1.3 kept")
    await lone_server.restart()
    assert lone_server.port == port and lone_server.known_hosts_line == old_line
    assert await asyncio.to_thread(listing, lone_server, pinned) == ["INV-1-20250101000000.pdf"]
    await lone_server.restart(new_host_key=True)
    assert lone_server.port == port and lone_server.known_hosts_line != old_line
    with pytest.raises(paramiko.BadHostKeyException):
        await asyncio.to_thread(listing, lone_server, pinned)
    repinned = lone_server.write_known_hosts(tmp_path / "known_hosts_new")
    assert await asyncio.to_thread(listing, lone_server, repinned) == ["INV-1-20250101000000.pdf"]


async def test_a_stopped_server_refuses_connections_and_start_serves_the_same_files(lone_server, tmp_path):
    """While stopped the port refuses; after start on the same port a file uploaded before is still there."""
    pinned = lone_server.write_known_hosts(tmp_path / "known_hosts")

    def upload() -> None:
        with sftp(lone_server, pinned) as s:
            s.putfo(io.BytesIO(b"uploaded"), "/up.txt")
    await asyncio.to_thread(upload)
    await lone_server.stop()
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        await asyncio.to_thread(listing, lone_server, pinned)
    await lone_server.start()
    assert await asyncio.to_thread(fetch, lone_server, pinned, "/up.txt") == b"uploaded"


async def test_dropped_connections_make_the_client_reconnect(server, known_hosts):
    """`drop_connections` breaks an open session (its next call fails) while a new connection works."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    await asyncio.to_thread(client.connect, "127.0.0.1", server.port, username="hub", password=PASSWORD,
                            look_for_keys=False, allow_agent=False, timeout=5)
    try:
        session = await asyncio.to_thread(client.open_sftp)
        await asyncio.to_thread(session.listdir, "/")
        assert await server.drop_connections() >= 1 and server.connections == 0
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            await asyncio.to_thread(session.listdir, "/")
    finally:
        client.close()
    assert isinstance(await asyncio.to_thread(listing, server, known_hosts), list)


# --- the PDF Generator ---------------------------------------------------------------------------

async def test_a_requested_invoice_pdf_lands_on_sftp_after_the_delay(server, known_hosts, generator, http):
    """A render job answers 202 at once; a real PDF named INV-<id>-<UTC stamp>.pdf appears in the drop later."""
    async with http.post(generator.jobs_url, json=INVOICE) as resp:
        assert resp.status == 202
        job = await resp.json()
    assert job["status"] == "QUEUED" and not list(generator.drop_dir.glob("INV-DE-INV-000123-*"))
    done = (await generator.wait_rendered(1))[0]
    async with http.get(f"{generator.jobs_url}/{job['jobId']}") as resp:
        view = await resp.json()
    assert view["status"] == "DONE" and view["fileName"] == done.file_name and view["sha256"] == done.sha256
    match = FILE_NAME.fullmatch(done.file_name)
    assert match and match["invoice_id"] == "DE-INV-000123"
    stamp = datetime.strptime(match["stamp"], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 10
    data = await asyncio.to_thread(fetch, server, known_hosts, f"/invoices/{done.file_name}")
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert hashlib.sha256(data).hexdigest() == done.sha256 and len(data) == view["sizeBytes"]
    text = pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()
    assert "DE-INV-000123" in text and "Jürgen Müller" in text and "91.05 EUR" in text


async def test_the_api_validates_requests_knows_its_jobs_and_can_be_made_to_fail(generator, http):
    """Bad fields are a 400 listing them, an unknown job a 404, and `fail_next` a 503 that renders nothing."""
    async with http.post(generator.jobs_url, json={"invoiceId": "../etc", "amount": "lots", "lines": [{}]}) as resp:
        body = await resp.json()
    assert resp.status == 400 and {d.split(":")[0] for d in body["details"]} == {"invoiceId", "customerName",
                                                                                "amount"}
    async with http.get(f"{generator.jobs_url}/J999999") as resp:
        assert resp.status == 404
    async with http.get(f"{generator.url}/api/v2/health") as resp:
        assert await resp.json() == {"status": "UP", "pendingJobs": 0}
    generator.fail_next(1, 503)
    async with http.post(generator.jobs_url, json=INVOICE) as resp:
        assert resp.status == 503
    assert generator.jobs == {}


async def test_controls_drop_a_pdf_at_once_a_misnamed_pdf_and_a_non_pdf(server, known_hosts, generator):
    """`drop_pdf` writes a valid PDF now; `drop_bad_name` one with an unparsable name; `drop_not_pdf` HTML as .pdf."""
    now = generator.drop_pdf("DE-INV-000777", mb=1)
    assert FILE_NAME.fullmatch(now.name)["invoice_id"] == "DE-INV-000777" and now.stat().st_size > 1024 * 1024
    assert "DE-INV-000777" in pypdf.PdfReader(now).pages[0].extract_text()
    bad_name = generator.drop_bad_name()
    not_pdf = generator.drop_not_pdf("DE-INV-000999")
    assert FILE_NAME.fullmatch(bad_name.name) is None and bad_name.read_bytes().startswith(b"%PDF-")
    assert FILE_NAME.fullmatch(not_pdf.name)["invoice_id"] == "DE-INV-000999"
    assert not (await asyncio.to_thread(fetch, server, known_hosts, f"/invoices/{not_pdf.name}")).startswith(b"%PDF")


async def test_large_pdfs_appear_whole_never_half_written(server, known_hosts, generator, http):
    """With `set_large(5)` each PDF is over 5 MiB, valid, and only ever visible under its final name at full size."""
    generator.set_large(5)
    seen: dict[str, set[int]] = {}
    stop = threading.Event()

    def watch() -> None:  # an impatient directory watcher, as the hub's SFTP source will be
        while True:
            last = stop.is_set()  # one more full scan after stop: it sees the last rename
            for entry in os.scandir(generator.drop_dir):
                if not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        seen.setdefault(entry.name, set()).add(entry.stat().st_size)
            if last:
                return
            time.sleep(0.002)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for n in (1, 2):
            async with http.post(generator.jobs_url, json={**INVOICE, "invoiceId": f"BIG-{n}"}) as resp:
                assert resp.status == 202
        jobs = await generator.wait_rendered(2, timeout=15)
    finally:
        stop.set()
        await asyncio.to_thread(watcher.join, 5)
    for job in jobs:
        assert job.size > 5 * 1024 * 1024 and seen[job.file_name] == {job.size}
    big = next(job for job in jobs if job.invoice_id == "BIG-1")
    data = await asyncio.to_thread(fetch, server, known_hosts, f"/invoices/{big.file_name}")
    assert hashlib.sha256(data).hexdigest() == big.sha256
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert "BIG-1" in reader.pages[0].extract_text() and list(reader.attachments) == ["archive-scan.bin"]


# --- the janitor -------------------------------------------------------------------------------

async def test_janitor_sweep_deletes_only_files_past_their_lifetime(tmp_path):
    """A sweep removes files (also in subfolders) older than the lifetime, records them, and keeps younger ones."""
    (tmp_path / "done").mkdir()
    old, older, young = tmp_path / "INV-1-x.pdf", tmp_path / "done" / "INV-2-x.pdf", tmp_path / "INV-3-x.pdf"
    for path, age in ((old, 100), (older, 5000), (young, 10)):
        path.write_bytes(b"%PDF-1.3")
        os.utime(path, (time.time() - age, time.time() - age))
    janitor = Janitor(tmp_path, lifetime=60)
    gone = janitor.sweep()
    assert [d.name for d in gone] == ["INV-1-x.pdf", "done/INV-2-x.pdf"] and janitor.deleted == gone
    assert gone[0].size == 8 and 99 < gone[0].age < 110 and young.exists() and not old.exists()
    assert janitor.sweep() == []


async def test_a_running_janitor_deletes_an_unfetched_pdf_before_the_hub_can_fetch_it(server, known_hosts):
    """A file left longer than the lifetime vanishes from the SFTP drop and fetching it then fails as not found."""
    folder = server.root / "janitor"
    folder.mkdir(exist_ok=True)
    (folder / "INV-9-20250101000000.pdf").write_bytes(b"%PDF-1.3 soon gone")
    janitor = Janitor(folder, lifetime=0.3, interval=0.05).start()
    try:
        record = await janitor.wait_deleted("INV-9-20250101000000.pdf", timeout=5)
    finally:
        await janitor.stop()
    assert record.age > 0.3
    with pytest.raises(FileNotFoundError):
        await asyncio.to_thread(fetch, server, known_hosts, "/janitor/INV-9-20250101000000.pdf")
