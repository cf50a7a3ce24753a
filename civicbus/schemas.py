"""The event catalog: Avro schemas in schemas/ are the single source of truth.

Each event type's wire schema is the envelope (schemas/envelope.avsc) with its `data` field
typed by schemas/events/<type>.avsc. The pydantic model used for validation is generated from
that same Avro schema, so the two cannot drift apart. Event-type properties (default
classification, personal fields, whether it forms a case) are declared in the .avsc itself
with `civicbus.*` attributes: `civicbus.classification`, `civicbus.text` (on every string field,
envelope.avsc's too: `personal` data about a person, masked whole for a receiver without a grant;
`free` text, scanned for personal data and masked where found; `safe` codes and references),
`civicbus.forms_case` / `civicbus.updates_case`, `civicbus.case_category` / `civicbus.case_family`
(the data fields naming a case's category and family) and `civicbus.enrich` (on a field the
pipeline fills from master data: {"from": dataset, "by": key path, "take": attribute}).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

CLASSIFICATIONS = ("PUBLIC", "INTERNAL", "RESTRICTED", "CONFIDENTIAL")

# The type the case stage emits, as the hub, when a case misses a deadline.
ESCALATION_TYPE = "case.escalated"

# What a string field holds (`civicbus.text`): see the module docstring and civicbus.policy.masking.
TEXT_KINDS = ("personal", "free", "safe")

# How far in the future an event's time may lie before it is rejected: clocks drift, years don't.
MAX_CLOCK_SKEW = timedelta(hours=1)


def canonical(schema: dict | str) -> str:
    """Stable text of a schema: the lock compares and fingerprints this form."""
    if isinstance(schema, str):
        schema = json.loads(schema)
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(schema: dict | str) -> str:
    return hashlib.sha256(canonical(schema).encode()).hexdigest()


@dataclass(frozen=True)
class Enrichment:
    """A data field filled from a master-data dataset (civic.ref.<dataset>) by a key.

    `by` is a field of `data`, or `location.<field>` for the envelope's standardised location.
    """

    field: str
    dataset: str
    by: str
    take: str


@dataclass(frozen=True)
class EventType:
    name: str  # e.g. city.case.reported
    record_name: str  # fully qualified Avro name of the wire schema; the registry subject
    classification: str
    forms_case: bool  # opens a case or joins an open one (merge duplicates)
    updates_case: bool  # refers to an existing case by its correlation id
    personal_fields: tuple[str, ...]  # names inside `data`
    wire_schema: dict
    model: type[BaseModel]
    doc: str = ""
    case_category_field: str | None = None  # data field holding the case category
    case_family_field: str | None = None  # data field holding its family, if the type has one
    enrichments: tuple[Enrichment, ...] = ()
    free_text_fields: tuple[str, ...] = ()  # names inside `data` scanned for personal data
    envelope_free_text: tuple[str, ...] = ()  # envelope fields scanned too: `subject`, `location.raw_address`

    @cached_property
    def data_fields(self) -> dict[str, dict]:
        """The Avro fields of `data`, by name."""
        data = next(f for f in self.wire_schema["fields"] if f["name"] == "data")
        return {f["name"]: f for f in data["type"]["fields"]}

    @property
    def subject(self) -> str:
        return self.record_name

    @property
    def case_stage(self) -> bool:
        """Handled by the stateful case stage rather than dispatched directly."""
        return self.forms_case or self.updates_case

    @property
    def schema_str(self) -> str:
        return canonical(self.wire_schema)


class EventValidationError(ValueError):
    """An event does not match its schema; `errors` name each failing field."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))

    @classmethod
    def from_pydantic(cls, exc: ValidationError) -> EventValidationError:
        return cls([{"field": ".".join(str(p) for p in e["loc"]) or "(event)", "message": e["msg"]} for e in exc.errors()])


