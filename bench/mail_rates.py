"""Benchmark: Belgian mails per second out (SMTP) and in (IMAP) through the shipped flows, against raw loops.

    .venv/bin/python bench/mail_rates.py [--mails 500]

The mail sandbox (aiosmtpd + pymap, TLS on) runs in its own process; the hub and the raw loops share this one.
1. out, raw: aiosmtplib on 4 connections (the be_erp_mail endpoint's max_connections), the same mail bytes
   (but for Date and X-Correlation-Id)
2. out, hub: N signed BE contracts through flows/be-contract-switch-email.yaml (state record in KV, smtp send,
   erp.contract.switch-requested) in a Hub on an embedded nats-server; timed until N switch-requested
3. in, raw: aioimaplib fetching (BODY.PEEK[], 16 a time like the ingress) and moving N mails, no JetStream
4. in, hub: one ACK reply per request of step 2, injected into the hub's INBOX, flows/be-erp-replies.yaml (IMAP ->
   JetStream -> parse -> KV state -> ack); timed from Hub.start() until the flow has finished N messages
Checks what the mailboxes and the KV records say, and prints CPU per mail of each process. Loopback only.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import ssl  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aioimaplib  # noqa: E402
import aiosmtplib  # noqa: E402

from adapters.imap import ImapIngress  # noqa: E402
from adapters.smtp.compose import build_message, parse_payload, wire_bytes  # noqa: E402
from engine import logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.keyed_state import PREFIX  # noqa: E402
from engine.messages import event_headers  # noqa: E402
from engine.runtime import Hub  # noqa: E402
from engine.validation import flow_files, load_project  # noqa: E402
from sandbox.mail.compose import system_mail  # noqa: E402
from schemas.be_flatfile import BeAccepted, BeFileHeader, BeFlatFile, attachment_name, encode, subject_tag  # noqa: E402
from transforms.be_erp import parse_reply  # noqa: E402
from transforms.be_erp.mail import message_id_for, switch_mail  # noqa: E402
from transforms.contracts import to_switch_request  # noqa: E402

PASSWORD = "bench-mail-pw"
HUB, ERP, RAW_ERP, RAW_IN = "hub@plu.example", "erp-be@plu.example", "raw-erp@plu.example", "raw-in@plu.example"
CONNECTIONS = 4  # config/sandbox.yaml be_erp_mail max_connections, and the flows' limits.concurrency


def serve_mail(conn) -> None:
    """The mail sandbox's process: answers (op, args) requests from the pipe on a thread, served on its loop."""
    from sandbox.mail import MailSandbox

    async def handle(mail: MailSandbox, op: str, args: tuple):
        if op == "add_user":
            return await mail.add_user(*args)
        if op == "inject":  # (user, [raw, ...]): one request for all, so the hub is not kept waiting per mail
            return [await mail.inject(args[0], raw) for raw in args[1]]
        if op == "count":
            return len(await mail.messages(*args))
        return mail.delivered(*args)

    async def main() -> None:
        async with MailSandbox(users={HUB: PASSWORD}) as mail:
            conn.send((mail.host, mail.smtp_port, mail.imap_port, str(mail.ca_file)))
            loop = asyncio.get_running_loop()
            while (request := await loop.run_in_executor(None, conn.recv)) != "stop":
                conn.send(await handle(mail, request[0], request[1:]))

    asyncio.run(main())


class MailControl:
    """The bench side of the pipe, one request at a time (each is awaited); calls run on a thread so this
    process's loop (the hub) keeps going meanwhile."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def _call(self, *request):
        self.conn.send(request)
        return self.conn.recv()

    async def __call__(self, *request):
        return await asyncio.get_running_loop().run_in_executor(None, self._call, *request)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and CPU per process over one measured section."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> "Meter":
        self.cpu0, self.t0 = {k: cpu_seconds(p) for k, p in self.pids.items()}, time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu = {k: cpu_seconds(p) - self.cpu0[k] for k, p in self.pids.items()}


def contract(i: int) -> dict:
    return {"contract_id": f"K-BE-{i}", "version": 1, "account_id": f"A-BE-{i}", "country": "BE",
            "tariff_code": "GREEN-12", "signed_on": "2026-12-01", "key_customer": True,
            "sites": [{"site_id": f"S-BE-{i}", "postcode": "4000", "city": "Liège", "meter_ids": [f"EAN{i}"]}]}


def out_bytes(i: int) -> bytes:
    """The mail the smtp adapter builds for contract i (its Date aside), for the raw loop to send."""
    mail = {**switch_mail(to_switch_request(contract(i)))["mail"], "to": [ERP]}
    return wire_bytes(build_message(parse_payload("raw", mail), HUB, mail["message_id"]))


def ack_reply(token: str, contract_id: str, i: int) -> bytes:
    """The ERP's ACK for one request, as the Belgian ERP simulator writes it (threaded, token in subject and file)."""
    file = BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=token, sender="ERP-BE"),
                      records=[BeAccepted(ref_seq=1, ref_type="CSW", ref_key=contract_id, erp_ref=f"SW{i:010d}")])
    return system_mail(ERP, HUB, f"ERP-BE antwoord / réponse {subject_tag(token)}", "Automatisch bericht.\n",
                       encode(file), attachment_name("RSP", token), in_reply_to=message_id_for(token)).as_bytes()


