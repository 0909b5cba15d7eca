"""ERP answers as ERPs really send them, against the real SOAP test server (tests/soap/server.py): an SAP
RFC/BAPI service answering BAPIRET2 RETURN rows, SOAP 1.2 faults with a Subcode chain and long details,
a gateway's 500 that is no SOAP Fault, hostile XML in a 200 and a 500; and `runner.py validate` judging a
business-error rule against the WSDL, with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from adapters.soap import SoapAdapter, SoapEndpointConfig
from engine.adapter import CallContext, Services
from engine.errors import (BusinessError, ConfigError, TargetRejected, TargetServerError, UnparseableAnswer)
from engine.validation import load_project
from tests.soap.server import TRANSACTION, SoapServer

ROOT = Path(__file__).resolve().parents[1]
SAP_WSDL = "tests/soap/sap_isu.wsdl"
FR_WSDL = "tests/soap/erp_fr.wsdl"
SWITCH = {"IV_CONTRACT": "K1", "IV_TARIFF": "GREEN-12", "IV_VALID_FROM": "2025-04-01"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server():
    srv = await SoapServer().start()
    yield srv
    await srv.stop()


@pytest.fixture(autouse=True)
def _clean(server):
    server.reset()
    yield
    server.reset()


@pytest_asyncio.fixture(loop_scope="session")
async def make(server):
    started: list[SoapAdapter] = []

    async def make(wsdl: str, path: str, **config) -> SoapAdapter:
        adapter = SoapAdapter("erp", SoapEndpointConfig(adapter="soap", wsdl=wsdl, address=server.url + path,
                                                        **config), Services())
        await adapter.start()
        started.append(adapter)
        return adapter

    yield make
    for adapter in started:
        await adapter.close()


def ctx() -> CallContext:
    return CallContext({}, msg_id="msg-1", correlation_id="corr-1", timeout=5.0)


def sap_rule(**more) -> dict:
    return {"business_error": {"table": "RETURN", **more}}


# --- SAP RFC/BAPI answers ---------------------------------------------------------------------

async def test_an_sap_refusal_is_a_business_error_naming_every_error_row(make):
    """A TYPE E answer in a 200 (with a W row before it) is refused, never passed on as done: both E rows
    with their message class, number and text, the warning left out."""
    sap = await make(SAP_WSDL, "/sap", **sap_rule())
    with pytest.raises(BusinessError) as err:
        await sap.call("Z_ISU_TARIFF_SWITCH", {**SWITCH, "IV_CONTRACT": "BLOCKED-7"}, ctx())
    assert str(err.value) == ("erp: Z_ISU_TARIFF_SWITCH: refused: E ZISU 042: Vertrag BLOCKED-7 ist für "
                              "Tarifwechsel gesperrt | E ZISU 001: Wechselbeleg wurde nicht angelegt")
    with pytest.raises(BusinessError, match="A ZISU 900: Verbuchung abgebrochen"):
        await sap.call("Z_ISU_TARIFF_SWITCH", {**SWITCH, "IV_CONTRACT": "ABORT-1"}, ctx())


async def test_an_sap_success_and_an_empty_return_table_pass(make):
    sap = await make(SAP_WSDL, "/sap", **sap_rule())
    done = await sap.call("Z_ISU_TARIFF_SWITCH", SWITCH, ctx())
    assert done["EV_SWITCH_DOC"] == "SW4500000001" and done["RETURN"]["item"][0]["TYPE"] == "S"
    empty = await sap.call("Z_ISU_TARIFF_SWITCH", {**SWITCH, "IV_CONTRACT": "EMPTY-000042"}, ctx())
    assert empty == {"EV_SWITCH_DOC": "SW0000000042", "RETURN": None}


async def test_a_single_bapiret2_structure_zeep_hands_back_bare_is_still_judged(make, server):
    """BAPI_TRANSACTION_COMMIT answers one RETURN structure, which zeep unwraps: the same rule finds it."""
    sap = await make(SAP_WSDL, "/sap", **sap_rule())
    assert (await sap.call("BAPI_TRANSACTION_COMMIT", {"WAIT": "X"}, ctx()))["TYPE"] is None
    server.commit_fails = True
    with pytest.raises(BusinessError, match="E BAPI 001: Commit work failed"):
        await sap.call("BAPI_TRANSACTION_COMMIT", {"WAIT": "X"}, ctx())


async def test_the_old_documented_rule_on_an_sap_answer_never_starts(make):
    """`Return.Type` (the old documented rule) cannot match SAP's RETURN/TYPE: the endpoint refuses to
    start naming the case difference, instead of passing every refusal as a success; ignore_case fixes it."""
    old = {"table": "Return", "type_field": "Type", "message_field": "Message", "id_field": "Id",
           "number_field": "Number", "operations": ["Z_ISU_TARIFF_SWITCH"]}
    with pytest.raises(ConfigError, match="has no Return .names are case-sensitive: it has RETURN"):
        await make(SAP_WSDL, "/sap", business_error=old)
    sap = await make(SAP_WSDL, "/sap", business_error={**old, "ignore_case": True})
    with pytest.raises(BusinessError, match="E ZISU 042"):
        await sap.call("Z_ISU_TARIFF_SWITCH", {**SWITCH, "IV_CONTRACT": "BLOCKED-1"}, ctx())


# --- faults: subcodes, details in full -----------------------------------------------------------

async def test_a_soap12_fault_keeps_its_subcode_chain_and_its_whole_detail(make):
    """A Sender fault with Subcodes ContratBloque > AuditEnCours: the error names the chain, and the long
    detail keeps the transaction id at its end whole (the old text cut it at 300 characters)."""
    fr = await make(FR_WSDL, "/erp-fr")
    with pytest.raises(TargetRejected) as err:
        await fr.call("creerAbonnement", {"abonnement": {"numeroClient": "BLOQUE", "dateDebut": "2025-01-01",
                                                         "offre": "o"}}, ctx())
    text = str(err.value)
    assert "SOAP fault soap:Sender > ContratBloque > AuditEnCours: Contrat bloqué" in text
    assert f"idTransaction={TRANSACTION}" in text and text.count("contrôle de conformité") == 5


async def test_a_gateway_500_that_is_no_fault_is_shown_as_text_with_its_transaction_id(make, server):
    """zeep hands a non-Fault XML 500 over as bytes: shown as readable text (not b'...'), in full."""
    server.mode = "gateway500"
    sap = await make(SAP_WSDL, "/sap", **sap_rule())
    with pytest.raises(TargetServerError) as err:
        await sap.call("Z_ISU_TARIFF_SWITCH", SWITCH, ctx())
    text = str(err.value)
    assert f"transactionId={TRANSACTION}" in text and "b'" not in text and "\\n" not in text


def test_a_long_detail_is_bounded_at_a_boundary_never_inside_an_identifier():
    from adapters.soap.faults import DETAIL_LIMIT, detail_text

    detail = ("<d>" + "".join(f"<ref>TX-{i:04d}-ABCDEFGHIJ</ref>" for i in range(400)) + "</d>").encode()
    text = detail_text(detail, lambda data, limit=0: data.decode() if isinstance(data, bytes) else data)
    assert len(text) < DETAIL_LIMIT + 30 and text.endswith("chars)")
    last = text.split("…")[0].rsplit("; ", 1)[-1]
    assert last.startswith("ref=TX-") and len(last) == len("ref=TX-0000-ABCDEFGHIJ"), last


# --- answers the hub cannot read ------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 500])
async def test_hostile_xml_is_permanent_whatever_the_status(make, server, status):
    """An entity-expansion bomb is UnparseableAnswer (permanent) in a 200 and in a 500 alike: retrying a
    hostile answer nine times only repeats the attack."""
    server.mode, server.hostile_status = "hostile", status
    sap = await make(SAP_WSDL, "/sap", **sap_rule())
    with pytest.raises(UnparseableAnswer, match=f"-> {status}: the target's answer is hostile XML"):
        await sap.call("Z_ISU_TARIFF_SWITCH", SWITCH, ctx())


# --- runner.py validate ---------------------------------------------------------------------------

CONFIG = """\
nats: {urls: []}
streams:
  - {name: CRM, subjects: ["crm.>"]}
  - {name: ERP, subjects: ["erp.>"]}