class EventCatalog:
    """Every event type known to this build, keyed by type name."""

    def __init__(self, schemas_dir: Path):
        self.schemas_dir = schemas_dir
        envelope = json.loads((schemas_dir / "envelope.avsc").read_text(encoding="utf-8"))
        _check_text_declarations(schemas_dir / "envelope.avsc", envelope)
        self.types: dict[str, EventType] = {}
        for path in sorted((schemas_dir / "events").glob("*.avsc")):
            data_schema = json.loads(path.read_text(encoding="utf-8"))
            _check_text_declarations(path, data_schema)
            event_type = _build_event_type(envelope, data_schema)
            if event_type.name in self.types:
                raise ValueError(f"{path}: event type {event_type.name} is declared twice")
            self.types[event_type.name] = event_type
        self._by_record = {t.record_name: t for t in self.types.values()}

    def __getitem__(self, type_name: str) -> EventType:
        try:
            return self.types[type_name]
        except KeyError:
            raise KeyError(f"unknown event type {type_name!r}; known: {', '.join(sorted(self.types))}") from None

    def __contains__(self, type_name: str) -> bool:
        return type_name in self.types

    def __iter__(self):
        return iter(self.types.values())

    def validate(self, event: dict[str, Any]) -> dict[str, Any]:
        """Validate an event given as plain data; return it normalised for Avro, or raise
        EventValidationError naming the failing fields."""
        type_name = event.get("type")
        if type_name not in self.types:
            raise EventValidationError(
                [{"field": "type", "message": f"unknown event type {type_name!r}; known: {', '.join(sorted(self.types))}"}]
            )
        try:
            return self.types[type_name].model.model_validate(event).model_dump()
        except ValidationError as e:
            raise EventValidationError.from_pydantic(e) from None


def _build_event_type(envelope: dict, data_schema: dict) -> EventType:
    type_name = data_schema["civicbus.event_type"]
    classification = data_schema.get("civicbus.classification", "INTERNAL")
    if classification not in CLASSIFICATIONS:
        raise ValueError(f"{type_name}: unknown classification {classification!r}")
    wire = copy.deepcopy(envelope)
    wire["name"] = data_schema["name"] + "Event"
    wire["namespace"] = data_schema.get("namespace", "civicbus.events")
    wire["doc"] = f"{type_name}: {data_schema.get('doc', '')}".strip()
    for f in wire["fields"]:
        if f["name"] == "data":
            f["type"] = data_schema
    personal = tuple(f["name"] for f in data_schema["fields"] if f.get("civicbus.text") == "personal")
    free_text = tuple(f["name"] for f in data_schema["fields"] if f.get("civicbus.text") == "free")
    envelope_free_text = tuple(path for path, kind in _text_fields(envelope) if kind == "free")
    model = _envelope_model(type_name, wire, data_schema)
    return EventType(
        name=type_name,
        record_name=f"{wire['namespace']}.{wire['name']}",
        classification=classification,
        forms_case=bool(data_schema.get("civicbus.forms_case", False)),
        updates_case=bool(data_schema.get("civicbus.updates_case", False)),
        personal_fields=personal,
        wire_schema=wire,
        model=model,
        doc=data_schema.get("doc", ""),
        case_category_field=data_schema.get("civicbus.case_category"),
        case_family_field=data_schema.get("civicbus.case_family"),
        enrichments=tuple(
            Enrichment(f["name"], f["civicbus.enrich"]["from"], f["civicbus.enrich"]["by"], f["civicbus.enrich"]["take"])
            for f in data_schema["fields"]
            if "civicbus.enrich" in f
        ),
        free_text_fields=free_text,
        envelope_free_text=envelope_free_text,
    )


def _holds_strings(avro: Any) -> bool:
    """A string, a union with a string branch, or an array of strings."""
    if isinstance(avro, list):
        return any(_holds_strings(branch) for branch in avro)
    if isinstance(avro, dict):
        return avro.get("type") == "array" and _holds_strings(avro["items"])
    return avro == "string"


def _text_fields(record: dict, prefix: str = "") -> list[tuple[str, str | None]]:
    """(dotted path, civicbus.text) of every string field of a record and its nested records."""
    found = []
    for f in record["fields"]:
        path = prefix + f["name"]
        if _holds_strings(f["type"]):
            found.append((path, f.get("civicbus.text")))
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "record":
                found += _text_fields(branch, path + ".")
    return found


def _check_text_declarations(path: Path, schema: dict) -> None:
    """Every string field says what it holds, so nothing personal travels unscanned by oversight."""
    undeclared = [f"{name} ({kind!r})" if kind else name for name, kind in _text_fields(schema) if kind not in TEXT_KINDS]
    if undeclared:
        raise ValueError(
            f"{path}: string fields without `civicbus.text` ({' | '.join(TEXT_KINDS)}): {', '.join(undeclared)}"
        )


# ---- pydantic models generated from Avro -------------------------------------------------


