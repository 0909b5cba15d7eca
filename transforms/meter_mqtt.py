"""Vendor 4's MQTT push as the canonical reading that `meter.reading.received` carries.

transforms.meter_vendors.vendor4_message answers the reading with the keys proposed for the model
(interval, vendor, path) besides today's MeterReading fields; MeterReading forbids extra keys and
meter-reading-to-crm checks that schema, so the push flow publishes only the model's fields.
"""

from __future__ import annotations

from typing import Any

from transforms.meter_vendors import current_model_fields, vendor4_message


def vendor4_reading(payload: dict[str, Any]) -> dict[str, Any]:
    """One vendor-4 record from `vendor4/readings/<meter>` as a MeterReading (source `vendor4/push`)."""
    return current_model_fields(vendor4_message(payload))
