"""The gateway's API documents: /openapi.json passes openapi-spec-validator, /v1/asyncapi.json the
official AsyncAPI parser (@asyncapi/parser under node, installed by `make test`), and both say
what the gateway and the bus really do."""

from __future__ import annotations

import json
import subprocess

from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from civicbus.policy import RANK, dispatch_reach
from civicbus.settings import REPO_ROOT
from consumers.gateway.app import create_app
from tests.integration.test_gateway import bearer

PARSER = REPO_ROOT / "tests" / "asyncapi"


def documents(bus, tmp_path) -> tuple[dict, dict]:
    bus.settings.state_dir = tmp_path
    with TestClient(create_app(bus)) as gateway:
        return gateway.get("/openapi.json").json(), gateway.get("/v1/asyncapi.json", headers=bearer(bus, "police")).json()


def test_openapi_is_valid_and_documents_every_status_of_each_route(bus, tmp_path):
    openapi, _ = documents(bus, tmp_path)
    validate(openapi)  # raises, naming the path, on an invalid document
    statuses = {(path, method): set(operation["responses"]) for path, item in openapi["paths"].items() for method, operation in item.items()}
    assert statuses[("/v1/events", "post")] == {"202", "401", "403", "409", "413", "422", "429", "503"}
    for feed in ("/v1/feeds/{agency}/events", "/v1/feeds/{agency}/stream"):
        assert statuses[(feed, "get")] == {"200", "401", "403", "409", "422", "429", "503"}
    assert statuses[("/v1/catalog", "get")] == statuses[("/v1/asyncapi.json", "get")] == {"200", "401"}
    stream = openapi["paths"]["/v1/feeds/{agency}/stream"]["get"]["responses"]["200"]["content"]
    assert set(stream) == {"text/event-stream"} and "itemSchema" not in stream["text/event-stream"]


def test_asyncapi_passes_the_official_parser(bus, tmp_path):
    _, asyncapi = documents(bus, tmp_path)
    parsed = subprocess.run(["node", str(PARSER / "validate.mjs")], input=json.dumps(asyncapi), capture_output=True, text=True, timeout=120)
    diagnostics = [json.loads(line) for line in parsed.stdout.splitlines()]
    assert parsed.returncode == 0 and not [d for d in diagnostics if d["severity"] == 0], parsed.stdout[-3000:] + parsed.stderr[-3000:]
    broken = {**asyncapi, "operations": {**asyncapi["operations"], "receive.police": {**asyncapi["operations"]["receive.police"], "channel": {"$ref": "#/channels/none"}}}}
    refused = subprocess.run(["node", str(PARSER / "validate.mjs")], input=json.dumps(broken), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1  # the check can fail


def test_asyncapi_lists_what_each_department_can_receive_with_security_bindings_and_schema_ids(bus, tmp_path):
    _, asyncapi = documents(bus, tmp_path)
    policy = bus.policy.get()
    reach = dispatch_reach(policy.document, bus.city, bus.catalog)
    feeds = {d: set(asyncapi["channels"][f"feed.{d}"]["messages"]) for d in policy.departments}
    assert feeds["hotline12345"] == {"case.status.updated", "case.escalated"}  # not every type it is cleared for
    assert "security.video.alert" not in feeds["health"] and RANK[policy.rules("health").clearance] >= RANK[bus.catalog["security.video.alert"].classification]
    assert "hotline.request.received" in feeds["police"]  # by its grant
    for department, types in feeds.items():
        rules = policy.rules(department)
        cleared = RANK[rules.clearance]
        dispatched = {name for (name, classification), to in reach.items() if department in to and RANK[classification] <= cleared}
        granted = {t.name for t in bus.catalog if t.name in {g.type for g in rules.receives} and RANK[t.classification] <= cleared}
        assert types == dispatched | granted, department
        assert set(asyncapi["channels"][f"stream.{department}"]["messages"]) == types

    schemes = asyncapi["components"]["securitySchemes"]
    assert schemes["scram"]["type"] == "scramSha512" and (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert asyncapi["servers"]["kafka"]["security"] == [{"$ref": "#/components/securitySchemes/scram"}]
    assert asyncapi["servers"]["gateway"]["security"] == [{"$ref": "#/components/securitySchemes/bearer"}]
    feed = asyncapi["channels"]["feed.police"]
    assert feed["bindings"]["kafka"]["topic"] == bus.topology.feed("police")
    group = asyncapi["operations"]["receive.police"]["bindings"]["kafka"]["groupId"]
    assert group["pattern"].endswith(r"dept\.police\.")
    headers = asyncapi["components"]["messageTraits"]["cloudEvents"]["headers"]["properties"]
    assert {"ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion", "content-type"} <= set(headers)

    lock = json.loads((bus.settings.schemas_dir / "schemas.lock.json").read_text())["subjects"]
    for name, message in asyncapi["components"]["messages"].items():
        subject = bus.catalog[name].subject
        assert message["x-civicbus-registry-subject"] == subject
        assert message["x-civicbus-schema-id"] == lock[subject][-1]["id"]
        assert message["traits"] == [{"$ref": "#/components/messageTraits/cloudEvents"}]
        assert message["bindings"]["kafka"]["schemaIdPayloadEncoding"] == "confluent"
