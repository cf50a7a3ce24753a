"""Schema registries behind one client surface: confluent-kafka's SchemaRegistryClient.

`SchemaLock` holds schemas/schemas.lock.json (committed, reviewed like code) as a registry
answers it; `FileSchemaRegistry` is a SchemaRegistryClient answering from it in process and
`civicbus.registry_api` serves it over HTTP with Confluent's REST API, so switching to a real
Confluent Schema Registry (CIVICBUS_SCHEMA_REGISTRY_URL, loaded by `civicbus schemas push`) is
configuration, not a code path. `lock_schemas` is the only writer of the lock; `check_schemas`
is its CI gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from civicbus.schemas import EventCatalog, backward_incompatibilities, canonical, fingerprint
from civicbus.settings import DEFAULT_REGISTRY_URL, Settings

LOCK_FILE = "schemas.lock.json"
READ_ONLY = 42205  # Confluent's "operation not permitted" (a write to a READONLY registry or subject)
# `civicbus schemas check` holds every change to BACKWARD compatibility.
COMPATIBILITY = "BACKWARD"


def _read_lock(schemas_dir: Path) -> dict:
    path = schemas_dir / LOCK_FILE
    if not path.exists():
        return {"subjects": {}}
    return json.loads(path.read_text(encoding="utf-8"))


class SchemaLock:
    """The lock's subjects, versions and ids as a registry answers them; read-only.

    Lookups follow Confluent's error codes: 40401 unknown subject, 40402 unknown version,
    40403 unknown schema. Schemas compare by canonical text; registering one the lock holds
    answers its lock id whatever the subject (Confluent, too, gives an identical schema the same
    id in every subject), so serializers that auto-register under their default topic subject
    keep working; anything else is refused as by a READONLY registry.
    """

    def __init__(self, schemas_dir: Path):
        self.by_id: dict[int, RegisteredSchema] = {}
        self.by_subject: dict[str, list[RegisteredSchema]] = {}
        self._by_text: dict[str, RegisteredSchema] = {}
        for subject, versions in _read_lock(schemas_dir)["subjects"].items():
            for v in versions:
                registered = RegisteredSchema(
                    schema_id=v["id"], guid=None, schema=Schema(v["schema"], "AVRO"), subject=subject, version=v["version"]
                )
                self.by_id[v["id"]] = registered
                self.by_subject.setdefault(subject, []).append(registered)
                self._by_text[canonical(v["schema"])] = registered

    def subjects(self) -> list[str]:
        return sorted(self.by_subject)

    def versions(self, subject: str) -> list[RegisteredSchema]:
        if subject not in self.by_subject:
            raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")
        return self.by_subject[subject]

    def version(self, subject: str, version: int | str) -> RegisteredSchema:
        versions = self.versions(subject)
        if version in ("latest", -1):
            return max(versions, key=lambda r: r.version)
        for registered in versions:
            if str(registered.version) == str(version):
                return registered
        raise SchemaRegistryError(404, 40402, f"Version {version} not found.")

    def schema(self, schema_id: int) -> RegisteredSchema:
        try:
            return self.by_id[int(schema_id)]
        except (KeyError, ValueError):
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found") from None

    def lookup(self, subject: str, schema_str: str) -> RegisteredSchema:
        """The subject's version holding exactly this schema."""
        versions = self.versions(subject)
        wanted = _canonical_or_invalid(schema_str)
        for registered in versions:
            if canonical(registered.schema.schema_str) == wanted:
                return registered
        raise SchemaRegistryError(404, 40403, f"Schema not found: subject {subject} has no version with this schema ({LOCK_FILE})")

    def register(self, subject: str, schema_str: str) -> RegisteredSchema:
        """What a write answers: the lock's id for a schema it holds, else 42205 (read-only)."""
        held = self._by_text.get(_canonical_or_invalid(schema_str))
        if held is None:
            raise SchemaRegistryError(422, READ_ONLY, f"Subject {subject} is in read-only mode: this registry serves {LOCK_FILE}; add schemas with `civicbus schemas lock`")
        return held

    def incompatibilities(self, subject: str, version: int | str, schema_str: str) -> list[str]:
        """Why data written with the registered version could not be read with `schema_str` (BACKWARD)."""
        registered = self.version(subject, version)
        _canonical_or_invalid(schema_str)
        return backward_incompatibilities(json.loads(schema_str), json.loads(registered.schema.schema_str))


def _canonical_or_invalid(schema_str: str) -> str:
    try:
        return canonical(schema_str)
    except (TypeError, ValueError) as e:
        raise SchemaRegistryError(422, 42201, f"Invalid schema: {e}") from None


