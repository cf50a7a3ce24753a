"""The HTTP gateway (DESIGN.md "HTTP gateway"): one FastAPI app, `civicbus gateway`.

    app.py      assembles the app: auth, routers, error shape, body limit, /healthz, /metrics
    auth.py     bearer token -> department (civicbus.tokens holds only hashes)
    feeds.py    GET /v1/feeds/{agency}/events (cursor, long-poll) and /stream (SSE), audited
    catalog.py  /v1/catalog and /v1/asyncapi.json, generated from schemas, topics and policy
POST /v1/events is producers/http_ingest.py: it publishes, so it lives with the producers, and
this app mounts it.
"""
