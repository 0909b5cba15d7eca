"""The four vendors' reading records into the canonical reading (transforms/meter_vendors.py): pure unit tests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from schemas.meter import MeterReading
from transforms import meter_vendors as mv

UTC = timezone.utc


def v1(**over: Any) -> dict[str, Any]:
    record = {"meterId": "V1-0000042", "marketLocation": "50000000042", "obis": "1-0:1.8.0",
              "from": "2025-03-01T00:00:00+01:00", "to": "2025-03-02T00:00:00+01:00",
              "value": 12345, "unit": "Wh", "status": "A"}
    return record | over


def v2(values: list[dict[str, Any]], *, code: str = "A+", unit: str = "kWh", medium: str = "EE") -> dict[str, Any]:
    return {"pod": "IT001E00000042", "meter": {"serial": "V2-0000042", "medium": medium},
            "channels": [{"code": code, "unit": unit, "values": values}]}


def v3(**reading: Any) -> dict[str, Any]:
    base = {"start": 1740783600, "duration": 86400, "value": 12345, "scaler": 0, "unit": "Wh", "qc": 0}
    return {"device": {"id": "V3-0000042", "installation": "INST-0000042"}, "commodity": "E", "reading": base | reading}


def v4(**over: Any) -> dict[str, Any]:
    record = {"meter": "V4-0000042", "site": "PT0002000000000042", "type": "ELECTRICITY", "register": "1.8.0",
              "intervalStart": "2025-03-01T00:00:00.000Z", "intervalEnd": "2025-03-02T00:00:00.000Z",
              "energy": {"value": 12.345, "unit": "kWh"}, "quality": "VALID"}
    return record | over


def valid(reading: dict[str, Any]) -> MeterReading:
    return MeterReading.model_validate(reading)


# --- vendor 1 ------------------------------------------------------------------------------------

def test_vendor1_wh_and_berlin_offsets_become_kwh_and_utc() -> None:
    """Vendor 1's Wh and local ISO times with offsets become kWh and UTC, and the model accepts it."""
    reading = mv.vendor1_reading(v1())
    assert reading == {"meter_id": "V1-0000042", "site_id": "50000000042", "register": "1-0:1.8.0",
                       "interval_start": "2025-02-28T23:00:00Z", "read_at": "2025-03-01T23:00:00Z",
                       "value": 12.345, "unit": "kWh", "quality": "actual", "source": "vendor1/pull"}
    model = valid(reading)
    assert model.read_at == datetime(2025, 3, 1, 23, tzinfo=UTC) and model.obis_register == "1-0:1.8.0"


def test_vendor1_spring_forward_day_lasts_23_hours() -> None:
    """A Berlin day across the March clock change is a 23-hour interval in UTC."""
    reading = mv.vendor1_reading(v1(**{"from": "2025-03-30T00:00:00+01:00", "to": "2025-03-31T00:00:00+02:00"}))
    assert (reading["interval_start"], reading["read_at"]) == ("2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z")


def test_vendor1_gas_in_dm3_becomes_m3() -> None:
    """Gas in dm³ on OBIS 7-0:3.0.0 becomes m³, and the status letter E means estimated."""
    reading = mv.vendor1_reading(v1(obis="7-0:3.0.0*255", value=2500, unit="dm3", status="E"))
    assert (reading["register"], reading["value"], reading["unit"], reading["quality"]) == ("7-0:3.0.0", 2.5, "m3", "estimated")


def test_vendor1_time_without_offset_is_refused() -> None:
    """An ISO time without a UTC offset cannot be placed in time and is refused."""
    with pytest.raises(ValueError, match="no UTC offset"):
        mv.vendor1_reading(v1(**{"from": "2025-03-01T00:00:00"}))


def test_vendor1_page_numbers_end_at_total_pages() -> None:
    """Vendor 1's next page is page + 1 until totalPages, then None."""
    answer = {"page": 1, "pageSize": 1, "totalPages": 2, "totalItems": 2, "items": [v1()]}
    assert mv.vendor1_page(answer)["next"] == 2
    assert mv.vendor1_page(answer | {"page": 2})["next"] is None


# --- vendor 2 ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "end", "hours"), [
    ("202503300000", "202503310000", 23),   # clocks go forward in Rome
    ("202510260000", "202510270000", 25),   # clocks go back
    ("202506150000", "202506160000", 24),
])
def test_vendor2_compact_rome_days_follow_dst(start: str, end: str, hours: int) -> None:
    """Compact yyyyMMddHHmm Rome days are 23, 25 or 24 hours long in UTC."""
    [reading] = mv.vendor2_readings(v2([{"from": start, "to": end, "v": "10.000", "q": "M"}]))
    length = datetime.fromisoformat(reading["read_at"]) - datetime.fromisoformat(reading["interval_start"])
    assert length.total_seconds() == hours * 3600


