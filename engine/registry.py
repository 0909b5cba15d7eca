"""Adapter registry: a name in YAML (`adapter: http`) to the class that implements it.

The engine owns the contract (engine/adapter.py) and never imports an adapter: adapter packages are
plugins, found through the `plu_hub.adapters` entry point group (pyproject.toml) and registered when
imported. A new protocol joins by shipping a package with such an entry point.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.adapter import Adapter

ADAPTERS: dict[str, type["Adapter"]] = {}
ENTRY_POINT_GROUP = "plu_hub.adapters"


def register(cls: type["Adapter"]) -> type["Adapter"]:
    """Class decorator: make an adapter available under its `name`."""
    if cls.name in ADAPTERS and ADAPTERS[cls.name] is not cls:
        raise RuntimeError(f"adapter name {cls.name!r} registered twice")
    ADAPTERS[cls.name] = cls
    return cls


def load_adapters() -> dict[str, type["Adapter"]]:
    """Import every adapter plugin (registration happens on import) and return the registry."""
    for module in sorted({ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}):
        importlib.import_module(module)
    if not ADAPTERS:
        raise RuntimeError(f"no adapters found in entry point group {ENTRY_POINT_GROUP!r}: install the project "
                           "(`make setup`, or pip install -e .)")
    return ADAPTERS
