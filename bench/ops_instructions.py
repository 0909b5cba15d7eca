"""The hot path with and without the operations surface, counted in CPU instructions (callgrind), so
that a shared, loaded machine cannot blur a few percent.

    .venv/bin/python bench/ops_instructions.py [--small 500] [--large 3000]     (needs valgrind; ~25 min)

Each flow of bench/hot_path.py (pass-through; validate + transform) runs end to end against one
nats-server in a child process under callgrind, ops off and ops on (metrics probes and tracing at the
config default sample_ratio, spans to an exporter that drops them), once with `--small` and once with
`--large` messages; (instructions(large) - instructions(small)) / (large - small) is the runner's cost
per message with start-up cancelled out. nats-server is not counted. Printed: instructions per message
and the ratio off / on (target >= 0.95).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))
sys.path.insert(0, str(Path(__file__).absolute().parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402

SHAPES = {"pass-through": ([], None),
          "validate + transform": ([{"transform": "readings.to_crm_reading"}], "MeterReading")}


async def child(url: str, shape: str, ops: bool, n: int, tag: str) -> None:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from engine import logs
    from engine.nats_client import connect
    from engine.ops_config import TracingConfig
    from engine.tracing import HubTracer
    from hot_path import make_flow, preload, run_flow

    class Dropped(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    logs.configure("warning")
    nc = await connect(servers=[url], skip_subject_validation=True)
    js = nc.jetstream(timeout=30)
    await preload(js, f"bin.{tag}", n)
    steps, schema = SHAPES[shape]
    flow = make_flow(tag, f"bin.{tag}", [*steps, {"publish": f"bout.{tag}"}], schema=schema)
    tracer = HubTracer.exporting(Dropped(), sample_ratio=TracingConfig().sample_ratio) if ops else False
    await run_flow(nc, js, "BIN", flow, n, tracer=tracer)
    if tracer:
        tracer.shutdown()
    await nc.close()


def counted(url: str, shape: str, ops: bool, n: int, tag: str) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                          "--child", url, shape, "1" if ops else "0", str(n), tag],
                         capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))  # type: ignore[union-attr]


async def streams(url: str) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BIN", subjects=["bin.>"]))
    await js.add_stream(StreamConfig(name="BOUT", subjects=["bout.>"]))
    await nc.close()


def main(args: argparse.Namespace) -> None:
    from engine.embedded_nats import EmbeddedNats

    with EmbeddedNats() as server:
        asyncio.run(streams(server.url))
        print(f"instructions per message of the runner, ({args.large} - {args.small} messages) under callgrind")
        for k, shape in enumerate(SHAPES):
            per = {}
            for ops in (False, True):
                small, large = (counted(server.url, shape, ops, n, f"s{k}o{int(ops)}n{n}") for n in (args.small, args.large))
                per[ops] = (large - small) / (args.large - args.small)
            print(f"  {shape:<22} ops off {per[False] / 1000:8.1f}K   ops on {per[True] / 1000:8.1f}K   "
                  f"off/on {per[False] / per[True]:.3f}x  (target >= 0.95x)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, shape, ops, n, tag = sys.argv[2:7]
        asyncio.run(child(url, shape, ops == "1", int(n), tag))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--small", type=int, default=500)
        parser.add_argument("--large", type=int, default=3000)
        main(parser.parse_args())