@pytest.mark.parametrize(("dst", "start_utc"), [(True, "2025-10-26T00:00:00Z"), (False, "2025-10-26T01:00:00Z")])
def test_vendor2_repeated_hour_is_resolved_by_the_dst_flag(dst: bool, start_utc: str) -> None:
    """In the hour Rome repeats in October, the DST flag says which copy a time is."""
    value = {"from": "202510260200", "to": "202510260215", "fromDst": dst, "toDst": dst, "v": "0.250", "q": "M"}
    [reading] = mv.vendor2_readings(v2([value]))
    assert reading["interval_start"] == start_utc
    assert reading["read_at"] == start_utc.replace(":00:00Z", ":15:00Z")


def test_vendor2_first_copy_of_the_repeated_hour_is_one_hour_long() -> None:
    """02:00 summer time to 02:00 winter time is a one-hour interval, not an empty one (Python compares wall times)."""
    value = {"from": "202510260200", "to": "202510260200", "fromDst": True, "toDst": False, "v": "0.9", "q": "M"}
    [reading] = mv.vendor2_readings(v2([value]))
    assert (reading["interval_start"], reading["read_at"]) == ("2025-10-26T00:00:00Z", "2025-10-26T01:00:00Z")


def test_vendor2_repeated_hour_without_flag_is_refused() -> None:
    """A time in the repeated hour without a DST flag is ambiguous and refused rather than guessed."""
    with pytest.raises(ValueError, match="twice"):
        mv.vendor2_readings(v2([{"from": "202510260200", "to": "202510260215", "v": "0.250", "q": "M"}]))


def test_vendor2_time_in_the_spring_gap_is_refused() -> None:
    """02:30 on Rome's spring-forward night never happened and is refused."""
    with pytest.raises(ValueError, match="does not exist"):
        mv.vendor2_readings(v2([{"from": "202503300230", "to": "202503300300", "v": "0.1", "q": "M"}]))


def test_vendor2_nested_channels_flatten_with_units_and_quality() -> None:
    """Each value of each channel becomes one reading; decimal text stays exact, VOL is gas in m³."""
    values = [{"from": "202503010000", "to": "202503020000", "v": "1.234", "q": "S"},
              {"from": "202503020000", "to": "202503030000", "v": "2.000", "q": "P"}]
    readings = mv.vendor2_readings(v2(values, code="VOL", unit="m3", medium="GAS"))
    assert [(r["register"], r["value"], r["unit"], r["quality"]) for r in readings] == [
        ("7-0:3.0.0", 1.234, "m3", "estimated"), ("7-0:3.0.0", 2.0, "m3", "forecast")]
    assert all(valid(r).source == "vendor2/pull" for r in readings)


def test_vendor2_page_follows_links_next() -> None:
    """Vendor 2's next page is links.next, and None when the link is absent."""
    answer = {"data": [v2([{"from": "202503010000", "to": "202503020000", "v": "1", "q": "M"}])],
              "links": {"self": "http://x/v2/readings", "next": "http://x/v2/readings?cursor=abc"}}
    assert mv.vendor2_page(answer)["next"] == "http://x/v2/readings?cursor=abc"
    assert mv.vendor2_page(answer | {"links": {"self": "http://x"}}) == {"items": mv.vendor2_page(answer)["items"], "next": None}


# --- vendor 3 ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "scaler", "unit", "expected"), [
    (12345, 0, "Wh", (12.345, "kWh")), (12345, -3, "m3", (12.345, "m3")), (7, 3, "Wh", (7.0, "kWh")),
])
def test_vendor3_scaler_and_unit_convert_exactly(value: int, scaler: int, unit: str, expected: tuple[float, str]) -> None:
    """Vendor 3's value x 10**scaler converts to kWh or m³ without binary rounding noise."""
    commodity = "G" if unit == "m3" else "E"
    reading = mv.vendor3_reading(v3(value=value, scaler=scaler, unit=unit) | {"commodity": commodity})
    assert (reading["value"], reading["unit"]) == expected


def test_vendor3_epoch_start_and_duration_make_the_interval() -> None:
    """Epoch seconds plus a duration give the interval; qc 1 is estimated."""
    reading = mv.vendor3_reading(v3(start=1743289200, duration=82800, qc=1))  # a 23-hour Rome day
    assert (reading["interval_start"], reading["read_at"], reading["quality"]) == (
        "2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z", "estimated")


def test_vendor3_webhook_batch_is_push() -> None:
    """A webhook batch yields one reading per record, marked as vendor 3's push."""
    readings = mv.vendor3_webhook({"batchId": "b-1", "sentAt": 1743289200, "readings": [v3(), v3(start=1740870000)]})
    assert [r["source"] for r in readings] == ["vendor3/push", "vendor3/push"]
    assert valid(readings[0]).meter_id == "V3-0000042"


