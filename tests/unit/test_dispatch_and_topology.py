from civicbus.config import district_office, load_city, load_grid, street_office
from civicbus.dispatch import Dispatch, Place
from civicbus.settings import REPO_ROOT
from civicbus.topology import Topology

CITY = load_city(REPO_ROOT / "config")
DISPATCH = Dispatch(CITY)
PLACED = Place.of({"resolved": True, "street": "xicheng.shichahai", "district": "xicheng"})


def test_type_rules_add_the_offices_of_the_location():
    assert DISPATCH.event_targets("housing.rental.registered", PLACED) == ["housing", "police", "street.xicheng.shichahai", "district.xicheng"]


def test_unmatched_events_and_unplaced_locations_go_to_triage():
    assert DISPATCH.event_targets("petition.unheard.of", Place.of(None)) == ["triage"]
    assert DISPATCH.event_targets("housing.rental.registered", Place.of({"resolved": False})) == ["housing", "police", "triage"]


def test_case_targets_are_responsible_departments_and_location_offices():
    assert DISPATCH.case_targets("city.case.reported", ["citymgmt"], PLACED) == ["citymgmt", "street.xicheng.shichahai", "district.xicheng"]
    assert DISPATCH.case_targets("hotline.request.received", ["ecoenv"], Place.of(None)) == ["ecoenv"]


def test_a_case_rule_names_the_owners_of_a_type_and_keeps_its_cases_apart():
    noise = CITY.categories.lookup("noise")
    assert DISPATCH.responsible("petition.filed", noise) == ["petition"]  # not ecoenv: the petitions bureau owns it
    assert DISPATCH.case_targets("petition.filed", ["petition"], PLACED) == ["petition"]  # offices: false
    assert DISPATCH.escalation_targets("petition.filed", ["petition"], ["petition"], PLACED) == ["petition"]
    assert DISPATCH.escalation_targets("hotline.request.received", ["ecoenv"], ["hotline12345"], PLACED) == ["ecoenv", "district.xicheng", "hotline12345"]
    assert DISPATCH.stands_alone("petition.filed", "CONFIDENTIAL") and DISPATCH.stands_alone("city.case.reported", "CONFIDENTIAL")
    assert not DISPATCH.stands_alone("city.case.reported", "RESTRICTED")


def test_the_sample_city_is_big_enough_and_consistent():
    districts = CITY.map.districts
    assert len(districts) >= 3 and len(CITY.map.street_ids()) >= 10
    cells = load_grid(REPO_ROOT / "config")
    assert len(cells) >= 100 and all(c["geometry"]["type"] == "Polygon" for c in cells)
    assert {c["properties"]["street"] for c in cells} == set(CITY.map.street_ids())
    departments = set(CITY.department_ids())
    assert {street_office(s) for s in CITY.map.street_ids()} | {district_office(d.id) for d in districts} <= departments
    for department in CITY.departments:
        assert department.name_zh and department.name_en


def test_every_case_type_names_its_category_field_and_families_cover_the_case_enums():
    from civicbus.schemas import EventCatalog

    catalog = EventCatalog(REPO_ROOT / "schemas")
    for event_type in catalog:
        assert event_type.forms_case == (event_type.case_category_field is not None), event_type.name
    for kind in ("air_quality", "water_level", "noise", "manhole_cover", "street_vending", "collision"):
        assert CITY.categories.lookup(kind) is not None, kind


def test_contract_topic_names():
    topology = Topology(departments=("citymgmt", "hotline12345"))
    names = {s.name for s in topology.specs()}
    assert {"civic.in.citymgmt", "civic.feed.hotline12345", "civic.dist.events", "civic.dlq", "civic.audit"} <= names
    assert {"civic.ref.entities", "civic.ref.buildings", "civic.ref.population"} <= names
    assert all(s.config["cleanup.policy"] == "compact" for s in topology.specs() if s.name.startswith("civic.ref."))
    assert topology.department_of_inbound("civic.in.street.dongcheng.andingmen") == "street.dongcheng.andingmen"


def test_namespace_prefixes_every_topic_and_group():
    topology = Topology(departments=("citymgmt",), namespace="t1.")
    assert all(s.name.startswith("t1.civic.") for s in topology.specs() if s.name != topology.cases_changelog)
    assert topology.cases_changelog == "t1.civic.state.cases"
    assert topology.group("civicbus-ingest") == "t1.civicbus-ingest"


def test_a_busy_departments_inbound_topic_gets_the_partitions_its_config_gives():
    busy = CITY.model_copy(update={"departments": tuple(
        d.model_copy(update={"partitions": 8}) if d.id == "hotline12345" else d for d in CITY.departments)})
    partitions = {s.name: s.partitions for s in busy.topology("t1.").specs()}
    assert partitions["t1.civic.in.hotline12345"] == 8
    assert partitions["t1.civic.in.citymgmt"] == 1 and partitions["t1.civic.feed.hotline12345"] == 1
    assert {s.partitions for s in CITY.topology().specs()} == {1}  # the sample city: one each
