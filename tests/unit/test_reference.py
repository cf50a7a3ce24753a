"""Master data: credit codes, the in-memory tables, stale versions, enrichment."""

from datetime import datetime, timezone

import pytest

from civicbus.reference import (
    DATASETS, Building, LegalEntity, MasterDataError, credit_code_problem, encode_record, read_master_csv,
)
from civicbus.schemas import EventCatalog
from civicbus.settings import REPO_ROOT
from processors.enrich import ReferenceTables, enrich

CATALOG = EventCatalog(REPO_ROOT / "schemas")
CODE = "91350100M000100Y43"  # a published example code


def entity(status="active", updated="2024-03-01T00:00:00Z", name="安定门餐饮有限公司"):
    return LegalEntity(credit_code=CODE, name=name, status=status, updated=datetime.fromisoformat(updated))


@pytest.mark.parametrize(
    "code, problem",
    [
        (CODE, None),
        ("91350100M000100Y44", "check character is 4, GB 32100-2015 gives 3"),
        ("91350100M000100Y4", "17 characters"),
        ("91350100O000100Y43", "outside GB 32100-2015: O"),
    ],
)
def test_credit_code_check_character(code, problem):
    found = credit_code_problem(code)
    assert found is None if problem is None else problem in found


def test_the_sample_master_data_is_valid_and_keyed():
    for dataset in DATASETS:
        records = read_master_csv(REPO_ROOT / "config", dataset)
        assert len({r.key for r in records}) == len(records) >= 50


def test_an_invalid_master_row_is_named(tmp_path):
    (tmp_path / "master").mkdir()
    (tmp_path / "master" / "entities.csv").write_text(
        "credit_code,name,status,updated\n91350100M000100Y43,甲,active,2024-01-01T00:00:00Z\n91350100M000100Y44,乙,active,2024-01-01T00:00:00Z\n"
    )
    with pytest.raises(MasterDataError, match=r"entities.csv:3: credit_code: .*check character"):
        read_master_csv(tmp_path, "entities")


def license_event(**data):
    return {
        "type": "entity.license.changed", "location": None,
        "data": {"credit_code": CODE, "change": "suspended", "license_type": "food_business", "entity_name": None, "entity_status": None, **data},
    }


def test_enrichment_fills_declared_fields_and_master_updates_apply_to_later_events():
    tables = ReferenceTables()
    event_type = CATALOG["entity.license.changed"]
    assert enrich(license_event(), event_type, tables)["data"]["entity_status"] is None  # unknown code: as published
    tables.apply("entities", CODE, encode_record(entity())[1])
    before = enrich(license_event(entity_name="publisher's old name"), event_type, tables)
    assert (before["data"]["entity_name"], before["data"]["entity_status"]) == ("安定门餐饮有限公司", "active")
    assert tables.apply("entities", CODE, encode_record(entity("revoked", "2024-06-01T00:00:00Z"))[1])
    after = enrich(license_event(), event_type, tables)
    assert after["data"]["entity_status"] == "revoked"
    assert before["data"]["entity_status"] == "active"  # what was enriched before stays as it was


def test_a_stale_master_record_arriving_late_is_ignored_and_a_tombstone_deletes():
    tables = ReferenceTables()
    tables.apply("entities", CODE, encode_record(entity("revoked", "2024-06-01T00:00:00Z"))[1])
    assert tables.apply("entities", CODE, encode_record(entity("active", "2024-03-01T00:00:00Z"))[1]) is False
    assert tables.get("entities", CODE).status == "revoked"
    tables.apply("entities", CODE, None)
    assert tables.get("entities", CODE) is None


def test_buildings_are_found_by_the_standardised_address_code():
    tables = ReferenceTables()
    building = Building(address_code="1101010010010001", building_id="B1", name="1号楼", use="mixed", floors=6,
                        updated=datetime(2024, 1, 1, tzinfo=timezone.utc))
    tables.apply("buildings", building.key, encode_record(building)[1])
    event = {"location": {"address_code": "1101010010010001"}, "data": {"building_id": None, "building_use": None}}
    enrich(event, CATALOG["housing.rental.registered"], tables)
    assert event["data"] == {"building_id": "B1", "building_use": "mixed"}
