"""The erp_soap transforms end to end against the five running ERP simulators through the real `soap`
adapter (transform -> call -> transform), plus pure unit tests of dispatch, paging and normalisation.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from engine.adapter import CallContext, Services
from adapters.soap import SoapAdapter, SoapEndpointConfig
from engine.validation import resolve_transform
from sandbox.erp import COUNTRIES, DIALECTS, ErpSimulator
from schemas.crm import AccountChanged, ContractSigned
from transforms import erp_soap
from transforms.contracts import to_switch_request
from transforms.erp_soap import OPERATIONS, UnknownCountry

ENV = "TEST_ERP_SOAP_TRANSFORMS_DE_PASSWORD"
PASSWORD = "de-transforms-pw"
DELAY = 0.2
SINCE = "2025-01-01T00:00:00Z"
CODES = [c.upper() for c in COUNTRIES]


def ctx() -> CallContext:
    return CallContext({"ce-id": "m-t"}, msg_id="m-t", correlation_id="c-t", timeout=5.0)


# --- fixtures (the pattern of test_erp_simulators.py) -------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sims():
    started = {c: await ErpSimulator(c, switch_delay=DELAY, password=PASSWORD).start() for c in COUNTRIES}
    yield started
    for sim in started.values():
        await sim.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def adapters(sims):
    """One started soap adapter per country code, configured as the flows' endpoints would be."""
    started: dict[str, SoapAdapter] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, PASSWORD)
        for country, sim in sims.items():
            config: dict[str, Any] = {"adapter": "soap", "wsdl": sim.wsdl_url, "address": sim.url, "timeout": "3s"}
            if country == "de":
                config["ws_security"] = {"username": "hub-de", "password": {"env": ENV}}
                config["business_error"] = {"table": "RETURN"}  # SAP BAPIRET2 rows
            adapter = SoapAdapter(f"erp_{country}", SoapEndpointConfig(**config), Services())
            await adapter.start()
            started[country.upper()] = adapter
    yield started
    for adapter in started.values():
        await adapter.close()


async def call(adapters: dict[str, SoapAdapter], code: str, logical: str, erp_request: dict[str, Any]) -> Any:
    return await adapters[code].call(OPERATIONS[code][logical], erp_request, ctx())


def contract(code: str, contract_id: str, tariff: str = "GREEN-12", version: int = 2) -> dict[str, Any]:
    signed = ContractSigned(contract_id=contract_id, version=version, account_id=f"ACC-{code}", country=code,
                            tariff_code=tariff, signed_on="2025-06-01",
                            sites=[{"site_id": "S1", "postcode": "10115", "city": "Berlin", "meter_ids": ["M1"]}])
    return to_switch_request(signed.model_dump(mode="json"))


async def submit(adapters, code: str, req: dict[str, Any]) -> dict[str, Any]:
    out = erp_soap.switch_request(req)
    answer = await call(adapters, code, "submit_switch", out["erp_request"])
    return erp_soap.switch_submitted({**out, "erp_answer": answer})


async def poll(adapters, code: str, pending: dict[str, Any]) -> dict[str, Any]:
    out = erp_soap.status_request(pending)
    answer = await call(adapters, code, "switch_status", out["erp_request"])
    return erp_soap.switch_status({**out, "erp_answer": answer})


