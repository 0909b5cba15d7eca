"""Fixed-width field kinds of the Belgian flat file, and the one error a bad file raises.

A model field says its kind in its annotation (`Annotated[str, Text(20)]`), so a record's layout, its
widths and its order are read off the pydantic model itself: one place to change a column.
Each kind turns a value into exactly `width` ISO-8859-1 characters and back, or says what it expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Any

from engine.errors import UnparseablePayload


class FlatFileError(UnparseablePayload):
    """A Belgian flat file that cannot be read or written; names the line, the field and what was expected."""

    def __init__(self, line: int, field: str, expected: str, found: str | None = None,
                 columns: tuple[int, int] | None = None, *, part: str | None = None) -> None:
        where = f"line {line}, field {field}" + (f" (columns {columns[0]}-{columns[1]})" if columns else "")
        text = f"{where}: expected {expected}" + (f", found {found}" if found is not None else "")
        super().__init__(f"{part}: {text}" if part else text)
        self.line = line
        self.field = field
        self.expected = expected
        self.found = found
        self.columns = columns
        self.part = part

    def in_part(self, part: str) -> "FlatFileError":
        """The same error, said of the mail part that held the file (`part 2 (text/plain, ...)`)."""
        return FlatFileError(self.line, self.field, self.expected, self.found, self.columns, part=part)


class FieldProblem(ValueError):
    """A value that does not fit its kind; the codec adds the line, field and columns."""

    def __init__(self, expected: str, found: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.found = found


def shown(text: str, limit: int = 40) -> str:
    """A value as an error message quotes it: repr, cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def latin1_problem(text: str) -> FieldProblem | None:
    """Why `text` cannot stand in a field (not ISO-8859-1, or a control character), or None."""
    for pos, ch in enumerate(text, 1):
        code = ord(ch)
        if code > 0xFF:
            return FieldProblem("characters of ISO-8859-1 (Latin-1)",
                                f"{ch!r} (U+{code:04X}) at position {pos} of {shown(text)}")
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return FieldProblem("printable characters (no control characters)",
                                f"U+{code:04X} at position {pos} of {shown(text)}")
    return None


class Kind:
    """A field kind: `width` characters on the line; `write` pads, `read` parses (None for blanks)."""

    width: int
    expected: str

    def write(self, value: Any) -> str:
        raise NotImplementedError

    def read(self, text: str) -> Any:
        raise NotImplementedError

    def _fit(self, text: str, what: str) -> str:
        if len(text) > self.width:
            raise FieldProblem(f"at most {self.width} {what}", f"{len(text)}: {shown(text)}")
        return text


class Text(Kind):
    """Left-justified text padded with spaces; trailing spaces are padding, blanks read as None."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.expected = f"text of at most {width} characters"

    def write(self, value: str | None) -> str:
        text = "" if value is None else str(value)
        problem = latin1_problem(text)
        if problem:
            raise problem
        return self._fit(text, "characters").ljust(self.width)

    def read(self, text: str) -> str | None:
        return text.rstrip(" ") or None


class Num(Kind):
    """An unsigned whole number, right-justified with leading zeros."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.expected = f"{width} digits"

    def write(self, value: int | None) -> str:
        if value is None:
            return " " * self.width
        if value < 0:
            raise FieldProblem(f"a number from 0 to {10 ** self.width - 1}", str(value))
        return self._fit(str(value), "digits").zfill(self.width)

    def read(self, text: str) -> int | None:
        if not text.strip(" "):
            return None
        if not (text.isascii() and text.isdigit()):
            raise FieldProblem(self.expected, shown(text))
        return int(text)


class Date(Kind):
    """A calendar date YYYYMMDD."""

    width = 8
    expected = "a date YYYYMMDD"

    def write(self, value: date | None) -> str:
        return " " * 8 if value is None else value.strftime("%Y%m%d")

    def read(self, text: str) -> date | None:
        if not text.strip(" "):
            return None
        try:
            if not text.isdigit():
                raise ValueError
            return datetime.strptime(text, "%Y%m%d").date()
        except ValueError:
            raise FieldProblem(self.expected, shown(text)) from None


class Stamp(Kind):
    """A UTC timestamp YYYYMMDDHHMMSS (a naive datetime is taken as UTC)."""

    width = 14
    expected = "a UTC timestamp YYYYMMDDHHMMSS"

    def write(self, value: datetime) -> str:
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")

    def read(self, text: str) -> datetime | None:
        if not text.strip(" "):
            return None
        try:
            if not text.isdigit():
                raise ValueError
            return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
        except ValueError:
            raise FieldProblem(self.expected, shown(text)) from None


class Flag(Kind):
    """Y or N."""

    width = 1
    expected = "Y or N"

    def write(self, value: bool) -> str:
        return "Y" if value else "N"

    def read(self, text: str) -> bool:
        if text not in ("Y", "N"):
            raise FieldProblem(self.expected, shown(text))
        return text == "Y"


class Code(Kind):
    """One of a few fixed codes standing for the model's values (e.g. H for household)."""

    def __init__(self, codes: Mapping[str, str]) -> None:
        self.codes = dict(codes)
        self.values = {code: value for value, code in self.codes.items()}
        self.width = max(len(code) for code in self.codes.values())
        self.expected = "one of " + ", ".join(f"{code} ({value})" for value, code in self.codes.items())

    def write(self, value: str) -> str:
        return self.codes[value].ljust(self.width)

    def read(self, text: str) -> str | None:
        code = text.rstrip(" ")
        if not code:
            return None
        if code not in self.values:
            raise FieldProblem(self.expected, shown(text))
        return self.values[code]


class Occurs(Kind):
    """A field repeated `times` times (COBOL's OCCURS); unused slots are blank, a list reads back."""

    def __init__(self, item: Text, times: int) -> None:
        self.item = item
        self.times = times
        self.width = item.width * times
        self.expected = f"at most {times} values of {item.width} characters"

    def write(self, values: list[str]) -> str:
        if len(values) > self.times:
            raise FieldProblem(f"at most {self.times} values", f"{len(values)}: {values!r}")
        return "".join(self.item.write(v) for v in values).ljust(self.width)

    def read(self, text: str) -> list[str]:
        w = self.item.width
        slots = (self.item.read(text[i:i + w]) for i in range(0, self.width, w))
        return [value for value in slots if value is not None]
