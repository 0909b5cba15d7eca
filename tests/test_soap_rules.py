"""The business-error rule over answers as zeep hands them over (adapters/soap/rules.py): SAP's BAPIRET2
RETURN table in its shapes, every refusal row named with its id and number, case-insensitive matching by
option, an absent table as documented, and property tests over arbitrary tables and answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.soap import BusinessErrorRule, SoapEndpointConfig, business_error, refusals
from adapters.http.wire import bounded
from adapters.soap.rules import TEXT_LIMIT, join_bounded

SAP = BusinessErrorRule(table="RETURN")


def row(kind: str, msg_id: str = "ZISU", number: str = "000", message: str = "", **more: Any) -> dict[str, Any]:
    """A BAPIRET2 row as zeep reads it: every field, empty ones None."""
    fields = {"TYPE": kind, "ID": msg_id, "NUMBER": number, "MESSAGE": message, "LOG_NO": None,
              "LOG_MSG_NO": "000000", "MESSAGE_V1": None, "MESSAGE_V2": None, "MESSAGE_V3": None,
              "MESSAGE_V4": None, "PARAMETER": None, "ROW": 0, "FIELD": None, "SYSTEM": "ISUCLNT100"}
    return fields | more


def sap_answer(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"EV_SWITCH_DOC": None, "RETURN": {"item": list(rows)}}


def test_an_sap_return_table_refusal_names_every_error_row_with_id_and_number():
    """E and A rows are refusals, S, I and W are not; each refusal row shows type, id, number and text."""
    answer = sap_answer(row("S", number="000", message="Daten gelesen"),
                        row("W", number="108", message="Tarif läuft aus"),
                        row("I", number="005", message="Hinweis"),
                        row("E", number="042", message="Vertrag 4711 ist für Tarifwechsel gesperrt"),
                        row("A", msg_id="BAPI", number="900", message="Verbuchung abgebrochen"))
    text = business_error(answer, SAP)
    assert text == ("refused: E ZISU 042: Vertrag 4711 ist für Tarifwechsel gesperrt | "
                    "A BAPI 900: Verbuchung abgebrochen")


def test_the_sap_table_is_found_as_return_or_as_return_item_and_as_one_structure():
    """`table: RETURN` reads a table's `item` rows, one row given bare, and a single BAPIRET2 structure;
    `RETURN.item` (the zeep path) finds the same rows."""
    refused = row("E", number="042", message="gesperrt")
    for answer in (sap_answer(refused), {"RETURN": {"item": refused}}, {"RETURN": refused}):
        assert business_error(answer, SAP) == "refused: E ZISU 042: gesperrt", answer
    assert business_error(sap_answer(refused), BusinessErrorRule(table="RETURN.item")) == "refused: E ZISU 042: gesperrt"


def test_an_answer_without_the_table_is_a_success_unless_the_rule_says_otherwise():
    """SAP leaves an empty RETURN out (or empty): success by default; `when_absent: error` refuses it."""
    for answer in ({"EV_SWITCH_DOC": "SW1"}, {"EV_SWITCH_DOC": "SW1", "RETURN": None}, sap_answer()):
        assert business_error(answer, SAP) is None
    strict = BusinessErrorRule(table="RETURN", when_absent="error")
    assert "has no RETURN table" in business_error({"EV_SWITCH_DOC": "SW1"}, strict)
    assert business_error(sap_answer(), strict) is None  # there, and clean


def test_names_and_values_match_without_regard_to_case_only_when_asked():
    """The old documented `Return.Type` finds SAP's RETURN/TYPE and a lower-case `e` only with ignore_case."""
    answer = {"RETURN": {"item": [{"TYPE": "e", "ID": "ZISU", "NUMBER": "7", "MESSAGE": "klein"}]}}
    exact = BusinessErrorRule(table="Return", type_field="Type", message_field="Message", id_field="Id",
                              number_field="Number")
    assert business_error(answer, exact) is None  # not found: the table is absent, as the docs say
    loose = exact.model_copy(update={"ignore_case": True})
    assert business_error(answer, loose) == "refused: e ZISU 7: klein"


def test_rows_of_other_erps_and_tables_nested_in_lists():
    """A non-SAP ERP's rows (Severity/Code/Text, no id) under a list of results all count."""
    rule = BusinessErrorRule(table="Results.Messages", type_field="Severity", error_values=["ERROR", "FATAL"],
                             message_field="Text", id_field=None, number_field="Code")
    answer = {"Results": [{"Messages": [{"Severity": "INFO", "Code": "1", "Text": "ok"},
                                        {"Severity": "ERROR", "Code": "17", "Text": "IBAN invalid"}]},
                          {"Messages": {"Severity": "FATAL", "Code": "99", "Text": "locked"}}]}
    assert business_error(answer, rule) == "refused: ERROR 17: IBAN invalid | FATAL 99: locked"


