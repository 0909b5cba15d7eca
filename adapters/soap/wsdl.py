"""The process-wide WSDL cache: each WSDL is parsed at most once per process, never per call.

Validation also reads a local WSDL's operations (names, answer types) from here without starting an endpoint.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from zeep import Settings
from zeep.transports import Transport
from zeep.wsdl import Document

from adapters.http import snippet
from adapters.soap.config import SoapEndpointConfig

ROOT = Path(__file__).resolve().parents[2]  # relative WSDL paths are taken from the project root

_DOCS: dict[str, Document] = {}
_PORTS: dict[tuple[str, int, str | None, str | None], tuple[Any, str | None]] = {}
_LOCK = threading.Lock()


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def wsdl_location(wsdl: str) -> str:
    """An http(s) URL as is; a path (or file:// URL) made absolute against the project root."""
    if is_url(wsdl):
        return wsdl
    path = Path(wsdl.removeprefix("file://")).expanduser()
    return str(path if path.is_absolute() else ROOT / path)


def load_document(location: str, transport: Transport, settings: Settings) -> Document:
    """The parsed WSDL for `location`, loaded at most once per process (blocking: run it in a thread)."""
    with _LOCK:
        doc = _DOCS.get(location)
        if doc is None:
            doc = Document(location, transport, settings=settings)
            _DOCS[location] = doc
        return doc


def clear_wsdl_cache() -> None:
    """Forget every parsed WSDL (tests; a deliberate reload)."""
    with _LOCK:
        _DOCS.clear()
        _PORTS.clear()


def find_port(doc: Document, service: str | None, port: str | None) -> Any:
    """The named (or first) port of the named (or first) service; LookupError naming what exists."""
    services = doc.services
    svc = services.get(service) if service else next(iter(services.values()), None)
    if svc is None:
        raise LookupError(f"WSDL has no service {service!r} (has: {', '.join(services) or 'none'})"
                          if service else "WSDL defines no service")
    found = svc.ports.get(port) if port else next(iter(svc.ports.values()), None)
    if found is None:
        raise LookupError(f"service {svc.name!r} has no port {port!r} (has: {', '.join(svc.ports) or 'none'})"
                          if port else f"service {svc.name!r} defines no port")
    return found


def local_port(endpoint: str, location: str, config: SoapEndpointConfig) -> tuple[Any, str | None]:
    """The port of a local WSDL (parsed once per file version) or a problem text; (None, None) for a URL."""
    if is_url(location):
        return None, None
    c = config
    try:
        mtime = Path(location).stat().st_mtime_ns
    except OSError as exc:
        return None, f"endpoint {endpoint!r}: WSDL {c.wsdl!r} cannot be read: {exc.strerror or exc}"
    key = (location, mtime, c.service, c.port)
    cached = _PORTS.get(key)
    if cached is None:
        try:
            doc = load_document(location, Transport(timeout=c.wsdl_timeout), Settings())
            cached = (find_port(doc, c.service, c.port), None)
        except Exception as exc:  # noqa: BLE001 - any WSDL problem is a validation message
            cached = (None, f"endpoint {endpoint!r}: WSDL {c.wsdl!r} cannot be loaded: "
                            f"{snippet(str(exc) or type(exc).__name__)}")
        _PORTS[key] = cached
    return cached


def local_operations(endpoint: str, location: str, config: SoapEndpointConfig) -> tuple[list[str], str | None]:
    """Operation names of a local WSDL (cached per file version) or a problem text; ([], None) for a URL."""
    port, problem = local_port(endpoint, location, config)
    if port is None:
        return [], problem
    return sorted(port.binding.all()), None
