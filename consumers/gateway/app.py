"""The gateway app: tokens, routers, one error shape, a body limit, /healthz and /metrics."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from civicbus.audit import GatewayAudit
from civicbus.context import BusContext
from civicbus.kafka import AsyncProducer
from civicbus.metrics import GATEWAY_REQUESTS
from civicbus.serde import MAX_EVENT_BYTES
from civicbus.tokens import TokenStore
from consumers.gateway.auth import Authenticate
from consumers.gateway.cases import cases_router
from consumers.gateway.catalog import catalog_router
from consumers.gateway.feeds import FeedAccess, FeedReader, feeds_router
from consumers.gateway.limits import DepartmentLimits
from consumers.gateway.openapi import valid_openapi
from producers.http_ingest import ingest_router

# A body larger than the largest event the bus accepts is refused (413) before it is parsed.
MAX_BODY_BYTES = MAX_EVENT_BYTES
SCOPES = ("body", "query", "path", "header")


@dataclass
class _Clients:
    """Kafka clients, made when the app starts serving and closed when it stops."""

    producer: AsyncProducer | None = None
    reader: FeedReader | None = None


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            errors.append({"field": "(body)", "message": f"malformed JSON: {error.get('ctx', {}).get('error', 'cannot be parsed')}"})
            continue
        loc = [str(part) for part in error["loc"]] or ["request"]
        path = loc[1:] if loc[0] in SCOPES else loc
        errors.append({"field": ".".join(path) or f"({loc[0]})", "message": error["msg"]})
    return errors


def _metrics_registry() -> CollectorRegistry:
    """Under `civicbus up` every process writes to PROMETHEUS_MULTIPROC_DIR: serve their sum."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def create_app(ctx: BusContext) -> FastAPI:
    clients = _Clients()
    authenticate = Authenticate(ctx, TokenStore(ctx.settings.state_dir))
    limits = DepartmentLimits(ctx.policy)
    ctx.policy.get()  # a broken policy stops the gateway here, not at the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients.producer = AsyncProducer(ctx.bootstrap)
        clients.reader = app.state.feed_reader = FeedReader(ctx)
        try:
            yield
        finally:
            await clients.reader.close()
            clients.producer.close()

    async def publishing_department(department: str = Depends(authenticate)) -> str:
        limits.take_publish(department)
        return department

    app = FastAPI(
        title="civicbus gateway",
        version="1.0.0",
        description="Publish events and read your department's feed over HTTP. Every call but "
        "/healthz, /metrics and this document needs `Authorization: Bearer <token>` (`civicbus token AGENCY`).",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.include_router(ingest_router(ctx, publishing_department, lambda: clients.producer))
    audit = GatewayAudit(ctx, lambda: clients.producer)  # one writer, one chain (civicbus.audit)
    app.include_router(feeds_router(FeedAccess(ctx, lambda: clients.reader, audit), authenticate, limits))
    app.include_router(catalog_router(ctx, authenticate))
    app.openapi = lambda: valid_openapi(app)
    app.include_router(cases_router(ctx, authenticate, audit))

    @app.exception_handler(RequestValidationError)
    async def validation_failed(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(exc)}, status_code=422)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        GATEWAY_REQUESTS.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(_metrics_registry()), media_type=CONTENT_TYPE_LATEST)

    return app
