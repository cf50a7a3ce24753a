"""The pipeline stages: ingest (validate, standardise, enrich, route), the stateful case stage
(merge, dispatch, deadlines, feedback) and the fan-out to department feeds.

Each stage is plain functions over event dicts plus a thin runner that owns the Kafka loop.
"""

from enum import Enum
from importlib import import_module

# Every stage by name, in pipeline order: `civicbus process NAME` runs one, `civicbus up` starts
# them all. Each is imported only when it runs: each pulls in its own libraries.
STAGES = {
    "ingest": "processors.ingest:IngestStage",
    "cases": "processors.cases:CaseStage",
    "fanout": "processors.fanout:FanoutStage",
}
StageName = Enum("StageName", {name: name for name in STAGES}, type=str)


def stage_class(name: str) -> type:
    """The Stage class that runs under `name`."""
    if name not in STAGES:
        raise ValueError(f"no stage named {name!r}; the stages are {', '.join(STAGES)}")
    module, cls = STAGES[name].split(":")
    return getattr(import_module(module), cls)
