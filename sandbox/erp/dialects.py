"""What each country's ERP looks like on the wire: operation element names, request paths, answer nesting.

A dialect turns the first Body child into a generic call (`kind`, `args`) and a generic result back into
the inner XML of its answer. The generic behaviour (state, delays, idempotency, paging) lives in book.py,
`Op` and `Dialect` in wire.py; this module is only the five country tables.

| country | SOAP | naming | security | refusals | paging (invoices and payments) |
|---------|------|--------|----------|----------|--------------------------------|
| de | 1.1 | PascalCase, SAP IS-U like | WS-Security UsernameToken | SAP RETURN table (BAPIRET2) E rows in a 200 | PageToken |
| fr | 1.2 | lowerCamel French | none | soap:Sender fault, Subcode = the code | page number |
| it | 1.1 | snake_case Italian | none | soap:Client fault, coded detail | offset/limite + totale |
| pt | 1.2 | PascalCase Portuguese, Cabecalho/Dados | none | soap:Sender fault, Subcode = the code | keyset cursor |
| uk | 1.1 | PascalCase, *Request/*Response, pence | none; HTML 503 when over capacity | soap:Client fault | PageNumber/TotalPages |
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from sandbox.erp.sap import de_ok as _de_ok, de_refusal as _de_refusal
from sandbox.erp.wire import Dialect, Op, Parse, e

__all__ = ["COUNTRIES", "DIALECTS", "Dialect", "Op", "e"]


# --- DE ---------------------------------------------------------------------------------------

def _de_changed_list(b: etree._Element, d: Dialect) -> dict[str, Any]:
    return {"since": d.text(b, "ChangedSince"), "size": d.integer(b, "MaxRows", 100),
            "offset": int((d.text(b, "PageToken") or "P0")[1:] or 0)}


def _de_next_page(r: dict[str, Any]) -> str:
    return e("NextPageToken", None if r["next"] is None else f"P{r['next']}") + _de_ok("Liste gelesen")


DE = Dialect(
    country="de", ns="urn:plu:sandbox:erp:de:isu:v1", soap=11, wsdl="de.wsdl", ws_security=True, refusal_rows=_de_refusal,
    account_key=lambda n: f"{1000000 + n:010d}", switch_ref=lambda n: f"SW{4500000000 + n}",
    messages={"blocked": "Vertrag {contract} ist für Tarifwechsel gesperrt",
              "not_found": "Wechselbeleg {ref} existiert nicht",
              "missing": "Pflichtfeld {field} fehlt",
              "unknown_tariff": "Tarif {tariff} ist im Tarifkatalog nicht vorhanden"},
    ops={
        "TariffSwitchCreate": Op(
            "submit", "TariffSwitchCreate", "TariffSwitchCreateResponse",
            lambda b, d: {"contract": d.text(b, "Contract/ContractId"), "tariff": d.text(b, "Contract/TariffCode"),
                          "effective": d.text(b, "Contract/ValidFrom"),
                          "key": f"{d.text(b, 'Contract/ContractId')}#{d.text(b, 'Contract/ContractVersion')}"},
            lambda r, d: e("SwitchReference", r["ref"]) + e("Status", r["status"])
            + _de_ok(f"Wechselbeleg {r['ref']} angelegt")),
        "TariffSwitchGetStatus": Op(
            "status", "TariffSwitchGetStatus", "TariffSwitchGetStatusResponse",
            lambda b, d: {"ref": d.text(b, "SwitchReference")},
            lambda r, d: e("SwitchReference", r["ref"]) + e("Status", r["status"]) + e("Reason", r["reason"])
            + _de_ok("Status gelesen")),
        "BusinessPartnerUpsert": Op(
            "upsert", "BusinessPartnerUpsert", "BusinessPartnerUpsertResponse",
            lambda b, d: {"crm_id": d.text(b, "Partner/CrmAccountId"), "name": d.text(b, "Partner/Name"),
                          "email": d.text(b, "Partner/Email")},
            lambda r, d: e("PartnerNumber", r["key"]) + e("Created", r["created"])
            + _de_ok(f"Geschäftspartner {r['key']} gesichert")),
        "InvoiceGetChangedList": Op(
            "invoices", "InvoiceGetChangedList", "InvoiceGetChangedListResponse", _de_changed_list,
            lambda r, d: "<Invoices>" + "".join(
                f"<Invoice>{e('InvoiceNumber', i.number)}{e('PartnerNumber', i.account)}"
                f"{e('GrossAmount', i.amount)}{e('Currency', i.currency)}{e('ChangedAt', i.changed_iso)}</Invoice>"
                for i in r["rows"]) + "</Invoices>" + _de_next_page(r)),
        "PaymentGetChangedList": Op(
            "payments", "PaymentGetChangedList", "PaymentGetChangedListResponse", _de_changed_list,
            lambda r, d: "<Payments>" + "".join(
                f"<Payment>{e('PaymentNumber', p.number)}{e('PartnerNumber', p.account)}{e('Amount', p.amount)}"
                f"{e('Currency', p.currency)}{e('InvoiceNumber', p.invoice)}{e('ChangedAt', p.changed_iso)}</Payment>"
                for p in r["rows"]) + "</Payments>" + _de_next_page(r)),
    },
)


# --- FR ---------------------------------------------------------------------------------------

def _fr_bascule(r: dict[str, Any]) -> str:
    return f"<bascule>{e('reference', r['ref'])}{e('statut', r['status'])}{e('motif', r.get('reason'))}</bascule>"


def _fr_page(since: str) -> Parse:
    """listerFactures / listerPaiements: page numbers from 1; the date element agrees with its noun."""
    return lambda b, d: {"since": d.text(b, since), "size": d.integer(b, "taillePage", 50),
                         "offset": (max(d.integer(b, "numeroPage", 1), 1) - 1) * d.integer(b, "taillePage", 50)}


def _fr_next_page(r: dict[str, Any]) -> str:
    return e("pageSuivante", None if r["next"] is None else r["next"] // max(r["size"], 1) + 1)


FR = Dialect(
    country="fr", ns="http://erp.plu.fr/sandbox/bascule/2024", soap=12, wsdl="fr.wsdl",
    account_key=lambda n: f"CPT-{n:06d}", switch_ref=lambda n: f"BSC-2025-{n:05d}",
    fault_detail=lambda code, msg: f"<codeErreur>{escape(code)}</codeErreur>",
    messages={"blocked": "Le contrat {contract} est bloqué pour bascule",
              "not_found": "Bascule {ref} introuvable",
              "missing": "Champ obligatoire {field} absent",
              "unknown_tariff": "Code tarif {tariff} inconnu"},
    ops={
        "demanderBascule": Op(
            "submit", "demanderBascule", "demanderBasculeReponse",
            lambda b, d: {"contract": d.text(b, "demande/contrat/numero"), "tariff": d.text(b, "demande/codeTarif"),
                          "effective": d.text(b, "demande/dateEffet"),
                          "key": f"{d.text(b, 'demande/contrat/numero')}/v{d.text(b, 'demande/contrat/version')}"},
            lambda r, d: _fr_bascule(r)),
        "consulterBascule": Op(
            "status", "consulterBascule", "consulterBasculeReponse",
            lambda b, d: {"ref": d.text(b, "reference")}, lambda r, d: _fr_bascule(r)),
        "enregistrerCompte": Op(
            "upsert", "enregistrerCompte", "enregistrerCompteReponse",
            lambda b, d: {"crm_id": d.text(b, "compte/identifiantCrm"), "name": d.text(b, "compte/raisonSociale"),
                          "email": d.text(b, "compte/courriel")},
            lambda r, d: e("codeCompte", r["key"])),
        "listerFactures": Op(
            "invoices", "listerFactures", "listerFacturesReponse", _fr_page("modifieesDepuis"),
            lambda r, d: "<factures>" + "".join(
                f"<facture>{e('numero', i.number)}{e('codeCompte', i.account)}{e('montantTtc', i.amount)}"
                f"{e('devise', i.currency)}{e('dateModification', i.changed_iso)}</facture>" for i in r["rows"])
            + "</factures>" + _fr_next_page(r)),
        "listerPaiements": Op(
            "payments", "listerPaiements", "listerPaiementsReponse", _fr_page("modifiesDepuis"),
            lambda r, d: "<paiements>" + "".join(
                f"<paiement>{e('numero', p.number)}{e('codeCompte', p.account)}{e('montant', p.amount)}"
                f"{e('devise', p.currency)}{e('numeroFacture', p.invoice)}{e('dateModification', p.changed_iso)}"
                "</paiement>" for p in r["rows"]) + "</paiements>" + _fr_next_page(r)),
    },
)


# --- IT ---------------------------------------------------------------------------------------

def _it_esito(r: dict[str, Any]) -> str:
    return f"<esito>{e('id_pratica', r['ref'])}{e('stato', r['status'])}{e('motivo', r.get('reason'))}</esito>"


def _it_page(since: str) -> Parse:
    """elenco_fatture / elenco_pagamenti: offset and limite; the date element agrees with its noun."""
    return lambda b, d: {"since": d.text(b, since), "size": d.integer(b, "limite", 50),
                         "offset": d.integer(b, "offset", 0)}


IT = Dialect(
    country="it", ns="urn:it:plu:sandbox:gestionale:v2", soap=11, wsdl="it.wsdl",
    account_key=lambda n: f"CLI/2025/{n:04d}", switch_ref=lambda n: f"PRAT-{770000 + n}",
    fault_detail=lambda code, msg: f"<errore><codice>{escape(code)}</codice><descrizione>{escape(msg)}"
                                   "</descrizione></errore>",
    messages={"blocked": "Contratto {contract} bloccato per cambio tariffa",
              "not_found": "Pratica {ref} inesistente",
              "missing": "Campo obbligatorio {field} mancante",
              "unknown_tariff": "Codice tariffa {tariff} sconosciuto"},
    ops={
        "richiesta_cambio_tariffa": Op(
            "submit", "richiesta_cambio_tariffa", "richiesta_cambio_tariffa_risposta",
            lambda b, d: {"contract": d.text(b, "codice_contratto"), "tariff": d.text(b, "codice_tariffa"),
                          "effective": d.text(b, "data_decorrenza"), "key": d.text(b, "chiave_idempotenza")},
            lambda r, d: _it_esito(r)),
        "stato_cambio_tariffa": Op(
            "status", "stato_cambio_tariffa", "stato_cambio_tariffa_risposta",
            lambda b, d: {"ref": d.text(b, "id_pratica")}, lambda r, d: _it_esito(r)),
        "salva_cliente": Op(
            "upsert", "salva_cliente", "salva_cliente_risposta",
            lambda b, d: {"crm_id": d.text(b, "cliente/id_crm"), "name": d.text(b, "cliente/denominazione"),
                          "email": d.text(b, "cliente/email")},
            lambda r, d: e("codice_cliente", r["key"])),
        "elenco_fatture": Op(
            "invoices", "elenco_fatture", "elenco_fatture_risposta", _it_page("modificate_dal"),
            lambda r, d: e("totale", r["total"]) + "".join(
                f"<fattura>{e('numero_fattura', i.number)}{e('codice_cliente', i.account)}{e('importo', i.amount)}"
                f"{e('valuta', i.currency)}{e('modificata_il', i.changed_iso)}</fattura>" for i in r["rows"])),
        "elenco_pagamenti": Op(
            "payments", "elenco_pagamenti", "elenco_pagamenti_risposta", _it_page("modificati_dal"),
            lambda r, d: e("totale", r["total"]) + "".join(
                f"<pagamento>{e('numero_pagamento', p.number)}{e('codice_cliente', p.account)}"
                f"{e('importo', p.amount)}{e('valuta', p.currency)}{e('numero_fattura', p.invoice)}"
                f"{e('modificato_il', p.changed_iso)}</pagamento>" for p in r["rows"])),
    },
)


# --- PT ---------------------------------------------------------------------------------------

def _pt_head(b: etree._Element, d: Dialect) -> str | None:
    return d.text(b, "Cabecalho/IdPedido")


def _pt_answer(r: dict[str, Any], dados: str) -> str:
    return f"<Cabecalho>{e('IdPedido', r.get('request_id') or '')}{e('Sucesso', True)}</Cabecalho><Dados>{dados}</Dados>"


def _pt_mudanca(r: dict[str, Any], d: Dialect) -> str:
    return _pt_answer(r, e("ReferenciaMudanca", r["ref"]) + e("Estado", r["status"]) + e("Motivo", r.get("reason")))


def _pt_page(since: str) -> Parse:
    """ListarFaturas / ListarPagamentos: keyset Cursor (the last number seen); the date agrees with its noun."""
    return lambda b, d: {"since": d.text(b, f"Dados/{since}"), "size": d.integer(b, "Dados/Limite", 50),
                         "after": d.text(b, "Dados/Cursor") or None, "request_id": _pt_head(b, d)}


def _pt_next_cursor(r: dict[str, Any]) -> str:
    return e("ProximoCursor", r["rows"][-1].number if r["next"] is not None else None)


PT = Dialect(
    country="pt", ns="http://erp.plu.pt/sandbox/faturacao/v3", soap=12, wsdl="pt.wsdl",
    account_key=lambda n: f"PT5{n:07d}", switch_ref=lambda n: f"MT/{2025}/{n:06d}",
    fault_detail=lambda code, msg: f"<Erro><Codigo>{escape(code)}</Codigo></Erro>",
    messages={"blocked": "Contrato {contract} bloqueado para mudança de tarifário",
              "not_found": "Mudança {ref} não encontrada",
              "missing": "Campo obrigatório {field} em falta",
              "unknown_tariff": "Tarifário {tariff} desconhecido"},
    ops={
        "SubmeterMudancaTarifario": Op(
            "submit", "SubmeterMudancaTarifario", "SubmeterMudancaTarifarioResposta",
            lambda b, d: {"contract": d.text(b, "Dados/NumeroContrato"), "tariff": d.text(b, "Dados/Tarifario"),
                          "effective": d.text(b, "Dados/DataInicio"), "key": _pt_head(b, d),
                          "request_id": _pt_head(b, d)},
            _pt_mudanca),
        "ConsultarMudancaTarifario": Op(
            "status", "ConsultarMudancaTarifario", "ConsultarMudancaTarifarioResposta",
            lambda b, d: {"ref": d.text(b, "Dados/ReferenciaMudanca"), "request_id": _pt_head(b, d)},
            _pt_mudanca),
        "GravarCliente": Op(
            "upsert", "GravarCliente", "GravarClienteResposta",
            lambda b, d: {"crm_id": d.text(b, "Dados/IdCrm"), "name": d.text(b, "Dados/Nome"),
                          "email": None, "request_id": _pt_head(b, d)},
            lambda r, d: _pt_answer(r, e("NumeroCliente", r["key"]))),
        "ListarFaturas": Op(
            "invoices", "ListarFaturas", "ListarFaturasResposta", _pt_page("AlteradasDesde"),
            lambda r, d: _pt_answer(r, "<Faturas>" + "".join(
                f"<Fatura>{e('Numero', i.number)}{e('NumeroCliente', i.account)}{e('Valor', i.amount)}"
                f"{e('Moeda', i.currency)}{e('AlteradaEm', i.changed_iso)}</Fatura>" for i in r["rows"])
                + "</Faturas>" + _pt_next_cursor(r))),
        "ListarPagamentos": Op(
            "payments", "ListarPagamentos", "ListarPagamentosResposta", _pt_page("AlteradosDesde"),
            lambda r, d: _pt_answer(r, "<Pagamentos>" + "".join(
                f"<Pagamento>{e('Numero', p.number)}{e('NumeroCliente', p.account)}{e('Valor', p.amount)}"
                f"{e('Moeda', p.currency)}{e('NumeroFatura', p.invoice)}{e('AlteradoEm', p.changed_iso)}"
                "</Pagamento>" for p in r["rows"]) + "</Pagamentos>" + _pt_next_cursor(r))),
    },
)


# --- UK ---------------------------------------------------------------------------------------

def _uk_change(r: dict[str, Any], d: Dialect) -> str:
    return (f"<ChangeRequest>{e('Id', r['ref'])}{e('State', r['status'])}"
            f"{e('FailureReason', r.get('reason'))}</ChangeRequest>")


def _uk_pages(r: dict[str, Any]) -> str:
    size = max(r["size"], 1)
    return e("PageNumber", r["offset"] // size + 1) + e("TotalPages", max((r["total"] + size - 1) // size, 1))


def _uk_fetch(b: etree._Element, d: Dialect) -> dict[str, Any]:
    return {"since": d.text(b, "ModifiedAfter"), "size": d.integer(b, "PageSize", 50),
            "offset": (max(d.integer(b, "PageNumber", 1), 1) - 1) * d.integer(b, "PageSize", 50)}


def _pence(amount: Any) -> int:
    return int(amount * 100)


UK = Dialect(
    country="uk", ns="http://erp.plu.co.uk/sandbox/billing/2023", soap=11, wsdl="uk.wsdl",
    account_key=lambda n: f"ACC-{100000 + n}", switch_ref=lambda n: f"TC-{n:08d}",
    fault_detail=lambda code, msg: f"<ErrorCode>{escape(code)}</ErrorCode>",
    messages={"blocked": "Agreement {contract} is locked for tariff changes",
              "not_found": "Change request {ref} not found",
              "missing": "Required field {field} missing",
              "unknown_tariff": "Tariff {tariff} is not in the price book"},
    ops={
        "RequestTariffChangeRequest": Op(
            "submit", "RequestTariffChangeRequest", "RequestTariffChangeResponse",
            lambda b, d: {"contract": d.text(b, "AgreementRef"), "tariff": d.text(b, "NewTariff"),
                          "effective": d.text(b, "EffectiveDate"),
                          "key": f"{d.text(b, 'AgreementRef')}:{d.text(b, 'AgreementRevision')}"},
            _uk_change),
        "GetTariffChangeRequest": Op(
            "status", "GetTariffChangeRequest", "GetTariffChangeResponse",
            lambda b, d: {"ref": d.text(b, "ChangeRequestId")}, _uk_change),
        "SaveCustomerAccountRequest": Op(
            "upsert", "SaveCustomerAccountRequest", "SaveCustomerAccountResponse",
            lambda b, d: {"crm_id": d.text(b, "Account/CrmId"), "name": d.text(b, "Account/DisplayName"),
                          "email": d.text(b, "Account/EmailAddress")},
            lambda r, d: e("AccountNumber", r["key"])),
        "FetchInvoicesRequest": Op(
            "invoices", "FetchInvoicesRequest", "FetchInvoicesResponse", _uk_fetch,
            lambda r, d: "<InvoicePage>" + _uk_pages(r) + "<Invoices>" + "".join(
                f"<Invoice>{e('Number', i.number)}{e('AccountNumber', i.account)}"
                f"{e('TotalPence', _pence(i.amount))}{e('ModifiedAt', i.changed_iso)}</Invoice>"
                for i in r["rows"]) + "</Invoices></InvoicePage>"),
        "FetchPaymentsRequest": Op(
            "payments", "FetchPaymentsRequest", "FetchPaymentsResponse", _uk_fetch,
            lambda r, d: "<PaymentPage>" + _uk_pages(r) + "<Payments>" + "".join(
                f"<Payment>{e('Reference', p.number)}{e('AccountNumber', p.account)}"
                f"{e('AmountPence', _pence(p.amount))}{e('InvoiceNumber', p.invoice)}"
                f"{e('ModifiedAt', p.changed_iso)}</Payment>" for p in r["rows"]) + "</Payments></PaymentPage>"),
    },
)

DIALECTS: dict[str, Dialect] = {d.country: d for d in (DE, FR, IT, PT, UK)}
COUNTRIES: tuple[str, ...] = tuple(DIALECTS)

# the WSDL operation name of each kind (UK's request elements carry a Request suffix, the operations don't)
for _d in DIALECTS.values():
    for _op in _d.ops.values():
        _name = _op.element.removesuffix("Request") if _d.country == "uk" else _op.element
        _d.operation_names[_op.kind] = _name
