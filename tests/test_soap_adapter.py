"""The `soap` adapter against a real SOAP server (tests/soap/server.py) on a free port: no mocks."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
import pytest_asyncio
import structlog
from structlog.testing import LogCapture

from engine.adapter import CallContext, Services
from adapters.soap import SoapAdapter, SoapEndpointConfig, clear_wsdl_cache, redact
from engine.errors import (BusinessError, ConfigError, RoutingError, TargetRejected, TargetServerError,
                           TargetTimeout, TargetUnavailable, Throttled, UnparseableAnswer, UnparseablePayload,
                           ValidationFailed)
from tests.soap.server import PASSWORD, USERNAME, SoapServer

DE_WSDL = "tests/soap/erp_de.wsdl"
FR_WSDL = "tests/soap/erp_fr.wsdl"
ENV = "TEST_SOAP_DE_PASSWORD"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server():
    srv = await SoapServer().start()
    yield srv
    await srv.stop()


@pytest.fixture(autouse=True)
def _clean(server, monkeypatch):
    server.reset()
    monkeypatch.setenv(ENV, PASSWORD)
    yield
    server.reset()


@pytest_asyncio.fixture(loop_scope="session")
async def make():
    started: list[SoapAdapter] = []

    async def make(wsdl: str, address: str | None, **config) -> SoapAdapter:
        cfg = SoapEndpointConfig(adapter="soap", wsdl=wsdl, address=address, **config)
        adapter = SoapAdapter("erp", cfg, Services())
        await adapter.start()
        started.append(adapter)
        return adapter

    yield make
    for adapter in started:
        await adapter.close()


def de_config(**extra):
    return {"ws_security": {"username": USERNAME, "password": {"env": ENV}},
            "business_error": {"table": "Return", "type_field": "Type", "message_field": "Message", "id_field": None,
                               "number_field": "Code", "operations": ["CreateContract"]},  # GetContract has none
            **extra}


def ctx(timeout: float = 5.0) -> CallContext:
    return CallContext({"ce-id": "msg-1", "traceparent": "00-abc-def-01"}, msg_id="msg-1",
                       correlation_id="corr-1", timeout=timeout)


CONTRACT = {
    "Contract": {
        "CustomerId": "K100", "StartDate": "2025-04-01", "Tariff": "Oeko-24",
        "Customer": {"Name": "Erika Muster", "Email": "erika@example.org", "Iban": "DE89370400440532013000"},
        "Meters": {"Meter": [{"MeterId": "M1", "Reading": "100.5"}, {"MeterId": "M2", "Reading": "20.25"}]},
    }
}


async def de(server, make, **extra) -> SoapAdapter:
    return await make(DE_WSDL, server.url + "/erp-de", **de_config(**extra))


async def test_soap11_call_with_ws_security_nested_input_and_output(server, make):
    """A nested payload goes out with a UsernameToken and timestamp; dates and decimals come back as text."""
    adapter = await de(server, make)

    answer = await adapter.call("CreateContract", CONTRACT, ctx())

    assert answer == {
        "ContractId": "DE-K100", "StartDate": "2025-04-01", "CreatedAt": "2025-03-01T10:15:00+00:00",
        "Amount": "120.75", "Return": [{"Type": "S", "Code": "V1-000", "Message": "Contract created"}],
    }
    (seen,) = server.requests
    assert seen.find("//wsse:UsernameToken/wsse:Username") == USERNAME
    assert seen.find("//wsse:UsernameToken/wsse:Password") == PASSWORD
    assert seen.find("//wsse:Security/wsu:Timestamp/wsu:Expires")
    assert seen.find("//de:Contract/de:Meters/de:Meter[2]/de:MeterId") == "M2"
    assert seen.headers["Content-Type"].startswith("text/xml")
    assert seen.headers["Idempotency-Key"] == "msg-1"
    assert seen.headers["X-Correlation-Id"] == "corr-1"
    assert seen.headers["traceparent"] == "00-abc-def-01"


async def test_soap12_call_with_nested_lists(server, make):
    """The SOAP 1.2 WSDL is called as SOAP 1.2 (envelope namespace and content type)."""
    adapter = await make(FR_WSDL, server.url + "/erp-fr")
    payload = {"abonnement": {"numeroClient": "C7", "dateDebut": "2025-05-01", "offre": "vert",
                              "options": {"option": ["nuit", "weekend"]}}}

    answer = await adapter.call("creerAbonnement", payload, ctx())

    assert answer == {"numeroAbonnement": "FR-C7", "dateEffet": "2025-05-01",
                      "horodatage": "2025-03-01T10:15:00+01:00", "statut": "EN_COURS",
                      "options": {"option": ["NUIT", "WEEKEND"]}}
    (seen,) = server.requests
    assert seen.doc.tag == "{http://www.w3.org/2003/05/soap-envelope}Envelope"
    assert seen.headers["Content-Type"].startswith("application/soap+xml")


async def test_wrong_password_is_a_client_fault_and_rejected(server, make, monkeypatch):
    """A Client fault is permanent; the text carries the fault string and a detail snippet."""
    monkeypatch.setenv(ENV, "wrong-password")
    adapter = await de(server, make)

    with pytest.raises(TargetRejected) as err:
        await adapter.call("GetContract", {"ContractId": "DE-1"}, ctx())

    text = str(err.value)
    assert "Authentication failed" in text and "bad credentials" in text and "soap:Client" in text
    assert err.value.status == 500


async def test_missing_password_secret_fails_start(server, make, monkeypatch):
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=ENV):
        await de(server, make)


@pytest.mark.parametrize("erp", ["de", "fr"])
async def test_server_fault_is_a_transient_server_error(server, make, erp):
    """A Server (1.1) or Receiver (1.2) fault may pass: TargetServerError."""
    server.mode = "server_fault"
    if erp == "de":
        adapter, op, payload = await de(server, make), "GetContract", {"ContractId": "X"}
    else:
        adapter = await make(FR_WSDL, server.url + "/erp-fr")
        op, payload = "creerAbonnement", {"abonnement": {"numeroClient": "C", "dateDebut": "2025-01-01", "offre": "o"}}

    with pytest.raises(TargetServerError, match="SOAP fault") as err:
        await adapter.call(op, payload, ctx())
    assert "Server" in str(err.value) or "Receiver" in str(err.value)


async def test_soap12_sender_fault_is_rejected(server, make):
    adapter = await make(FR_WSDL, server.url + "/erp-fr")
    with pytest.raises(TargetRejected, match="Client inconnu") as err:
        await adapter.call("creerAbonnement", {"abonnement": {"numeroClient": "INCONNU", "dateDebut": "2025-01-01",
                                                              "offre": "o"}}, ctx())
    assert err.value.status == 400 and "INCONNU" in str(err.value)


async def test_html_503_page_is_throttled_with_retry_after(server, make):
    server.mode = "html503"
    adapter = await de(server, make)
    with pytest.raises(Throttled, match="overloaded") as err:
        await adapter.call("GetContract", {"ContractId": "X"}, ctx())
    assert err.value.retry_after == 7


@pytest.mark.parametrize("mode, expect", [("html500", "NullPointerException"), ("empty502", "empty body")])
async def test_html_or_empty_5xx_is_a_server_error_with_a_snippet(server, make, mode, expect):
    server.mode = mode
    adapter = await de(server, make)
    with pytest.raises(TargetServerError, match=expect):
        await adapter.call("GetContract", {"ContractId": "X"}, ctx())


async def test_business_error_row_in_a_200_is_a_business_error(server, make):
    """An E row in the BAPI-style Return table is permanent, with the ERP's message (not the warning's)."""
    adapter = await de(server, make)
    payload = {"Contract": {**CONTRACT["Contract"], "CustomerId": "BIZERR"}}
    with pytest.raises(BusinessError) as err:
        await adapter.call("CreateContract", payload, ctx())
    assert "Customer BIZERR is blocked for switching" in str(err.value)
    assert "Tariff is old" not in str(err.value)


async def test_malformed_xml_answer_is_named_the_targets_unparseable_answer(server, make):
    """Broken XML in a 200 is the target's fault, not the message's: UnparseableAnswer (permanent), never
    UnparseablePayload ("the payload is not JSON"), with the status and a snippet of what came."""
    server.mode = "malformed"
    adapter = await de(server, make)
    with pytest.raises(UnparseableAnswer, match="unclosed") as err:
        await adapter.call("GetContract", {"ContractId": "X"}, ctx())
    assert "-> 200" in str(err.value) and "target's answer" in str(err.value)
    assert not isinstance(err.value, UnparseablePayload)


async def test_slow_answer_times_out(server, make):
    server.mode = "slow"
    adapter = await de(server, make)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TargetTimeout, match="0.3s"):
        await adapter.call("GetContract", {"ContractId": "X"}, ctx(timeout=0.3))
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_closed_port_is_unavailable(server, make):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = await make(DE_WSDL, f"http://127.0.0.1:{port}/erp-de", **de_config())
    with pytest.raises(TargetUnavailable, match="ConnectError"):
        await adapter.call("GetContract", {"ContractId": "X"}, ctx())


async def test_bad_payload_field_fails_validation_naming_it(server, make):
    adapter = await de(server, make)
    with pytest.raises(ValidationFailed, match="Colour"):
        await adapter.call("GetContract", {"ContractId": "X", "Colour": "red"}, ctx())
    bad_nested = {"Contract": {**CONTRACT["Contract"], "Customer": {"Nickname": "E"}}}
    with pytest.raises(ValidationFailed, match="Nickname"):
        await adapter.call("CreateContract", bad_nested, ctx())
    missing = {"Contract": {k: v for k, v in CONTRACT["Contract"].items() if k != "Tariff"}}
    with pytest.raises(ValidationFailed, match="Tariff"):
        await adapter.call("CreateContract", missing, ctx())
    assert server.requests == []  # nothing was sent


def test_check_operation_from_a_local_wsdl_without_start():
    """Validation lists a local WSDL's operations without starting; a URL WSDL is not judged."""
    def adapter(**kw):
        return SoapAdapter("erp", SoapEndpointConfig(adapter="soap", **kw), None)

    de_adapter = adapter(wsdl=DE_WSDL)
    assert de_adapter.check_operation("CreateContract") is None
    why = de_adapter.check_operation("CancelContract")
    assert "CancelContract" in why and "CreateContract, GetContract" in why
    assert "needs an operation" in de_adapter.check_operation(None)
    assert adapter(wsdl=FR_WSDL).check_operation("creerAbonnement") is None
    assert adapter(wsdl="http://127.0.0.1:9/erp?wsdl").check_operation("Anything") is None
    limited = adapter(wsdl=DE_WSDL, operations=["GetContract"])
    assert "allowed: GetContract" in limited.check_operation("CreateContract")
    assert "cannot be read" in adapter(wsdl="tests/soap/missing.wsdl").check_operation("X")


