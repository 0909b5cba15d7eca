"""SAP's way of answering an RFC/BAPI call, for the DE dialect: a RETURN table of BAPIRET2 rows (one per
message: TYPE S, I, W pass, E and A refuse), every field sent, empty ones as <X/>. Refusals come back
inside a 200 answer, a switch refused outright with the cause and the follow-up row, as SAP IS-U does.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

BAPIRET2 = ("TYPE", "ID", "NUMBER", "MESSAGE", "LOG_NO", "LOG_MSG_NO", "MESSAGE_V1", "MESSAGE_V2", "MESSAGE_V3",
            "MESSAGE_V4", "PARAMETER", "ROW", "FIELD", "SYSTEM")
NUMBERS = {"MISSING": "010", "BLOCKED": "042", "NOT_FOUND": "044", "UNKNOWN_TARIFF": "051"}  # message class ZISU


def bapiret2(kind: str, number: str, message: str, *variables: str, parameter: str = "") -> str:
    """One `<item>` row of the RETURN table."""
    values = {"TYPE": kind, "ID": "ZISU", "NUMBER": number, "MESSAGE": message, "LOG_MSG_NO": "000000",
              "ROW": "0", "PARAMETER": parameter, "SYSTEM": "ISUCLNT100",
              **{f"MESSAGE_V{i}": v for i, v in enumerate(variables, 1)}}
    return "<item>" + "".join(f"<{f}>{escape(values[f])}</{f}>" if values.get(f) else f"<{f}/>"
                              for f in BAPIRET2) + "</item>"


def return_table(*items: str) -> str:
    return "<RETURN>" + "".join(items) + "</RETURN>"


def de_ok(message: str) -> str:
    """The S row of a successful call."""
    return return_table(bapiret2("S", "000", message))


def de_refusal(code: str, message: str) -> str:
    """A refusal as SAP sends it: the cause, and for a switch refused outright the follow-up row."""
    rows = [bapiret2("E", NUMBERS.get(code, "099"), message, parameter="CONTRACT" if code == "BLOCKED" else "")]
    if code == "BLOCKED":
        rows.append(bapiret2("E", "001", "Wechselbeleg wurde nicht angelegt"))
    return return_table(*rows)
