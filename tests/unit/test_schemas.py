import json
import shutil
from datetime import datetime, timedelta, timezone

import pytest

from civicbus.registry import FileSchemaRegistry, check_schemas, lock_schemas
from civicbus.schemas import EventCatalog, EventValidationError, backward_incompatibilities
from civicbus.serde import EventSerde
from civicbus.settings import REPO_ROOT
from civicbus.dlq import Reason
from civicbus.serde import DecodeError
from tests.support import case_report

SCHEMAS = REPO_ROOT / "schemas"


@pytest.fixture(scope="module")
def catalog():
    return EventCatalog(SCHEMAS)


def complete(event, **envelope):
    base = {"id": "9b2e4c1e-1d2f-4c55-8d52-2b7f0e8a1c11", "source": "citymgmt", "time": datetime.now(timezone.utc), "classification": "INTERNAL"}
    return {**base, **event, **envelope}


def test_the_committed_lock_covers_every_schema(catalog):
    result = check_schemas(catalog)
    assert result.ok, (result.new, result.incompatible)


def test_validation_names_every_failing_field(catalog):
    bad = complete(case_report(category="pothole"))
    del bad["data"]["description"]
    with pytest.raises(EventValidationError) as info:
        catalog.validate(bad)
    fields = {e["field"] for e in info.value.errors}
    assert fields == {"data.category", "data.description"}


def test_unknown_type_is_named(catalog):
    with pytest.raises(EventValidationError) as info:
        catalog.validate(complete({"type": "city.case.invented", "data": {}}))
    assert info.value.errors[0]["field"] == "type"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"id": "not-a-uuid"}, "id"),
        ({"time": datetime.now(timezone.utc) + timedelta(days=400)}, "time"),
        ({"location": {"lat": 95.0, "lon": 116.4}}, "location"),
        ({"classification": "SECRET"}, "classification"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_envelope_checks(catalog, change, field):
    with pytest.raises(EventValidationError) as info:
        catalog.validate(complete(case_report(), **change))
    assert info.value.errors[0]["field"].split(".")[0] == field


def test_personal_fields_and_classification_come_from_the_schema(catalog):
    hotline = catalog["hotline.request.received"]
    assert set(hotline.personal_fields) == {"caller_name", "caller_phone"}
    assert hotline.classification == "RESTRICTED"
    assert catalog["city.case.reported"].forms_case
    assert catalog["case.status.updated"].updates_case and not catalog["case.status.updated"].forms_case


def test_the_catalog_declares_classification_personal_fields_and_case_roles(catalog):
    expected = {
        "city.case.reported": ("INTERNAL", {"reporter_name", "reporter_phone"}, True),
        "hotline.request.received": ("RESTRICTED", {"caller_name", "caller_phone"}, True),
        "sensor.alert.raised": ("INTERNAL", set(), True),
        "traffic.incident.detected": ("INTERNAL", {"plate_number"}, True),
        "security.video.alert": ("RESTRICTED", {"person_description"}, True),
        "housing.rental.registered": ("RESTRICTED", {"tenant_name", "tenant_id_number", "tenant_phone", "landlord_name"}, False),
        "entity.license.changed": ("PUBLIC", {"legal_representative"}, False),
        "petition.filed": ("CONFIDENTIAL", {"petitioner_name", "petitioner_id_number", "petitioner_phone"}, True),
        "case.status.updated": ("INTERNAL", {"handler_name"}, False),
        "case.escalated": ("INTERNAL", set(), False),
        "case.snapshot": ("INTERNAL", {"handler"}, False),
    }
    assert set(catalog.types) == set(expected)
    for name, (classification, personal, forms_case) in expected.items():
        assert (catalog[name].classification, set(catalog[name].personal_fields), catalog[name].forms_case) == (classification, personal, forms_case), name
    assert [e.dataset for e in catalog["housing.rental.registered"].enrichments] == ["buildings", "buildings"]


def test_wire_format_round_trip_with_stable_ids(catalog):
    serde = EventSerde(catalog, FileSchemaRegistry(SCHEMAS))
    event = catalog.validate(complete(case_report()))
    value, headers = serde.encode(event, "civic.in.citymgmt")
    lock = json.loads((SCHEMAS / "schemas.lock.json").read_text())
    locked_id = lock["subjects"][catalog["city.case.reported"].subject][-1]["id"]
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") == locked_id
    assert serde.decode(value, "civic.in.citymgmt") == event
    names = dict(headers)
    assert names["ce_type"] == b"city.case.reported" and names["ce_specversion"] == b"1.0"
    assert names["ce_id"] == event["id"].encode() and names["content-type"] == b"application/avro"
    subject = catalog["city.case.reported"].subject
    version = lock["subjects"][subject][-1]["version"]
    assert names["ce_dataschema"] == f"http://127.0.0.1:8081/subjects/{subject}/versions/{version}".encode()
    assert names["ce_source"] == b"urn:civicbus:dept:citymgmt"


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"random bytes", Reason.NOT_AVRO),
        (b"\x00\x00\x00\x7f\xffpayload", Reason.UNKNOWN_SCHEMA),
        (b"\x00\x00\x00\x00\x02\xff\xff\xff\xff", Reason.CORRUPT_PAYLOAD),
        (b"\x00\x00\x00\x00\x02" + b"a" * 300_000, Reason.OVERSIZE),
        (None, Reason.NOT_AVRO),
    ],
)
def test_decode_errors_carry_a_reason(catalog, value, reason):
    serde = EventSerde(catalog, FileSchemaRegistry(SCHEMAS))
    with pytest.raises(DecodeError) as info:
        serde.decode(value, "t")
    assert info.value.reason is reason


