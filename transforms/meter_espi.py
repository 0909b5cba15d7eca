"""Green Button (NAESB REQ.21 ESPI) feeds as canonical readings, and the ESPI PullFormat for the monthly
pull (`format: meter_espi.ESPI` in flows/meter-vendor-pulls.yaml).

A Green Button feed is an Atom feed (RFC 4287) whose entries carry ESPI resources, related by their
resource URIs: a UsagePoint (`…/UsagePoint/{up}`: the site; ServiceCategory kind 0 electricity, 1 gas),
its MeterReading (`…/UsagePoint/{up}/MeterReading/{mr}`: the meter, linked `related` to its ReadingType),
the ReadingType (`…/ReadingType/{rt}`: uom 72 Wh or 42 m³, powerOfTenMultiplier, flowDirection 1
forward / 19 reverse, intervalLength, defaultQuality) and IntervalBlocks
(`…/MeterReading/{mr}/IntervalBlock/{n}`), each an interval (typically a local day) of IntervalReadings
with a timePeriod (epoch seconds, UTC) and an integer value in the ReadingType's unit × 10^multiplier.
ESPI names no meter serial: the meter is the MeterReading id, the site the UsagePoint id.

Reading quality (QualityOfReading): 0 valid, 14 raw, 17 validated, 18 verified, 19 revenue-quality are
actual; 12 projected is a forecast; every other known code (7 manually edited, 8, 9 estimated, 10
questionable, 11 derived, 13 mixed, 15 weather-normalised, 16 other) is not a measured value, so
estimated. An unknown code, unit or flow direction, a block whose MeterReading, UsagePoint or
ReadingType is not in the same page, and any DTD in the document raise ValueError: a feed that cannot
be read unambiguously is refused, never guessed.

Paging: `published-min`/`published-max` (RFC 3339) bound the intervals, `max-results` the entries of a
page, the feed's `<link rel="next">` is the next page (an absolute URL, followed as given).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from lxml import etree

from transforms import meter_vendors as mv
from transforms.meter_pulls import PullFormat, Window

ATOM = "http://www.w3.org/2005/Atom"
ESPI = "http://naesb.org/espi"
UTC = timezone.utc
_A = f"{{{ATOM}}}"
_E = f"{{{ESPI}}}"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_UP = re.compile(r"/UsagePoint/([^/?#\s]+)")
_MR = re.compile(r"/UsagePoint/([^/?#\s]+)/MeterReading/([^/?#\s]+)")
_RT = re.compile(r"/ReadingType/([^/?#\s]+)")

UNITS = {72: "Wh", 42: "m3"}
ACTUAL, FORECAST = {0, 14, 17, 18, 19}, {12}
ESTIMATED = {7, 8, 9, 10, 11, 13, 15, 16}
READINGS_PER_BLOCK = 96  # a local day of 15-minute intervals: what one entry of a page is worth


def _int(el: etree._Element | None, what: str) -> int:
    text = (el.text or "").strip() if el is not None else ""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} is not an integer: {text!r}") from None


def _opt_int(parent: etree._Element, name: str) -> int | None:
    el = parent.find(_E + name)
    return None if el is None else _int(el, name)


def quality(code: int | None) -> str:
    if code is None or code in ACTUAL:
        return "actual"
    if code in FORECAST:
        return "forecast"
    if code in ESTIMATED:
        return "estimated"
    raise ValueError(f"unknown ESPI quality of reading {code}")


def _links(entry: etree._Element) -> dict[str, list[str]]:
    links: dict[str, list[str]] = {}
    for link in entry.iterfind(_A + "link"):
        links.setdefault(link.get("rel") or "alternate", []).append(link.get("href") or "")
    return links


def _resource(entry: etree._Element) -> etree._Element | None:
    content = entry.find(_A + "content")
    if content is None:
        return None
    return next((child for child in content if isinstance(child.tag, str) and child.tag.startswith(_E)), None)


def parse_feed(answer: str | bytes) -> etree._Element:
    """The Atom feed element; ValueError for anything else (not XML, a DTD, another root)."""
    if isinstance(answer, str):
        answer = answer.encode("utf-8")  # the http adapter hands XML over decoded, without its declaration
    if not isinstance(answer, bytes | bytearray):
        raise ValueError(f"an ESPI answer is XML text, got {type(answer).__name__}")
    try:
        root = etree.fromstring(bytes(answer), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise ValueError("an ESPI feed with a DTD is refused (entity expansion)")
    if root.tag != _A + "feed":
        raise ValueError(f"not an Atom feed: root element {root.tag!r}")
    return root


def espi_page(answer: str | bytes, vendor: str = "vendor5") -> dict[str, Any]:
    """One page of a Green Button feed: `{"items": [canonical readings], "next": next link or None}`."""
    feed = parse_feed(answer)
    services: dict[str, int] = {}                 # usage point -> ServiceCategory kind
    meters: dict[str, tuple[str, str]] = {}       # meter reading -> (usage point, reading type)
    types: dict[str, etree._Element] = {}         # reading type -> its element
    blocks: list[tuple[str, str, etree._Element]] = []
    for entry in feed.iterfind(_A + "entry"):
        resource = _resource(entry)
        if resource is None:
            continue
        kind = etree.QName(resource).localname
        links = _links(entry)
        own = " ".join(links.get("self", []) + links.get("up", []))
        if kind == "UsagePoint":
            found = _UP.search(own)
            if found is None:
                raise ValueError(f"a UsagePoint entry without a UsagePoint URI: {own!r}")
            category = resource.find(f"{_E}ServiceCategory/{_E}kind")
            services[found.group(1)] = _int(category, "ServiceCategory kind")
        elif kind == "MeterReading":
            found = _MR.search(own)
            related = [m.group(1) for href in links.get("related", []) if (m := _RT.search(href))]
            if found is None or len(related) != 1:
                raise ValueError(f"a MeterReading entry needs its own URI and one ReadingType link: {own!r}")
            meters[found.group(2)] = (found.group(1), related[0])
        elif kind == "ReadingType":
            found = _RT.search(own)
            if found is None:
                raise ValueError(f"a ReadingType entry without a ReadingType URI: {own!r}")
            types[found.group(1)] = resource
        elif kind == "IntervalBlock":
            found = _MR.search(own)
            if found is None:
                raise ValueError(f"an IntervalBlock entry without its MeterReading URI: {own!r}")
            blocks.append((found.group(1), found.group(2), resource))
    items = [reading for up, mr, block in blocks for reading in _block(vendor, up, mr, block, services, meters, types)]
    nxt = next((link.get("href") for link in feed.iterfind(_A + "link") if link.get("rel") == "next"), None)
    return {"items": items, "next": nxt or None}


def _block(vendor: str, up: str, mr: str, block: etree._Element, services: dict[str, int],
           meters: dict[str, tuple[str, str]], types: dict[str, etree._Element]) -> list[dict[str, Any]]:
    if mr not in meters or up not in services or meters[mr][1] not in types:
        raise ValueError(f"IntervalBlock of MeterReading {mr} (UsagePoint {up}): its MeterReading, UsagePoint "
                         "or ReadingType is not in this page")
    rt = types[meters[mr][1]]
    uom = _opt_int(rt, "uom")
    if uom not in UNITS:
        raise ValueError(f"ReadingType uom {uom} is not Wh (72) or m³ (42)")
    scaler = _opt_int(rt, "powerOfTenMultiplier") or 0
    default_quality = _opt_int(rt, "defaultQuality")
    length = _opt_int(rt, "intervalLength")
    service = services[up]
    if service == 1:
        register = "7-0:3.0.0"
    elif service == 0:
        flow = _opt_int(rt, "flowDirection")
        register = {1: "1-0:1.8.0", 19: "1-0:2.8.0", None: "1-0:1.8.0"}.get(flow, "")
        if not register:
            raise ValueError(f"ReadingType flowDirection {flow} is neither forward (1) nor reverse (19)")
    else:
        raise ValueError(f"UsagePoint {up}: ServiceCategory kind {service} is neither electricity (0) nor gas (1)")
    interval = block.find(_E + "interval")
    cursor = _int(interval.find(_E + "start") if interval is not None else None, "IntervalBlock interval start")
    out = []
    for reading in block.iterfind(_E + "IntervalReading"):
        period = reading.find(_E + "timePeriod")
        if period is not None:
            start, seconds = _int(period.find(_E + "start"), "timePeriod start"), _int(period.find(_E + "duration"),
                                                                                       "timePeriod duration")
        elif length:  # ESPI: without a timePeriod the readings follow each other at intervalLength
            start, seconds = cursor, length
        else:
            raise ValueError(f"an IntervalReading of MeterReading {mr} has no timePeriod and its ReadingType no "
                             "intervalLength")
        cursor = start + seconds
        value, unit = mv.convert((reading.findtext(_E + "value") or "").strip(), UNITS[uom], scaler)
        marked = reading.find(f"{_E}ReadingQuality/{_E}quality")
        code = _int(marked, "ReadingQuality quality") if marked is not None else default_quality
        try:
            begin = datetime.fromtimestamp(start, UTC)
            end = begin + timedelta(seconds=seconds)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"a timePeriod of MeterReading {mr} is out of range: start {start}, duration {seconds}") from None
        out.append(mv._reading(vendor, "pull", mr, up, register, begin, end, value, unit, quality(code)))
    return out


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def espi_request(w: Window) -> dict[str, Any]:
    """The first page by published-min/max and max-results (about page_size readings: one entry is a
    day of 96); then the feed's next link as given."""
    if w.cursor:
        return {"_url": w.cursor}
    return {"published-min": _rfc3339(w.start), "published-max": _rfc3339(w.end),
            "max-results": max(1, min(math.ceil(w.page_size / READINGS_PER_BLOCK), ESPI.max_page))}


ESPI = PullFormat("espi", espi_request, espi_page, max_page=1000)  # flows name it `format: meter_espi.ESPI`