def test_vendor3_page_offsets_stop_at_total() -> None:
    """Vendor 3's next offset is offset + the readings returned, None once total is reached."""
    assert mv.vendor3_page({"offset": 0, "limit": 2, "total": 3, "readings": [v3(), v3()]})["next"] == 2
    assert mv.vendor3_page({"offset": 2, "limit": 2, "total": 3, "readings": [v3()]})["next"] is None


# --- vendor 4 ------------------------------------------------------------------------------------

def test_vendor4_mwh_and_short_obis_become_kwh_and_full_obis() -> None:
    """MWh becomes kWh, short OBIS takes its medium from the meter type, and millisecond UTC times normalize."""
    reading = mv.vendor4_reading(v4(energy={"value": 0.123456, "unit": "MWh"}))
    assert (reading["value"], reading["unit"], reading["register"], reading["read_at"]) == (
        123.456, "kWh", "1-0:1.8.0", "2025-03-02T00:00:00Z")


def test_vendor4_gas_message_is_push() -> None:
    """An MQTT message of a gas meter is m³ on 7-0:3.0.0, marked as vendor 4's push, PREDICTED is forecast."""
    reading = mv.vendor4_message(v4(type="GAS", register="3.0.0", energy={"value": 1.5, "unit": "m3"}, quality="PREDICTED"))
    assert (reading["register"], reading["unit"], reading["quality"], reading["source"]) == (
        "7-0:3.0.0", "m3", "forecast", "vendor4/push")


def test_vendor4_page_continues_with_the_token() -> None:
    """Vendor 4's next page is its continuation token, None on the last page."""
    assert mv.vendor4_page({"readings": [v4()], "continuationToken": "tok"})["next"] == "tok"
    assert mv.vendor4_page({"readings": [v4()]})["next"] is None


# --- across vendors ------------------------------------------------------------------------------

def test_the_same_instant_is_spelled_the_same_by_every_vendor() -> None:
    """One instant reaches the same read_at text from all four formats, so de-duplication keys match."""
    end = "2025-03-30T22:00:00Z"
    readings = [
        mv.vendor1_reading(v1(**{"from": "2025-03-30T00:00:00+01:00", "to": "2025-03-31T00:00:00+02:00"})),
        mv.vendor2_readings(v2([{"from": "202503300000", "to": "202503310000", "v": "1", "q": "M"}]))[0],
        mv.vendor3_reading(v3(start=1743289200, duration=82800)),
        mv.vendor4_reading(v4(intervalStart="2025-03-29T23:00:00.000Z", intervalEnd="2025-03-30T22:00:00.000Z")),
    ]
    assert {r["read_at"] for r in readings} == {end}
    assert {r["interval_start"] for r in readings} == {"2025-03-29T23:00:00Z"}


@pytest.mark.parametrize(("call", "match"), [
    (lambda: mv.vendor1_reading(v1(unit="kWhh")), "unknown unit"),
    (lambda: mv.vendor1_reading(v1(status="X")), "unknown vendor1 status"),
    (lambda: mv.vendor1_reading(v1(value=-1)), ">= 0"),
    (lambda: mv.vendor1_reading(v1(value="12,5")), "not a number"),
    (lambda: mv.vendor1_reading(v1(unit="m3")), "does not fit register"),
    (lambda: mv.vendor1_reading(v1(to="2025-03-01T00:00:00+01:00")), "not after"),
    (lambda: mv.vendor2_readings(v2([{"from": "2025030100", "to": "202503020000", "v": "1", "q": "M"}])), "yyyyMMddHHmm"),
    (lambda: mv.vendor2_readings(v2([], code="Q+")), "unknown vendor2 channel"),
    (lambda: mv.vendor3_reading(v3(qc=9)), "unknown vendor3 quality"),
    (lambda: mv.vendor3_reading(v3(start=1.5)), "not whole"),
    (lambda: mv.vendor4_reading(v4(type="WATER")), "unknown vendor4 meter type"),
    (lambda: mv.vendor4_reading(v4(register="1.8")), "not an OBIS code"),
])
def test_unreadable_records_raise_value_error(call: Any, match: str) -> None:
    """A record with an unknown code, an impossible value or a malformed time raises ValueError naming it."""
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(("code", "medium", "full"), [
    ("1-0:1.8.0", "electricity", "1-0:1.8.0"), ("1-0:2.8.0*255", "electricity", "1-0:2.8.0"),
    ("1.8.0", "electricity", "1-0:1.8.0"), ("3.0.0", "gas", "7-0:3.0.0"), ("7-0:3.0.0", "electricity", "7-0:3.0.0"),
])
def test_obis_codes_normalize_to_the_full_form(code: str, medium: str, full: str) -> None:
    """OBIS codes in full, with a billing suffix or short, all normalize to A-B:C.D.E."""
    assert mv.obis_code(code, medium) == full
