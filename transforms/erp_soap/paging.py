"""The three paging styles the country ERPs use, so each country table only names its elements.

A cursor is whatever `next_cursor` returned for the previous page (None for the first page); flows keep it
opaque and hand it back to the request builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transforms.erp_soap.wire import dig


@dataclass(frozen=True)
class TokenPaging:
    """The answer names the next page (an opaque token, a page number, a keyset cursor): send it back."""

    request_path: str  # where the cursor goes in the request
    next_path: str  # where the answer says what comes next
    first: Any = None  # what the first request sends (None: the element is left out)

    def request(self, cursor: Any) -> dict[str, Any]:
        return {self.request_path: self.first if cursor is None else cursor}

    def next_cursor(self, page: Any, cursor: Any, count: int) -> Any:
        value = dig(page, self.next_path)
        return None if value in (None, "") else value


@dataclass(frozen=True)
class PageCountPaging:
    """The answer says which page this was and how many there are: ask for the next number until the last."""

    request_path: str
    number_path: str
    pages_path: str
    first: int = 1

    def request(self, cursor: Any) -> dict[str, Any]:
        return {self.request_path: self.first if cursor is None else int(cursor)}

    def next_cursor(self, page: Any, cursor: Any, count: int) -> Any:
        number, pages = dig(page, self.number_path), dig(page, self.pages_path)
        if number is None or pages is None:
            return None
        return int(number) + 1 if int(number) < int(pages) else None


@dataclass(frozen=True)
class OffsetPaging:
    """Offset and limit with a total count: the next offset is this one plus the rows received."""

    request_path: str
    total_path: str
    first: int = 0

    def request(self, cursor: Any) -> dict[str, Any]:
        return {self.request_path: self.first if cursor is None else int(cursor)}

    def next_cursor(self, page: Any, cursor: Any, count: int) -> Any:
        total = dig(page, self.total_path)
        following = (self.first if cursor is None else int(cursor)) + count
        return following if count and total is not None and following < int(total) else None


Paging = TokenPaging | PageCountPaging | OffsetPaging
