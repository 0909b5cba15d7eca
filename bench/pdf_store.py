"""Benchmark: invoice PDF MB/s from the SFTP drop into the JetStream Object Store through the sftp source.

    .venv/bin/python bench/pdf_store.py [--files 20] [--mb 5] [--memory-mb 50] [--runs 3]

On loopback, each party in its own process: an embedded nats-server, the sandbox SFTP server
(`python -m sandbox.sftp_server`, asyncssh), and this process as the hub. `--files` PDFs of `--mb` MiB
each (real PDFs padded with random bytes, so nothing compresses) are dropped, then, per run:
1. baseline "sftp read": paramiko reads every file to /dev/null (same pinned session, same bounded
   read-ahead as the ingress);
2. baseline "object put": nats-py `ObjectStore.put` of the same bytes from memory;
3. "ingress": a fresh SftpIngress takes the whole drop: listing, KV checks, streaming put with SHA-256,
   verification (digest, chunk count, first and last chunk re-read), landing, done mark.
Prints MB/s (medians of the runs) and the ratios to both baselines and to the two baselines in series
(the ingress reads a chunk, then puts it: its ceiling is 1 / (1/read + 1/put)). Then one `--memory-mb`
file through the ingress with tracemalloc on: the hub's peak Python allocation.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import nats  # noqa: E402

from adapters.sftp import Credentials, SftpEndpointConfig, SftpIngress, SftpSession  # noqa: E402
from engine import logs  # noqa: E402
from engine.config import HubConfig  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.ingress import Landing  # noqa: E402
from engine.spec import Flow  # noqa: E402
from engine.streams import ensure_streams  # noqa: E402
from sandbox.pdf_generator import PdfGenerator  # noqa: E402

PASSWORD = "sandbox-sftp-secret"  # sandbox.sftp_server's default when run alone
PATTERN = r"^INV-(?P<invoice_id>[A-Za-z0-9][A-Za-z0-9_-]*)-\d{14}\.pdf$"
MiB = 1024 * 1024


def start_sftp(root: Path) -> tuple[subprocess.Popen[str], int, str]:
    """The sandbox SFTP server in its own process; answers (process, port, known_hosts line)."""
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.sftp_server", str(root), "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first, second = proc.stdout.readline(), proc.stdout.readline()
    port = int(first.split("@")[1].split(":")[1].split("/")[0])
    return proc, port, second.split("known_hosts: ", 1)[1].strip()


def endpoint(port: int, known_hosts: Path) -> SftpEndpointConfig:
    os.environ["BENCH_SFTP_PASSWORD"] = PASSWORD
    return SftpEndpointConfig.model_validate({
        "adapter": "sftp", "host": "127.0.0.1", "port": port, "username": "hub",
        "password": {"env": "BENCH_SFTP_PASSWORD"}, "known_hosts": str(known_hosts), "timeout": "30s"})


def sftp_read_all(config: SftpEndpointConfig, directory: str) -> int:
    """Baseline 1 (blocking, run in a thread): read every file to /dev/null; answers the bytes read."""
    session = SftpSession(config, Credentials("bench", config))
    session.open()
    total = 0
    try:
        with open(os.devnull, "wb") as sink:
            for remote in session.listdir(directory):
                with session.open_file(remote) as fh:
                    while data := fh.read(128 * 1024):
                        sink.write(data)
                        total += len(data)
    finally:
        session.close()
    return total


async def raw_put_all(js: Any, paths: list[Path]) -> int:
    """Baseline 2: ObjectStore.put of the same bytes, from memory, one after the other."""
    bucket = f"raw{uuid.uuid4().hex[:8]}"
    store = await js.create_object_store(bucket)
    datas = [p.read_bytes() for p in paths]
    started = time.perf_counter()
    for path, data in zip(paths, datas):
        await store.put(path.name, data)
    elapsed = time.perf_counter() - started
    await js.delete_object_store(bucket)
    return int(sum(map(len, datas)) / elapsed)


async def through_ingress(js: Any, config: SftpEndpointConfig, directory: str, count: int) -> tuple[float, int]:
    """A fresh flow's ingress takes the drop; answers (seconds until all `count` are done, bytes)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=f"ALERTS_{name.replace('-', '_')}", subjects=[f"ops.alert.{name}"])
    flow = Flow.model_validate({"name": name, "source": {"sftp": {
        "endpoint": "drop", "directory": directory, "pattern": PATTERN, "bucket": name, "poll": "0.2s"}},
        "steps": [{"publish": f"bench.{name}"}]})
    ingress = SftpIngress(flow, flow.source.sftp, config, Landing(flow, js, 10.0, "sftp"), None)  # type: ignore[union-attr]
    started = time.perf_counter()
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.fetched + i.quarantined + i.failed >= count, timeout=600)
        elapsed = time.perf_counter() - started
        assert ingress.fetched == count, f"fetched {ingress.fetched}, failed {ingress.failed}: {ingress.last_error}"
    finally:
        await ingress.stop()
    await js.delete_object_store(name)
    return elapsed, ingress.bytes


