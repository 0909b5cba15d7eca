"""Pydantic models of canonical messages and external formats, by name (`schema: ContractSigned`).

A model is a schema when it is listed in a module's `__all__` and the module is imported below.
"""

from __future__ import annotations

from pydantic import BaseModel

from schemas import crm, meter

SCHEMAS: dict[str, type[BaseModel]] = {
    name: getattr(module, name) for module in (crm, meter) for name in module.__all__
}