def _to_utc_millis(value: datetime) -> datetime:
    """Avro timestamp-millis holds milliseconds in UTC: normalise so a round trip is exact."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=value.microsecond // 1000 * 1000)


TimestampMillis = Annotated[datetime, AfterValidator(_to_utc_millis)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _python_type(avro: Any, name_hint: str, named: dict[str, Any]) -> Any:
    if isinstance(avro, str):
        if avro in named:
            return named[avro]
        return {
            "string": str, "bytes": bytes, "int": int, "long": int,
            "float": float, "double": float, "boolean": bool, "null": type(None),
        }[avro]
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        inner = _python_type(branches[0], name_hint, named) if len(branches) == 1 else Any
        return Optional[inner] if "null" in avro else inner
    kind = avro["type"]
    if kind == "record":
        fields = {}
        for f in avro["fields"]:
            annotation = _python_type(f["type"], f"{name_hint}_{f['name']}", named)
            default = copy.deepcopy(f["default"]) if "default" in f else ...
            fields[f["name"]] = (annotation, Field(default=default, description=f.get("doc")))
        model = create_model(avro["name"], __base__=_Strict, **fields)
        named[avro["name"]] = model
        named[f"{avro.get('namespace', '')}.{avro['name']}".lstrip(".")] = model
        return model
    if kind == "enum":
        literal = Literal[tuple(avro["symbols"])]
        named[avro["name"]] = literal
        return literal
    if kind == "array":
        return list[_python_type(avro["items"], name_hint, named)]
    if kind == "map":
        return dict[str, _python_type(avro["values"], name_hint, named)]
    if kind == "long" and avro.get("logicalType") == "timestamp-millis":
        return TimestampMillis
    return _python_type(kind, name_hint, named)


class _EnvelopeChecks(_Strict):
    """Checks Avro cannot express, shared by every generated envelope model."""

    @field_validator("id", check_fields=False)
    @classmethod
    def _id_is_uuid(cls, value: str) -> str:
        import uuid

        return str(uuid.UUID(value))

    @field_validator("time", check_fields=False)
    @classmethod
    def _time_not_in_future(cls, value: datetime) -> datetime:
        if value > datetime.now(timezone.utc) + MAX_CLOCK_SKEW:
            raise ValueError(f"lies more than {MAX_CLOCK_SKEW} in the future")
        return value

    @field_validator("location", check_fields=False)
    @classmethod
    def _coordinates_on_earth(cls, value: Any) -> Any:
        if value is not None:
            if value.lat is not None and not -90 <= value.lat <= 90:
                raise ValueError(f"latitude {value.lat} is not between -90 and 90")
            if value.lon is not None and not -180 <= value.lon <= 180:
                raise ValueError(f"longitude {value.lon} is not between -180 and 180")
        return value


def _envelope_model(type_name: str, wire: dict, data_schema: dict) -> type[BaseModel]:
    named: dict[str, Any] = {}
    fields = {}
    for f in wire["fields"]:
        annotation = _python_type(f["type"], f["name"], named)
        if f["name"] == "type":
            annotation = Literal[type_name]
        default = copy.deepcopy(f["default"]) if "default" in f else ...
        fields[f["name"]] = (annotation, Field(default=default))
    return create_model(wire["name"], __base__=_EnvelopeChecks, **fields)


# ---- backward compatibility (a new reader must read every locked writer) ------------------

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return "union"
    return t["type"]


def backward_incompatibilities(reader: Any, writer: Any, path: str = "") -> list[str]:
    """Why data written with `writer` could not be read with `reader` (empty if it can)."""
    if isinstance(writer, list):
        return [p for branch in writer for p in _readable_by_some(reader, branch, path)]
    if isinstance(reader, list):
        return _readable_by_some(reader, writer, path)
    r, w = _type_name(reader), _type_name(writer)
    if r == "record" and w == "record":
        problems = []
        writer_fields = {f["name"]: f for f in writer["fields"]}
        for f in reader["fields"]:
            here = f"{path}.{f['name']}".lstrip(".")
            if f["name"] in writer_fields:
                problems += backward_incompatibilities(f["type"], writer_fields[f["name"]]["type"], here)
            elif "default" not in f:
                problems.append(f"{here}: new field without a default")
        return problems
    if r == "enum" and w == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{path}: enum symbols removed: {', '.join(sorted(missing))}"]
        return []
    if r == "array" and w == "array":
        return backward_incompatibilities(reader["items"], writer["items"], path + "[]")
    if r == "map" and w == "map":
        return backward_incompatibilities(reader["values"], writer["values"], path + "{}")
    if r == w or r in _PROMOTIONS.get(w, set()):
        return []
    return [f"{path}: type {w} cannot be read as {r}"]


def _readable_by_some(reader_union: Any, writer: Any, path: str) -> list[str]:
    branches = reader_union if isinstance(reader_union, list) else [reader_union]
    attempts = [backward_incompatibilities(b, writer, path) for b in branches]
    if any(not a for a in attempts):
        return []
    return [f"{path}: writer type {_type_name(writer)} matches no reader branch"]