async def all_pages(adapters, code: str, kind: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every record of a listing, paged by 2 through <kind>_request/<kind>_page until next is None."""
    request, page = getattr(erp_soap, f"{kind}_request"), getattr(erp_soap, f"{kind}_page")
    logical = f"list_{kind}"
    items: list[dict[str, Any]] = []
    totals: list[Any] = []
    cursor = None
    for _ in range(20):
        paging = {"country": code, "since": SINCE, "cursor": cursor, "page_size": 2}
        answer = await call(adapters, code, logical, request(paging))
        result = page({**paging, "answer": answer})
        assert set(result) == {"items", "next", "total"}
        items += result["items"]
        totals.append(result["total"])
        cursor = result["next"]
        if cursor is None:
            return items, totals
    raise AssertionError("paging never ended")


def major(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.01")))


# --- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", CODES)
async def test_switch_is_pending_then_completed_and_a_resubmit_gets_the_same_ref(code, sims, adapters):
    sim = sims[code.lower()]
    sim.switch_delay = 3600  # pending until the ERP is told to complete it, however slow this run is
    try:
        req = contract(code, f"TX-{code}-1")
        pending = await submit(adapters, code, req)
        assert pending["status"] == "PENDING" and pending["erp_ref"] and pending["reason"] is None
        assert "erp_request" not in pending and "erp_answer" not in pending
        assert {k: pending[k] for k in req} == req  # the request's own fields ride along

        again = await submit(adapters, code, req)  # a redelivery or DLQ replay
        assert again["erp_ref"] == pending["erp_ref"]
        assert (await poll(adapters, code, pending))["status"] == "PENDING"
        sim.switch_delay = 0  # the ERP completes the switch
        done = await poll(adapters, code, pending)
    finally:
        sim.switch_delay = DELAY
    assert (done["status"], done["reason"], done["erp_ref"]) == ("COMPLETED", None, pending["erp_ref"])
    assert sim.max_parallel_status == 1

    newer = await submit(adapters, code, contract(code, f"TX-{code}-1", version=3))
    assert newer["erp_ref"] != pending["erp_ref"]  # a new contract version is a new switch


@pytest.mark.parametrize("code", CODES)
async def test_an_unknown_tariff_fails_with_the_erps_reason(code, adapters):
    pending = await submit(adapters, code, contract(code, f"TX-{code}-2", tariff="NOPE-99"))
    assert pending["status"] == "PENDING"
    await asyncio.sleep(DELAY)
    failed = await poll(adapters, code, pending)
    assert failed["status"] == "FAILED"
    assert failed["reason"] == DIALECTS[code.lower()].messages["unknown_tariff"].format(tariff="NOPE-99")


@pytest.mark.parametrize("code", CODES)
async def test_upserting_an_account_twice_gives_the_same_erp_key(code, adapters):
    account = AccountChanged(account_id=f"CRM-T-{code}", country=code, name="Erika Muster", kind="business",
                             street="Hauptstr. 1", postcode="10115", city="Berlin",
                             email="erika@example.org").model_dump(mode="json")
    keys, created = [], []
    for name in ("Erika Muster", "Erika Muster GmbH"):
        out = erp_soap.account_request({**account, "name": name})
        linked = erp_soap.account_linked({**out, "erp_answer": await call(adapters, code, "upsert_account",
                                                                         out["erp_request"])})
        assert linked["account_id"] == account["account_id"] and linked["country"] == code
        keys.append(linked["erp_account_key"])
        created.append(linked["created"])
    assert keys[0] == keys[1] and keys[0]
    assert created == ([True, False] if code == "DE" else [None, None])  # only DE says whether it created


@pytest.mark.parametrize("code", CODES)
async def test_invoices_are_paged_by_two_and_each_comes_back_once_with_its_amount(code, sims, adapters):
    sim = sims[code.lower()]
    sim.add_invoice("CRM-T-INV", "10.99", number=f"{code}-INV-T1")
    items, totals = await all_pages(adapters, code, "invoices")
    expected = {i.number: i for i in sim.invoices}
    assert sorted(r["invoice_id"] for r in items) == sorted(expected)
    for record in items:
        inv = expected[record["invoice_id"]]
        assert record == {"invoice_id": inv.number, "country": code, "erp_account_key": inv.account,
                          "amount": major(inv.amount), "currency": "GBP" if code == "UK" else "EUR",
                          "changed_at": inv.changed_iso}
    assert set(totals) == ({len(expected)} if code == "IT" else {None})


@pytest.mark.parametrize("code", CODES)
async def test_payments_are_paged_by_two_and_each_comes_back_once_with_its_invoice(code, sims, adapters):
    sim = sims[code.lower()]
    sim.add_payment("CRM-T-PAY", "7.05", "2025-05-05T05:05:05Z", invoice=sim.invoices[1].number)
    sim.add_payment("CRM-T-PAY", "-0.99")
    items, _ = await all_pages(adapters, code, "payments")
    expected = {p.number: p for p in sim.payments}
    assert sorted(r["payment_id"] for r in items) == sorted(expected) and len(expected) == 6
    for record in items:
        pay = expected[record["payment_id"]]
        assert record == {"payment_id": pay.number, "country": code, "erp_account_key": pay.account,
                          "amount": major(pay.amount), "currency": "GBP" if code == "UK" else "EUR",
                          "invoice_id": pay.invoice, "changed_at": pay.changed_iso}
    assert sum(r["invoice_id"] is None for r in items) == 2


# --- pure ----------------------------------------------------------------------------------------

FUNCTIONS = ["switch_request", "switch_submitted", "status_request", "switch_status", "account_request",
             "account_linked", "invoices_request", "payments_request", "invoices_page", "payments_page"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_refuses_a_country_without_a_soap_erp_by_name(name):
    func = resolve_transform(f"erp_soap.{name}")  # as a flow references it
    with pytest.raises(UnknownCountry, match=r"no SOAP ERP for country 'BE' \(known: DE, FR, IT, PT, UK\)"):
        func({"country": "BE"})
    assert issubclass(UnknownCountry, ValueError)


def test_operations_match_the_simulators_wsdl_operation_names():
    logical = {"submit": "submit_switch", "status": "switch_status", "upsert": "upsert_account",
               "invoices": "list_invoices", "payments": "list_payments"}
    assert OPERATIONS == {c.upper(): {logical[k]: v for k, v in DIALECTS[c].operation_names.items()}
                          for c in COUNTRIES}


EMPTY_PAGES = {  # what zeep hands back for a page without rows
    "DE": {"Invoices": None, "NextPageToken": None, "Return": [{"Type": "S", "Message": "Liste gelesen"}]},
    "FR": {"factures": None, "pageSuivante": None},
    "IT": {"totale": 0, "fattura": []},
    "PT": {"Cabecalho": {"IdPedido": "x", "Sucesso": True}, "Dados": {"Faturas": None, "ProximoCursor": None}},
    "UK": {"PageNumber": 1, "TotalPages": 1, "Invoices": None},
}


@pytest.mark.parametrize("code", CODES)
def test_an_empty_page_or_no_answer_at_all_is_the_last_page(code):
    paging = {"country": code, "since": SINCE, "cursor": None, "page_size": 2}
    page = erp_soap.invoices_page({**paging, "answer": EMPTY_PAGES[code]})
    assert page == {"items": [], "next": None, "total": 0 if code == "IT" else None}
    assert erp_soap.payments_page({**paging, "answer": None})["items"] == []


def test_a_single_row_not_in_a_list_and_a_wrapped_uk_page_are_read():
    row = {"Reference": "UK-PAY-9", "AccountNumber": "ACC-1", "AmountPence": -1250, "ModifiedAt": "2025-03-05T08:30:00"}
    answer = {"PaymentPage": {"PageNumber": 2, "TotalPages": 3, "Payments": {"Payment": row}}}
    page = erp_soap.payments_page({"country": "UK", "since": SINCE, "cursor": 2, "page_size": 1, "answer": answer})
    assert page == {"next": 3, "total": None, "items": [
        {"payment_id": "UK-PAY-9", "country": "UK", "erp_account_key": "ACC-1", "amount": "-12.50",
         "currency": "GBP", "invoice_id": None, "changed_at": "2025-03-05T08:30:00Z"}]}


def test_list_requests_follow_each_countrys_paging_style():
    first = {"since": "2025-01-01T00:00:00+00:00", "cursor": None, "page_size": 2}
    assert erp_soap.invoices_request({**first, "country": "DE"}) == {"ChangedSince": "2025-01-01T00:00:00Z",
                                                                     "MaxRows": 2}
    assert erp_soap.payments_request({**first, "country": "DE", "cursor": "P2"})["PageToken"] == "P2"
    assert erp_soap.invoices_request({**first, "country": "FR"})["numeroPage"] == 1
    assert erp_soap.payments_request({**first, "country": "IT", "cursor": 4})["offset"] == 4
    pt = erp_soap.payments_request({**first, "country": "PT", "cursor": "PT-PAY-000002"})
    assert pt["Dados"]["Cursor"] == "PT-PAY-000002" and pt == erp_soap.payments_request(
        {**first, "country": "PT", "cursor": "PT-PAY-000002"})  # the same page asks with the same IdPedido
    assert erp_soap.invoices_request({**first, "country": "UK", "cursor": 3})["PageNumber"] == 3
    with pytest.raises(ValueError, match="page_size"):
        erp_soap.invoices_request({**first, "country": "UK", "page_size": 0})


def test_the_erp_idempotency_keys_come_from_request_key():
    req = contract("IT", "K-9", version=4)
    assert erp_soap.switch_request(req)["erp_request"]["chiave_idempotenza"] == "K-9:v4"
    assert erp_soap.switch_request({**req, "country": "PT"})["erp_request"]["Cabecalho"]["IdPedido"] == "K-9:v4"
    assert erp_soap.switch_request({**req, "country": "UK"})["erp_request"]["AgreementRevision"] == 4
    assert erp_soap.switch_request({**req, "country": "DE", "version": 4})["erp_request"]["Contract"][
        "ContractVersion"] == 4
    assert erp_soap.switch_request({**req, "country": "PT"}) == erp_soap.switch_request({**req, "country": "PT"})
    with pytest.raises(ValueError, match="contradicts request_key"):
        erp_soap.switch_request({**req, "country": "FR", "version": 5})
    with pytest.raises(ValueError, match="names another contract"):
        erp_soap.switch_request({**req, "country": "UK", "contract_id": "K-10"})
    unversioned = {k: v for k, v in req.items() if k != "version"} | {"country": "DE", "request_key": "custom-key"}
    assert erp_soap.switch_request(unversioned)["erp_request"]["Contract"]["ContractVersion"] == 1


def test_a_wrapped_or_bare_answer_reads_the_same_and_an_unknown_status_is_refused():
    pending = {"country": "FR", "erp_ref": "BSC-1", "status": "PENDING", "reason": None}
    bascule = {"reference": "BSC-1", "statut": "FAILED", "motif": "Code tarif X inconnu"}
    bare = erp_soap.switch_status({**pending, "erp_answer": bascule})
    assert bare == erp_soap.switch_status({**pending, "erp_answer": {"bascule": bascule}})
    assert (bare["status"], bare["reason"]) == ("FAILED", "Code tarif X inconnu")
    with pytest.raises(ValueError, match="unknown switch status 'EN_COURS'"):
        erp_soap.switch_status({**pending, "erp_answer": {**bascule, "statut": "EN_COURS"}})
    with pytest.raises(ValueError, match="when asked about 'BSC-1'"):
        erp_soap.switch_status({**pending, "erp_answer": {**bascule, "reference": "BSC-2"}})