endpoints:
  erp_sap:
    adapter: soap
    wsdl: %s
    address: http://127.0.0.1:9/sap
    business_error: %s
"""
FLOW = """\
name: sap-switch
source: {subject: crm.contract.signed}
steps:
  - call: {endpoint: erp_sap, operation: Z_ISU_TARIFF_SWITCH}
  - publish: erp.contract.switch-requested
"""


def validate(tmp_path: Path, rule: str) -> list[str]:
    config = tmp_path / "hub.yaml"
    config.write_text(CONFIG % (ROOT / SAP_WSDL, rule))
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "sap-switch.yaml").write_text(FLOW)
    try:
        load_project(config, [tmp_path / "flows" / "sap-switch.yaml"])
    except ConfigError as exc:
        return exc.issues
    return []


def test_validate_reports_a_rule_the_wsdl_says_can_never_match_with_file_and_line(tmp_path):
    """The old documented rule against an SAP WSDL is an error at the rule's line in the config file,
    naming the operation, the case difference and the flow step that calls it."""
    issues = validate(tmp_path, "{table: Return, type_field: Type, message_field: Message}")
    [issue] = issues
    assert issue.startswith(f"{tmp_path / 'hub.yaml'}:10: endpoints.erp_sap.business_error.table: ")
    assert "Z_ISU_TARIFF_SWITCH's answer can never hold Return" in issue and "it has RETURN" in issue
    assert f"called by {tmp_path / 'flows' / 'sap-switch.yaml'}:4 steps[0].call" in issue


def test_validate_names_row_fields_the_table_does_not_have(tmp_path):
    issues = validate(tmp_path, "{table: RETURN, message_field: TEXT, id_field: MSGID}")
    assert [i.split(": ", 2)[1] for i in issues] == ["endpoints.erp_sap.business_error.message_field",
                                                    "endpoints.erp_sap.business_error.id_field"]
    assert "have no field TEXT" in issues[0] and "MESSAGE" in issues[0] and "id_field: null" in issues[1]


@pytest.mark.parametrize("rule", ["{table: RETURN}", "{table: RETURN.item}", "{table: return, ignore_case: true}"])
def test_validate_accepts_the_sap_rule_in_its_spellings(tmp_path, rule):
    assert validate(tmp_path, rule) == []
