from civicbus.config import load_city
from civicbus.settings import REPO_ROOT
from civicbus.topology import Topology
from processors.dispatch import responsible_departments

CITY = load_city(REPO_ROOT / "config")


def test_rules_match_type_and_category_and_merge_targets():
    event = {"type": "city.case.reported", "data": {"category": "street_order"}}
    assert responsible_departments(CITY.dispatch, event) == ["citymgmt", "police"]


def test_unmatched_events_go_to_triage():
    event = {"type": "case.status.updated", "data": {"status": "accepted"}}
    assert responsible_departments(CITY.dispatch, event) == ["triage"]


def test_contract_topic_names():
    topology = Topology(departments=("citymgmt", "hotline12345"))
    names = {s.name for s in topology.specs()}
    assert {"civic.in.citymgmt", "civic.feed.hotline12345", "civic.dist.events", "civic.dlq", "civic.audit"} <= names
    assert {"civic.ref.entities", "civic.ref.buildings", "civic.ref.population"} <= names
    assert all(s.config["cleanup.policy"] == "compact" for s in topology.specs() if s.name.startswith("civic.ref."))
    assert topology.department_of_inbound("civic.in.street.dongcheng.andingmen") == "street.dongcheng.andingmen"


def test_namespace_prefixes_every_topic_and_group():
    topology = Topology(departments=("citymgmt",), namespace="t1.")
    assert all(s.name.startswith("t1.civic.") for s in topology.specs())
    assert topology.group("civicbus-ingest") == "t1.civicbus-ingest"