def project_with(tmp: Path, name: str):
    (tmp / name).mkdir()
    (tmp / name / f"{name}.yaml").write_text((ROOT / "flows" / f"{name}.yaml").read_text())
    return load_project(ROOT / "config" / "sandbox.yaml", flow_files(tmp / name))


async def raw_out(host: str, port: int, tls: ssl.SSLContext, mails: list[bytes]) -> None:
    todo = iter(mails)

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=tls, username=HUB,
                                 password=PASSWORD, local_hostname="plu.example")
        await client.connect()
        for data in todo:
            await client.sendmail(HUB, [RAW_ERP], data)
        await client.quit()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


async def hub_out(project, broker: EmbeddedNats, n: int, meter: Meter) -> tuple[Hub, list[dict]]:
    hub = Hub(project, servers=[broker.url])
    await hub.start()
    requested: list[dict] = []
    done = asyncio.Event()

    async def on_requested(msg) -> None:
        requested.append(json.loads(msg.data))
        if len(requested) >= n:
            done.set()

    sub = await hub.nc.subscribe("erp.contract.switch-requested", cb=on_requested)
    with meter:
        acks = [await hub.js.publish_async("crm.contract.signed", json.dumps(contract(i)).encode(),
                                           headers=event_headers("/bench", "crm.contract.signed")) for i in range(n)]
        await asyncio.gather(*acks)
        await asyncio.wait_for(done.wait(), 600)
    await sub.unsubscribe()
    return hub, requested


async def raw_in(host: str, port: int, tls: ssl.SSLContext, n: int) -> int:
    imap = aioimaplib.IMAP4_SSL(host, port, ssl_context=tls, timeout=30)
    await imap.wait_hello_from_server()
    await imap.login(RAW_IN, PASSWORD)
    await imap.create("Processed")
    moved = 0
    while moved < n:
        await imap.select("INBOX")
        found = await imap.uid_search("ALL")
        uids = [u.decode() for u in found.lines[0].split() if u.isdigit()]
        for start in range(0, len(uids), ImapIngress.FETCH_CHUNK):
            chunk = ",".join(uids[start:start + ImapIngress.FETCH_CHUNK])
            fetched = await imap.uid("fetch", chunk, "(UID BODY.PEEK[])")
            assert (await imap.uid("move", chunk, "Processed")).result == "OK"
            moved += sum(isinstance(line, bytearray) for line in fetched.lines)  # one literal per mail
    await imap.logout()
    return moved


async def hub_in(project, broker: EmbeddedNats, n: int, meter: Meter) -> tuple[Hub, float, float]:
    """Also answers when Hub.start() returned and when the ingress had stored the last mail (seconds)."""
    hub = Hub(project, servers=[broker.url])
    with meter:
        await hub.start()
        started = stored = time.perf_counter() - meter.t0
        stats, ingress = hub.runners["be-erp-replies"].stats, hub.ingresses["be-erp-replies"]
        deadline = time.monotonic() + 600
        while stats.acked + stats.filtered + stats.failed < n and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # a benchmark's progress poll, not a test wait
            if ingress.stored + ingress.duplicates < n:
                stored = time.perf_counter() - meter.t0
    return hub, started, stored


