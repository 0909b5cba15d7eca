"""Shared pieces of the Salesforce tests: the hub's config pointing at a running emulator."""

from __future__ import annotations

import os
import textwrap

SECRET_ENV = "SF_TEST_CLIENT_SECRET"
CLIENT_ID = "plu-hub-test"

OPERATIONS = """
      upsert_invoice: {upsert: {sobject: Invoice__c, external_id: Invoice_Id__c}}
      upsert_account: {upsert: {sobject: Account, external_id: PLU_Account_Id__c}}
      upsert_contract: {upsert: {sobject: Contract, external_id: PLU_Contract_Id__c}}
      upsert_meter_month: {upsert: {sobject: Meter_Month__c, external_id: Hub_Key__c}}
      load_meter_months: {bulk_upsert: {sobject: Meter_Month__c, external_id: Hub_Key__c, retries: 2,
                          fields: [Hub_Key__c, Site_Id__c, Meter_Id__c, Register__c, Month__c, Kind__c, Total__c,
                                   Unit__c, Readings__c]}}
      key_customer_candidate: {publish: {topic: /event/Key_Customer_Candidate__e}}
      get_account: {get: {sobject: Account, fields: [Name, PLU_Account_Id__c, Country__c, Customer_Kind__c,
                                                     BillingStreet, BillingPostalCode, BillingCity, Email__c, Phone]}}
"""


def connect(org: object, secret: str = "test-secret") -> None:
    """Register the hub's connected app in the org and put its secret where the config points."""
    org.add_client(CLIENT_ID, secret)  # type: ignore[attr-defined]
    os.environ[SECRET_ENV] = secret


def config(org: object, *, operations: str = OPERATIONS, extra: str = "", breaker: str = "null") -> str:
    """A hub config whose `salesforce` endpoint is the emulator; `extra` is more top-level YAML."""
    ops = textwrap.indent(textwrap.dedent(operations).strip("\n"), " " * 6)
    return "\n".join([
        "nats: {urls: []}",
        "streams:",
        '  - {name: CRM, subjects: ["crm.>"]}',
        '  - {name: ERP, subjects: ["erp.>"]}',
        '  - {name: METER, subjects: ["meter.>"]}',
        '  - {name: OPS, subjects: ["ops.>"]}',
        '  - {name: SALESFORCE, subjects: ["salesforce.>"]}',
        "endpoints:",
        "  salesforce:",
        "    adapter: salesforce",
        f"    login_url: {org.url}",  # type: ignore[attr-defined]
        f"    pubsub: {org.pubsub_target}",  # type: ignore[attr-defined]
        "    pubsub_tls: false",
        "    timeout: 10s",
        f"    circuit_breaker: {breaker}",
        f"    auth: {{client_credentials: {{client_id: {CLIENT_ID}, client_secret: {{env: {SECRET_ENV}}}}}}}",
        "    operations:",
        ops,
        textwrap.dedent(extra),
    ]) + "\n"
