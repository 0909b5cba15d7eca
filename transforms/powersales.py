"""Power Sales payloads, pure: the website's tariff lookup and the key-customer offers.

Tariff lookup: `quote_request` checks and normalises what the website sends (postcode spelt per
country, so "sw1a1aa" and "SW1A 1AA" are one cache entry) and gives it a stable `cache_key`;
`public_quote` turns the adapter's answer into what the website shows.

Offers: `offer_request` (state apply) records which variants a `crm.offer.requested` expects and fans it
out with `offer_variants`, `offer_answered` shapes each variant's answer or refusal,
`gather_offer` (state apply) collects them and emits `powersales.offers.ready` once every variant has
answered, and `offers_expired` (state apply, on the watch flow's deadline alert) emits the partial
result with the missing variants as "no answer in time". A finished record remembers its result and
who finished it, so a repeat of the finishing message emits the same result again (stored under a
stable id, JetStream drops the copy) while nothing else can emit a second one.
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import ValidationFailed

COUNTRY_ALIASES = {"GB": "UK"}
# country -> (pattern of the compact postcode, canonical spelling, example)
POSTCODES: dict[str, tuple[str, Any, str]] = {
    "DE": (r"\d{5}", lambda c: c, "10115"),
    "FR": (r"\d{5}", lambda c: c, "75001"),
    "IT": (r"\d{5}", lambda c: c, "20121"),
    "BE": (r"\d{4}", lambda c: c, "1000"),
    "PT": (r"\d{7}", lambda c: f"{c[:4]}-{c[4:]}", "1000-001"),
    "UK": (r"[A-Z]{1,2}\d[A-Z\d]?\d[A-Z]{2}", lambda c: f"{c[:-3]} {c[-3:]}", "SW1A 1AA"),
}
YES = {True, "yes", "y", "true", "j", "ja", "1", 1}
NO = {False, "no", "n", "false", "nein", "0", 0, None}
NO_ANSWER = "no answer in time"


def _bad(field: str, problem: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {problem}")


def _whole(payload: dict[str, Any], field: str, low: int, high: int, required: bool = True,
           integral: bool = False) -> int | None:
    """A number field in [low, high], rounded to a whole number (it must be one when `integral`)."""
    value = payload.get(field)
    if value is None or value == "":
        if required:
            raise _bad(field, "is required")
        return None
    try:
        number = float(str(value).replace(",", ".")) if isinstance(value, str) else float(value)
    except ValueError:
        raise _bad(field, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high or (integral and not number.is_integer()):
        kind = "a whole number" if integral else "a number"
        raise _bad(field, f"expected {kind} from {low} to {high}, got {value!r}")
    return round(number)


def country_code(value: Any) -> str:
    code = str(value or "").strip().upper()
    code = COUNTRY_ALIASES.get(code, code)
    if code not in POSTCODES:
        raise _bad("country", f"{value!r} is not a country PLU serves ({', '.join(POSTCODES)})")
    return code


def canonical_postcode(country: str, value: Any) -> str:
    """The postcode as Power Sales spells it for `country`: upper-case, its own spacing ("SW1A 1AA", "1000-001")."""
    compact = re.sub(r"[\s\-]", "", str(value or "")).upper()
    pattern, spell, example = POSTCODES[country]
    if not re.fullmatch(pattern, compact):
        raise _bad("postcode", f"{value!r} is not a {country} postcode (e.g. {example})")
    return spell(compact)


def _flag(payload: dict[str, Any], field: str) -> bool:
    value = payload.get(field)
    value = value.strip().lower() if isinstance(value, str) else value
    if isinstance(value, (list, dict, float)):
        value = ...  # neither: a yes/no is a flag, a word or 0/1
    if value in YES:
        return True
    if value in NO:
        return False
    raise _bad(field, f"expected yes or no, got {payload.get(field)!r}")


# --- the website's tariff lookup ---------------------------------------------------------------


def quote_request(payload: Any) -> dict[str, Any]:
    """Website lookup {households, consumption?, postcode, country, gas, confirm?} → {request, cache_key, confirm}."""
    if not isinstance(payload, dict):
        raise ValidationFailed(f"a tariff lookup is a JSON object, got {type(payload).__name__}")
    country = country_code(payload.get("country"))
    request = {
        "households": _whole(payload, "households", 1, 99, integral=True),
        "consumption_kwh": _whole(payload, "consumption", 1, 100_000, required=False),
        "postcode": canonical_postcode(country, payload.get("postcode")),
        "country": country,
        "gas": _flag(payload, "gas"),
    }
    key = ":".join(str(v) for v in (country, request["postcode"].replace(" ", "_"), request["households"],
                                     request["consumption_kwh"] or "est", "gas" if request["gas"] else "power"))
    return {"request": request, "cache_key": key, "confirm": _flag(payload, "confirm")}


def public_quote(payload: dict[str, Any]) -> dict[str, Any]:
    """{request, answer} → the quote the website shows, with monthly and yearly estimates and its freshness."""
    request, answer = payload["request"], payload["answer"]
    tariffs = [{
        "code": t["code"], "name": t["name"], "energy": t["energy"], "term_months": t["term_months"],
        "green_pct": t["green_pct"], "base_per_month": t["base_per_month"], "price_ct_per_kwh": t["work_ct_per_kwh"],
        "estimate_per_year": t["estimate_per_year"], "estimate_per_month": round(t["estimate_per_year"] / 12, 2),
    } for t in answer["tariffs"]]
    stale, cached = bool(answer.get("stale")), bool(answer.get("cached"))
    return {
        "quote_id": answer["quote_id"], "valid_until": answer["valid_until"], "currency": answer["currency"],
        "country": request["country"], "postcode": request["postcode"], "households": request["households"],
        "consumption_kwh": answer["consumption_kwh"], "consumption_estimated": request["consumption_kwh"] is None,
        "gas": request["gas"], "tariffs": tariffs,
        "stale": stale,                      # Power Sales could not be asked: the last quote, possibly outdated
        "cached": cached or stale,           # not asked of Power Sales for this lookup
        "cached_at": answer.get("cached_at"),
        "confirmed": bool(payload.get("confirm")) and not (stale or cached),
    }


# --- key-customer offers -----------------------------------------------------------------------


def _offer_request(message: Any) -> None:
    """The parts of a crm.offer.requested the offer flows rely on; ValidationFailed names what is wrong."""
    if not isinstance(message, dict):
        raise ValidationFailed(f"crm.offer.requested is a JSON object, got {type(message).__name__}")
    for field in ("request_id", "customer_id"):
        if not isinstance(message.get(field), str) or not message[field].strip():
            raise _bad(field, "is required (a non-empty string)")
    variants = message.get("variants")
    if not isinstance(variants, list) or not variants:
        raise _bad("variants", "expected a non-empty list of variants")
    ids = []
    for i, v in enumerate(variants):
        vid = v.get("variant_id") if isinstance(v, dict) else None
        if not isinstance(vid, str) or not vid.strip():
            raise _bad(f"variants[{i}].variant_id", "is required (a non-empty string)")
        if vid in ids:
            raise _bad(f"variants[{i}].variant_id", f"{vid!r} appears twice")
        ids.append(vid)


def offer_request(ctx: dict[str, Any]) -> dict[str, Any]:
    """State apply of offers-request: record the expected variants and go on with one message per variant
    (again while the request is open: a crash between the record and the publishes loses nothing)."""
    state, message = ctx["state"], ctx["message"]
    variants = offer_variants(message)  # checks the whole request before anything is recorded
    if state is None:
        state = {"request_id": message["request_id"], "customer_id": message["customer_id"],
                 "variants": [v["variant_id"] for v in variants], "answers": {}, "status": "open"}
    elif state["status"] != "open":
        return {"state": state, "payload": None}  # a repeat of a finished request: nothing to ask again
    return {"state": state, "payload": variants}


def offer_variants(message: dict[str, Any]) -> list[dict[str, Any]]:
    """crm.offer.requested → one message per variant, each with a stable `variant_key` and the adapter's `offer`."""
    _offer_request(message)
    country = country_code(message.get("country"))
    postcode = message.get("postcode")
    consumption = _whole(message, "consumption", 1, 10**9)
    out = []
    for v in message["variants"]:
        offer = {"customer_id": message["customer_id"], "variant_id": v["variant_id"],
                 "term_months": v.get("term_months"), "green_share": v.get("green_share", 0),
                 "discount_pct": v.get("discount_pct", 0), "consumption_kwh": consumption, "country": country,
                 "postcode": canonical_postcode(country, postcode) if postcode else None}
        out.append({"request_id": message["request_id"], "variant_id": v["variant_id"],
                    "variant_key": f"{message['request_id']}:{v['variant_id']}", "offer": offer})
    return out