async def accepted_records(js) -> int:
    kv = await js.key_value(PREFIX + "be_requests")
    states = [json.loads((await kv.get(k)).value) for k in await kv.keys()]
    return sum(all(r["status"] == "ACCEPTED" for r in s["records"].values()) for s in states)


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "console")
    n = args.mails
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    (proc := ctx.Process(target=serve_mail, args=(there,), daemon=True)).start()
    if not here.poll(60):
        raise SystemExit("the mail sandbox did not start")
    host, smtp_port, imap_port, ca_file = here.recv()
    mail = MailControl(here)
    for user in (ERP, RAW_ERP, RAW_IN):
        await mail("add_user", user, PASSWORD)
    for name, value in {"SMTP_HOST": host, "SMTP_PORT": str(smtp_port), "IMAP_HOST": host,
                        "IMAP_PORT": str(imap_port), "MAIL_CA_BUNDLE": ca_file, "HUB_MAIL_USER": HUB,
                        "HUB_MAIL_PASSWORD": PASSWORD, "BE_ERP_ADDRESS": ERP,
                        "CRM_BRIDGE_TOKEN": "bench", "ERP_DE_PASSWORD": "unused"}.items():
        os.environ[name] = value
    tls = ssl.create_default_context(cafile=ca_file)
    rows, checks = [], []
    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp_dir, EmbeddedNats(data_dir=Path(tmp_dir)) as broker:
        tmp = Path(tmp_dir)  # the broker's JetStream data and the flow files of this run, removed at the end
        pids = {"this": os.getpid(), "mail": proc.pid, "nats": broker.pid}
        cpu0 = time.process_time()
        out_mails = [out_bytes(i) for i in range(n)]  # the flow's transforms and the adapter's compose
        build_ms = (time.process_time() - cpu0) * 1000 / n
        with Meter(pids) as m:
            await raw_out(host, smtp_port, tls, out_mails)
        rows.append(("out", "raw aiosmtplib x4", m))
        hub, requested = await hub_out(project_with(tmp, "be-contract-switch-email"), broker, n, m := Meter(pids))
        rows.append(("out", "hub be-contract-switch-email", m))
        failed = hub.runners["be-contract-switch-email"].stats.failed
        await hub.stop()
        got, raw_got = await mail("delivered", ERP), await mail("delivered", RAW_ERP)
        checks.append(f"out: ERP mailbox received {got}/{n} (raw loop's {raw_got}/{n}); "
                      f"{len({r['token'] for r in requested})} distinct tokens; {failed} failed")

        replies = [ack_reply(r["token"], r["contract_id"], i) for i, r in enumerate(requested)]
        await mail("inject", RAW_IN, replies)
        await mail("inject", HUB, replies)
        cpu0 = time.process_time()
        assert all(parse_reply(raw)["token"] for raw in replies)
        parse_ms = (time.process_time() - cpu0) * 1000 / n
        with Meter(pids) as m:
            moved = await raw_in(host, imap_port, tls, n)
        rows.append(("in", "raw aioimaplib fetch+move", m))
        hub, started, stored = await hub_in(project_with(tmp, "be-erp-replies"), broker, n, m := Meter(pids))
        rows.append(("in", "hub be-erp-replies", m))
        stats = hub.runners["be-erp-replies"].stats.as_dict()
        ingress = hub.ingresses["be-erp-replies"]
        accepted = await accepted_records(hub.js)
        await hub.stop()
        processed, inbox = await mail("count", HUB, "Processed"), await mail("count", HUB, "INBOX")
        checks.append(f"in: raw moved {moved}/{n}; hub stored {ingress.stored}, moved {ingress.moved}; Processed "
                      f"{processed}/{n}, INBOX {inbox}; {accepted}/{n} requests ACCEPTED in KV; flow {stats}")
        checks.append(f"in: the hub's {m.seconds:.2f} s include Hub.start() ({started * 1000:.0f} ms); the IMAP "
                      f"ingress had stored the last mail at {stored:.2f} s")
        cpu_out, cpu_in = (r[2].cpu["this"] * 1000 / n for r in rows if r[1].startswith("hub"))
        checks.append(f"this process's CPU per mail: out {cpu_out:.2f} ms, of which building the mail (switch_mail "
                      f"+ smtp compose) {build_ms:.2f} ms; in {cpu_in:.2f} ms, of which parse_reply {parse_ms:.2f} ms")
    here.send("stop")
    proc.join(10)
    proc.terminate()  # a no-op when it ended by itself
    print_table(n, rows, checks)


def print_table(n: int, rows: list, checks: list[str]) -> None:
    print(f"{n} mails each way, TLS on, mail sandbox in its own process; 2 shared cores: read ratios, not promises")
    print(f"{'':4}{'shape':<30}{'mails/s':>9}{'ratio':>8}{'CPU ms/mail: this proc':>25}"
          f"{'mail srv':>9}{'nats':>7}{'total':>7}")
    base: dict[str, float] = {}
    for way, label, m in rows:
        rate = n / m.seconds
        ratio = f"{rate / base[way]:.2f}x" if way in base else "1.00x"
        base.setdefault(way, rate)
        cpu = {k: v * 1000 / n for k, v in m.cpu.items()}
        print(f"{way:<4}{label:<30}{rate:>9.1f}{ratio:>8}{cpu['this']:>25.2f}{cpu['mail']:>9.2f}"
              f"{cpu['nats']:>7.2f}{sum(cpu.values()):>7.2f}")
    for line in checks:
        print("  " + line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=500, help="mails each way (default 500)")
    asyncio.run(main(parser.parse_args()))