async def run(args: argparse.Namespace) -> None:
    logs.configure("error", "console")
    tmp = Path(tempfile.mkdtemp(prefix="bench-pdf-"))
    drop, big = tmp / "drop" / "batch", tmp / "drop" / "big"
    gen, big_gen = PdfGenerator(drop), PdfGenerator(big)
    paths = [gen.drop_pdf(f"BENCH-{n:04d}", mb=args.mb) for n in range(args.files)]
    total = sum(p.stat().st_size for p in paths)
    print(f"{args.files} PDFs x {args.mb:g} MiB = {total / MiB:.1f} MiB on the drop; "
          f"{args.runs} run(s), medians; loopback, each party its own process", flush=True)
    proc, port, line = start_sftp(tmp / "drop")
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(line + "\n")
    config = endpoint(port, known_hosts)
    try:
        with EmbeddedNats(data_dir=tmp / "nats") as server:
            nc = await nats.connect(server.url)
            js = nc.jetstream(timeout=30)
            await ensure_streams(js, HubConfig())
            reads, puts, ingests = [], [], []
            for _ in range(args.runs):
                started = time.perf_counter()
                read = await asyncio.to_thread(sftp_read_all, config, "/batch")
                reads.append(read / (time.perf_counter() - started))
                puts.append(await raw_put_all(js, paths))
                elapsed, stored = await through_ingress(js, config, "/batch", len(paths))
                ingests.append(stored / elapsed)
            read_s, put_s, ingest_s = (statistics.median(x) / MiB for x in (reads, puts, ingests))
            series = 1 / (1 / read_s + 1 / put_s)
            print(f"  sftp read (paramiko -> /dev/null)     {read_s:8.1f} MB/s")
            print(f"  object put (nats-py, from memory)     {put_s:8.1f} MB/s")
            print(f"  ingress (sftp -> Object Store, checked) {ingest_s:6.1f} MB/s   "
                  f"= {ingest_s / read_s:.2f}x sftp read, {ingest_s / put_s:.2f}x object put, "
                  f"{ingest_s / series:.2f}x the two in series ({series:.1f} MB/s)")
            if args.memory_mb:
                path = big_gen.drop_pdf("BENCH-BIG", mb=args.memory_mb)
                tracemalloc.start()
                elapsed, stored = await through_ingress(js, config, "/big", 1)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(f"  memory: one {path.stat().st_size / MiB:.0f} MiB PDF through the ingress: peak Python "
                      f"allocation {peak / MiB:.1f} MiB ({stored / elapsed / MiB:.1f} MB/s with tracemalloc on)")
            await nc.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--memory-mb", type=float, default=50.0, help="0 skips the memory measurement")
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
