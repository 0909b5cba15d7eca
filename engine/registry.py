"""Adapter registry: a name in YAML (`adapter: http`) to the class that implements it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.base import Adapter

ADAPTERS: dict[str, type["Adapter"]] = {}


def register(cls: type["Adapter"]) -> type["Adapter"]:
    """Class decorator: make an adapter available under its `name`."""
    if cls.name in ADAPTERS and ADAPTERS[cls.name] is not cls:
        raise RuntimeError(f"adapter name {cls.name!r} registered twice")
    ADAPTERS[cls.name] = cls
    return cls


def load_builtin_adapters() -> dict[str, type["Adapter"]]:
    """Import the adapters package (registration happens on import) and return the registry."""
    import adapters  # noqa: F401

    return ADAPTERS