async def test_call_outside_the_allowed_operations_is_refused(server, make):
    adapter = await de(server, make, operations=["GetContract"])
    with pytest.raises(RoutingError, match="allowed: GetContract"):
        await adapter.call("CreateContract", CONTRACT, ctx())
    with pytest.raises(ConfigError, match="Nope"):
        await de(server, make, operations=["Nope"])


async def test_wsdl_by_url_is_loaded_once(server, make):
    """Many calls (some concurrent) and a second endpoint on the same WSDL URL fetch it once."""
    clear_wsdl_cache()
    url = f"{server.url}/wsdl/erp_fr.wsdl?v=once"
    adapter = await make(url, server.url + "/erp-fr")
    payload = {"abonnement": {"numeroClient": "C1", "dateDebut": "2025-01-01", "offre": "o"}}
    for _ in range(3):
        await adapter.call("creerAbonnement", payload, ctx())
    await asyncio.gather(*(adapter.call("creerAbonnement", payload, ctx()) for _ in range(10)))
    other = await make(url, server.url + "/erp-fr")
    await other.call("creerAbonnement", payload, ctx())

    assert server.fetches["/wsdl/erp_fr.wsdl?v=once"] == 1
    assert len(server.requests) == 14
    assert adapter.check_operation("creerAbonnement") is None
    assert "creerAbonnement" in adapter.check_operation("supprimer")


