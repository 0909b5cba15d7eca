"""Encode and decode the Belgian ERP's fixed-width flat file (docs/belgian-flat-file.md): bytes <-> BeFlatFile.

Pure code, no I/O. Every problem, in either direction, is one `FlatFileError` naming the line, the field,
its columns and what was expected, so a quarantined mail tells ops exactly where the file is wrong.
The decoder is strict about content and lenient only where mail transport is known to interfere:
bare LF line ends and stripped trailing spaces (a short record is padded) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from schemas.be_flatfile.fields import FieldProblem, FlatFileError, Kind, Num, Occurs, Text, shown
from schemas.be_flatfile.models import REPLY_RECORDS, REQUEST_RECORDS, BeFileHeader, BeFlatFile

RECORD_LENGTH = 256
ENCODING = "iso-8859-1"
UTF8_BOM = b"\xef\xbb\xbf"


class _Trailer(BaseModel):
    record_count: Annotated[int, Num(6)]


RECORD_MODELS: dict[str, type[BaseModel]] = {"HDR": BeFileHeader, **REQUEST_RECORDS, **REPLY_RECORDS,
                                             "TRL": _Trailer}
ALL_TYPES = ", ".join(RECORD_MODELS)


@dataclass(frozen=True)
class Column:
    """One field's place on its line (1-based, inclusive), as the spec's layout tables show it; `required`
    means blanks there are an error."""

    name: str
    kind: Kind
    start: int
    end: int
    required: bool


@cache
def layout(record_type: str) -> tuple[Column, ...]:
    """The columns of a record type, prefix (record type, sequence number) and filler included."""
    model = RECORD_MODELS[record_type]
    columns = [Column("record_type", Text(3), 1, 3, True)]
    if record_type not in ("HDR", "TRL"):
        columns.append(Column("seq", Num(6), 4, 9, True))
    start = columns[-1].end + 1
    for name, info in model.model_fields.items():
        if name == "record_type":
            continue
        kind = next(m for m in info.metadata if isinstance(m, Kind))
        # on the wire every field is written, so a blank is missing unless the model allows None
        required = info.default is not None and not isinstance(kind, Occurs)
        columns.append(Column(name, kind, start, start + kind.width - 1, required))
        start += kind.width
    if start > RECORD_LENGTH + 1:
        raise AssertionError(f"{record_type} needs {start - 1} columns, more than {RECORD_LENGTH}")
    columns.append(Column("filler", Text(RECORD_LENGTH - start + 1), start, RECORD_LENGTH, False))
    return tuple(columns)


# --- encode --------------------------------------------------------------------------------------


def encode(file: BeFlatFile) -> bytes:
    """The file as the ERP stores it: ISO-8859-1, fixed 256-character records, CRLF after each."""
    records = [("HDR", None, file.header)]
    records += [(r.record_type, n, r) for n, r in enumerate(file.records, 1)]
    records.append(("TRL", None, _Trailer(record_count=len(file.records))))
    return "".join(_write(line, *rec) + "\r\n" for line, rec in enumerate(records, 1)).encode(ENCODING)


def _write(line: int, record_type: str, seq: int | None, record: BaseModel) -> str:
    prefix = {"record_type": record_type, "seq": seq}
    parts = []
    for col in layout(record_type):
        value = prefix[col.name] if col.name in prefix else getattr(record, col.name, None)
        try:
            parts.append(col.kind.write(value))
        except FieldProblem as problem:
            raise FlatFileError(line, col.name, problem.expected, problem.found, (col.start, col.end)) from None
    return "".join(parts)


# --- decode --------------------------------------------------------------------------------------


def decode(data: bytes) -> BeFlatFile:
    """Read a flat file; any deviation from the spec raises FlatFileError (an UnparseablePayload)."""
    if data.startswith(UTF8_BOM):
        raise FlatFileError(1, "record_type", "'HDR' at column 1 of an ISO-8859-1 file",
                            "a UTF-8 byte-order mark", (1, 3))
    lines = _split(bytes(data))
    if not lines:
        raise FlatFileError(1, "record_type", "a header record 'HDR'", "an empty file", (1, 3))
    first_type = _record_type(1, lines[0])
    if first_type != "HDR":
        raise FlatFileError(1, "record_type", "the header 'HDR' as the first record", shown(first_type), (1, 3))
    header: BeFileHeader = _model(1, "HDR", _read(1, "HDR", lines[0]), lines[0])
    allowed = REQUEST_RECORDS if header.file_type == "REQ" else REPLY_RECORDS
    family = "request record (CSW, ACC)" if allowed is REQUEST_RECORDS else "reply record (ACK, REJ, SWC, LNK)"
    records: list[Any] = []
    trailer: tuple[int, dict[str, Any]] | None = None
    for number, raw in enumerate(lines[1:], 2):
        record_type = _record_type(number, raw)
        if trailer is not None:
            raise FlatFileError(number, "record_type", f"end of file after the trailer on line {trailer[0]}",
                                shown(record_type), (1, 3))
        if record_type == "TRL":
            trailer = number, _read(number, "TRL", raw)
            continue
        if record_type not in allowed:
            expected = (f"a {family} in a {header.file_type} file" if record_type in RECORD_MODELS
                        else f"a record type ({ALL_TYPES})")
            raise FlatFileError(number, "record_type", expected, shown(record_type), (1, 3))
        values = _read(number, record_type, raw)
        if values.pop("seq") != len(records) + 1:
            raise FlatFileError(number, "seq", f"{len(records) + 1:06d} (records are numbered 1, 2, ... in order)",
                                shown(raw[3:9].decode(ENCODING)), (4, 9))
        records.append(_model(number, record_type, values, raw))
    if trailer is None:
        raise FlatFileError(len(lines) + 1, "record_type", "the trailer 'TRL' as the last record", "end of file",
                            (1, 3))
    line, values = trailer
    if values["record_count"] != len(records):
        raise FlatFileError(line, "record_count", f"{len(records)} (the detail records between header and "
                            "trailer)", str(values["record_count"]), (4, 9))
    return BeFlatFile(header=header, records=records)


def _split(data: bytes) -> list[bytes]:
    lines = [part[:-1] if part.endswith(b"\r") else part for part in data.split(b"\n")]
    while lines and not lines[-1].strip(b" "):  # the last line end, blank lines at the end
        lines.pop()
    return lines


def _record_type(number: int, raw: bytes) -> str:
    if not raw.strip(b" "):
        raise FlatFileError(number, "record_type", f"a record ({ALL_TYPES})", "an empty line", (1, 3))
    return raw[:3].decode(ENCODING).rstrip(" ")


def _column_at(record_type: str, position: int) -> Column:
    columns = layout(record_type) if record_type in RECORD_MODELS else layout("TRL")[:1]
    return next((c for c in columns if c.start <= position <= c.end), columns[-1])


def _check_bytes(number: int, record_type: str, raw: bytes) -> None:
    high = next((i for i, b in enumerate(raw) if b >= 0x80), None)
    if high is not None:
        try:
            as_utf8 = raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            col = _column_at(record_type, high + 1)
            raise FlatFileError(number, col.name, "ISO-8859-1 text (the file looks UTF-8 encoded)",
                                "UTF-8 bytes for " + shown(as_utf8[col.start - 1:col.end].rstrip(" ")),
                            (col.start, col.end))
    bad = next((i for i, b in enumerate(raw) if b < 0x20 or 0x7F <= b <= 0x9F), None)
    if bad is not None:
        col = _column_at(record_type, bad + 1)
        hint = " (a Windows-1252 character such as the euro sign?)" if raw[bad] >= 0x80 else ""
        raise FlatFileError(number, col.name, "printable ISO-8859-1 characters",
                            f"byte 0x{raw[bad]:02X} at column {bad + 1}{hint}", (col.start, col.end))
    if len(raw) > RECORD_LENGTH:
        raise FlatFileError(number, "filler", f"at most {RECORD_LENGTH} characters in a record",
                            f"{len(raw)}", (RECORD_LENGTH + 1, len(raw)))


def _read(number: int, record_type: str, raw: bytes) -> dict[str, Any]:
    _check_bytes(number, record_type, raw)
    text = raw.decode(ENCODING).ljust(RECORD_LENGTH)
    values: dict[str, Any] = {}
    for col in layout(record_type)[1:]:
        piece = text[col.start - 1:col.end]
        try:
            value = col.kind.read(piece)
        except FieldProblem as problem:
            raise FlatFileError(number, col.name, problem.expected, problem.found, (col.start, col.end)) from None
        if col.name == "filler":
            if value is not None:
                raise FlatFileError(number, "filler", "spaces after the last field", shown(piece.strip(" ")),
                                    (col.start, col.end))
        elif value is None and col.required:
            raise FlatFileError(number, col.name, f"a value ({col.kind.expected}; the field is required)",
                                "blanks", (col.start, col.end))
        elif value is not None:
            values[col.name] = value
    return values


def _model(number: int, record_type: str, values: dict[str, Any], raw: bytes) -> Any:
    try:
        return RECORD_MODELS[record_type].model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "record_type"
        col = next((c for c in layout(record_type) if c.name == name), layout(record_type)[0])
        found = raw[col.start - 1:col.end].decode(ENCODING).rstrip(" ")
        raise FlatFileError(number, name, f"a valid value ({err['msg']})", shown(found),
                            (col.start, col.end)) from None
