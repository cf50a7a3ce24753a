"""What each civicbus process does on Kafka, declared once per role.

A role is a principal (`User:civicbus-ingest`, ...) and the resources it touches: the topics it
reads and writes, the consumer groups it joins or commits in, its transactional ids and the
topics it creates. `civicbus acl plan` grants exactly this (civicbus/acl.py); `civicbus up` logs
each part in as its role's principal when the cluster is secured (civicbus/stack.py); the
compose check evaluates every request these imply against the plan (tests/unit/test_acl_authorizer.py).
A stage that reads or writes another topic changes its role here, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from civicbus.topology import AUDIT, CASES, DIST_EVENTS, DLQ, FEED_PREFIX, IN_PREFIX, PIPE_CASES, REF_PREFIX, Topology

LITERAL, PREFIXED = "LITERAL", "PREFIXED"


@dataclass(frozen=True, order=True)
class Resource:
    name: str
    pattern: str = LITERAL  # or PREFIXED: every name starting with `name`

    def covers(self, name: str) -> bool:
        return name.startswith(self.name) if self.pattern == PREFIXED else name == self.name


@dataclass(frozen=True)
class Role:
    name: str  # as in `civicbus up`'s parts: ingest, cases, fanout, gateway, simulator, operator
    reads: tuple[Resource, ...] = ()  # topics consumed, and committed as a group's input
    writes: tuple[Resource, ...] = ()  # topics produced to (idempotent producers, all of them)
    groups: tuple[Resource, ...] = ()  # consumer groups joined or committed in
    transactional_ids: tuple[Resource, ...] = ()
    creates: tuple[Resource, ...] = ()  # topics the role creates itself
    creates_any_topic: bool = False  # `topics apply`: CreateTopics on the cluster, DescribeConfigs
    describes_topics: tuple[Resource, ...] = ()  # only looked at: end offsets, configs (lag exporter)
    describes_groups: tuple[Resource, ...] = ()  # only looked at: members and committed offsets

    @property
    def principal(self) -> str:
        return f"User:civicbus-{self.name}"

    @property
    def username(self) -> str:
        return self.principal.removeprefix("User:")


def _prefix_or_all(name: str) -> Resource:
    """Everything under a namespace prefix; Kafka has no empty prefix, so no namespace is the wildcard."""
    return Resource(name, PREFIXED) if name else Resource("*")


def roles(topology: Topology) -> tuple[Role, ...]:
    t = topology
    stage_group = lambda stage: Resource(t.stage_group(stage), PREFIXED)  # the runner's group and its helpers'
    ingest = Role(
        "ingest",
        # the case stage's state log: which partition holds each report (processors.routing)
        reads=(Resource(t.name(IN_PREFIX), PREFIXED), Resource(t.name(REF_PREFIX), PREFIXED), Resource(t.cases_changelog)),
        writes=(Resource(t.name(PIPE_CASES)), Resource(t.name(DIST_EVENTS)), Resource(t.name(DLQ))),
        groups=(stage_group("ingest"),),  # no transactional id: it commits at least once (processors.runner)
    )
    cases = Role(
        "cases",
        reads=(Resource(t.name(PIPE_CASES)), Resource(t.cases_changelog)),
        # its clock records go to civic.pipe.cases; its case events to civic.dist.events beside the transaction
        writes=(Resource(t.name(PIPE_CASES)), Resource(t.name(DIST_EVENTS)), Resource(t.name(DLQ)), Resource(t.cases_changelog),
                Resource(t.name(CASES))),  # each case's current state, the case API's read model
        groups=(stage_group("cases"),),
        transactional_ids=(stage_group("cases"),),
        # how far ingest has read (processors.ingest_progress): inbound end offsets, ingest's committed ones
        describes_topics=(Resource(t.name(IN_PREFIX), PREFIXED),),
        describes_groups=(Resource(t.stage_group("ingest")),),
    )
    fanout = Role(
        "fanout",
        # the feeds' tails (delivered ids) and its audit chain's end, read back on start
        reads=(Resource(t.name(DIST_EVENTS)), Resource(t.name(FEED_PREFIX), PREFIXED), Resource(t.name(AUDIT))),
        writes=(Resource(t.name(FEED_PREFIX), PREFIXED), Resource(t.name(AUDIT)), Resource(t.name(DLQ))),
        groups=(stage_group("fanout"),),  # no transactional id: it commits at least once (processors.fanout)
    )
    gateway = Role(  # publishes and reads on behalf of the department its token names
        "gateway",
        # the case views follow civic.cases, and the state log's report index
        reads=(Resource(t.name(FEED_PREFIX), PREFIXED), Resource(t.name(AUDIT)), Resource(t.name(CASES)), Resource(t.cases_changelog)),
        writes=(Resource(t.name(IN_PREFIX), PREFIXED), Resource(t.name(AUDIT))),
        # each department's HTTP read position, so the lag exporter shows HTTP readers
        groups=(stage_group("gateway"), *(Resource(t.department_group_prefix(d) + "gateway") for d in t.departments)),
    )
    simulator = Role("simulator", writes=(Resource(t.name(IN_PREFIX), PREFIXED),))  # the demo's city traffic
    operator = Role(  # `civicbus up` itself: `topics apply`, `reference load`, the lag exporter, `audit verify`
        "operator",
        reads=(Resource(t.name(AUDIT)),),
        writes=(Resource(t.name(REF_PREFIX), PREFIXED),),
        creates_any_topic=True,
        describes_topics=(_prefix_or_all(t.name("")),),
        describes_groups=(_prefix_or_all(t.group("")),),
    )
    return ingest, cases, fanout, gateway, simulator, operator


def role(topology: Topology, name: str) -> Role:
    return next(r for r in roles(topology) if r.name == name)
