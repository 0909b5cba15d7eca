"""Five country ERP simulators (DE, FR, IT, PT, UK), WSDL-first, each one aiohttp app on a loopback port.

`ErpSimulator("de")` serves `sandbox/erp/de.wsdl` at `<url>/wsdl` (address filled in) and answers SOAP on
`<url>/erp` with in-memory accounts, switches, invoices and payments (book.py); see `simulator.py` for the
fault and observation controls and `dialects.py` for what differs per country.
"""

from sandbox.erp.dialects import COUNTRIES, DIALECTS
from sandbox.erp.simulator import FAULT_KINDS, ErpSimulator, Refusal

__all__ = ["COUNTRIES", "DIALECTS", "FAULT_KINDS", "ErpSimulator", "Refusal"]