def test_the_old_path_spelling_is_refused_with_the_new_one():
    with pytest.raises(ValidationError, match="table: RETURN"):
        BusinessErrorRule.model_validate({"path": "Return.Type", "message_path": "Return.Message"})
    with pytest.raises(ValidationError, match="without dots"):
        BusinessErrorRule(table="RETURN", type_field="item.TYPE")


def test_the_documented_example_is_the_sap_rule():
    """The reference (runner.py docs) shows the SAP BAPIRET2 rule first, and it reads an SAP answer."""
    example = SoapEndpointConfig.model_fields["business_error"].examples[0]
    rule = BusinessErrorRule.model_validate(example)
    assert business_error(sap_answer(row("E", number="042", message="gesperrt")), rule) == "refused: E ZISU 042: gesperrt"


def test_many_refusal_rows_are_bounded_at_a_row_boundary():
    rows = [row("E", number=f"{i:03d}", message=f"Position {i} ist fehlerhaft " + "x" * 60) for i in range(200)]
    text = business_error(sap_answer(*rows), SAP)
    assert len(text) <= TEXT_LIMIT + 60 and text.endswith("more rows")
    kept = text.removeprefix("refused: ").split(" | ")[:-1]
    assert all(part.endswith("x" * 60) for part in kept)  # whole rows only


# --- properties -------------------------------------------------------------------------------

TYPES = st.sampled_from(["S", "I", "W", "E", "A", "", "s", "e", "a", " E"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
ROWS = st.lists(st.fixed_dictionaries({"TYPE": st.one_of(st.none(), TYPES), "ID": st.one_of(st.none(), TEXT),
                                       "NUMBER": st.one_of(st.none(), st.integers(0, 999).map("{:03d}".format)),
                                       "MESSAGE": st.one_of(st.none(), TEXT)}), max_size=12)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # a loaded CI machine is no failure
@given(rows=ROWS, ignore_case=st.booleans())
def test_property_the_refusals_are_exactly_the_rows_whose_type_is_an_error_value(rows, ignore_case):
    """Whatever the table holds, the refusals are the rows whose type (trimmed; folded when asked) is E or
    A, in order, and the answer is refused exactly when there is one."""
    rule = BusinessErrorRule(table="RETURN", ignore_case=ignore_case)
    found = refusals(sap_answer(*rows), rule)
    norm = (lambda v: v.strip().casefold()) if ignore_case else (lambda v: v.strip())
    want = [r for r in rows if norm(r["TYPE"] or "") in {norm("E"), norm("A")}]
    assert [f.message for f in found] == [(r["MESSAGE"] or "").strip() for r in want]
    assert (business_error(sap_answer(*rows), rule) is None) == (not want)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.sampled_from(["RETURN", "Return", "item", "TYPE",
                                                                             "Type", "MESSAGE", "x"]),
                                                            inner, max_size=4)), max_leaves=25)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(answer=JSON, ignore_case=st.booleans(), when_absent=st.sampled_from(["success", "error"]))
def test_property_any_answer_gives_a_verdict_never_a_crash(answer, ignore_case, when_absent):
    """Any JSON-shaped answer (what to_jsonable makes of zeep's) gives None or a bounded refusal text."""
    rule = BusinessErrorRule(table="RETURN", ignore_case=ignore_case, when_absent=when_absent)
    text = business_error(answer, rule)
    assert text is None or (text.startswith("refused: ") and len(text) <= 2 * TEXT_LIMIT)


PART = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="|…"), min_size=1, max_size=60)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(parts=st.lists(PART, max_size=50), limit=st.integers(min_value=30, max_value=300))
@example(parts=["x" * 60, "y"], limit=40)  # a row longer than the bound: shown cut, itself bounded
def test_property_bounded_joins_keep_whole_rows_in_order_and_count_the_rest(parts, limit):
    """The refusal text shows whole rows from the first, stays near its bound, and counts what it left out."""
    text = join_bounded(parts, limit)
    shown, _, rest = text.partition(" | … and ")
    kept = shown.split(" | ") if shown else []
    left_out = int(rest.split()[0]) if rest else 0
    assert kept == [bounded(p, limit) for p in parts[:len(kept)]] and len(kept) + left_out == len(parts)
    assert len(shown) <= limit or len(kept) == 1  # one row always shows, itself bounded
