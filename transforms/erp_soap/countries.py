"""Each country ERP's wire vocabulary in one table per country: operation names, where each canonical value
goes in a request (dotted input-part paths) and where each canonical field sits in an answer.

The functions in switches.py, accounts.py and listings.py are the same for every country; only these
tables differ. Request tables map an input-part path to the name of a value the builder computes
(switches: request_key, contract_id, version, tariff_code, effective_from, erp_ref, request_id, origin;
accounts: the AccountChanged fields and request_id; listings: since, page_size, request_id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transforms.erp_soap.paging import OffsetPaging, PageCountPaging, Paging, TokenPaging


class UnknownCountry(ValueError):
    """The payload names a country without a SOAP ERP (BE talks by email; anything else is a mistake)."""


@dataclass(frozen=True)
class Call:
    operation: str  # the WSDL operation name
    request: Mapping[str, str]  # input-part path -> canonical value name


@dataclass(frozen=True)
class SwitchAnswer:
    ref: str
    status: str
    reason: str
    wrapper: str | None = None  # the single child zeep may hand back bare


@dataclass(frozen=True)
class AccountAnswer:
    key: str  # "" when the (unwrapped) answer is the key itself
    created: str | None = None
    wrapper: str | None = None


@dataclass(frozen=True)
class Listing:
    call: Call
    paging: Paging
    items: str  # path of the repeated row element
    fields: Mapping[str, str]  # canonical field -> row element
    wrapper: str | None = None
    total: str | None = None  # path of the ERP's total row count, when it reports one
    minor_units: bool = False  # amounts in pence/cents


@dataclass(frozen=True)
class ErpCountry:
    code: str
    currency: str  # used when rows carry no currency of their own
    submit_switch: Call
    switch_status: Call
    switch_answer: SwitchAnswer
    upsert_account: Call
    account_answer: AccountAnswer
    list_invoices: Listing
    list_payments: Listing
    statuses: Mapping[str, str] = field(default_factory=lambda: {s: s for s in ("PENDING", "COMPLETED", "FAILED")})


def _pt_header(key: str) -> dict[str, str]:
    return {"Cabecalho.IdPedido": key, "Cabecalho.Origem": "origin"}


DE = ErpCountry(
    "DE", "EUR",
    submit_switch=Call("TariffSwitchCreate", {
        "Contract.ContractId": "contract_id", "Contract.ContractVersion": "version",
        "Contract.TariffCode": "tariff_code", "Contract.ValidFrom": "effective_from"}),
    switch_status=Call("TariffSwitchGetStatus", {"SwitchReference": "erp_ref"}),
    switch_answer=SwitchAnswer("SwitchReference", "Status", "Reason"),
    upsert_account=Call("BusinessPartnerUpsert", {
        "Partner.CrmAccountId": "account_id", "Partner.Name": "name", "Partner.Email": "email",
        "Partner.Address.Street": "street", "Partner.Address.PostalCode": "postcode", "Partner.Address.City": "city"}),
    account_answer=AccountAnswer("PartnerNumber", created="Created"),
    list_invoices=Listing(
        Call("InvoiceGetChangedList", {"ChangedSince": "since", "MaxRows": "page_size"}),
        TokenPaging("PageToken", "NextPageToken"), "Invoices.Invoice",
        {"invoice_id": "InvoiceNumber", "erp_account_key": "PartnerNumber", "amount": "GrossAmount",
         "currency": "Currency", "changed_at": "ChangedAt"}),
    list_payments=Listing(
        Call("PaymentGetChangedList", {"ChangedSince": "since", "MaxRows": "page_size"}),
        TokenPaging("PageToken", "NextPageToken"), "Payments.Payment",
        {"payment_id": "PaymentNumber", "erp_account_key": "PartnerNumber", "amount": "Amount",
         "currency": "Currency", "invoice_id": "InvoiceNumber", "changed_at": "ChangedAt"}),
)

FR = ErpCountry(
    "FR", "EUR",
    submit_switch=Call("demanderBascule", {
        "demande.contrat.numero": "contract_id", "demande.contrat.version": "version",
        "demande.codeTarif": "tariff_code", "demande.dateEffet": "effective_from"}),
    switch_status=Call("consulterBascule", {"reference": "erp_ref"}),
    switch_answer=SwitchAnswer("reference", "statut", "motif", wrapper="bascule"),
    upsert_account=Call("enregistrerCompte", {
        "compte.identifiantCrm": "account_id", "compte.raisonSociale": "name", "compte.courriel": "email"}),
    account_answer=AccountAnswer("", wrapper="codeCompte"),
    list_invoices=Listing(
        Call("listerFactures", {"modifieesDepuis": "since", "taillePage": "page_size"}),
        TokenPaging("numeroPage", "pageSuivante", first=1), "factures.facture",
        {"invoice_id": "numero", "erp_account_key": "codeCompte", "amount": "montantTtc", "currency": "devise",
         "changed_at": "dateModification"}),
    list_payments=Listing(
        Call("listerPaiements", {"modifiesDepuis": "since", "taillePage": "page_size"}),
        TokenPaging("numeroPage", "pageSuivante", first=1), "paiements.paiement",
        {"payment_id": "numero", "erp_account_key": "codeCompte", "amount": "montant", "currency": "devise",
         "invoice_id": "numeroFacture", "changed_at": "dateModification"}),
)

IT = ErpCountry(
    "IT", "EUR",
    submit_switch=Call("richiesta_cambio_tariffa", {
        "chiave_idempotenza": "request_key", "codice_contratto": "contract_id", "codice_tariffa": "tariff_code",
        "data_decorrenza": "effective_from"}),
    switch_status=Call("stato_cambio_tariffa", {"id_pratica": "erp_ref"}),
    switch_answer=SwitchAnswer("id_pratica", "stato", "motivo", wrapper="esito"),
    upsert_account=Call("salva_cliente", {
        "cliente.id_crm": "account_id", "cliente.denominazione": "name", "cliente.email": "email"}),
    account_answer=AccountAnswer("", wrapper="codice_cliente"),
    list_invoices=Listing(
        Call("elenco_fatture", {"modificate_dal": "since", "limite": "page_size"}),
        OffsetPaging("offset", "totale"), "fattura",
        {"invoice_id": "numero_fattura", "erp_account_key": "codice_cliente", "amount": "importo",
         "currency": "valuta", "changed_at": "modificata_il"}, total="totale"),
    list_payments=Listing(
        Call("elenco_pagamenti", {"modificati_dal": "since", "limite": "page_size"}),
        OffsetPaging("offset", "totale"), "pagamento",
        {"payment_id": "numero_pagamento", "erp_account_key": "codice_cliente", "amount": "importo",
         "currency": "valuta", "invoice_id": "numero_fattura", "changed_at": "modificato_il"}, total="totale"),
)

PT = ErpCountry(
    "PT", "EUR",
    submit_switch=Call("SubmeterMudancaTarifario", {
        **_pt_header("request_key"), "Dados.NumeroContrato": "contract_id", "Dados.Tarifario": "tariff_code",
        "Dados.DataInicio": "effective_from"}),
    switch_status=Call("ConsultarMudancaTarifario", {**_pt_header("request_id"), "Dados.ReferenciaMudanca": "erp_ref"}),
    switch_answer=SwitchAnswer("Dados.ReferenciaMudanca", "Dados.Estado", "Dados.Motivo"),
    upsert_account=Call("GravarCliente", {**_pt_header("request_id"), "Dados.IdCrm": "account_id",
                                          "Dados.Nome": "name"}),
    account_answer=AccountAnswer("Dados.NumeroCliente"),
    list_invoices=Listing(
        Call("ListarFaturas", {**_pt_header("request_id"), "Dados.AlteradasDesde": "since",
                               "Dados.Limite": "page_size"}),
        TokenPaging("Dados.Cursor", "Dados.ProximoCursor"), "Dados.Faturas.Fatura",
        {"invoice_id": "Numero", "erp_account_key": "NumeroCliente", "amount": "Valor", "currency": "Moeda",
         "changed_at": "AlteradaEm"}),
    list_payments=Listing(
        Call("ListarPagamentos", {**_pt_header("request_id"), "Dados.AlteradosDesde": "since",
                                  "Dados.Limite": "page_size"}),
        TokenPaging("Dados.Cursor", "Dados.ProximoCursor"), "Dados.Pagamentos.Pagamento",
        {"payment_id": "Numero", "erp_account_key": "NumeroCliente", "amount": "Valor", "currency": "Moeda",
         "invoice_id": "NumeroFatura", "changed_at": "AlteradoEm"}),
)

UK = ErpCountry(
    "UK", "GBP",
    submit_switch=Call("RequestTariffChange", {
        "AgreementRef": "contract_id", "AgreementRevision": "version", "NewTariff": "tariff_code",
        "EffectiveDate": "effective_from"}),
    switch_status=Call("GetTariffChange", {"ChangeRequestId": "erp_ref"}),
    switch_answer=SwitchAnswer("Id", "State", "FailureReason", wrapper="ChangeRequest"),
    upsert_account=Call("SaveCustomerAccount", {
        "Account.CrmId": "account_id", "Account.DisplayName": "name", "Account.EmailAddress": "email",
        "Account.Postcode": "postcode"}),
    account_answer=AccountAnswer("", wrapper="AccountNumber"),
    list_invoices=Listing(
        Call("FetchInvoices", {"ModifiedAfter": "since", "PageSize": "page_size"}),
        PageCountPaging("PageNumber", "PageNumber", "TotalPages"), "Invoices.Invoice",
        {"invoice_id": "Number", "erp_account_key": "AccountNumber", "amount": "TotalPence",
         "changed_at": "ModifiedAt"}, wrapper="InvoicePage", minor_units=True),
    list_payments=Listing(
        Call("FetchPayments", {"ModifiedAfter": "since", "PageSize": "page_size"}),
        PageCountPaging("PageNumber", "PageNumber", "TotalPages"), "Payments.Payment",
        {"payment_id": "Reference", "erp_account_key": "AccountNumber", "amount": "AmountPence",
         "invoice_id": "InvoiceNumber", "changed_at": "ModifiedAt"}, wrapper="PaymentPage", minor_units=True),
)

COUNTRIES: dict[str, ErpCountry] = {c.code: c for c in (DE, FR, IT, PT, UK)}

OPERATIONS: dict[str, dict[str, str]] = {
    c.code: {"submit_switch": c.submit_switch.operation, "switch_status": c.switch_status.operation,
             "upsert_account": c.upsert_account.operation, "list_invoices": c.list_invoices.call.operation,
             "list_payments": c.list_payments.call.operation}
    for c in COUNTRIES.values()}


def country_of(payload: Mapping[str, Any]) -> ErpCountry:
    """The table of the payload's `country`; UnknownCountry (a ValueError) names the known ones."""
    code = payload["country"]
    table = COUNTRIES.get(code.upper()) if isinstance(code, str) else None
    if table is None:
        raise UnknownCountry(f"no SOAP ERP for country {code!r} (known: {', '.join(COUNTRIES)})")
    return table


def request_parts(call: Call, values: Mapping[str, Any]) -> dict[str, Any]:
    """`call.request` with each value name replaced by its value (path -> value), ready for wire.nest."""
    missing = sorted({name for name in call.request.values() if name not in values})
    if missing:  # a table naming a value its builder does not compute: a bug here, not in the payload
        raise RuntimeError(f"{call.operation}: no value for {', '.join(missing)}")
    return {path: values[name] for path, name in call.request.items()}