_RC = re.compile(r"RC (\d+): (.*)$", re.S)


def offer_answered(payload: dict[str, Any]) -> dict[str, Any]:
    """{…variant, answer} → powersales.offer.answered: the offer, or the refusal with Power Sales' code and reason."""
    out = {k: payload[k] for k in ("request_id", "variant_id", "variant_key")}
    answer = payload["answer"]
    error = answer.get("error") if isinstance(answer, dict) else None
    if error is None:
        return {**out, "offer": answer}
    found = _RC.search(error.get("message", ""))
    reason = found.group(2).strip() if found else error.get("message", "")
    return {**out, "error": {"class": error.get("class"), "code": int(found.group(1)) if found else None,
                             "reason": reason}}


def _result(state: dict[str, Any]) -> dict[str, Any]:
    """The powersales.offers.ready payload of a record: offers in the request's order, the rest failed with reasons."""
    offers, failed = [], []
    for vid in state["variants"]:
        answer = state["answers"].get(vid)
        if answer is None:
            failed.append({"variant_id": vid, "reason": NO_ANSWER, "code": None})
        elif "offer" in answer:
            offers.append(answer["offer"])
        else:
            failed.append({"variant_id": vid, "reason": answer["error"]["reason"], "code": answer["error"]["code"]})
    return {"request_id": state["request_id"], "customer_id": state["customer_id"],
            "status": "partial" if failed else "complete", "offers": offers, "failed": failed,
            "expected": len(state["variants"])}


