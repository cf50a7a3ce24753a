"""The case API on a real broker: the gateway follows civic.cases into memory and answers the
departments on a case, within their clearance, masked as their feed, audited."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from civicbus.audit import AuditRecord, decode_entry
from civicbus.kafka import make_producer
from civicbus.topology import AUDIT, CASES
from consumers.gateway.app import create_app
from processors.case_snapshot import case_snapshot
from processors.casebook import CaseBook, CaseRules, to_ms
from tests.integration.test_gateway import bearer
from tests.integration.test_signed_topics_and_audit import audit_verify
from tests.support import read_topic, wait_for
from tests.unit.test_casebook import CATALOG, CITY, T0, event, status

PHONE = "13812345678"


@pytest.fixture
def gateway(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    with TestClient(create_app(bus)) as client:
        yield client


def street_vending_case():
    """A hotline call and a camera alert merged into one case, in progress with a named handler."""
    book = CaseBook(CaseRules.from_city(CITY, CATALOG["case.escalated"]), {})
    call = event("hotline.request.received", caller_name="王伟", caller_phone=PHONE)
    camera = event("security.video.alert", at=T0 + timedelta(minutes=2))
    for e in (call, camera):
        book.handle(e, CATALOG[e["type"]])
    progress = status(call["id"], "in_progress", at=T0 + timedelta(minutes=3))
    progress["data"]["handler_name"] = "李明"
    book.handle(progress, CATALOG["case.status.updated"])
    return book.cases[call["id"]], call, camera


def publish(bus, case: dict, **overrides) -> dict:
    """Write a case's snapshot to civic.cases and its reports to the state log's report index,
    as the case stage does."""
    snapshot = {**case_snapshot(case, CITY.dispatch.hub), **overrides}
    producer = make_producer(bus.bootstrap)
    value, headers = bus.serde.encode(snapshot, bus.topology.name(CASES))
    producer.produce(bus.topology.name(CASES), value, case["id"].encode(), headers=headers, partition=0)
    for report_id in case["reports"]:
        producer.produce(bus.topology.cases_changelog, json.dumps({"case": case["id"]}).encode(), f"report/{report_id}".encode(), partition=0)
    producer.flush(10)
    return snapshot


def answered(gateway, path, headers):
    wait_for(lambda: gateway.get(path, headers=headers).status_code != 404, 30, f"{path} to be known")
    return gateway.get(path, headers=headers)


def test_the_departments_on_a_case_read_it_masked_others_are_refused_and_every_read_is_audited(bus, gateway):
    case, call, camera = street_vending_case()
    snapshot = publish(bus, case)
    citymgmt = bearer(bus, "citymgmt")
    by_case = answered(gateway, f"/v1/cases/{case['id']}", citymgmt)
    assert by_case.status_code == 200, by_case.text
    body = by_case.json()
    assert body["type"] == "case.snapshot" and body["data"]["status"] == "in_progress"
    assert body["data"]["handler"] == "***" and "李明" not in by_case.text  # the policy grants no one case.snapshot's handler
    assert [r["source"] for r in body["data"]["reports"]] == ["hotline12345", "police"]
    assert body["data"]["responsible"] == ["citymgmt", "police"] and body["classification"] == "RESTRICTED"
    by_report = gateway.get(f"/v1/cases/{camera['id']}", headers=bearer(bus, "police"))
    assert by_report.status_code == 200 and by_report.json()["data"]["case_id"] == case["id"]
    assert gateway.get(f"/v1/cases/{case['id']}", headers=bearer(bus, "triage")).status_code == 200  # the hub
    assert gateway.get(f"/v1/cases/{case['id']}", headers=bearer(bus, "street.dongcheng.andingmen")).status_code == 200  # a target

    outsider = gateway.get(f"/v1/cases/{camera['id']}", headers=bearer(bus, "ecoenv"))
    assert outsider.status_code == 403 and case["id"] not in outsider.text and "not on this case" in outsider.json()["detail"]
    unknown = gateway.get("/v1/cases/no-such-case", headers=citymgmt)
    assert unknown.status_code == 404 and "no-such-case" in unknown.json()["detail"]
    assert gateway.get(f"/v1/cases/{case['id']}").status_code == 401

    entries = [decode_entry(m.value()) for m in read_topic(bus, bus.topology.name(AUDIT), until=lambda m: len(m) >= 4)]
    audit = [(r, d) for r in entries if isinstance(r, AuditRecord) for d in r.deliveries]
    assert {(r.event_id, d.department, r.path) for r, d in audit} >= {
        (snapshot["id"], "citymgmt", "gateway"), (snapshot["id"], "police", "gateway"), (snapshot["id"], "triage", "gateway")}
    assert all(r.type == "case.snapshot" and d.masked_fields == ("handler",) for r, d in audit)
    assert "ecoenv" not in {d.department for _, d in audit}


def test_a_department_on_a_case_above_its_clearance_is_refused(bus, gateway):
    case, call, _ = street_vending_case()
    publish(bus, case, classification="CONFIDENTIAL")  # as if a CONFIDENTIAL report had joined it
    triage, citymgmt, hotline = bearer(bus, "triage"), bearer(bus, "citymgmt"), bearer(bus, "hotline12345")
    assert answered(gateway, f"/v1/cases/{case['id']}", triage).status_code == 200  # the hub, cleared for CONFIDENTIAL
    for department in (citymgmt, hotline):  # responsible, and an originator: both cleared for RESTRICTED only
        refused = gateway.get(f"/v1/cases/{call['id']}", headers=department)
        assert refused.status_code == 403 and "CONFIDENTIAL" in refused.json()["detail"]
    assert gateway.get("/v1/cases", headers=hotline).json()["cases"] == []


def test_the_citizens_status_holds_no_personal_data_and_only_the_reporter_reads_it(bus, gateway):
    case, call, _ = street_vending_case()
    publish(bus, case)
    hotline = bearer(bus, "hotline12345")
    answer = answered(gateway, f"/v1/cases/{call['id']}/citizen-status", hotline)
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["case_id"] == case["id"] and view["report_id"] == call["id"] and view["status"] == "in_progress"
    assert view["status_zh"] == "正在处置" and [d["id"] for d in view["responsible"]] == ["citymgmt", "police"]
    assert view["overdue"] is False and view["due"] and view["last_update"]
    for personal in ("王伟", PHONE, "李明", "安定门", "handler", "caller", "note"):  # names, phone, address, internal fields
        assert personal not in answer.text, personal
    assert set(view) == {"case_id", "report_id", "status", "status_zh", "responsible", "due", "overdue", "last_update"}
    refused = gateway.get(f"/v1/cases/{call['id']}/citizen-status", headers=bearer(bus, "citymgmt"))
    assert refused.status_code == 403
    assert gateway.get("/v1/cases/unknown/citizen-status", headers=hotline).status_code == 404


def test_a_department_lists_its_own_cases_filtered_and_paged(bus, gateway):
    vending, _, _ = street_vending_case()
    book = CaseBook(CaseRules.from_city(CITY, CATALOG["case.escalated"]), {})
    garbage = event("city.case.reported", at=T0 + timedelta(hours=1), location={"lat": 39.93, "lon": 116.41},
                    category="city_appearance", subcategory="exposed_garbage", description="垃圾")
    book.handle(garbage, CATALOG["city.case.reported"])
    book.tick(to_ms(T0 + timedelta(hours=3)))  # garbage missed its acceptance deadline
    publish(bus, vending)
    publish(bus, book.cases[garbage["id"]])
    citymgmt = bearer(bus, "citymgmt")
    wait_for(lambda: len(gateway.get("/v1/cases", headers=citymgmt).json()["cases"]) == 2, 30, "both cases")
    listed = lambda **params: [c["data"]["case_id"] for c in gateway.get("/v1/cases", params=params, headers=citymgmt).json()["cases"]]  # noqa: E731
    assert listed() == [garbage["id"], vending["id"]]  # newest first
    assert listed(status="in_progress") == [vending["id"]] and listed(status="open") == [garbage["id"]]
    assert listed(overdue="true") == [garbage["id"]] and listed(category="exposed_garbage") == [garbage["id"]]
    assert listed(since=(T0 + timedelta(minutes=30)).isoformat()) == [garbage["id"]]
    first = gateway.get("/v1/cases", params={"limit": 1}, headers=citymgmt).json()
    second = gateway.get("/v1/cases", params={"limit": 1, "cursor": first["cursor"]}, headers=citymgmt).json()
    assert [c["data"]["case_id"] for c in first["cases"] + second["cases"]] == [garbage["id"], vending["id"]] and second["cursor"] is None
    assert gateway.get("/v1/cases", headers=bearer(bus, "ecoenv")).json() == {"cases": [], "cursor": None}
    bad = gateway.get("/v1/cases", params={"status": "lost"}, headers=citymgmt)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "status"
    assert gateway.get("/v1/cases", params={"cursor": "x"}, headers=citymgmt).json()["detail"][0]["field"] == "cursor"


def test_the_console_signs_in_by_cookie_and_shows_only_what_the_api_would(bus, gateway):
    case, call, _ = street_vending_case()
    publish(bus, case)
    answered(gateway, f"/v1/cases/{case['id']}", bearer(bus, "citymgmt"))
    assert "Department token" in gateway.get("/console").text  # not signed in: the sign-in form
    assert gateway.get(f"/console/cases/{case['id']}").status_code == 401
    refused = gateway.post("/console/session", json={"token": "cbt_guessed"})
    assert refused.status_code == 401 and "console" not in gateway.cookies
    citymgmt_token = bearer(bus, "citymgmt")["Authorization"].removeprefix("Bearer ")
    signed = gateway.post("/console/session", json={"token": citymgmt_token})
    assert signed.status_code == 204
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    dashboard = gateway.get("/console")
    assert f'data-case="{case["id"]}"' in dashboard.text and 'data-grid="dongcheng.andingmen.g07" data-open="1"' in dashboard.text
    timeline = gateway.get(f"/console/cases/{call['id']}")
    assert timeline.status_code == 200 and "in_progress by" in timeline.text and "李明" not in timeline.text
    gateway.post("/console/sign-out")
    gateway.cookies.clear()
    ecoenv_token = bearer(bus, "ecoenv")["Authorization"].removeprefix("Bearer ")
    assert gateway.post("/console/session", json={"token": ecoenv_token}).status_code == 204
    assert case["id"] not in gateway.get("/console").text
    assert gateway.get(f"/console/cases/{call['id']}").status_code == 403


def test_concurrent_reads_are_each_audited_on_one_intact_chain(bus, gateway):
    """The gateway group-commits the audit records of reads that arrive together: each read is
    still answered only with its record written, and the chain links them in one order."""
    case, call, camera = street_vending_case()
    snapshot = publish(bus, case)
    readers = [bearer(bus, d) for d in ("citymgmt", "police", "triage", "hotline12345")] * 10
    assert answered(gateway, f"/v1/cases/{case['id']}", readers[0]).status_code == 200
    with ThreadPoolExecutor(len(readers)) as pool:
        answers = list(pool.map(lambda headers: gateway.get(f"/v1/cases/{call['id']}", headers=headers), readers))
    assert [a.status_code for a in answers] == [200] * len(readers)

    entries = [decode_entry(m.value()) for m in read_topic(bus, bus.topology.name(AUDIT))]  # all acknowledged already
    records = [e for e in entries if isinstance(e, AuditRecord)]
    assert [r.seq for r in entries] == list(range(len(entries))) and all(r.event_id == snapshot["id"] for r in records)
    read_by = Counter(d.department for r in records for d in r.deliveries)
    assert read_by["citymgmt"] >= 10 and {d: read_by[d] for d in ("police", "triage", "hotline12345")} == dict.fromkeys(
        ("police", "triage", "hotline12345"), 10)
    intact = audit_verify(bus)
    assert intact.returncode == 0 and f"audit log intact: {len(records)} records" in intact.stdout, intact.stderr
