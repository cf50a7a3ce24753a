"""/openapi.json as a valid OpenAPI 3.1 document (openapi-spec-validator checks it in the tests).

FastAPI describes a Server-Sent Events response with `itemSchema`, a keyword of OpenAPI 3.2 that
3.1 does not allow; here the stream is a string of `text/event-stream` whose items are described
in words instead (each `data:` is one event envelope as JSON, `id:` the cursor after it).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

SSE_SCHEMA = {
    "type": "string",
    "description": "Server-Sent Events: per event `event:` its type, `id:` the cursor after it, `data:` the envelope as JSON.",
}


def _without_item_schemas(document: dict[str, Any]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                for media_type, content in response.get("content", {}).items():
                    if "itemSchema" in content:
                        del content["itemSchema"]
                        content["schema"] = SSE_SCHEMA if media_type == "text/event-stream" else {}


def valid_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _without_item_schemas(document)
        app.openapi_schema = document
    return app.openapi_schema
