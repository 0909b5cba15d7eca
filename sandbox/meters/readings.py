"""Deterministic meter readings for N meters, computed on demand from (vendor, meter, interval start).

Nothing is stored: a platform with 500,000 meters costs no memory until a page is asked for, the
same request always answers the same values (so a resumed pull sees the pages it saw before), and
a pushed reading equals the pulled one for the same meter and interval (so the hub can de-duplicate).
Quantities are integers in milli-units (Wh for electricity, dm³ for gas) so that every vendor's
rendering converts back exactly; interval boundaries are local midnights of the vendor's time zone
for daily readings (23 or 25 hours on DST days), fixed UTC steps below a day.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Callable, Iterator
from zoneinfo import ZoneInfo

UTC = timezone.utc
DAY = timedelta(days=1)
RETENTION_MONTHS = 3
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64: a fast, well-spread integer hash (no random state to seed or store)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _hash(*parts: int) -> int:
    h = 0
    for part in parts:
        h = _mix(h ^ part)
    return h


def months_back(moment: datetime, months: int) -> datetime:
    """The same day and time `months` calendar months earlier (clamped to the month's last day)."""
    years, month0 = divmod(moment.month - 1 - months, 12)
    year = moment.year + years
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    return moment.replace(year=year, month=month0 + 1, day=day)


class ManualClock:
    """A clock tests move by hand: data windows, retention and token expiry all read it."""

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Meter:
    index: int
    meter_id: str
    site_id: str
    medium: str   # "electricity" | "gas"
    profile: str  # "household" | "business" (business: ~120-260 kWh a day, key-customer material)


@dataclass(frozen=True)
class Reading:
    meter: Meter
    start: datetime  # UTC
    end: datetime    # UTC
    milli: int       # Wh (electricity) or dm³ (gas) over the interval
    quality: str     # "actual" | "estimated"

    @property
    def value(self) -> float:
        """kWh or m³, as the canonical reading carries it."""
        return self.milli / 1000

    @property
    def unit(self) -> str:
        return "m3" if self.meter.medium == "gas" else "kWh"


class Window:
    """The whole intervals inside [start, end): `count` per meter, interval `k` by index in O(1)."""

    def __init__(self, start: datetime, end: datetime, tz: ZoneInfo, interval: timedelta) -> None:
        self.start, self.end = start, end
        if interval == DAY:
            first = start.astimezone(tz).date()
            if self._midnight(first, tz) < start:
                first += DAY
            count = max(0, (end.astimezone(tz).date() - first).days)
            self._edges = [self._midnight(first + k * DAY, tz) for k in range(count + 1)]
        else:
            step = int(interval.total_seconds())
            first_ts = math.ceil(start.timestamp() / step) * step
            count = max(0, (math.floor(end.timestamp() / step) * step - first_ts) // step)
            self._first, self._step = datetime.fromtimestamp(first_ts, UTC), interval
            self._edges = None
        self.count = count

    @staticmethod
    def _midnight(day: date, tz: ZoneInfo) -> datetime:
        return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)

    def interval(self, k: int) -> tuple[datetime, datetime]:
        if self._edges is not None:
            return self._edges[k], self._edges[k + 1]
        start = self._first + k * self._step
        return start, start + self._step


class ReadingSource:
    """One vendor's meters and their readings; `meter_format`/`site_format` take the meter index."""

    def __init__(self, seed: int, meters: int, tz: ZoneInfo, *, interval: timedelta = DAY,
                 meter_format: str = "M{:07d}", site_format: str = "S{:07d}",
                 clock: Callable[[], datetime] = system_clock) -> None:
        if meters < 0:
            raise ValueError("meters must be >= 0")
        if interval != DAY and (interval <= timedelta(0) or DAY % interval or interval.total_seconds() % 60):
            raise ValueError("interval must be one day or whole minutes dividing a day")
        self.seed, self.meters, self.tz, self.interval = seed, meters, tz, interval
        self.meter_format, self.site_format, self.clock = meter_format, site_format, clock

    def oldest(self) -> datetime:
        """The start of the platform's retention: readings before it are gone (3 months)."""
        return months_back(self.clock(), RETENTION_MONTHS)

    def meter(self, index: int) -> Meter:
        """Meter 1, 6, 11, ... (one in five) is gas; meter 7, 47, 87, ... a business site: predictable for tests."""
        if not 0 <= index < self.meters:
            raise IndexError(f"meter index {index} outside 0..{self.meters - 1}")
        medium = "gas" if index % 5 == 1 else "electricity"
        profile = "business" if index % 40 == 7 else "household"
        return Meter(index, self.meter_format.format(index), self.site_format.format(index), medium, profile)

    def window(self, start: datetime, end: datetime) -> Window:
        """Intervals of [start, end) that have ended by now."""
        return Window(start, min(end, self.clock()), self.tz, self.interval)

    def reading(self, meter: Meter, window: Window, k: int) -> Reading:
        start, end = window.interval(k)
        h = _hash(self.seed, meter.index)
        if meter.medium == "gas":
            daily, swing = 1000 + h % 5000, 0.6
        elif meter.profile == "business":
            daily, swing = 120_000 + h % 140_000, 0.15
        else:
            daily, swing = 4000 + h % 10_000, 0.15
        season = 1 + swing * math.cos(2 * math.pi * (start.month - 1) / 12)  # highest in January
        noise = _hash(self.seed, meter.index, int(start.timestamp()))
        factor = 0.8 + (noise % 4001) / 10_000  # 0.8 .. 1.2
        milli = round(daily * season * factor * (end - start).total_seconds() / 86400)
        quality = "estimated" if (noise >> 20) % 50 == 0 else "actual"
        return Reading(meter, start, end, milli, quality)

    def readings(self, start: datetime, end: datetime, meters: range | None = None) -> Iterator[Reading]:
        """Every reading of [start, end), meter by meter, each meter's in time order."""
        window = self.window(start, end)
        for index in meters if meters is not None else range(self.meters):
            meter = self.meter(index)
            for k in range(window.count):
                yield self.reading(meter, window, k)

    def at(self, window: Window, position: int) -> Reading:
        """The reading at `position` of the meter-major order over `window`."""
        index, k = divmod(position, window.count)
        return self.reading(self.meter(index), window, k)

    def count(self, start: datetime, end: datetime) -> int:
        """How many readings a complete pull of [start, end) answers."""
        return self.meters * self.window(start, end).count
