"""Parsers of what Salesforce sends, property-tested: CDC bitmaps, Bulk API result CSVs and error texts;
and the pure Salesforce transforms."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.salesforce.bulk import csv_value, parse_error, parse_results, to_csv
from adapters.salesforce.cdc import field_names, positions
from sandbox.salesforce.model import change_event_schema, plu_objects
from sandbox.salesforce.cdc import bitmap
from transforms import salesforce_crm, salesforce_meter

ACCOUNT = change_event_schema(plu_objects()["Account"])
TOP = [f["name"] for f in ACCOUNT["fields"]]
ADDRESS_AT = TOP.index("BillingAddress")
PARTS = ["Street", "City", "State", "PostalCode", "Country"]


@given(st.sets(st.integers(0, 600)))
def test_a_bitmap_names_exactly_the_positions_set_in_it(bits):
    """positions() reads back every bit Salesforce's bitmap text sets, whatever its length."""
    assert positions(bitmap(sorted(bits))) == sorted(bits)


@given(st.sets(st.integers(1, len(TOP) - 1)), st.sets(st.integers(0, len(PARTS) - 1)))
def test_changed_fields_decode_to_the_schema_fields_at_those_positions(top, parts):
    """A change event's bitmaps (top-level and a compound field's parts) name the fields at those
    positions of the event's own schema, compound parts as Parent.Part."""
    entries = ([bitmap(sorted(top))] if top else []) + ([f"{ADDRESS_AT}-{bitmap(sorted(parts))}"] if parts else [])
    names = field_names(entries, ACCOUNT)
    assert names == [TOP[p] for p in sorted(top)] + [f"BillingAddress.{PARTS[p]}" for p in sorted(parts)]


@given(st.lists(st.text(max_size=30), max_size=5))
def test_no_bitmap_text_breaks_the_decoder(entries):
    """Whatever the list holds, decoding answers names (unknown positions as #n, garbage as itself)."""
    names = field_names(entries, ACCOUNT)
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)


def test_a_position_beyond_the_schema_is_kept_as_a_number():
    """A field this schema cannot name (a newer schema's) is not dropped."""
    assert field_names([bitmap([1, 700])], ACCOUNT) == [TOP[1], "#700"]


API_NAME = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,20}__c", fullmatch=True)


@given(st.from_regex(r"[A-Z][A-Z_]{2,30}", fullmatch=True), st.text(st.characters(exclude_characters="\r\n"),
                                                                      max_size=80),
       st.lists(API_NAME, max_size=3))
def test_sf_error_texts_read_back_code_message_and_fields(code, message, fields):
    """`sf__Error` "CODE:message:fields --" gives back the code, the message (colons and all) and the fields."""
    text = f"{code}:{message}:{','.join(fields)} --"
    got_code, got_message, got_fields = parse_error(text)
    assert got_code == code and got_fields == fields and got_message == message.strip()


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                   st.floats(allow_nan=False, allow_infinity=False),
                   st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r"), max_size=40))


@given(st.lists(st.fixed_dictionaries({"Hub_Key__c": st.text(min_size=1, max_size=20).filter(lambda t: "\r" not in t),
                                       "Total__c": VALUES, "Site_Id__c": VALUES}), max_size=20))
@settings(max_examples=60)
def test_job_csv_round_trips_through_a_csv_reader(rows):
    """The CSV a job uploads reads back, row by row, as the values the hub meant (null as #N/A)."""
    fields = ["Hub_Key__c", "Total__c", "Site_Id__c"]
    back = list(csv.DictReader(io.StringIO(to_csv(fields, rows).decode(), newline="")))
    assert back == [{f: csv_value(r[f]) for f in fields} for r in rows]


def test_result_csvs_parse_with_salesforce_quoting():
    """A failedResults CSV as Salesforce writes it (every value quoted, commas and quotes inside)."""
    text = ('"sf__Id","sf__Error","Hub_Key__c","Site_Id__c"\n'
            '"","REQUIRED_FIELD_MISSING:Required fields are missing: [Total__c]:Total__c --","k,1","S ""7"""\n')
    rows = parse_results(text)
    assert rows == [{"sf__Id": "", "sf__Error": "REQUIRED_FIELD_MISSING:Required fields are missing: [Total__c]:"
                     "Total__c --", "Hub_Key__c": "k,1", "Site_Id__c": 'S "7"'}]
    assert parse_error(rows[0]["sf__Error"]) == ("REQUIRED_FIELD_MISSING", "Required fields are missing: [Total__c]",
                                                 ["Total__c"])
    assert parse_results("") == []


