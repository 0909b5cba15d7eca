"""The five country ERP simulators (sandbox/erp) driven through the real `soap` adapter: no mocks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio

from engine.adapter import CallContext, Services
from adapters.soap import SoapAdapter, SoapEndpointConfig
from engine.errors import (BusinessError, TargetRejected, TargetServerError, TargetUnavailable, Throttled)
from sandbox.erp import COUNTRIES, DIALECTS, ErpSimulator

ENV = "TEST_ERP_DE_PASSWORD"
PASSWORD = "de-sandbox-pw"
DELAY = 0.2


def ctx(timeout: float = 5.0) -> CallContext:
    return CallContext({"ce-id": "m-1"}, msg_id="m-1", correlation_id="c-1", timeout=timeout)


def op(country: str, kind: str) -> str:
    return DIALECTS[country].operation_names[kind]


# --- per-country payloads and how to read their answers ----------------------------------------

def submit_payload(country: str, contract: str, version: int, tariff: str = "GREEN-12") -> dict[str, Any]:
    key = f"{contract}-v{version}"
    return {
        "de": {"Contract": {"ContractId": contract, "ContractVersion": version, "TariffCode": tariff,
                            "ValidFrom": "2025-06-01"}},
        "fr": {"demande": {"contrat": {"numero": contract, "version": version}, "codeTarif": tariff,
                           "dateEffet": "2025-06-01"}},
        "it": {"chiave_idempotenza": key, "codice_contratto": contract, "codice_tariffa": tariff,
               "data_decorrenza": "2025-06-01"},
        "pt": {"Cabecalho": {"IdPedido": key, "Origem": "hub"},
               "Dados": {"NumeroContrato": contract, "Tarifario": tariff, "DataInicio": "2025-06-01"}},
        "uk": {"AgreementRef": contract, "AgreementRevision": version, "NewTariff": tariff,
               "EffectiveDate": "2025-06-01"},
    }[country]


def status_payload(country: str, ref: str) -> dict[str, Any]:
    return {"de": {"SwitchReference": ref}, "fr": {"reference": ref}, "it": {"id_pratica": ref},
            "pt": {"Cabecalho": {"IdPedido": f"q-{ref}"}, "Dados": {"ReferenciaMudanca": ref}},
            "uk": {"ChangeRequestId": ref}}[country]


def switch_of(country: str, answer: dict[str, Any]) -> tuple[str, str, str | None]:
    """(reference, status, reason) out of a submit or status answer.

    zeep hands back the only child of a one-child answer (FR <bascule>, IT <esito>, UK <ChangeRequest>) itself.
    """
    if country == "de":
        return answer["SwitchReference"], answer["Status"], answer.get("Reason")
    if country == "fr":
        return answer["reference"], answer["statut"], answer.get("motif")
    if country == "it":
        return answer["id_pratica"], answer["stato"], answer.get("motivo")
    if country == "pt":
        b = answer["Dados"]
        return b["ReferenciaMudanca"], b["Estado"], b.get("Motivo")
    return answer["Id"], answer["State"], answer.get("FailureReason")


def upsert_payload(country: str, crm_id: str, name: str) -> dict[str, Any]:
    return {"de": {"Partner": {"CrmAccountId": crm_id, "Name": name, "Email": "a@example.org"}},
            "fr": {"compte": {"identifiantCrm": crm_id, "raisonSociale": name}},
            "it": {"cliente": {"id_crm": crm_id, "denominazione": name}},
            "pt": {"Cabecalho": {"IdPedido": f"u-{crm_id}"}, "Dados": {"IdCrm": crm_id, "Nome": name}},
            "uk": {"Account": {"CrmId": crm_id, "DisplayName": name}}}[country]


def account_key_of(country: str, answer: Any) -> str:
    """The ERP's account key; FR, IT and UK answer a single element, which zeep returns as the string."""
    if country == "de":
        return answer["PartnerNumber"]
    if country == "pt":
        return answer["Dados"]["NumeroCliente"]
    assert isinstance(answer, str)
    return answer


# --- fixtures -------------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sims():
    started = {c: await ErpSimulator(c, switch_delay=DELAY, password=PASSWORD).start() for c in COUNTRIES}
    yield started
    for sim in started.values():
        await sim.stop()


