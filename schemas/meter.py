"""The one canonical meter reading, whatever its path (vendor pull, push, manual radar reader)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["MeterReading"]


class MeterReading(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    meter_id: str = Field(min_length=1)
    site_id: str = Field(min_length=1)
    obis_register: str = Field("1.8.0", alias="register", description="OBIS code where known.")
    read_at: AwareDatetime
    value: float = Field(ge=0)
    unit: Literal["kWh", "m3"]
    quality: Literal["actual", "estimated", "forecast"] = "actual"
    source: str = Field(description="vendor and path, e.g. 'vendor1/pull' or 'manual'.")


