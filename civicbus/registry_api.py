"""Confluent's Schema Registry REST API, served read-only from the schema lock.

Any department's stock client (Java, .NET, Python) points its deserializer here and resolves
the ids on the wire to exactly the lock's schemas. Reads answer as Confluent does (same JSON,
same error codes: 40401 subject, 40402 version, 40403 schema, 42201 invalid schema); the
registry's mode is READONLY, so writes answer 422 with 42205, except a registration of a
schema the lock already holds, which answers its lock id (stock serializers that
auto-register keep working; nothing changes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import RegisteredSchema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from civicbus.registry import COMPATIBILITY, LOCK_FILE, READ_ONLY, SchemaLock

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRequest(BaseModel):
    """The body of a lookup, registration or compatibility check."""

    model_config = ConfigDict(extra="allow")  # id, version, metadata, ruleSet: accepted, not used

    schema: str
    schemaType: str = "AVRO"
    references: list[dict] = []


class RegistryResponse(JSONResponse):
    media_type = MEDIA_TYPE


def _error(status: int, code: int, message: str) -> RegistryResponse:
    return RegistryResponse({"error_code": code, "message": message}, status_code=status)


def _subject_version(registered: RegisteredSchema) -> dict[str, Any]:
    return {"subject": registered.subject, "version": registered.version, "id": registered.schema_id, "schema": registered.schema.schema_str}


def _read_only(what: str) -> SchemaRegistryError:
    return SchemaRegistryError(422, READ_ONLY, f"{what} is in read-only mode: this registry serves {LOCK_FILE}")


def _avro_only(body: SchemaRequest) -> None:
    if body.schemaType.upper() != "AVRO":
        raise SchemaRegistryError(422, 42201, f"Invalid schema: schemaType {body.schemaType} is not served here (AVRO only)")


def create_registry_app(lock: SchemaLock) -> FastAPI:
    app = FastAPI(title="civicbus Schema Registry (read-only, from the schema lock)", default_response_class=RegistryResponse)

    @app.exception_handler(SchemaRegistryError)
    async def registry_error(_request: Request, e: SchemaRegistryError) -> RegistryResponse:
        return _error(e.http_status_code, e.error_code, e.error_message)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> RegistryResponse:
        return _error(e.status_code, e.status_code, f"HTTP {e.status_code} {e.detail}")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, e: RequestValidationError) -> RegistryResponse:
        fields = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        return _error(422, 422, f"Unprocessable request: {fields}")

    # -- schemas by id --
    @app.get("/schemas/ids/{schema_id}")
    def schema_by_id(schema_id: int, subject: str | None = None) -> dict:
        return {"schema": lock.schema(schema_id).schema.schema_str}

    @app.get("/schemas/ids/{schema_id}/schema")
    def raw_schema_by_id(schema_id: int) -> Any:
        return json.loads(lock.schema(schema_id).schema.schema_str)

    @app.get("/schemas/ids/{schema_id}/subjects")
    def subjects_of_schema(schema_id: int) -> list[str]:
        return [lock.schema(schema_id).subject]

    @app.get("/schemas/ids/{schema_id}/versions")
    def versions_of_schema(schema_id: int) -> list[dict]:
        registered = lock.schema(schema_id)
        return [{"subject": registered.subject, "version": registered.version}]

    @app.get("/schemas/types")
    def schema_types() -> list[str]:
        return ["AVRO"]

    # -- subjects --
    @app.get("/subjects")
    def subjects() -> list[str]:
        return lock.subjects()

    @app.get("/subjects/{subject}/versions")
    def versions(subject: str) -> list[int]:
        return [r.version for r in lock.versions(subject)]

    @app.get("/subjects/{subject}/versions/{version}")
    def version(subject: str, version: str) -> dict:
        return _subject_version(lock.version(subject, _version(version)))

    @app.get("/subjects/{subject}/versions/{version}/schema")
    def raw_version(subject: str, version: str) -> Any:
        return json.loads(lock.version(subject, _version(version)).schema.schema_str)

    @app.post("/subjects/{subject}")
    def lookup(subject: str, body: SchemaRequest) -> dict:
        _avro_only(body)
        return _subject_version(lock.lookup(subject, body.schema))

    @app.post("/subjects/{subject}/versions")
    def register(subject: str, body: SchemaRequest) -> dict:
        _avro_only(body)
        return {"id": lock.register(subject, body.schema).schema_id}

    @app.delete("/subjects/{subject}")
    def delete_subject(subject: str) -> None:
        lock.versions(subject)
        raise _read_only(f"Subject {subject}")

    @app.delete("/subjects/{subject}/versions/{version}")
    def delete_version(subject: str, version: str) -> None:
        lock.version(subject, _version(version))
        raise _read_only(f"Subject {subject}")

    # -- compatibility, config, mode --
    @app.post("/compatibility/subjects/{subject}/versions/{version}")
    def compatibility(subject: str, version: str, body: SchemaRequest, verbose: bool = False) -> dict:
        _avro_only(body)
        problems = lock.incompatibilities(subject, _version(version), body.schema)
        return {"is_compatible": not problems, **({"messages": problems} if verbose else {})}

    @app.get("/config")
    def config() -> dict:
        return {"compatibilityLevel": COMPATIBILITY}

    @app.get("/config/{subject}")
    def subject_config(subject: str, defaultToGlobal: bool = False) -> dict:
        lock.versions(subject)
        if not defaultToGlobal:
            raise SchemaRegistryError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
        return {"compatibilityLevel": COMPATIBILITY}

    @app.get("/mode")
    def mode() -> dict:
        return {"mode": "READONLY"}

    @app.get("/mode/{subject}")
    def subject_mode(subject: str) -> dict:
        lock.versions(subject)
        return {"mode": "READONLY"}

    @app.put("/config")
    @app.put("/mode")
    @app.delete("/config")
    def write_global() -> None:
        raise _read_only("The registry")

    @app.put("/config/{subject}")
    @app.put("/mode/{subject}")
    @app.delete("/config/{subject}")
    @app.delete("/mode/{subject}")
    def write_subject(subject: str) -> None:
        raise _read_only(f"Subject {subject}")

    @app.get("/associations/resources/{namespace}/{resource}")
    def associations(namespace: str, resource: str) -> list:
        return []  # no topic is associated with a subject: serializers use their fallback strategy

    @app.get("/")
    def root() -> dict:
        return {}

    return app


def _version(version: str) -> int | str:
    if version == "latest" or version == "-1":
        return "latest"
    if not version.isdigit() or int(version) < 1:
        raise SchemaRegistryError(422, 42202, f"The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")
    return int(version)


def serve_registry(schemas_dir: Path, host: str, port: int) -> None:
    """Run the API on uvicorn until SIGTERM or Ctrl-C, then exit 0 like every part of `civicbus up`."""
    from civicbus.cli_support import serve_http

    serve_http(create_registry_app(SchemaLock(schemas_dir)), host, port)