def _finish(state: dict[str, Any], by: str) -> dict[str, Any]:
    ready = _result(state)
    return {"state": {**state, "status": ready["status"], "finished_by": by, "ready": ready}, "payload": ready}


def gather_offer(ctx: dict[str, Any]) -> dict[str, Any]:
    """State apply of offers-gather: record one variant's answer; when all have answered, emit the result."""
    state, message = ctx["state"], ctx["message"]
    vid = message.get("variant_id")
    if state is None or vid not in state["variants"]:
        return {"state": state, "payload": None}  # not a request of ours (or its record expired)
    if state["status"] != "open":
        again = state.get("finished_by") == message.get("variant_key")  # the finishing answer, redelivered
        return {"state": state, "payload": state["ready"] if again else None}
    if vid in state["answers"]:
        return {"state": state, "payload": None}  # a repeat of an answer already counted
    answer = {"offer": message["offer"]} if "offer" in message else {"error": message["error"]}
    state = {**state, "answers": {**state["answers"], vid: answer}}
    if len(state["answers"]) == len(state["variants"]):
        return _finish(state, message["variant_key"])
    return {"state": state, "payload": None}


def offers_expired(ctx: dict[str, Any]) -> dict[str, Any]:
    """State apply of offers-expire (the watch's deadline alert): emit what has answered, the rest "no answer in time"."""
    state = ctx["state"]
    if state is None:
        return {"state": None, "payload": None}
    if state["status"] != "open":
        return {"state": state, "payload": state["ready"] if state.get("finished_by") == "deadline" else None}
    return _finish(state, "deadline")


def offers_progress(ctx: dict[str, Any]) -> dict[str, Any]:
    """State apply of offers-watch (reads only): is the request's result out yet?"""
    state, message = ctx["state"], ctx["message"]
    try:
        offer_variants(message)  # the same checks as offers-request
    except ValidationFailed:
        return {"state": state, "payload": None}  # offers-request dead-letters it; nothing to watch
    finished = state is not None and state["status"] != "open"
    return {"state": state, "payload": {"request_id": message["request_id"], "finished": finished}}
