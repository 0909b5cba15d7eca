"""Canonical CRM events as the CRM bridge publishes them (`crm.*` subjects)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ContractSigned", "AccountChanged"]

Country = Literal["BE", "DE", "FR", "IT", "PT", "UK"]


class Site(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(min_length=1)
    postcode: str = Field(min_length=2, max_length=10)
    city: str
    meter_ids: list[str] = Field(default_factory=list)


class ContractSigned(BaseModel):
    """A customer signed a contract; the country ERP must switch the tariff."""

    model_config = ConfigDict(extra="forbid")

    contract_id: str = Field(min_length=1)
    version: int = Field(1, ge=1)
    account_id: str = Field(min_length=1)
    country: Country
    tariff_code: str = Field(min_length=1)
    signed_on: date
    sites: list[Site] = Field(min_length=1)
    key_customer: bool = False


class AccountChanged(BaseModel):
    """Account master data changed in the CRM (new account, address, contacts, tariff)."""

    model_config = ConfigDict(extra="forbid")

    account_id: str = Field(min_length=1)
    country: Country
    name: str = Field(min_length=1)
    kind: Literal["household", "business"]
    street: str
    postcode: str
    city: str
    email: str | None = None
    phone: str | None = None
