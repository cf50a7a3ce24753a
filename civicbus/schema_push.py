"""`civicbus schemas push`: make a Confluent Schema Registry hold the lock, with the lock's ids.

The lock is the only source of schema ids (civicbus clients never register), so a registry is
loaded the way Confluent documents for migrations: global mode IMPORT, each missing version
registered with its explicit id and version, then mode READONLY so nobody registers beside the
lock. A registry that already holds every locked version under its id is only verified (the
served lock-file registry is one); one that contradicts the lock (an id or version taken by
another schema) is refused, naming each contradiction, and left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from civicbus.registry import LOCK_FILE, SchemaLock, lock_differences, remote_registry_client
from civicbus.settings import Settings

FINAL_MODE = "READONLY"


class PushError(RuntimeError):
    pass


@dataclass(frozen=True)
class PushReport:
    imported: list[str]
    present: int
    mode: str


def push_lock(settings: Settings) -> PushReport:
    lock = SchemaLock(settings.schemas_dir)
    client = remote_registry_client(settings)
    try:
        missing, conflicts = lock_differences(client, lock)
        if conflicts:
            raise PushError(f"the registry at {settings.schema_registry_url} contradicts {LOCK_FILE}; nothing pushed:\n" + "\n".join(conflicts))
        imported = []
        if missing:
            _import(client, missing)
            imported = [f"{r.subject} v{r.version} id {r.schema_id}" for r in missing]
            still_missing, conflicts = lock_differences(client, lock)
            if still_missing or conflicts:
                raise PushError("after the import the registry still differs from the lock:\n" + "\n".join(
                    conflicts + [f"{r.subject} v{r.version} (id {r.schema_id}) missing" for r in still_missing]))
        if client.get_global_mode() != FINAL_MODE:
            client.update_global_mode(FINAL_MODE)
        return PushReport(imported, len(lock.by_id) - len(imported), FINAL_MODE)
    except SchemaRegistryError as e:
        raise PushError(f"the registry at {settings.schema_registry_url} answered {e.http_status_code} (error {e.error_code}): {e.error_message}") from None
    finally:
        client.close()


def _import(client: SchemaRegistryClient, missing) -> None:
    client.update_global_mode("IMPORT", force=True)  # force: the registry may already hold other schemas
    for registered in missing:
        # The client has no public call to register under an explicit id and version (IMPORT mode
        # only), so this one request goes through its REST client: same URL, auth and retries.
        client._rest_client.post(
            f"subjects/{registered.subject}/versions",
            body={"schema": registered.schema.schema_str, "schemaType": "AVRO", "id": registered.schema_id, "version": registered.version},
        )