async def test_unreachable_wsdl_url_fails_start(server, make):
    with pytest.raises(ConfigError, match="cannot load WSDL"):
        await make(f"{server.url}/wsdl/nope.wsdl", None)


async def test_debug_log_redacts_password_and_personal_data(server, make):
    """Request and answer bodies are logged at debug without the password, e-mail or IBAN."""
    adapter = await de(server, make)
    capture = LogCapture()
    old = structlog.get_config()
    structlog.configure(processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        await adapter.call("CreateContract", CONTRACT, ctx())
        await adapter.call("GetContract", {"ContractId": "DE-K100"}, ctx())
    finally:
        structlog.configure(**old)
    logged = [e for e in capture.entries if e["event"] in ("soap request", "soap response")]
    assert len(logged) == 4
    text = " ".join(e["body"] for e in logged)
    assert "Erika Muster" in text and "DE-K100" in text  # the rest is kept
    for secret in (PASSWORD, "erika@example.org", "DE89370400440532013000"):
        assert secret not in text


def test_redact_blanks_named_elements_and_secrets():
    names = ("password", "iban", "email", "phone")
    xml = b"<a xmlns:w='urn:w'><w:Password>pw</w:Password><MobilePhone>01</MobilePhone><Name>N</Name></a>"
    out = redact(xml, names)
    assert "pw" not in out and "01" not in out and ">N<" in out
    broken = "<x><Email>e@x</Email><Name>N</Name"
    assert "e@x" not in redact(broken, names) and "N" in redact(broken, names)
    assert "tok" not in redact("<html>tok</html>", names, ("tok",))
