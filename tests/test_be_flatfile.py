"""The Belgian ERP flat-file codec (schemas/be_flatfile): round trips, every malformation, the spec's tables."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.errors import UnparseablePayload, classify
from schemas.be_flatfile import (RECORD_LENGTH, BeAccepted, BeAccountChange, BeAccountLinked, BeContractSwitch,
                                 BeFileHeader, BeFlatFile, BeRejected, BeSwitchCompleted, FlatFileError, decode,
                                 encode, layout, subject_tag, token_in_subject)

SPEC = Path(__file__).resolve().parents[1] / "docs" / "belgian-flat-file.md"
CREATED = datetime(2025, 5, 1, 8, 30, tzinfo=timezone.utc)


def request() -> BeFlatFile:
    return BeFlatFile(
        header=BeFileHeader(file_type="REQ", correlation_token="be-7f3a9c", sender="PLU-HUB", created=CREATED),
        records=[
            BeContractSwitch(contract_id="C-1", contract_version=2, account_id="A-1", tariff_code="GREEN-12",
                             signed_on=date(2025, 5, 1), site_id="S-1", postcode="4000", city="Liège",
                             meter_ids=["541448820000000001", "541448820000000002"], key_customer=True),
            BeAccountChange(account_id="A-1", kind="business", name="Jürgen Müller & Fils", street="Rue de l'Église 3",
                            postcode="1030", city="Schaerbeek", email="jm@example.be"),
        ])


def reply() -> BeFlatFile:
    return BeFlatFile(
        header=BeFileHeader(file_type="RSP", correlation_token="be-7f3a9c", sender="ERP-BE", created=CREATED),
        records=[
            BeAccepted(ref_seq=1, ref_type="CSW", ref_key="C-1", erp_ref="SW0000000001"),
            BeRejected(ref_seq=2, ref_type="ACC", ref_key="A-1", reason_code="T001",
                       reason_text="Tarif inconnu / onbekend tarief: ÉCO-3"),
            BeSwitchCompleted(ref_seq=1, contract_id="C-1", contract_version=2, tariff_code="GREEN-12",
                              effective_on=date(2025, 6, 1), erp_ref="SW0000000001"),
            BeAccountLinked(ref_seq=2, account_id="A-1", erp_key="BE00000001"),
        ])


def test_request_round_trips_with_belgian_names_in_latin1() -> None:
    """A request file encodes to Latin-1 bytes with CRLF records of 256 characters and decodes back equal."""
    data = encode(request())
    assert b"Li\xe8ge" in data and b"J\xfcrgen M\xfcller" in data and b"Schaerbeek" in data
    lines = data.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) == RECORD_LENGTH for line in lines[:-1])
    assert [line[:3] for line in lines[:-1]] == [b"HDR", b"CSW", b"ACC", b"TRL"]
    assert lines[3][:9] == b"TRL000002"
    assert decode(data) == request()


def test_reply_with_every_reply_record_round_trips() -> None:
    """ACK, REJ, SWC and LNK records survive encode and decode, accents in the reason text included."""
    assert decode(encode(reply())) == reply()


def test_decoded_file_round_trips_through_json() -> None:
    """A decoded file can be published as JSON and validated back (the record type discriminates)."""
    file = reply()
    assert BeFlatFile.model_validate_json(file.model_dump_json()) == file


def test_lf_line_ends_and_stripped_padding_are_accepted() -> None:
    """A file whose mail path turned CRLF into LF and stripped trailing spaces still decodes."""
    data = encode(request())
    mangled = b"\n".join(line.rstrip(b" ") for line in data.split(b"\r\n"))
    assert decode(mangled) == request()


def test_flat_file_error_is_a_permanent_unparseable_payload() -> None:
    """The codec's one error class sits in the hub's taxonomy as permanent (the mail is quarantined)."""
    with pytest.raises(FlatFileError) as caught:
        decode(b"")
    assert isinstance(caught.value, UnparseablePayload)
    assert classify(caught.value).transient is False


def _mutate(old: bytes, new: bytes) -> bytes:
    data = encode(request())
    assert old in data
    return data.replace(old, new, 1)


def _lines(*numbers: int) -> bytes:
    lines = encode(request()).split(b"\r\n")
    return b"\r\n".join(lines[n] for n in numbers) + b"\r\n"


MALFORMED = {
    "wrong record count": (_mutate(b"TRL000002", b"TRL000003"), 4, "record_count", "2 (the detail records"),
    "bad date": (_mutate(b"20250501S-1", b"20251301S-1"), 2, "signed_on", "a date YYYYMMDD"),
    "unknown record type": (_mutate(b"ACC000002", b"XYZ000002"), 3, "record_type", "a record type (HDR, CSW"),
    "missing header": (_lines(1, 2, 3), 1, "record_type", "the header 'HDR' as the first record"),
    "missing trailer": (_lines(0, 1, 2), 4, "record_type", "the trailer 'TRL' as the last record"),
    "empty file": (b"", 1, "record_type", "a header record"),
    "utf-8 file": (_mutate("Liège".encode("latin-1"), "Liège".encode()), 2, "city", "ISO-8859-1 text"),
    "utf-8 byte-order mark": (b"\xef\xbb\xbf" + encode(request()), 1, "record_type", "ISO-8859-1 file"),
    "windows-1252 euro sign": (_mutate(b"Li\xe8ge", b"Li\x80ge"), 2, "city", "printable ISO-8859-1"),
    "control character": (_mutate(b"Schaerbeek", b"Schaer\tbeek"), 3, "city", "printable ISO-8859-1"),
    "record too long": (_mutate(b"\r\nACC", b"XX\r\nACC"), 2, "filler", "at most 256 characters"),
    "text in the filler": (_mutate(b"Y" + b" " * 77, b"Y" + b" " * 70 + b"oops!  "), 2, "filler", "spaces"),
    "sequence out of order": (_mutate(b"ACC000002", b"ACC000003"), 3, "seq", "000002"),
    "required field blank": (_mutate(b"C-1   ", b"      "), 2, "contract_id", "the field is required"),
    "number with letters": (_mutate(b"C-1                 002", b"C-1                 0O2"), 2,
                            "contract_version", "3 digits"),
    "bad flag": (_mutate(b"Y" + b" " * 77, b"X" + b" " * 77), 2, "key_customer", "Y or N"),
    "bad code": (_mutate(b"A-1                 B", b"A-1                 Q"), 3, "kind", "H (household)"),
    "bad postcode": (_mutate(b"4000Li", b"40A0Li"), 2, "postcode", "pattern"),
    "reply record in a request": (_mutate(b"ACC000002", b"ACK000002"), 3, "record_type", "a request record"),
    "record after the trailer": (encode(request()) + _lines(1), 5, "record_type", "end of file after the trailer"),
    "blank line inside": (_mutate(b"\r\nACC", b"\r\n\r\nACC"), 3, "record_type", "a record"),
    "unknown file type": (_mutate(b"HDRREQ", b"HDRXYZ"), 1, "file_type", "'REQ' or 'RSP'"),
    "bad timestamp": (_mutate(b"20250501083000", b"20250501253000"), 1, "created", "UTC timestamp"),
}


@pytest.mark.parametrize("data,line,field,expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_names_line_field_and_expectation(data: bytes, line: int, field: str, expected: str) -> None:
    """Each kind of malformed file raises FlatFileError naming its line, its field and what was expected."""
    with pytest.raises(FlatFileError) as caught:
        decode(data)
    err = caught.value
    assert (err.line, err.field) == (line, field), str(err)
    assert expected in err.expected, str(err)
    assert str(err).startswith(f"line {line}, field {field}")


def test_encoding_a_value_too_long_names_line_and_field() -> None:
    """A city longer than its 30 columns is refused with the line the record would be on, never cut."""
    file = request()
    file.records[1] = file.records[1].model_copy(update={"city": "Sint-Pieters-Woluwe-Saint-Pierre"})
    with pytest.raises(FlatFileError, match=r"line 3, field city \(columns 115-144\): expected at most 30"):
        encode(file)


def test_encoding_a_character_outside_latin1_is_refused() -> None:
    """A name with a character ISO-8859-1 lacks ("Łódź") cannot be written and says which character."""
    file = request()
    file.records[0] = file.records[0].model_copy(update={"city": "Łódź"})
    with pytest.raises(FlatFileError, match=r"line 2, field city .*ISO-8859-1.*U\+0141"):
        encode(file)


def test_encoding_too_many_meters_is_refused() -> None:
    """A site with four meters does not fit the record's three meter slots."""
    file = request()
    meters = [f"5414488200000000{n:02d}" for n in range(4)]
    file.records[0] = file.records[0].model_copy(update={"meter_ids": meters})
    with pytest.raises(FlatFileError, match=r"line 2, field meter_ids .*at most 3 values"):
        encode(file)


