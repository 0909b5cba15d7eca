"""Human units in flow YAML: durations (`200ms`, `5s`, `2h`) and rates (`50/s`, `250000/h`).

Bare numbers are refused on purpose: `30` could mean seconds or milliseconds, and a wrong guess in a
retry schedule is an outage.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from `200ms`, `5s`, `1.5m`, `2h`, `7d`."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration with a unit like 200ms, 5s, 30m, 2h or 7d, got {value!r}")


def parse_rate(value: object) -> float:
    """Events per second from `50/s`, `250000/h`, `10/m`."""
    if isinstance(value, str):
        m = _RATE.match(value)
        if m:
            per = _UNITS[m.group(2)]
            rate = float(m.group(1)) / per
            if rate > 0:
                return rate
    raise ValueError(f"expected a rate like 50/s, 600/m or 250000/h, got {value!r}")


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for messages and docs."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
