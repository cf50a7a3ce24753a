"""Every topic civicbus uses, with partitions and configs: the one place that names topics.

Topic names are contract (DESIGN.md). `Topology.namespace` prefixes every name and consumer
group; it is empty in production and lets tests run isolated pipelines on one broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000

IN_PREFIX = "civic.in."
FEED_PREFIX = "civic.feed."
REF_PREFIX = "civic.ref."
DIST_EVENTS = "civic.dist.events"
DLQ = "civic.dlq"
AUDIT = "civic.audit"
CASES = "civic.cases"  # each case's current state (case.snapshot), the read model of the case API
# Internal hops between stages; not part of the public contract.
PIPE_CASES = "civic.pipe.cases"

REFERENCE_DATASETS = ("population", "entities", "buildings")
# The case stage's state, one compacted partition per civic.pipe.cases partition.
STATE_CASES = "civic.state.cases"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    departments: tuple[str, ...]
    namespace: str = ""
    pipeline_partitions: int = 1
    # (department, partitions) of inbound topics with more than `pipeline_partitions`, for a busy
    # department (departments.yaml `partitions`; civicbus.quirks, 2): at 100 events/s the hotline's
    # 42 a second put 17,000 batches into its one partition by minute 7 of the soak.
    inbound_partitions: tuple[tuple[str, int], ...] = ()

    def name(self, topic: str) -> str:
        return f"{self.namespace}{topic}"

    def group(self, group: str) -> str:
        return f"{self.namespace}{group}"

    def stage_group(self, stage: str) -> str:
        """A pipeline stage's consumer group (its helpers' groups start with it)."""
        return self.group(f"civicbus-{stage}")

    def department_group_prefix(self, department: str) -> str:
        """Consumer groups a department may use (its ACLs allow exactly this prefix)."""
        return self.group(f"dept.{department}.")

    def inbound(self, department: str) -> str:
        return self.name(IN_PREFIX + department)

    def feed(self, department: str) -> str:
        return self.name(FEED_PREFIX + department)

    def reference(self, dataset: str) -> str:
        return self.name(REF_PREFIX + dataset)

    @property
    def inbound_pattern(self) -> str:
        """Regex subscription for every department's inbound topic (librdkafka: leading ^)."""
        return "^" + self.name(IN_PREFIX).replace(".", r"\.") + ".*"

    @property
    def cases_changelog(self) -> str:
        """The case stage's state log: partition p holds the cases of civic.pipe.cases partition p."""
        return self.name(STATE_CASES)

    def department_of_inbound(self, topic: str) -> str:
        return topic[len(self.name(IN_PREFIX)) :]

    def specs(self) -> list[TopicSpec]:
        """Every topic, so `topics apply` can create them before any client runs."""
        n = self.pipeline_partitions
        week = {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
        month = {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}
        compact = {"cleanup.policy": "compact"}
        inbound = dict(self.inbound_partitions)
        specs = [TopicSpec(self.inbound(d), inbound.get(d, n), week) for d in self.departments]
        specs += [TopicSpec(self.feed(d), n, month) for d in self.departments]
        specs += [TopicSpec(self.reference(r), 1, compact) for r in REFERENCE_DATASETS]
        specs += [
            TopicSpec(self.name(DIST_EVENTS), n, month),
            TopicSpec(self.name(PIPE_CASES), n, week),
            TopicSpec(self.cases_changelog, n, compact),
            TopicSpec(self.name(CASES), n, compact),
            TopicSpec(self.name(DLQ), 1, month),
            TopicSpec(self.name(AUDIT), 1, {"cleanup.policy": "delete", "retention.ms": str(365 * DAY_MS)}),
        ]
        return specs
