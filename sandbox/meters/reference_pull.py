"""The plainest correct pull of each vendor platform, with the vendor transforms: a yardstick.

Tests use it to check the simulators, and hub tests and benchmarks can set the hub's own pull (with
its retries, checkpoints and concurrency caps) against it: same readings, same counts. It has no
error handling on purpose; any non-2xx answer raises.

    readings = await pull(session, platform, start, end, size=500)
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from sandbox.meters import vendor2, vendor4
from sandbox.meters.platform import VendorPlatform
from sandbox.meters.vendor1 import Vendor1Platform
from sandbox.meters.vendor2 import Vendor2Platform
from sandbox.meters.vendor3 import Vendor3Platform
from sandbox.meters.vendor4 import Vendor4Platform
from sandbox.meters.vendor5 import FEED_PATH, Vendor5Platform
from transforms import meter_espi
from transforms import meter_vendors as mv


async def bearer(session: aiohttp.ClientSession, sim: Vendor2Platform) -> dict[str, str]:
    """A fresh vendor-2 token (client credentials in the form) as an Authorization header."""
    form = {"grant_type": "client_credentials", "client_id": sim.client_id, "client_secret": sim.client_secret}
    async with session.post(f"{sim.url}/oauth2/token", data=form, raise_for_status=True) as answer:
        return {"Authorization": f"Bearer {(await answer.json())['access_token']}"}


async def basic_bearer(session: aiohttp.ClientSession, sim: Vendor5Platform) -> dict[str, str]:
    """A vendor-5 token, the client authenticated by HTTP Basic of the form-urlencoded id and secret."""
    auth = {"Authorization": aiohttp.encode_basic_auth(quote_plus(sim.client_id), quote_plus(sim.client_secret))}
    async with session.post(f"{sim.url}/oauth/token", data={"grant_type": "client_credentials"}, headers=auth,
                            raise_for_status=True) as answer:
        token = (await answer.json())["access_token"]
    return {"Authorization": f"Bearer {token}", "Accept": "application/atom+xml"}


def v4_headers(sim: Vendor4Platform, params: dict[str, str], *, at: float | None = None) -> dict[str, str]:
    """Signature headers of a vendor-4 GET /v4/readings with `params`, signed at `at` (default now)."""
    return vendor4.sign(sim.key_id, sim.secret, "GET", "/v4/readings", params, int(time.time() if at is None else at))


def first_request(sim: VendorPlatform, start: datetime, end: datetime) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, params) of the first page for [start, end); vendor 2 still needs a bearer header."""
    if isinstance(sim, Vendor1Platform):
        return f"{sim.url}/api/v1/readings", {"X-Api-Key": sim.api_key}, {"from": start.isoformat(), "to": end.isoformat()}
    if isinstance(sim, Vendor2Platform):
        return f"{sim.url}/v2/readings", {}, {"from": vendor2.compact(start), "to": vendor2.compact(end)}
    if isinstance(sim, Vendor3Platform):
        auth = {"Authorization": aiohttp.encode_basic_auth(sim.username, sim.password)}
        return f"{sim.url}/api/readings", auth, {"since": int(start.timestamp()), "until": int(end.timestamp())}
    if isinstance(sim, Vendor4Platform):
        params = {"start": vendor4.utc_ms(start), "end": vendor4.utc_ms(end)}
        return f"{sim.url}/v4/readings", v4_headers(sim, params), params
    if isinstance(sim, Vendor5Platform):
        def rfc3339(moment: datetime) -> str:
            return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{sim.url}{FEED_PATH}", {}, {"published-min": rfc3339(start), "published-max": rfc3339(end)}
    raise TypeError(f"not a vendor platform: {sim!r}")


async def _json(session: aiohttp.ClientSession, url: str, headers: dict[str, str], params: Any = None) -> Any:
    async with session.get(url, params=params, headers=headers, raise_for_status=True) as answer:
        return await answer.json()


async def pull(session: aiohttp.ClientSession, sim: VendorPlatform, start: datetime, end: datetime,
               size: int = 500) -> list[dict[str, Any]]:
    """Every canonical reading of [start, end) from one platform, page after page, in the vendor's paging."""
    url, headers, params = first_request(sim, start, end)
    items: list[dict[str, Any]] = []
    if isinstance(sim, Vendor1Platform):
        page: int | None = 1
        while page:
            result = mv.vendor1_page(await _json(session, url, headers, params | {"page": page, "pageSize": size}))
            items, page = items + result["items"], result["next"]
    elif isinstance(sim, Vendor2Platform):
        headers = await bearer(session, sim)
        link: str | None = f"{url}?from={params['from']}&to={params['to']}&limit={size}"
        while link:
            result = mv.vendor2_page(await _json(session, link, headers))
            items, link = items + result["items"], result["next"]
    elif isinstance(sim, Vendor3Platform):
        offset: int | None = 0
        while offset is not None:
            result = mv.vendor3_page(await _json(session, url, headers, params | {"offset": offset, "limit": size}))
            items, offset = items + result["items"], result["next"]
    elif isinstance(sim, Vendor5Platform):
        headers = await basic_bearer(session, sim)
        link: str | None = None
        query: Any = params | {"max-results": str(size)}
        while True:
            async with session.get(link or url, params=None if link else query, headers=headers,
                                   raise_for_status=True) as answer:
                result = meter_espi.espi_page(await answer.read())
            items, link = items + result["items"], result["next"]
            if not link:
                break
    else:
        token: str | None = ""
        while token is not None:
            query = params | {"maxResults": str(size)} | ({"continuationToken": token} if token else {})
            result = mv.vendor4_page(await _json(session, url, v4_headers(sim, query), query))  # type: ignore[arg-type]
            items, token = items + result["items"], result["next"]
    return items
