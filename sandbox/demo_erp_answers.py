"""Demo section: ERP answers as SAP sends them. The DE ERP refuses a contract with RETURN rows
(BAPIRET2) inside a 200 answer: the hub dead-letters it as a BusinessError naming every E row with its
message class and number, and `runner.py validate` refuses the rule spelled the old way (`Return.Type`)
at its line, because the WSDL says SAP's answer can never hold it.

Wire it after the other sections (it adds one record to dlq.contract-switch-request):

    await demo_erp_answers.section_erp_answers(js, dlq, root, check, wait_until, time.monotonic() + SECTION_DEADLINE)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from engine.errors import ConfigError
from engine.messages import event_headers
from engine.validation import flow_files, load_project

Check = Callable[[bool, str], None]
RULE = "    business_error: {table: RETURN, type_field: TYPE, error_values: [E, A]}"
OLD_RULE = "    business_error: {table: Return, type_field: Type, message_field: Message}"


async def section_erp_answers(js: Any, dlq: Any, root: Path, check: Check, wait_until: Any, deadline: float) -> None:
    print("\n  14. The German ERP answers as SAP does: a refusal is a RETURN table row inside a 200")
    contract = {"contract_id": "BLOCKED-DE-7", "version": 1, "account_id": "A-DE-7", "country": "DE",
                "tariff_code": "GREEN-12", "signed_on": "2026-11-20", "key_customer": False,
                "sites": [{"site_id": "S-DE-7", "postcode": "10115", "city": "Berlin", "meter_ids": ["M-DE-7-1"]}]}
    before = len(dlq.messages)
    await js.publish("crm.contract.signed", json.dumps(contract).encode(),
                     headers=event_headers("/crm/salesforce", "crm.contract.signed"))

    def refused() -> list[Any]:
        return [m for m in dlq.messages[before:] if m.subject == "dlq.contract-switch-request"
                and m.headers.get("Hub-Dlq-Error-Class") == "BusinessError"]

    ok = await wait_until(lambda: bool(refused()), [dlq.changed], deadline)
    text = refused()[0].headers.get("Hub-Dlq-Error", "") if ok else ""
    print(f"       BusinessError: {text}")
    check(ok and "E ZISU 042" in text and "E ZISU 001" in text,
          "the refusal went to the DLQ, never on as a switch: every E row with its message class and number")

    print("       $ runner.py validate   (with erp_de's rule spelled the old way, Return.Type)")
    config = (root / "config" / "sandbox.yaml").read_text(encoding="utf-8")
    line = next((n for n, text_ in enumerate(config.splitlines(), 1) if text_.startswith(RULE)), None)
    issues: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hub-demo-rule-") as tmp:
        path = Path(tmp) / "sandbox.yaml"
        path.write_text("\n".join(OLD_RULE if t.startswith(RULE) else t for t in config.splitlines()), encoding="utf-8")
        try:
            load_project(path, flow_files(root / "flows"))
        except ConfigError as exc:
            issues = exc.issues
    for issue in issues[:2]:
        print(f"       {issue.replace(str(path), 'config/sandbox.yaml')[:150]}")
    check(line is not None and bool(issues) and all(f"sandbox.yaml:{line}: endpoints.erp_de.business_error" in i
                                                    for i in issues),
          f"validate refuses a rule the WSDL says can never match, at its line ({len(issues)} calls named)")