def test_model_refuses_reply_records_in_a_request_file() -> None:
    """A REQ file holding an ACK record is invalid before any encoding."""
    with pytest.raises(ValidationError, match="REQ file holds CSW, ACC records only"):
        BeFlatFile(header=request().header, records=[BeAccepted(ref_seq=1, ref_type="CSW", ref_key="C-1")])


def test_spec_layout_tables_match_the_code() -> None:
    """Every record table in docs/belgian-flat-file.md lists exactly the codec's columns, widths and required flags."""
    sections = re.split(r"^### ", SPEC.read_text(encoding="utf-8"), flags=re.M)
    documented: dict[str, list[tuple[int, int, str, bool]]] = {}
    for section in sections[1:]:
        rows = re.findall(r"^\| (\d+)-(\d+) \| (\w+) \| [^|]+ \| (yes|no) \|", section, flags=re.M)
        if rows:
            documented[section[:3]] = [(int(a), int(b), name, req == "yes") for a, b, name, req in rows]
    assert set(documented) == {"HDR", "CSW", "ACC", "ACK", "REJ", "SWC", "LNK", "TRL"}
    for record_type, rows in documented.items():
        code = [(c.start, c.end, c.name, c.required) for c in layout(record_type)]
        assert rows == code, record_type


def test_token_travels_in_the_subject() -> None:
    """The subject tag carries the token through a mail client's "RE:" and quoting; no tag means no token."""
    subject = "RE: AW: PLU contract switch " + subject_tag("be-7f3a9c")
    assert token_in_subject(subject) == "be-7f3a9c"
    assert token_in_subject("RE: your mail") is None