@pytest.fixture(autouse=True)
def _env(sims, monkeypatch):
    monkeypatch.setenv(ENV, PASSWORD)
    for sim in sims.values():
        sim.reset_faults()
    yield
    for sim in sims.values():
        sim.reset_faults()


@pytest_asyncio.fixture(loop_scope="session")
async def adapter_for(sims):
    started: list[SoapAdapter] = []

    async def make(country: str, **extra: Any) -> SoapAdapter:
        sim = sims[country]
        config: dict[str, Any] = {"adapter": "soap", "wsdl": sim.wsdl_url, "address": sim.url, "timeout": "3s"}
        if country == "de":
            config["ws_security"] = {"username": "hub-de", "password": {"env": ENV}}
            config["business_error"] = {"table": "RETURN"}  # SAP BAPIRET2 rows
        config.update(extra)
        adapter = SoapAdapter(f"erp-{country}", SoapEndpointConfig(**config), Services())
        await adapter.start()
        started.append(adapter)
        return adapter

    yield make
    for adapter in started:
        await adapter.close()


async def poll_until_done(adapter: SoapAdapter, country: str, ref: str, limit: float = 3.0) -> tuple[str, str | None]:
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        _, status, reason = switch_of(country, await adapter.call(op(country, "status"), status_payload(country, ref),
                                                                  ctx()))
        if status != "PENDING" or asyncio.get_running_loop().time() > deadline:
            return status, reason
        await asyncio.sleep(0.05)


# --- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("country", COUNTRIES)
async def test_switch_completes_after_the_delay_and_resubmit_is_idempotent(country, sims, adapter_for):
    adapter = await adapter_for(country)
    sim = sims[country]
    before = len(sim.switches)

    sim.switch_delay = 3600  # pending for as long as this part takes, however slow the run
    try:
        ref, status, _ = switch_of(country, await adapter.call(op(country, "submit"),
                                                               submit_payload(country, f"K-{country}-1", 3), ctx()))
        assert status == "PENDING" and ref
        again, status2, _ = switch_of(country, await adapter.call(op(country, "submit"),
                                                                  submit_payload(country, f"K-{country}-1", 3), ctx()))
        assert (again, status2) == (ref, "PENDING")
        assert len(sim.switches) == before + 1  # the same key made no second switch
        sim.switch_delay = 0  # its delay is over
        assert await poll_until_done(adapter, country, ref) == ("COMPLETED", None)
    finally:
        sim.switch_delay = DELAY

    # a new contract version is a new request key: a new switch
    other, _, _ = switch_of(country, await adapter.call(op(country, "submit"),
                                                        submit_payload(country, f"K-{country}-1", 4), ctx()))
    assert other != ref


@pytest.mark.parametrize("country", COUNTRIES)
async def test_unknown_tariff_fails_with_a_reason(country, adapter_for):
    adapter = await adapter_for(country)
    ref, _, _ = switch_of(country, await adapter.call(op(country, "submit"),
                                                      submit_payload(country, f"K-{country}-2", 1, "NOPE-99"), ctx()))
    status, reason = await poll_until_done(adapter, country, ref)
    assert status == "FAILED" and "NOPE-99" in reason


@pytest.mark.parametrize("country", COUNTRIES)
async def test_upsert_account_twice_gives_the_same_key(country, adapter_for):
    adapter = await adapter_for(country)
    first = account_key_of(country, await adapter.call(op(country, "upsert"),
                                                       upsert_payload(country, "CRM-77", "Erika Muster"), ctx()))
    second = account_key_of(country, await adapter.call(op(country, "upsert"),
                                                        upsert_payload(country, "CRM-77", "Erika M."), ctx()))
    other = account_key_of(country, await adapter.call(op(country, "upsert"),
                                                       upsert_payload(country, "CRM-78", "Max"), ctx()))
    assert first == second != other


async def test_de_business_error_row_is_a_business_error_with_the_erp_message(adapter_for):
    adapter = await adapter_for("de")
    with pytest.raises(BusinessError, match="Vertrag BLOCKED-1 ist für Tarifwechsel gesperrt"):
        await adapter.call("TariffSwitchCreate", submit_payload("de", "BLOCKED-1", 1), ctx())
    with pytest.raises(BusinessError, match="Wechselbeleg SW999 existiert nicht"):
        await adapter.call("TariffSwitchGetStatus", {"SwitchReference": "SW999"}, ctx())