def test_backward_compatibility_rules():
    old = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}, {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}}]}
    added_with_default = {**old, "fields": old["fields"] + [{"name": "b", "type": ["null", "string"], "default": None}]}
    added_without_default = {**old, "fields": old["fields"] + [{"name": "b", "type": "string"}]}
    promoted = {**old, "fields": [{"name": "a", "type": "long"}, old["fields"][1]]}
    narrowed_enum = {**old, "fields": [old["fields"][0], {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X"]}}]}
    assert backward_incompatibilities(added_with_default, old) == []
    assert backward_incompatibilities(promoted, old) == []
    assert backward_incompatibilities(added_without_default, old) == ["b: new field without a default"]
    assert "symbols removed" in backward_incompatibilities(narrowed_enum, old)[0]
    assert "cannot be read" in backward_incompatibilities(old, promoted)[0]


def test_lock_refuses_incompatible_change_and_appends_compatible_one(tmp_path):
    (tmp_path / "events").mkdir()
    (tmp_path / "envelope.avsc").write_text((SCHEMAS / "envelope.avsc").read_text())
    source = json.loads((SCHEMAS / "events" / "case.status.updated.avsc").read_text())
    path = tmp_path / "events" / "case.status.updated.avsc"
    path.write_text(json.dumps(source))
    assert len(lock_schemas(EventCatalog(tmp_path))) == 1
    source["fields"].append({"name": "eta_hours", "type": ["null", "int"], "default": None})
    path.write_text(json.dumps(source))
    assert lock_schemas(EventCatalog(tmp_path)) == ["civicbus.events.CaseStatusUpdatedEvent v2 id 2"]
    source["fields"].append({"name": "mandatory", "type": "string", "civicbus.text": "safe"})
    path.write_text(json.dumps(source))
    with pytest.raises(ValueError, match="mandatory: new field without a default"):
        lock_schemas(EventCatalog(tmp_path))
    registry = FileSchemaRegistry(tmp_path)
    assert registry.get_versions("civicbus.events.CaseStatusUpdatedEvent") == [1, 2]


def test_every_string_field_says_whether_it_is_personal_free_text_or_safe(catalog):
    free_text = {t.name: set(t.free_text_fields) for t in catalog if t.free_text_fields}
    assert free_text == {"city.case.reported": {"description"}, "hotline.request.received": {"content"},
                         "petition.filed": {"summary"}, "case.status.updated": {"note"}}
    assert all(t.envelope_free_text == ("subject", "location.raw_address") for t in catalog)
    for event_type in catalog:
        for name, field in event_type.data_fields.items():
            kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
            if "string" in kinds or {"type": "array", "items": "string"} in kinds:
                assert field.get("civicbus.text") in ("personal", "free", "safe"), (event_type.name, name)


def test_a_string_field_without_a_declaration_is_refused_naming_it(tmp_path):
    (tmp_path / "events").mkdir()
    (tmp_path / "envelope.avsc").write_text((SCHEMAS / "envelope.avsc").read_text())
    source = json.loads((SCHEMAS / "events" / "hotline.request.received.avsc").read_text())
    source["fields"].append({"name": "callback_note", "type": ["null", "string"], "default": None})
    (tmp_path / "events" / "hotline.request.received.avsc").write_text(json.dumps(source))
    with pytest.raises(ValueError, match=r"hotline.request.received.avsc: string fields without `civicbus.text`.*: callback_note"):
        EventCatalog(tmp_path)
    envelope = json.loads((SCHEMAS / "envelope.avsc").read_text())
    del next(f for f in envelope["fields"] if f["name"] == "subject")["civicbus.text"]
    (tmp_path / "envelope.avsc").write_text(json.dumps(envelope))
    with pytest.raises(ValueError, match=r"envelope.avsc: string fields without `civicbus.text`.*: subject"):
        EventCatalog(tmp_path)


def test_schemas_check_names_an_undeclared_string_field(tmp_path):
    from typer.testing import CliRunner

    from civicbus.cli import app

    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    path = schemas / "events" / "petition.filed.avsc"
    source = json.loads(path.read_text())
    del next(f for f in source["fields"] if f["name"] == "summary")["civicbus.text"]
    path.write_text(json.dumps(source))
    result = CliRunner().invoke(app, ["schemas", "check"], env={"CIVICBUS_SCHEMAS_DIR": str(schemas)})
    assert result.exit_code == 1 and "string fields without `civicbus.text`" in result.output and "summary" in result.output
    ok = CliRunner().invoke(app, ["schemas", "check"], env={"CIVICBUS_SCHEMAS_DIR": str(SCHEMAS)})
    assert ok.exit_code == 0 and f"{len(EventCatalog(SCHEMAS).types)} schemas locked and compatible" in ok.output
