"""`engine.subjects.render` splits a template once and fills it per payload; it must give exactly what a
plain regex substitution gives (the earlier implementation, kept here as the oracle) for any template
and any payload, missing fields included (KeyError naming the dotted field)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.subjects import render

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def oracle(template: str, payload: object, lower: bool) -> str:
    def lookup(m: re.Match[str]) -> str:
        value = payload
        for part in m.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(m.group(1))
            value = value[part]
        return str(value).lower() if lower else str(value)

    return PLACEHOLDER.sub(lookup, template)


names = st.sampled_from(["a", "b", "meter_id", "x", "_y"])
fields = st.lists(names, min_size=1, max_size=3).map(".".join)
literal = st.text(alphabet=st.sampled_from(list("abc.:-_{} 9")), max_size=6)
templates = st.lists(st.one_of(literal, fields.map(lambda f: "{" + f + "}")), max_size=6).map("".join)
leaves = st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
payloads = st.recursive(leaves, lambda inner: st.dictionaries(names, inner, max_size=4), max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(templates, payloads, st.booleans())
def test_render_fills_like_a_plain_substitution(template: str, payload: object, lower: bool) -> None:
    try:
        expected: object = oracle(template, payload, lower)
    except KeyError as exc:
        expected = KeyError(exc.args[0])
    try:
        got: object = render(template, payload, lower=lower)
    except KeyError as exc:
        got = KeyError(exc.args[0])
    assert repr(got) == repr(expected)


def test_a_meter_reading_id_and_a_country_subject() -> None:
    item = {"meter_id": "M-1", "register": "1.8.0", "read_at": "2025-03-01T00:00:00Z", "site": {"country": "DE"}}
    assert render("{meter_id}:{register}:{read_at}", item, lower=False) == "M-1:1.8.0:2025-03-01T00:00:00Z"
    assert render("erp.{site.country}.contract", item) == "erp.de.contract"
    with pytest.raises(KeyError) as missing:
        render("erp.{site.zone}.x", item)
    assert missing.value.args[0] == "site.zone"