async def test_de_requires_ws_security(sims, adapter_for, monkeypatch):
    monkeypatch.setenv(ENV, "wrong")
    adapter = await adapter_for("de")
    with pytest.raises(TargetRejected, match="Authentication failed"):
        await adapter.call("TariffSwitchGetStatus", {"SwitchReference": "SW1"}, ctx())
    bare = await adapter_for("de", ws_security=None)
    with pytest.raises(TargetRejected, match="UsernameToken required"):
        await bare.call("TariffSwitchGetStatus", {"SwitchReference": "SW1"}, ctx())


async def test_fr_refusal_is_a_soap12_sender_fault(adapter_for):
    adapter = await adapter_for("fr")
    with pytest.raises(TargetRejected, match="bloqué pour bascule"):
        await adapter.call("demanderBascule", submit_payload("fr", "BLOCKED-2", 1), ctx())


async def test_uk_overloaded_answers_html_503_which_is_throttled(sims, adapter_for):
    sim, adapter = sims["uk"], await adapter_for("uk")
    sim.set_capacity(1)
    sim.set_latency(0.3)
    results = await asyncio.gather(*(adapter.call("GetTariffChange", {"ChangeRequestId": "TC-x"}, ctx())
                                     for _ in range(3)), return_exceptions=True)
    throttled = [r for r in results if isinstance(r, Throttled)]
    assert len(throttled) == 2, results
    assert throttled[0].retry_after == 2
    assert "Service Temporarily Unavailable" in str(throttled[0])


@pytest.mark.parametrize("kind, error", [("html_503", Throttled), ("html_500", TargetServerError),
                                         ("server_fault", TargetServerError), ("client_fault", TargetRejected)])
@pytest.mark.parametrize("country", ["de", "pt"])
async def test_fault_kinds_map_to_the_taxonomy(country, kind, error, sims, adapter_for):
    sim, adapter = sims[country], await adapter_for(country)
    sim.fail_next(1, kind)
    with pytest.raises(error):
        await adapter.call(op(country, "upsert"), upsert_payload(country, "CRM-F", "F"), ctx())
    # only the next one failed
    await adapter.call(op(country, "upsert"), upsert_payload(country, "CRM-F", "F"), ctx())


async def test_slow_and_latency_hit_the_call_deadline(sims, adapter_for):
    from engine.errors import TargetTimeout
    sim, adapter = sims["it"], await adapter_for("it")
    sim.slow_seconds = 1.0
    sim.fail_next(1, "slow")
    with pytest.raises(TargetTimeout):
        await adapter.call("salva_cliente", upsert_payload("it", "CRM-S", "S"), ctx(timeout=0.3))
    sim.set_latency(0.5)
    with pytest.raises(TargetTimeout):
        await adapter.call("salva_cliente", upsert_payload("it", "CRM-S", "S"), ctx(timeout=0.2))


async def test_go_away_and_come_back_on_the_same_port(sims, adapter_for):
    sim, adapter = sims["fr"], await adapter_for("fr")
    port = sim.port
    await sim.go_away()
    with pytest.raises(TargetUnavailable):
        await adapter.call("enregistrerCompte", upsert_payload("fr", "CRM-G", "G"), ctx())
    await sim.come_back()
    assert sim.port == port
    answer = await adapter.call("enregistrerCompte", upsert_payload("fr", "CRM-G", "G"), ctx())
    assert answer.startswith("CPT-")


