"""Sales regions of PLU by country and postcode: which key account managers look after a site.

A table, not logic: postcode prefixes to region codes (ISO 3166-2 style where one exists). A postcode
no prefix matches falls to the country's `*` region, so nobody is ever left without a manager.
"""

from __future__ import annotations

REGIONS: dict[str, dict[str, str]] = {
    "DE": {"0": "DE-SN", "1": "DE-BE", "2": "DE-HH", "3": "DE-NI", "4": "DE-NW", "5": "DE-NW",
           "6": "DE-HE", "7": "DE-BW", "8": "DE-BY", "9": "DE-BY", "*": "DE"},
    "FR": {"75": "FR-IDF", "77": "FR-IDF", "78": "FR-IDF", "91": "FR-IDF", "92": "FR-IDF", "93": "FR-IDF",
           "94": "FR-IDF", "95": "FR-IDF", "69": "FR-ARA", "38": "FR-ARA", "13": "FR-PAC", "06": "FR-PAC",
           "33": "FR-NAQ", "31": "FR-OCC", "59": "FR-HDF", "67": "FR-GES", "*": "FR"},
    "IT": {"00": "IT-LAZ", "10": "IT-PIE", "20": "IT-LOM", "30": "IT-VEN", "40": "IT-EMR", "50": "IT-TOS",
           "80": "IT-CAM", "90": "IT-SIC", "*": "IT"},
    "PT": {"1": "PT-LIS", "2": "PT-LIS", "3": "PT-CEN", "4": "PT-NOR", "8": "PT-ALG", "9": "PT-ILH", "*": "PT"},
    "UK": {"E": "UK-LDN", "W": "UK-LDN", "N": "UK-LDN", "S": "UK-SE", "B": "UK-MID", "M": "UK-NW",
           "L": "UK-NW", "G": "UK-SCT", "EH": "UK-SCT", "CF": "UK-WLS", "BT": "UK-NIR", "*": "UK"},
    "BE": {"1": "BE-BRU", "2": "BE-VAN", "3": "BE-VBR", "4": "BE-WLG", "5": "BE-WNA", "6": "BE-WHT",
           "7": "BE-WHT", "8": "BE-VWV", "9": "BE-VOV", "*": "BE"},
}


def region_of(country: str, postcode: str) -> str:
    """The longest matching prefix wins (UK `EH` before `E`); unknown countries are their own region."""
    table = REGIONS.get(country)
    if table is None:
        return country
    code = postcode.replace(" ", "").upper()
    for length in range(min(3, len(code)), 0, -1):
        if code[:length] in table:
            return table[code[:length]]
    return table["*"]
