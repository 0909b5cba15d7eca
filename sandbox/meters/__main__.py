"""Run the vendor platforms alone, to poke at them with curl: `python -m sandbox.meters --meters 1000`.

Prints each platform's URL and credentials, serves until Ctrl-C. `--latency` delays each page,
`--rate` caps requests per second (429 beyond), `--port` picks the first of five consecutive ports.
"""

from __future__ import annotations

import argparse
import asyncio

from sandbox.meters import PLATFORMS

CREDENTIALS = {
    "vendor1": lambda p: f"X-Api-Key: {p.api_key}",
    "vendor2": lambda p: f"POST /oauth2/token client_id={p.client_id} client_secret={p.client_secret}",
    "vendor3": lambda p: f"basic {p.username}:{p.password}",
    "vendor4": lambda p: f"HMAC key {p.key_id} secret {p.secret}",
    "vendor5": lambda p: f"POST /oauth/token with HTTP Basic only: {p.client_id!r} / {p.client_secret!r} (form-urlencoded)",
}


async def _serve(args: argparse.Namespace) -> None:
    rate = (args.rate, 1.0) if args.rate else None
    platforms = []
    for offset, (name, cls) in enumerate(PLATFORMS.items()):
        sim = await cls(args.meters, latency=args.latency, rate_limit=rate).start(
            args.host, args.port + offset if args.port else 0)
        platforms.append(sim)
        print(f"{name}  {sim.url}  {CREDENTIALS[name](sim)}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for sim in platforms:
            await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="first of five ports (0 = free ports)")
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per page")
    parser.add_argument("--rate", type=int, default=0, help="requests per second before 429 (0 = no limit)")
    try:
        asyncio.run(_serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