async def test_invoices_changed_since_are_paged_in_every_dialect(sims, adapter_for):
    since = "2025-02-01T00:00:00Z"  # 4 of the 5 seeded invoices changed after this
    # DE: opaque page token
    de = await adapter_for("de")
    p1 = await de.call("InvoiceGetChangedList", {"ChangedSince": since, "MaxRows": 3}, ctx())
    p2 = await de.call("InvoiceGetChangedList", {"ChangedSince": since, "MaxRows": 3,
                                                 "PageToken": p1["NextPageToken"]}, ctx())
    assert len(p1["Invoices"]["Invoice"]) == 3 and len(p2["Invoices"]["Invoice"]) == 1
    assert p2.get("NextPageToken") is None
    # FR: page numbers
    fr = await adapter_for("fr")
    a = await fr.call("listerFactures", {"modifieesDepuis": since, "numeroPage": 1, "taillePage": 3}, ctx())
    assert len(a["factures"]["facture"]) == 3 and a["pageSuivante"] == 2
    # IT: offset/limit with a total
    it = await adapter_for("it")
    a = await it.call("elenco_fatture", {"modificate_dal": since, "offset": 2, "limite": 10}, ctx())
    assert a["totale"] == 4 and len(a["fattura"]) == 2
    # PT: keyset cursor
    pt = await adapter_for("pt")
    a = await pt.call("ListarFaturas", {"Cabecalho": {"IdPedido": "l1"},
                                        "Dados": {"AlteradasDesde": since, "Limite": 2}}, ctx())
    b = await pt.call("ListarFaturas", {"Cabecalho": {"IdPedido": "l2"},
                                        "Dados": {"AlteradasDesde": since, "Cursor": a["Dados"]["ProximoCursor"],
                                                  "Limite": 2}}, ctx())
    numbers = [f["Numero"] for f in a["Dados"]["Faturas"]["Fatura"] + b["Dados"]["Faturas"]["Fatura"]]
    assert len(set(numbers)) == 4 and b["Dados"].get("ProximoCursor") is None
    # UK: page number/size, amounts in pence; a new invoice shows up as changed
    sims["uk"].add_invoice("CRM-NEW", "10.99")
    uk = await adapter_for("uk")
    a = await uk.call("FetchInvoices", {"ModifiedAfter": since, "PageNumber": 2, "PageSize": 2}, ctx())
    page = a
    assert page["TotalPages"] == 3 and page["PageNumber"] == 2
    a = await uk.call("FetchInvoices", {"ModifiedAfter": "2025-12-31T00:00:00Z", "PageNumber": 1,
                                        "PageSize": 10}, ctx())
    assert [i["TotalPence"] for i in a["Invoices"]["Invoice"]] == [1099]


async def test_wsdl_is_served_with_the_real_address(sims):
    import httpx
    async with httpx.AsyncClient() as client:
        for country, sim in sims.items():
            text = (await client.get(sim.wsdl_url)).text
            assert f'location="{sim.url}/erp"' in text and DIALECTS[country].ns in text


# --- payments ----------------------------------------------------------------------------------

def payments_payload(country: str, since: str, size: int, cursor: Any) -> dict[str, Any]:
    """One page request in the country's own paging style (cursor None on the first page)."""
    if country == "de":
        return {"ChangedSince": since, "MaxRows": size, **({"PageToken": cursor} if cursor else {})}
    if country == "fr":
        return {"modifiesDepuis": since, "numeroPage": cursor or 1, "taillePage": size}
    if country == "it":
        return {"modificati_dal": since, "offset": cursor or 0, "limite": size}
    if country == "pt":
        return {"Cabecalho": {"IdPedido": f"pag-{cursor}"},
                "Dados": {"AlteradosDesde": since, "Limite": size, **({"Cursor": cursor} if cursor else {})}}
    return {"ModifiedAfter": since, "PageNumber": cursor or 1, "PageSize": size}


def payments_of(country: str, answer: Any, cursor: Any) -> tuple[list[dict[str, Any]], Any]:
    """(rows as (number, account, amount, invoice)-dicts, next cursor) out of one payments page.

    Empty lists come back from zeep as None (DE, FR, PT, UK wrappers) or [] (IT's bare repeated element).
    """
    if country == "de":
        rows = [(p["PaymentNumber"], p["PartnerNumber"], p["Amount"], p["InvoiceNumber"])
                for p in (answer["Payments"] or {}).get("Payment", [])]
        nxt = answer.get("NextPageToken")
    elif country == "fr":
        rows = [(p["numero"], p["codeCompte"], p["montant"], p["numeroFacture"])
                for p in (answer["paiements"] or {}).get("paiement", [])]
        nxt = answer.get("pageSuivante")
    elif country == "it":
        rows = [(p["numero_pagamento"], p["codice_cliente"], p["importo"], p["numero_fattura"])
                for p in answer["pagamento"]]
        offset = (cursor or 0) + len(rows)
        nxt = offset if offset < answer["totale"] else None
    elif country == "pt":
        rows = [(p["Numero"], p["NumeroCliente"], p["Valor"], p["NumeroFatura"])
                for p in (answer["Dados"]["Pagamentos"] or {}).get("Pagamento", [])]
        nxt = answer["Dados"].get("ProximoCursor")
    else:
        rows = [(p["Reference"], p["AccountNumber"], p["AmountPence"], p["InvoiceNumber"])
                for p in (answer["Payments"] or {}).get("Payment", [])]
        nxt = answer["PageNumber"] + 1 if answer["PageNumber"] < answer["TotalPages"] else None
    return [dict(zip(("number", "account", "amount", "invoice"), r)) for r in rows], nxt