def change(kind: str, changed: list[str], ids: list[str] | None = None) -> dict:
    return {"replay_id": "0a", "event_id": "e", "payload": {"ChangeEventHeader": {
        "entityName": "Account", "recordIds": ids if ids is not None else ["001A", "001B"], "changeType": kind,
        "changeOrigin": "", "transactionKey": "tx", "sequenceNumber": 3, "commitTimestamp": 1798761600000,
        "commitNumber": 1, "commitUser": "005", "nulledFields": [], "diffFields": [], "changedFields": changed}}}


def test_only_master_data_changes_reach_the_erps():
    """The hub's own ERP key write-back changes no master field and goes nowhere (no loop); a new
    city does, once per record; a delete never; a gap event always (read the record); an overflow
    becomes one overflow item."""
    assert salesforce_crm.account_changes(change("UPDATE", ["ERP_Account_Key__c", "LastModifiedDate"])) == []
    items = salesforce_crm.account_changes(change("UPDATE", ["BillingAddress.City", "LastModifiedDate"]))
    assert [i["id"] for i in items] == ["001A", "001B"] and items[0]["route"] == "changed"
    assert items[0]["commit_timestamp"] == "2027-01-01T00:00:00.000+00:00"
    assert salesforce_crm.account_changes(change("DELETE", [])) == []
    assert len(salesforce_crm.account_changes(change("GAP_UPDATE", []))) == 2
    overflow = salesforce_crm.account_changes(change("GAP_OVERFLOW", [], ids=[]))
    assert [o["route"] for o in overflow] == ["overflow"]
    assert salesforce_crm.overflow_alert(overflow[0])["alert"] == "cdc_overflow"


def test_a_signed_contract_event_becomes_the_canonical_contract():
    """Contract_Signed__e with its epoch-day date and JSON sites -> ContractSigned's shape."""
    from schemas.crm import ContractSigned

    event = {"replay_id": "01", "event_id": "e", "payload": {
        "CreatedDate": 1, "CreatedById": "005", "EventUuid": "u", "Contract_Id__c": "C-DE-1", "Version__c": 2,
        "Account_Id__c": "A-DE-1", "Country__c": "DE", "Tariff_Code__c": "GREEN-12", "Signed_On__c": 20819,
        "Sites__c": json.dumps([{"site_id": "S-1", "postcode": "10115", "city": "Berlin"}]), "Key_Customer__c": True}}
    contract = salesforce_crm.contract_signed(event)
    assert contract["signed_on"] == "2027-01-01" and contract["version"] == 2
    ContractSigned.model_validate(contract)


def test_month_totals_and_forecasts_are_keyed_per_register_month_and_kind():
    """A month total and the forecast for that month are two records; a total sent again is the same key."""
    total = {"meter_id": "M1", "site_id": "S1", "register": "1-0:1.8.0", "unit": "kWh", "month": "2027-02",
             "total": 321.5, "readings": 2688}
    forecast = {"meter_id": "M1", "site_id": "S1", "register": "1-0:1.8.0", "interval_start": "2027-01-31T23:00:00Z",
                "read_at": "2027-02-28T23:00:00Z", "value": 300.0, "unit": "kWh", "quality": "forecast"}
    actual, guess = salesforce_meter.month_record(total), salesforce_meter.forecast_record(forecast)
    assert actual["Hub_Key__c"] == "M1:1-0:1.8.0:2027-02:actual"
    assert guess["Hub_Key__c"] == "M1:1-0:1.8.0:2027-02:forecast" and guess["Month__c"] == "2027-02"


def test_interval_detail_answers_one_month_and_keeps_the_record():
    """The detail request reads a register's month from its progress record and changes nothing."""
    state = {"unit": "kWh", "months": {"2027-02": {"values": {"2027-02-01T00:15:00Z": [0.25, 900],
                                                              "2027-02-01T00:00:00Z": [0.5, 900]},
                                                   "completed_by": None}}}
    out = salesforce_meter.interval_detail({"state": state, "message": {"meter_id": "M1", "register": "r",
                                                                         "month": "2027-02"}})
    assert out["state"] is state
    assert [i["read_at"] for i in out["payload"]["intervals"]] == ["2027-02-01T00:00:00Z", "2027-02-01T00:15:00Z"]
    assert out["payload"]["total"] == 0.75 and out["payload"]["found"] and not out["payload"]["complete"]
    missing = salesforce_meter.interval_detail({"state": None, "message": {"month": "2027-02"}})
    assert missing["payload"]["found"] is False and missing["payload"]["intervals"] == []