class FileSchemaRegistry(SchemaRegistryClient):
    """Confluent's SchemaRegistryClient answered from the lock, in process, without HTTP.

    Every method the Avro serializer and deserializer call answers from `SchemaLock`; `url` is
    where the same lock is served over HTTP (`civicbus registry`), which ce_dataschema names.
    Writes behave as `SchemaLock.register` says.
    """

    def __init__(self, schemas_dir: Path, url: str = DEFAULT_REGISTRY_URL):
        super().__init__({"url": url})
        self.lock = SchemaLock(schemas_dir)

    def register_schema_full_response(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> RegisteredSchema:
        return self.lock.register(subject_name, schema.schema_str)

    def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
        return self.lock.register(subject_name, schema.schema_str).schema_id

    def lookup_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False, deleted: bool = False, fmt=None) -> RegisteredSchema:
        return self.lock.lookup(subject_name, schema.schema_str)

    def get_schema(self, schema_id: int, subject_name: str | None = None, fmt: str | None = None) -> Schema:
        return self.lock.schema(schema_id).schema

    def get_schema_by_guid(self, guid: str, fmt: str | None = None) -> Schema:
        raise SchemaRegistryError(404, 40403, f"Schema {guid} not found: the lock has no guids")

    def get_schema_types(self) -> list[str]:
        return ["AVRO"]

    def get_subjects(self, *args, **kwargs) -> list[str]:
        return self.lock.subjects()

    def get_versions(self, subject_name: str, *args, **kwargs) -> list[int]:
        return [r.version for r in self.lock.versions(subject_name)]

    def get_version(self, subject_name: str, version: int | str = "latest", deleted: bool = False, fmt=None) -> RegisteredSchema:
        return self.lock.version(subject_name, version)

    def get_latest_version(self, subject_name: str, fmt: str | None = None) -> RegisteredSchema:
        return self.lock.version(subject_name, "latest")

    def get_latest_with_metadata(self, subject_name: str, metadata: dict, deleted: bool = False, fmt=None) -> RegisteredSchema:
        self.lock.versions(subject_name)
        raise SchemaRegistryError(404, 40403, f"Schema not found: the lock's schemas carry no metadata ({metadata})")

    def get_associations_by_resource_name(self, resource_name: str, resource_namespace: str, *args, **kwargs) -> list:
        return []  # no topic is associated with a subject: serializers use their fallback strategy

    def test_compatibility(self, subject_name: str, schema: Schema, version: int | str = "latest", *args, **kwargs) -> bool:
        return not self.lock.incompatibilities(subject_name, version, schema.schema_str)

    def get_compatibility(self, subject_name: str | None = None) -> str:
        return COMPATIBILITY

    def get_global_mode(self) -> str:
        return "READONLY"

    def get_mode(self, subject_name: str) -> str:
        return "READONLY"


class RegistryMismatch(RuntimeError):
    """The configured Schema Registry does not hold the lock's schemas under the lock's ids."""


def remote_registry_client(settings: Settings) -> SchemaRegistryClient:
    conf = {"url": settings.schema_registry_url}
    if settings.schema_registry_basic_auth:
        conf |= {"basic.auth.credentials.source": "USER_INFO", "basic.auth.user.info": settings.schema_registry_basic_auth}
    return SchemaRegistryClient(conf)


def lock_differences(client: SchemaRegistryClient, lock: SchemaLock) -> tuple[list[RegisteredSchema], list[str]]:
    """What the registry lacks of the lock (missing), and where it contradicts it (conflicts)."""
    missing, conflicts = [], []
    for locked in sorted(lock.by_id.values(), key=lambda r: r.schema_id):
        try:
            found = client.lookup_schema(locked.subject, locked.schema)
        except SchemaRegistryError as e:
            if e.error_code not in (40401, 40403):
                raise
            try:
                taken = client.get_schema(locked.schema_id)
            except SchemaRegistryError as absent:
                if absent.error_code != 40403:
                    raise
                missing.append(locked)
            else:
                if canonical(taken.schema_str) != canonical(locked.schema.schema_str):
                    conflicts.append(f"id {locked.schema_id} is another schema there, not {locked.subject} v{locked.version}")
                else:
                    missing.append(locked)  # the schema is there under another subject only
            continue
        if (found.schema_id, found.version) != (locked.schema_id, locked.version):
            conflicts.append(f"{locked.subject} v{locked.version} is id {found.schema_id} v{found.version} there, id {locked.schema_id} in {LOCK_FILE}")
    return missing, conflicts


def make_registry_client(settings: Settings) -> SchemaRegistryClient:
    """The Schema Registry at CIVICBUS_SCHEMA_REGISTRY_URL, checked to hold the lock; else the lock-file registry."""
    if not settings.schema_registry_url:
        return FileSchemaRegistry(settings.schemas_dir, settings.registry_url)
    client = remote_registry_client(settings)
    missing, conflicts = lock_differences(client, SchemaLock(settings.schemas_dir))
    if missing or conflicts:
        lacking = [f"{r.subject} v{r.version} (id {r.schema_id}) missing" for r in missing]
        raise RegistryMismatch(
            f"the Schema Registry at {settings.schema_registry_url} does not hold {LOCK_FILE}; run `civicbus schemas push`:\n"
            + "\n".join(conflicts + lacking)
        )
    return client


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
