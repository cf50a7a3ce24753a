"""The lock served as Confluent's Schema Registry REST API (`civicbus registry`), on a real uvicorn server."""

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from civicbus.registry import RegistryMismatch, make_registry_client
from civicbus.settings import REPO_ROOT, Settings
from tests.support import served_registry

SCHEMAS = REPO_ROOT / "schemas"
LOCK = json.loads((SCHEMAS / "schemas.lock.json").read_text())
SUBJECT, VERSIONS = next(iter(LOCK["subjects"].items()))
LOCKED = VERSIONS[-1]


@pytest.fixture(scope="module")
def registry_url():
    with served_registry() as url:
        yield url


def test_reads_answer_as_confluent_does(registry_url):
    get = lambda path: httpx.get(registry_url + path)  # noqa: E731
    assert get(f"/schemas/ids/{LOCKED['id']}").json() == {"schema": LOCKED["schema"]}
    assert get(f"/schemas/ids/{LOCKED['id']}/schema").json() == json.loads(LOCKED["schema"])
    assert get("/schemas/types").json() == ["AVRO"]
    assert get("/subjects").json() == sorted(LOCK["subjects"])
    assert get(f"/subjects/{SUBJECT}/versions").json() == [v["version"] for v in VERSIONS]
    for version in (str(LOCKED["version"]), "latest"):
        assert get(f"/subjects/{SUBJECT}/versions/{version}").json() == {
            "subject": SUBJECT, "version": LOCKED["version"], "id": LOCKED["id"], "schema": LOCKED["schema"]}
    assert get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    assert get(f"/config/{SUBJECT}?defaultToGlobal=true").json() == {"compatibilityLevel": "BACKWARD"}
    assert get("/mode").json() == {"mode": "READONLY"}
    assert get("/schemas/ids/99999").json()["error_code"] == 40403
    assert get("/subjects/nope/versions").json()["error_code"] == 40401
    assert get(f"/subjects/{SUBJECT}/versions/99").json()["error_code"] == 40402
    assert get(f"/subjects/{SUBJECT}/versions/zero").status_code == 422
    assert get("/no/such/route").json()["error_code"] == 404


def test_lookup_and_compatibility(registry_url):
    body = {"schema": LOCKED["schema"]}
    found = httpx.post(f"{registry_url}/subjects/{SUBJECT}", json=body)
    assert found.status_code == 200 and found.json()["id"] == LOCKED["id"]
    assert httpx.post(f"{registry_url}/subjects/nope", json=body).json()["error_code"] == 40401
    other = json.loads(LOCKED["schema"])
    other["fields"].append({"name": "extra", "type": "string"})  # no default: not backward compatible
    unknown = httpx.post(f"{registry_url}/subjects/{SUBJECT}", json={"schema": json.dumps(other)})
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, 40403)
    check = httpx.post(f"{registry_url}/compatibility/subjects/{SUBJECT}/versions/latest?verbose=true", json={"schema": json.dumps(other)})
    assert check.json()["is_compatible"] is False and "extra" in check.json()["messages"][0]
    assert httpx.post(f"{registry_url}/compatibility/subjects/{SUBJECT}/versions/latest", json=body).json() == {"is_compatible": True}
    missing_field = httpx.post(f"{registry_url}/subjects/{SUBJECT}", json={"schemaType": "AVRO"})
    assert missing_field.status_code == 422 and "schema" in missing_field.json()["message"]
    assert httpx.post(f"{registry_url}/subjects/{SUBJECT}", json={"schema": "{not json"}).json()["error_code"] == 42201


def test_writes_answer_as_a_read_only_registry(registry_url):
    other = json.loads(LOCKED["schema"])
    other["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    writes = [
        httpx.post(f"{registry_url}/subjects/{SUBJECT}/versions", json={"schema": json.dumps(other)}),
        httpx.delete(f"{registry_url}/subjects/{SUBJECT}"),
        httpx.delete(f"{registry_url}/subjects/{SUBJECT}/versions/1"),
        httpx.put(f"{registry_url}/config", json={"compatibility": "NONE"}),
        httpx.put(f"{registry_url}/mode", json={"mode": "IMPORT"}),
    ]
    assert [(w.status_code, w.json()["error_code"]) for w in writes] == [(422, 42205)] * len(writes)
    # registering what the lock holds changes nothing and answers its id, as for any existing schema
    held = httpx.post(f"{registry_url}/subjects/{SUBJECT}/versions", json={"schema": LOCKED["schema"]})
    assert held.json() == {"id": LOCKED["id"]}


def test_clients_check_at_start_that_the_registry_holds_the_lock(registry_url, tmp_path):
    client = make_registry_client(Settings(schema_registry_url=registry_url))
    assert isinstance(client, SchemaRegistryClient) and client.get_schema(LOCKED["id"]).schema_str == LOCKED["schema"]
    shifted = shifted_lock(tmp_path)
    with pytest.raises(RegistryMismatch, match=f"{SUBJECT} v{LOCKED['version']} is id {LOCKED['id']}"):
        make_registry_client(Settings(schema_registry_url=registry_url, schemas_dir=shifted))


def shifted_lock(tmp_path, by: int = 100):
    """A copy of the schemas whose lock gives every version another id."""
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    lock = json.loads((schemas / "schemas.lock.json").read_text())
    for versions in lock["subjects"].values():
        for v in versions:
            v["id"] += by
    (schemas / "schemas.lock.json").write_text(json.dumps(lock))
    return schemas


def push(registry_url: str, schemas_dir=SCHEMAS) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIVICBUS_SCHEMA_REGISTRY_URL": registry_url, "CIVICBUS_SCHEMAS_DIR": str(schemas_dir)}
    return subprocess.run([sys.executable, "-m", "civicbus.cli", "schemas", "push"], env=env, capture_output=True, text=True, timeout=60)


def test_schemas_push_verifies_a_registry_that_holds_the_lock(registry_url):
    pushed = push(registry_url)
    assert pushed.returncode == 0, pushed.stderr
    assert f"0 imported, {sum(len(v) for v in LOCK['subjects'].values())} already there with the lock's ids" in pushed.stdout


def test_schemas_push_refuses_a_registry_that_contradicts_the_lock(registry_url, tmp_path):
    pushed = push(registry_url, shifted_lock(tmp_path))
    assert pushed.returncode == 1
    assert "contradicts schemas.lock.json; nothing pushed" in pushed.stderr
    assert f"{SUBJECT} v{LOCKED['version']} is id {LOCKED['id']} v{LOCKED['version']} there, id {LOCKED['id'] + 100}" in pushed.stderr


def test_schemas_push_imports_what_is_missing_and_reports_a_refusal(tmp_path):
    """A registry holding part of the lock: push switches it to IMPORT; this one is read-only and says so."""
    partial = tmp_path / "partial"
    shutil.copytree(SCHEMAS, partial)
    lock = json.loads((partial / "schemas.lock.json").read_text())
    del lock["subjects"][SUBJECT]
    (partial / "schemas.lock.json").write_text(json.dumps(lock))
    with served_registry(partial) as url:
        pushed = push(url)
    assert pushed.returncode == 1
    assert "answered 422 (error 42205)" in pushed.stderr and "read-only" in pushed.stderr
