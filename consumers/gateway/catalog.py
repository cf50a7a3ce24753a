"""/v1/catalog and /v1/asyncapi.json: generated from the schemas, the topology and the policy in
force, so the documentation is never behind what the bus actually does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from civicbus.context import BusContext
from civicbus.policy import Policy
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


def asyncapi(ctx: BusContext, policy: Policy) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: a channel per department's inbound topic and feed, an operation
    per department and direction listing the messages its policy allows there."""
    messages = {
        t.name: {
            "name": t.name,
            "title": t.name,
            "summary": t.doc,
            "contentType": "application/avro",
            "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": t.wire_schema},
            "x-civicbus-classification": t.classification,
            "x-civicbus-personal-fields": list(t.personal_fields),
        }
        for t in ctx.catalog
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for department in policy.departments:
        publishes = [t for t in policy.rules(department).publishes if t in messages]
        receives = [t.name for t in ctx.catalog if department in policy.receivers(t)["when_dispatched"]]
        for direction, channel_id, address, types, action in (
            ("publish", f"in.{department}", ctx.topology.inbound(department), publishes, "send"),
            ("receive", f"feed.{department}", ctx.topology.feed(department), receives, "receive"),
        ):
            channels[channel_id] = {
                "address": address,
                "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in types},
            }
            operations[f"{direction}.{department}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{department} {'publishes to' if action == 'send' else 'receives from'} {address}",
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{t}"} for t in types],
            }
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "civicbus",
            "version": "1.0.0",
            "description": "The city's inter-agency event bus: what each department may publish and receive, per config/policy.yaml.",
        },
        "defaultContentType": "application/avro",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
    if ctx.settings.bootstrap:
        document["servers"] = {"kafka": {"host": ctx.settings.bootstrap.split(",")[0], "protocol": "kafka"}}
    return document


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
