"""The one canonical meter reading, whatever its path (vendor pull, push, manual radar reader)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = ["MeterReading"]


class MeterReading(BaseModel):
    """An interval reading (consumption from `interval_start` to `read_at`) or, without
    `interval_start`, a register read at `read_at` (a radar reader's index). (meter_id, register,
    read_at) is the reading's identity on every path: meter-reading-dedupe keys on it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    meter_id: str = Field(min_length=1)
    site_id: str = Field(min_length=1)
    obis_register: str = Field("1.8.0", alias="register", description="OBIS code where known, e.g. 1-0:1.8.0.")
    interval_start: AwareDatetime | None = Field(None, description="Start of the interval; none for a register read.")
    read_at: AwareDatetime = Field(description="End of the interval, or the time of a register read (UTC).")
    value: float = Field(ge=0)
    unit: Literal["kWh", "m3"]
    quality: Literal["actual", "estimated", "forecast"] = "actual"
    source: str = Field(pattern=r"^(manual|[a-z0-9_-]+/(pull|push|forecast))$",
                        description="Vendor and path: 'vendor1/pull', 'vendor3/push', 'manual', 'hub/forecast'.")
    zone: str | None = Field(None, description="IANA time zone whose local days and months the reading counts in "
                             "(its vendor's, from the pull's `each` entry or the push format); none: Europe/Brussels.")

    @model_validator(mode="after")
    def _interval_ends_after_it_starts(self) -> "MeterReading":
        if self.interval_start is not None and self.interval_start >= self.read_at:
            raise ValueError(f"interval_start {self.interval_start.isoformat()} is not before read_at "
                             f"{self.read_at.isoformat()}")
        return self
