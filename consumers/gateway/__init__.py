"""The HTTP gateway (DESIGN.md "HTTP gateway"): one FastAPI app, `civicbus gateway`.

    app.py      assembles the app: auth, routers, error shape, body limit, /healthz, /metrics
    auth.py     bearer token -> department (civicbus.tokens holds only hashes)
    feeds.py    GET /v1/feeds/{agency}/events (cursor, long-poll) and /stream (SSE), audited,
                on asyncio: no request holds a thread while it waits
    limits.py   per-department publish rate and concurrent reads (policy.yaml `rate_limits`, 429)
    catalog.py  /v1/catalog and /v1/asyncapi.json, generated from schemas, topics and policy
    openapi.py  /openapi.json kept valid OpenAPI 3.1
Cursors and their reset check (409) are consumers/feed_position.py, shared with the subscriber SDK.
POST /v1/events is producers/http_ingest.py: it publishes, so it lives with the producers, and
this app mounts it.
"""
