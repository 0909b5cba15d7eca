"""Connecting to the hub's broker from the runner and from ops commands.

The runner with no NATS URL starts an embedded nats-server and leaves its URL in
`<data_dir>/hub.url` while it runs, so `runner.py dlq …` in another terminal finds it. With the hub
down, an ops command starts the embedded server on the same store itself: the DLQ is readable
whether or not the hub runs.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import nats.errors

from engine.config import HubConfig
from engine.nats_client import HubClient, connect
from engine.secrets import resolve_value

URL_FILE = "hub.url"


def connect_options(config: HubConfig, servers: list[str], **extra: Any) -> dict[str, Any]:
    """Options for nats-py from config: credentials resolved from their references, and the pings
    that notice a frozen or partitioned server within ping_interval x (max_outstanding_pings + 1)
    (nats-py's default is 2 minutes x 2: a runner on a frozen node would sit still for minutes)."""
    ncfg = config.nats
    options: dict[str, Any] = dict(servers=servers, name="plu-hub", connect_timeout=5,
                                   skip_subject_validation=True, ping_interval=ncfg.ping_interval,
                                   max_outstanding_pings=ncfg.max_outstanding_pings, **extra)
    if ncfg.user:
        options["user"] = ncfg.user
    if ncfg.password:
        options["password"] = resolve_value(ncfg.password)
    if ncfg.token:
        options["token"] = resolve_value(ncfg.token)
    if ncfg.creds_file:
        options["user_credentials"] = ncfg.creds_file
    return options


def running_hub_url(data_dir: str | Path) -> str | None:
    path = Path(data_dir) / URL_FILE
    return path.read_text().strip() or None if path.is_file() else None


@asynccontextmanager
async def ops_connection(config: HubConfig, servers: list[str] | None = None,
                         data_dir: str | Path | None = None) -> AsyncIterator[HubClient]:
    """A connection for a short ops command: explicit servers, config's, the running hub's, or
    an embedded server started on the hub's store for the duration of the command."""
    embedded = None
    store = Path(data_dir or config.nats.embedded.data_dir)
    urls = list(servers or config.nats.urls)
    if not urls:
        url = running_hub_url(store)
        if url:
            try:
                nc = await connect(**connect_options(config, [url], max_reconnect_attempts=0,
                                                     allow_reconnect=False))
            except (nats.errors.NoServersError, OSError):
                nc = None  # a stale file from a hub that died: start our own below
            if nc is not None:
                try:
                    yield nc
                finally:
                    await nc.close()
                return
        from engine.embedded_nats import EmbeddedNats

        store.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedNats(data_dir=store).start()
        urls = [embedded.url]
    try:
        # an ops command fails fast and says so rather than retrying for minutes
        nc = await connect(**connect_options(config, urls, max_reconnect_attempts=1, allow_reconnect=False))
        try:
            yield nc
        finally:
            await nc.close()
    finally:
        if embedded is not None:
            embedded.stop()
