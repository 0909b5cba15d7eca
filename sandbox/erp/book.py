"""The in-memory books of one country ERP: accounts, tariff switches, invoices and payments.

Kept apart from the HTTP side (simulator.py) so the business behaviour every country shares (idempotent
submits, delayed completion, changed-since paging) reads in one place; the wire shapes are dialects.py's.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sandbox.erp.dialects import Dialect


class Refusal(Exception):
    """A business refusal: `code` and the dialect's message for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Switch:
    ref: str
    contract: str
    tariff: str
    effective: str | None
    key: str
    submitted: float  # monotonic

    def state(self, delay: float, tariffs: frozenset[str], d: Dialect) -> tuple[str, str | None]:
        if time.monotonic() - self.submitted < delay:
            return "PENDING", None
        if self.tariff not in tariffs:
            return "FAILED", d.messages["unknown_tariff"].format(tariff=self.tariff)
        return "COMPLETED", None


@dataclass
class Invoice:
    number: str
    account: str
    amount: Decimal
    currency: str
    changed_at: datetime

    @property
    def changed_iso(self) -> str:
        return self.changed_at.isoformat().replace("+00:00", "Z")


@dataclass
class Payment:
    number: str
    account: str
    amount: Decimal
    currency: str
    changed_at: datetime
    invoice: str | None = None  # the invoice number it pays; None for a payment on account

    @property
    def changed_iso(self) -> str:
        return self.changed_at.isoformat().replace("+00:00", "Z")


def when(text: str | datetime | None, default_now: bool = False) -> datetime:
    """An aware UTC datetime from ISO text ('Z' allowed); the epoch of time for nothing, or now when asked."""
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=timezone.utc)
    if not text:
        if default_now:
            return datetime.now(timezone.utc).replace(microsecond=0)
        return datetime.min.replace(tzinfo=timezone.utc)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def changed_page(records: list[Any], since: str | None, offset: int = 0, size: int = 50,
                 after: str | None = None) -> dict[str, Any]:
    """Records changed after `since`, oldest first; a page by offset, or after the record number `after`."""
    rows = sorted((r for r in records if r.changed_at > when(since)), key=lambda r: (r.changed_at, r.number))
    if after is not None:
        offset = next((n + 1 for n, r in enumerate(rows) if r.number == after), len(rows))
    size = max(1, min(size, 500))
    page = rows[offset:offset + size]
    nxt = offset + size if offset + size < len(rows) else None
    return {"rows": page, "next": nxt, "total": len(rows), "offset": offset, "size": size}


SEED_INVOICES = [("CRM-SEED-1", "84.20", "2025-01-31T23:00:00Z"),
                 ("CRM-SEED-1", "91.05", "2025-02-28T23:00:00Z"),
                 ("CRM-SEED-2", "142.99", "2025-02-28T23:00:00Z"),
                 ("CRM-SEED-2", "-12.50", "2025-03-05T08:30:00Z"),
                 ("CRM-SEED-3", "63.00", "2025-03-31T22:00:00Z")]
# (crm id, amount, changed at, index into the seeded invoices it pays or None for a payment on account)
SEED_PAYMENTS = [("CRM-SEED-1", "84.20", "2025-02-10T09:00:00Z", 0),
                 ("CRM-SEED-2", "142.99", "2025-03-12T10:15:00Z", 2),
                 ("CRM-SEED-2", "50.00", "2025-03-12T10:15:00Z", None),
                 ("CRM-SEED-3", "63.00", "2025-04-14T07:45:00Z", 4)]


