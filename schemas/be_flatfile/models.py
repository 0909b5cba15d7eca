"""The Belgian ERP's flat file as pydantic models: a header, request or reply records, in file order.

The models say what the data is (types, required fields, codes); whether a value fits the ERP's columns
and its character set is the codec's check (codec.py), so the error can name the line it would be on.
Each record's annotations carry its field kind and width (fields.py): the layout is read from here.
A detail record's number is its position in `records` (1, 2, ...): replies point at it with `ref_seq`.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.be_flatfile.fields import Code, Date, Flag, Num, Occurs, Stamp, Text

__all__ = ["BeFileHeader", "BeContractSwitch", "BeAccountChange", "BeAccepted", "BeRejected",
           "BeSwitchCompleted", "BeAccountLinked", "BeFlatFile"]

Id20 = Annotated[str, Text(20), Field(min_length=1)]
Postcode = Annotated[str, Text(4), Field(pattern=r"^[1-9][0-9]{3}$", description="Belgian postcode, 4 digits")]
RefSeq = Annotated[int, Num(6), Field(ge=1, description="number of the request record answered")]
RequestType = Annotated[Literal["CSW", "ACC"], Text(3)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BeFileHeader(_Record):
    """First line of every file: what the file is, the correlation token, when and who wrote it."""

    file_type: Annotated[Literal["REQ", "RSP"], Text(3), Field(description="REQ from PLU, RSP from the ERP")]
    format_version: Annotated[Literal["01"], Text(2)] = "01"
    correlation_token: Annotated[str, Text(40), Field(pattern=r"^[A-Za-z0-9._-]+$",
                                                      description="the request's token; a reply repeats it")]
    created: Annotated[datetime, Stamp()] = Field(
        default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))
    sender: Annotated[str, Text(20), Field(min_length=1, examples=["PLU-HUB", "ERP-BE"])]


class BeContractSwitch(_Record):
    """CSW: switch one site of a signed contract to a tariff (one record per site)."""

    record_type: Literal["CSW"] = "CSW"
    contract_id: Id20
    contract_version: Annotated[int, Num(3), Field(ge=1)] = 1
    account_id: Id20
    tariff_code: Annotated[str, Text(10), Field(min_length=1)]
    signed_on: Annotated[date, Date()]
    site_id: Id20
    postcode: Postcode
    city: Annotated[str, Text(30), Field(min_length=1)]
    meter_ids: Annotated[list[str], Occurs(Text(18), 3), Field(description="EAN codes, at most 3")] = []
    key_customer: Annotated[bool, Flag()] = False


class BeAccountChange(_Record):
    """ACC: create or update an account's master data."""

    record_type: Literal["ACC"] = "ACC"
    account_id: Id20
    kind: Annotated[Literal["household", "business"], Code({"household": "H", "business": "B"})]
    name: Annotated[str, Text(40), Field(min_length=1)]
    street: Annotated[str, Text(40), Field(min_length=1)]
    postcode: Postcode
    city: Annotated[str, Text(30), Field(min_length=1)]
    email: Annotated[str | None, Text(60)] = None
    phone: Annotated[str | None, Text(20)] = None


class BeAccepted(_Record):
    """ACK: the ERP took a request record (a switch is then pending until SWC)."""

    record_type: Literal["ACK"] = "ACK"
    ref_seq: RefSeq
    ref_type: RequestType
    ref_key: Annotated[str, Text(20), Field(min_length=1, description="contract or account id answered")]
    erp_ref: Annotated[str | None, Text(12), Field(description="the ERP's order number")] = None


class BeRejected(_Record):
    """REJ: the ERP refused a request record, with a reason code and text."""

    record_type: Literal["REJ"] = "REJ"
    ref_seq: RefSeq
    ref_type: RequestType
    ref_key: Annotated[str, Text(20), Field(min_length=1)]
    reason_code: Annotated[str, Text(4), Field(min_length=1, examples=["T001", "C009"])]
    reason_text: Annotated[str, Text(80), Field(min_length=1)]


class BeSwitchCompleted(_Record):
    """SWC: an accepted switch took effect (arrives later, in its own reply file)."""

    record_type: Literal["SWC"] = "SWC"
    ref_seq: RefSeq
    contract_id: Id20
    contract_version: Annotated[int, Num(3), Field(ge=1)] = 1
    tariff_code: Annotated[str, Text(10), Field(min_length=1)]
    effective_on: Annotated[date, Date()]
    erp_ref: Annotated[str | None, Text(12)] = None


class BeAccountLinked(_Record):
    """LNK: an account change was applied; the ERP's own key for the account."""

    record_type: Literal["LNK"] = "LNK"
    ref_seq: RefSeq
    account_id: Id20
    erp_key: Annotated[str, Text(10), Field(min_length=1)]


REQUEST_RECORDS: dict[str, type[_Record]] = {"CSW": BeContractSwitch, "ACC": BeAccountChange}
REPLY_RECORDS: dict[str, type[_Record]] = {"ACK": BeAccepted, "REJ": BeRejected, "SWC": BeSwitchCompleted,
                                           "LNK": BeAccountLinked}
BeRecord = Annotated[Union[BeContractSwitch, BeAccountChange, BeAccepted, BeRejected, BeSwitchCompleted,
                           BeAccountLinked], Field(discriminator="record_type")]


class BeFlatFile(BaseModel):
    """A whole file: the header and its detail records; the trailer (record count) is the codec's."""

    model_config = ConfigDict(extra="forbid")

    header: BeFileHeader
    records: list[BeRecord] = []

    @model_validator(mode="after")
    def _records_fit_file_type(self) -> "BeFlatFile":
        allowed = REQUEST_RECORDS if self.header.file_type == "REQ" else REPLY_RECORDS
        for n, record in enumerate(self.records, 1):
            if record.record_type not in allowed:
                raise ValueError(f"record {n} is {record.record_type}; a {self.header.file_type} file holds "
                                 f"{', '.join(allowed)} records only")
        return self
