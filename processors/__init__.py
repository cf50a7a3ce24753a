"""The pipeline stages: ingest (validate, standardise, enrich, route), the stateful case stage
(merge, dispatch, deadlines, feedback) and the fan-out to department feeds.

Each stage is plain functions over event dicts plus a thin runner that owns the Kafka loop.
"""


def stage_class(name: str) -> type:
    """The Stage class that runs under `name` (imported on demand: each pulls in its own libraries)."""
    if name == "ingest":
        from processors.ingest import IngestStage as stage
    elif name == "cases":
        from processors.cases import CaseStage as stage
    elif name == "fanout":
        from processors.fanout import FanoutStage as stage
    else:
        raise ValueError(f"no stage named {name!r}")
    return stage