class ErpBook:
    """Accounts, switches, invoices and payments of one country, with the rules every dialect shares."""

    def __init__(self, dialect: Dialect, switch_delay: float, tariffs: frozenset[str]) -> None:
        self.dialect = dialect
        self.country = dialect.country
        self.switch_delay = switch_delay
        self.tariffs = tariffs
        self.accounts: dict[str, dict[str, Any]] = {}  # crm id -> {"key", "name", "email"}
        self.switches: dict[str, Switch] = {}  # ref -> switch
        self._by_key: dict[str, str] = {}  # request key -> ref
        self.invoices: list[Invoice] = []
        self.payments: list[Payment] = []
        self._account_seq = itertools.count(1)
        self._switch_seq = itertools.count(1)
        self._invoice_seq = itertools.count(1)
        self._payment_seq = itertools.count(1)

    def seed(self) -> None:
        invoices = [self.add_invoice(crm, amount, at) for crm, amount, at in SEED_INVOICES]
        for crm, amount, at, paid in SEED_PAYMENTS:
            self.add_payment(crm, amount, at, invoice=None if paid is None else invoices[paid].number)

    @property
    def default_currency(self) -> str:
        return "GBP" if self.country == "uk" else "EUR"

    def account_key(self, crm_id: str, name: str | None = None, email: str | None = None) -> tuple[str, bool]:
        """The ERP key of a CRM account, creating the account when new; (key, created)."""
        acc = self.accounts.get(crm_id)
        if acc is None:
            acc = self.accounts[crm_id] = {"key": self.dialect.account_key(next(self._account_seq)),
                                           "name": name, "email": email}
            return acc["key"], True
        if name:
            acc["name"] = name
        if email:
            acc["email"] = email
        return acc["key"], False

    def add_invoice(self, crm_id: str, amount: Decimal | str, changed_at: str | datetime | None = None,
                    currency: str | None = None, number: str | None = None) -> Invoice:
        """Add an invoice (or touch one with the same number); changed now unless given."""
        account, _ = self.account_key(crm_id)
        num = number or f"{self.country.upper()}-INV-{next(self._invoice_seq):06d}"
        self.invoices = [i for i in self.invoices if i.number != num]
        inv = Invoice(num, account, Decimal(amount), currency or self.default_currency, when(changed_at, True))
        self.invoices.append(inv)
        return inv

    def add_payment(self, crm_id: str, amount: Decimal | str, changed_at: str | datetime | None = None,
                    invoice: str | None = None, number: str | None = None) -> Payment:
        """Add a payment (or touch one with the same number) of `invoice`, or on account when None;
        changed now unless given."""
        account, _ = self.account_key(crm_id)
        num = number or f"{self.country.upper()}-PAY-{next(self._payment_seq):06d}"
        self.payments = [p for p in self.payments if p.number != num]
        pay = Payment(num, account, Decimal(amount), self.default_currency, when(changed_at, True), invoice)
        self.payments.append(pay)
        return pay

    def submit(self, contract: str | None, tariff: str | None, effective: str | None, key: str | None) -> Switch:
        msg = self.dialect.messages
        for name, value in (("contract", contract), ("tariff", tariff)):
            if not value:
                raise Refusal("MISSING", msg["missing"].format(field=name))
        if contract.upper().startswith("BLOCKED"):  # type: ignore[union-attr]
            raise Refusal("BLOCKED", msg["blocked"].format(contract=contract))
        key = key or f"{contract}#{tariff}#{effective}"
        if key in self._by_key:
            return self.switches[self._by_key[key]]
        ref = self.dialect.switch_ref(next(self._switch_seq))
        sw = Switch(ref, contract, tariff, effective, key, time.monotonic())  # type: ignore[arg-type]
        self.switches[ref] = sw
        self._by_key[key] = ref
        return sw

    def status(self, ref: str | None) -> tuple[Switch, str, str | None]:
        sw = self.switches.get(ref or "")
        if sw is None:
            raise Refusal("NOT_FOUND", self.dialect.messages["not_found"].format(ref=ref))
        status, reason = sw.state(self.switch_delay, self.tariffs, self.dialect)
        return sw, status, reason

    def changed_invoices(self, since: str | None, offset: int = 0, size: int = 50,
                         after: str | None = None) -> dict[str, Any]:
        """Invoices changed after `since`, oldest first; by offset, or after the invoice number `after`."""
        return changed_page(self.invoices, since, offset, size, after)

    def changed_payments(self, since: str | None, offset: int = 0, size: int = 50,
                         after: str | None = None) -> dict[str, Any]:
        """Payments changed after `since`, oldest first; by offset, or after the payment number `after`."""
        return changed_page(self.payments, since, offset, size, after)

    def run(self, kind: str, a: dict[str, Any]) -> dict[str, Any]:
        """One parsed call of `kind` (Op.kind) as a generic result for the dialect to render."""
        if kind == "submit":
            sw = self.submit(a["contract"], a["tariff"], a["effective"], a["key"])
            _, status, reason = self.status(sw.ref)
            return {"ref": sw.ref, "status": status, "reason": reason}
        if kind == "status":
            sw, status, reason = self.status(a["ref"])
            return {"ref": sw.ref, "status": status, "reason": reason}
        if kind == "upsert":
            if not a["crm_id"]:
                raise Refusal("MISSING", self.dialect.messages["missing"].format(field="crm_id"))
            key, created = self.account_key(a["crm_id"], a["name"], a["email"])
            return {"key": key, "created": created}
        listing = {"invoices": self.changed_invoices, "payments": self.changed_payments}[kind]
        return listing(a["since"], a.get("offset", 0), a["size"], a.get("after"))
