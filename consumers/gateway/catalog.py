"""/v1/catalog and /v1/asyncapi.json: generated from the schemas, the topology and the policy in
force, so the documentation is never behind what the bus actually does."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from civicbus.context import BusContext
from civicbus.policy import RANK, Policy, dispatch_reach
from civicbus.registry import FileSchemaRegistry
from civicbus.schemas import CLASSIFICATIONS

AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"


def catalog(ctx: BusContext, policy: Policy) -> dict[str, Any]:
    return {
        "event_types": [
            {
                "type": t.name,
                "doc": t.doc,
                "classification": t.classification,
                "personal_fields": list(t.personal_fields),
                "forms_case": t.forms_case,
                "updates_case": t.updates_case,
                "publishers": policy.publishers(t.name),
                "receivers": policy.receivers(t),
            }
            for t in ctx.catalog
        ],
        "classifications": list(CLASSIFICATIONS),  # lowest first
    }


KAFKA_BINDINGS = "0.5.0"
HTTP_BINDINGS = "0.3.0"
CLOUDEVENTS_HEADERS = {
    "type": "object",
    "description": "CloudEvents 1.0, Kafka protocol binding in binary mode: the envelope's attributes as headers.",
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "description": "The event's id (also the record key)."},
        "ce_type": {"type": "string", "description": "The event type, e.g. city.case.reported."},
        "ce_source": {"type": "string", "description": "The publishing department, as urn:civicbus:dept:<id>."},
        "ce_dataschema": {"type": "string", "description": "The payload's registry subject and version."},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string"},
        "content-type": {"type": "string", "const": "application/avro"},
        "civic_masked": {"type": "string", "description": "Feeds only: the personal fields masked for this department."},
    },
    "required": ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"],
}


def deliverable(ctx: BusContext, policy: Policy) -> dict[str, list[str]]:
    """Per department, the event types its feed can hold: what dispatch can send it or a grant
    names, at a classification within its clearance (`policy.dispatch_reach` is the dispatch side)."""
    reach = dispatch_reach(policy.document, ctx.city, ctx.catalog)  # (type, classification it travels at) -> departments
    found: dict[str, list[str]] = {}
    for department in policy.departments:
        rules = policy.rules(department)
        cleared = RANK[rules.clearance]
        dispatched = {name for (name, classification), to in reach.items() if department in to and RANK[classification] <= cleared}
        granted = {g.type for g in rules.receives}
        found[department] = [
            t.name for t in ctx.catalog
            if t.name in dispatched or (t.name in granted and RANK[t.classification] <= cleared)
        ]
    return found


def _message(ctx: BusContext, event_type: Any, registry: FileSchemaRegistry) -> dict[str, Any]:
    locked = registry.get_latest_version(event_type.subject)
    return {
        "name": event_type.name,
        "title": event_type.name,
        "summary": event_type.doc,
        "contentType": "application/avro",
        "traits": [{"$ref": "#/components/messageTraits/cloudEvents"}],
        "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": event_type.wire_schema},
        "bindings": {"kafka": {
            "key": {"type": "string", "description": "The event id."},
            "schemaIdLocation": "payload",
            "schemaIdPayloadEncoding": "confluent",
            "schemaLookupStrategy": "RecordNameStrategy",
            "bindingVersion": KAFKA_BINDINGS,
        }},
        "x-civicbus-registry-subject": event_type.subject,
        "x-civicbus-schema-id": locked.schema_id,
        "x-civicbus-schema-version": locked.version,
        "x-civicbus-classification": event_type.classification,
        "x-civicbus-personal-fields": list(event_type.personal_fields),
    }


def asyncapi(ctx: BusContext, policy: Policy) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: per department its inbound topic, its feed (Kafka) and its feed's
    stream (the gateway's SSE), each listing exactly the messages the policy lets through there."""
    registry = FileSchemaRegistry(ctx.settings.schemas_dir)
    messages = {t.name: _message(ctx, t, registry) for t in ctx.catalog}
    receives = deliverable(ctx, policy)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for department in policy.departments:
        publishes = [t for t in policy.rules(department).publishes if t in messages]
        groups = {"type": "string", "pattern": "^" + re.escape(ctx.topology.department_group_prefix(department))}
        for direction, channel_id, address, types, action, server in (
            ("publish", f"in.{department}", ctx.topology.inbound(department), publishes, "send", "kafka"),
            ("receive", f"feed.{department}", ctx.topology.feed(department), receives[department], "receive", "kafka"),
            ("stream", f"stream.{department}", f"/v1/feeds/{department}/stream", receives[department], "receive", "gateway"),
        ):
            channel: dict[str, Any] = {
                "address": address,
                "servers": [{"$ref": f"#/servers/{server}"}],
                "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in types},
            }
            operation: dict[str, Any] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{department} {'publishes to' if action == 'send' else 'receives from'} {address}",
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{t}"} for t in types],
            }
            if server == "kafka":
                channel["bindings"] = {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDINGS}}
                if action == "receive":
                    operation["bindings"] = {"kafka": {"groupId": groups, "bindingVersion": KAFKA_BINDINGS}}
            else:
                operation["bindings"] = {"http": {"method": "GET", "bindingVersion": HTTP_BINDINGS}}
            channels[channel_id] = channel
            operations[f"{direction}.{department}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "civicbus",
            "version": "1.0.0",
            "description": "The city's inter-agency event bus: what each department may publish and receive, per config/policy.yaml.",
        },
        "defaultContentType": "application/avro",
        "servers": {
            "kafka": {
                "host": (ctx.settings.bootstrap or "localhost:9092").split(",")[0],
                "protocol": "kafka",
                "description": "The bus. Production (docker compose) requires SASL/SCRAM; the embedded broker has no security.",
                "security": [{"$ref": "#/components/securitySchemes/scram"}],
                "bindings": {"kafka": {"schemaRegistryVendor": "confluent", "bindingVersion": KAFKA_BINDINGS}},
            },
            "gateway": {
                "host": "localhost:8080",
                "protocol": "http",
                "description": "The HTTP gateway: feeds as Server-Sent Events.",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "messageTraits": {"cloudEvents": {"headers": CLOUDEVENTS_HEADERS}},
            "securitySchemes": {
                "scram": {"type": "scramSha512", "description": "A department's or stage's Kafka principal (SASL/SCRAM-SHA-512)."},
                "bearer": {"type": "http", "scheme": "bearer", "description": "A department's gateway token (`civicbus token AGENCY`)."},
            },
        },
    }


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "No valid token"}}


def catalog_router(ctx: BusContext, department_of_caller: Callable[..., str]) -> APIRouter:
    router = APIRouter(tags=["catalog"], dependencies=[Depends(department_of_caller)])

    @router.get("/v1/catalog", summary="Event types, their classification, and who may publish and receive them", responses=UNAUTHORIZED)
    def get_catalog() -> dict[str, Any]:
        return catalog(ctx, ctx.policy.get())

    @router.get("/v1/asyncapi.json", summary="The AsyncAPI 3.0 document of the bus", responses=UNAUTHORIZED)
    def get_asyncapi() -> dict[str, Any]:
        return asyncapi(ctx, ctx.policy.get())

    return router