@pytest.mark.parametrize("country", COUNTRIES)
async def test_payments_changed_since_come_back_exactly_once_across_pages(country, sims, adapter_for):
    sim, adapter = sims[country], await adapter_for(country)
    paid = sim.invoices[0].number
    added = [sim.add_payment("CRM-PAY-1", "10.99", invoice=paid, number=f"{country.upper()}-PAY-T1"),
             sim.add_payment("CRM-PAY-2", "-3.50", "2025-06-30T12:00:00Z")]
    since = "2025-01-01T00:00:00Z"
    expected = {p.number: p for p in sim.payments}  # the 4 seeded and the 2 added
    assert len(expected) >= 6

    seen: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        answer = await adapter.call(op(country, "payments"), payments_payload(country, since, 2, cursor), ctx())
        rows, cursor = payments_of(country, answer, cursor)
        seen += rows
        pages += 1
        assert pages <= 10, "paging does not end"
        if cursor is None:
            break
    assert sorted(r["number"] for r in seen) == sorted(expected)  # every payment, each exactly once
    assert pages == -(-len(expected) // 2)
    by_number = {r["number"]: r for r in seen}
    pence = country == "uk"
    for p in added:
        row = by_number[p.number]
        assert row["account"] == p.account and row["invoice"] == p.invoice
        assert row["amount"] == (int(p.amount * 100) if pence else str(p.amount))
    assert by_number[added[0].number]["invoice"] == paid and by_number[added[1].number]["invoice"] is None

    # nothing changed after the newest payment: an empty page, the last one
    newest = max(p.changed_iso for p in sim.payments)
    rows, cursor = payments_of(country, await adapter.call(op(country, "payments"),
                                                           payments_payload(country, newest, 2, None), ctx()), None)
    assert rows == [] and cursor is None


def test_seeded_payments_pay_seeded_invoices_or_the_account():
    sim = ErpSimulator("fr")
    invoices = {i.number: i for i in sim.invoices}
    assert len(sim.payments) == 4
    for p in sim.payments:
        assert p.invoice is None or invoices[p.invoice].account == p.account
    assert [p.invoice is None for p in sim.payments].count(True) == 1
    again = sim.add_payment("CRM-SEED-1", "1.00", number=sim.payments[0].number)
    assert len(sim.payments) == 4 and sim.payments[-1] is again  # same number: touched, not added


# --- polling observation -------------------------------------------------------------------

@pytest.mark.parametrize("country", COUNTRIES)
async def test_status_calls_are_counted_per_reference_and_parallel_polls_are_seen(country, sims, adapter_for):
    sim, adapter = sims[country], await adapter_for(country)
    refs = [switch_of(country, await adapter.call(op(country, "submit"),
                                                  submit_payload(country, f"K-{country}-P{n}", 1), ctx()))[0]
            for n in (1, 2)]
    sim.reset_counters()

    async def status(ref: str) -> None:
        await adapter.call(op(country, "status"), status_payload(country, ref), ctx())

    for _ in range(3):
        await status(refs[0])
    sim.set_latency(0.5)  # long enough for the two calls to overlap on a loaded machine
    await asyncio.gather(status(refs[0]), status(refs[1]))  # two switches at once: fine
    assert sim.status_calls == {refs[0]: 4, refs[1]: 1}
    assert sim.max_parallel_status == 1

    await asyncio.gather(status(refs[1]), status(refs[1]))  # the same switch twice at once: seen
    assert sim.max_parallel_status == 2 and sim.status_calls[refs[1]] == 3

    sim.reset_faults()
    sim.fail_next(1, "server_fault")  # a poll that failed was still a poll
    with pytest.raises(TargetServerError):
        await status(refs[0])
    assert sim.status_calls[refs[0]] == 5
    assert sim.calls[op(country, "submit")] == 0  # counters were reset after the submits
