"""Local calendar arithmetic: months and wall-clock times in a time zone, as UTC instants.

A month ends at the first local midnight of the next month, so its length in seconds depends on the
zone (March in Brussels is 31 days less an hour, October 31 days and an hour). A wall-clock time is
0, 1 or 2 instants: none in the spring gap (clocks jump), two in the autumn's repeated hour.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

UTC = timezone.utc


def month_start(moment: datetime, tz: tzinfo) -> datetime:
    """The first local midnight of `moment`'s month in `tz`, as UTC."""
    local = moment.astimezone(tz)
    return datetime(local.year, local.month, 1, tzinfo=tz).astimezone(UTC)


def add_months(start: datetime, months: int, tz: tzinfo) -> datetime:
    """The first local midnight of the month `months` after (or before) `start`'s month, as UTC."""
    local = start.astimezone(tz)
    year, month0 = divmod(local.year * 12 + local.month - 1 + months, 12)
    return datetime(year, month0 + 1, 1, tzinfo=tz).astimezone(UTC)


def month_bounds(month: str, tz: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of `YYYY-MM` in `tz`, as UTC instants."""
    year, number = int(month[:4]), int(month[5:7])
    start = datetime(year, number, 1, tzinfo=tz).astimezone(UTC)
    return start, add_months(start, 1, tz)


def month_name(moment: datetime, tz: tzinfo) -> str:
    """`YYYY-MM` of `moment` in `tz`."""
    local = moment.astimezone(tz)
    return f"{local.year:04d}-{local.month:02d}"


def previous_month(moment: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of the last whole local month before `moment`, as UTC (a monthly run's window)."""
    end = month_start(moment, tz)
    return add_months(end, -1, tz), end


def wall_instants(naive: datetime, tz: tzinfo) -> list[datetime]:
    """The instants (UTC) at which clocks in `tz` show `naive`: one; two in the autumn's repeated hour
    (summer-time copy first); none in the spring gap."""
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        return []
    return sorted({first.astimezone(UTC), second.astimezone(UTC)})


def gap_end(naive: datetime, tz: tzinfo) -> datetime:
    """For a wall time in a spring gap: the instant clocks jumped over it (e.g. 03:00 CEST = 01:00Z)."""
    low = int(naive.replace(tzinfo=tz, fold=1).timestamp())   # the later offset: before the jump
    high = int(naive.replace(tzinfo=tz, fold=0).timestamp())  # the earlier offset: after the jump
    while high - low > 1:  # transitions fall on whole seconds: the first second showing `naive` or later
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)
