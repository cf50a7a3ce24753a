"""Schema registries behind one client surface: confluent-kafka's SchemaRegistryClient.

`FileSchemaRegistry` serves ids from schemas/schemas.lock.json (committed, reviewed like code)
and implements the part of SchemaRegistryClient that the Avro serializer and deserializer call,
so switching to a real Confluent Schema Registry (CIVICBUS_SCHEMA_REGISTRY_URL) is configuration,
not a code path. `lock_schemas` is the only writer of the lock; `check_schemas` is its CI gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from civicbus.schemas import EventCatalog, backward_incompatibilities, canonical, fingerprint

LOCK_FILE = "schemas.lock.json"


def _read_lock(schemas_dir: Path) -> dict:
    path = schemas_dir / LOCK_FILE
    if not path.exists():
        return {"subjects": {}}
    return json.loads(path.read_text(encoding="utf-8"))


class FileSchemaRegistry:
    """A read-only schema registry backed by the lock file; ids are stable across machines."""

    def __init__(self, schemas_dir: Path):
        self._by_id: dict[int, RegisteredSchema] = {}
        self._by_subject: dict[str, list[RegisteredSchema]] = {}
        for subject, versions in _read_lock(schemas_dir)["subjects"].items():
            for v in versions:
                registered = RegisteredSchema(
                    schema_id=v["id"], guid=None, schema=Schema(v["schema"], "AVRO"), subject=subject, version=v["version"]
                )
                self._by_id[v["id"]] = registered
                self._by_subject.setdefault(subject, []).append(registered)

    # -- the SchemaRegistryClient surface used by AvroSerializer / AvroDeserializer --

    def register_schema_full_response(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> RegisteredSchema:
        return self.lookup_schema(subject_name, schema)

    def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
        return self.lookup_schema(subject_name, schema).schema_id

    def lookup_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False, deleted: bool = False, fmt=None) -> RegisteredSchema:
        wanted = canonical(schema.schema_str)
        for registered in self._by_subject.get(subject_name, []):
            if canonical(registered.schema.schema_str) == wanted:
                return registered
        raise SchemaRegistryError(
            404, 40403, f"schema for subject {subject_name} is not in {LOCK_FILE}; run `civicbus schemas lock`"
        )

    def get_schema(self, schema_id: int, subject_name: str | None = None, fmt: str | None = None) -> Schema:
        try:
            return self._by_id[schema_id].schema
        except KeyError:
            raise SchemaRegistryError(404, 40403, f"schema id {schema_id} not found") from None

    def get_subjects(self) -> list[str]:
        return sorted(self._by_subject)

    def get_versions(self, subject_name: str, *args, **kwargs) -> list[int]:
        return [r.version for r in self._by_subject.get(subject_name, [])]

    def get_version(self, subject_name: str, version: int, deleted: bool = False, fmt=None) -> RegisteredSchema:
        for r in self._by_subject.get(subject_name, []):
            if r.version == version:
                return r
        raise SchemaRegistryError(404, 40402, f"subject {subject_name} has no version {version}")

    def get_latest_version(self, subject_name: str, fmt: str | None = None) -> RegisteredSchema:
        versions = self._by_subject.get(subject_name)
        if not versions:
            raise SchemaRegistryError(404, 40401, f"subject {subject_name} not found")
        return max(versions, key=lambda r: r.version)

    def config(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def make_registry_client(schemas_dir: Path, url: str | None):
    """The real Confluent Schema Registry when a URL is set, else the lock-file registry."""
    if url:
        return SchemaRegistryClient({"url": url})
    return FileSchemaRegistry(schemas_dir)


@dataclass(frozen=True)
class SchemaCheck:
    locked: list[str]  # subjects whose current schema is the locked latest
    new: list[str]  # subjects or versions not yet in the lock (compatible)
    incompatible: list[str]  # reasons

    @property
    def ok(self) -> bool:
        return not self.new and not self.incompatible


def check_schemas(catalog: EventCatalog) -> SchemaCheck:
    """Compare the catalog with the lock: every schema locked, every change backward compatible."""
    lock = _read_lock(catalog.schemas_dir)["subjects"]
    locked, new, incompatible = [], [], []
    for event_type in catalog:
        versions = lock.get(event_type.subject, [])
        if any(v["fingerprint"] == fingerprint(event_type.wire_schema) for v in versions):
            locked.append(event_type.subject)
            continue
        for v in versions:
            for reason in backward_incompatibilities(event_type.wire_schema, json.loads(v["schema"])):
                incompatible.append(f"{event_type.name} against locked version {v['version']}: {reason}")
        new.append(event_type.subject)
    return SchemaCheck(locked, new, incompatible)


def lock_schemas(catalog: EventCatalog) -> list[str]:
    """Add every new, backward-compatible schema version to the lock; return what was added."""
    result = check_schemas(catalog)
    if result.incompatible:
        raise ValueError("incompatible schema changes:\n" + "\n".join(result.incompatible))
    data = _read_lock(catalog.schemas_dir)
    subjects = data["subjects"]
    next_id = 1 + max((v["id"] for vs in subjects.values() for v in vs), default=0)
    added = []
    for event_type in catalog:
        if event_type.subject not in result.new:
            continue
        versions = subjects.setdefault(event_type.subject, [])
        versions.append(
            {
                "version": len(versions) + 1,
                "id": next_id,
                "event_type": event_type.name,
                "fingerprint": fingerprint(event_type.wire_schema),
                "schema": event_type.schema_str,
            }
        )
        added.append(f"{event_type.subject} v{len(versions)} id {next_id}")
        next_id += 1
    (catalog.schemas_dir / LOCK_FILE).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return added
