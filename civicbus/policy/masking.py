"""Masking: a department's copy of an event, with what it may not see masked, visibly and schema-valid.

Personal fields (`civicbus.text: personal`) are masked whole. Free text (`civicbus.text: free`:
a hotline call's content, a petition's summary, a status note, an event's subject and raw
address) is scanned (civicbus.policy.pii) and each phone number, ID number, bank card, e-mail
address or plate found in it is masked in place; the rest of the text stays readable.

What was masked travels with the copy (the `civic_masked` header, and the audit record): the name
of each personal field masked, and `<field>:<kind>` for each kind found in a free-text field,
e.g. `caller_name,caller_phone,content:phone,content:id_number`.
"""

from __future__ import annotations

import re
from typing import Any

from civicbus.policy.pii import mask_free_text, mask_number, national, normalise
from civicbus.schemas import EventType

_NUMBER = re.compile(r"^\d+[Xx]?$")


def mask_text(value: str) -> str:
    """A personal value masked whole: numbers (phones, ID numbers) keep a few of their digits
    (see pii.mask_number), anything else (names, addresses) becomes `***`."""
    compact = re.sub(r"[\s()+\-]", "", normalise(value))
    if _NUMBER.match(compact):
        return mask_number(national(compact))
    return "***"


def mask_value(avro_field: dict[str, Any], value: Any) -> Any:
    """A masked value that still validates against the field's Avro type."""
    if value is None:
        return None
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [mask_text(v) for v in value]
    branches = avro_field["type"] if isinstance(avro_field["type"], list) else [avro_field["type"]]
    if "null" in branches:
        return None
    if "default" in avro_field:
        return avro_field["default"]
    raise ValueError(f"personal field {avro_field['name']} cannot be masked (see maskable)")


def maskable(avro_field: dict[str, Any]) -> bool:
    """Whether mask_value can mask every value of this field (checked once, at policy load)."""
    branches = avro_field["type"] if isinstance(avro_field["type"], list) else [avro_field["type"]]
    names = [b.get("type") if isinstance(b, dict) else b for b in branches]
    strings = "string" in names or any(isinstance(b, dict) and b.get("type") == "array" and b.get("items") == "string" for b in branches)
    return strings or "null" in names or "default" in avro_field


def masked_event(event: dict[str, Any], event_type: EventType, masked: tuple[str, ...], scanned: tuple[str, ...] = ()) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A copy of `event` with the personal fields `masked` masked whole and the free-text fields
    `scanned` masked where they identify a person, and the entries saying what was masked (empty:
    the copy is the event itself)."""
    fields = event_type.data_fields
    data = dict(event["data"])
    for name in masked:
        data[name] = mask_value(fields[name], data[name])
    copy = {**event, "data": data}
    entries = list(masked)
    for name in scanned:
        keys = name.split(".") if name in event_type.envelope_free_text else ["data", name]
        text = _get(copy, keys)
        if isinstance(text, str):
            clean, kinds = mask_free_text(text)
            if kinds:
                _set(copy, keys, clean)
                entries += [f"{name}:{kind}" for kind in kinds]
    return (copy, tuple(entries)) if entries else (event, ())


def _get(event: dict[str, Any], keys: list[str]) -> Any:
    value: Any = event
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _set(event: dict[str, Any], keys: list[str], value: str) -> None:
    """Set a field of the copy, copying each enclosing record first (the original stays untouched)."""
    record = event
    for key in keys[:-1]:
        record[key] = dict(record[key])
        record = record[key]
    record[keys[-1]] = value
