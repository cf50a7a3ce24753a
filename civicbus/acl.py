"""Kafka ACLs for production: each principal may touch only its own topics and groups.

`plan` derives every binding from the topology (pure): a department writes only
civic.in.<itself>, reads only civic.feed.<itself>, and joins only consumer groups starting with
`dept.<itself>.`; each processor and the gateway get exactly what their stage reads and writes;
the operator principal may describe everything (lag exporter, `topics apply`). `apply` sends them
with AdminClient.create_acls to a real Kafka. The embedded broker (Tansu) has no ACLs, and an
ACL request makes librdkafka abort there, so `apply` refuses it before sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from civicbus.kafka import make_admin
from civicbus.topology import AUDIT, CASES, DIST_EVENTS, DLQ, FEED_PREFIX, IN_PREFIX, PIPE_CASES, REF_PREFIX, Topology

EMBEDDED_CLUSTER_ID_PREFIX = "tansu"

READ, WRITE, DESCRIBE, CREATE, ALL = "READ", "WRITE", "DESCRIBE", "CREATE", "ALL"


_RESOURCE_TYPES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER,  # Kafka's cluster resource, named kafka-cluster
}


@dataclass(frozen=True, order=True)
class Binding:
    principal: str  # e.g. User:citymgmt
    operation: str  # READ, WRITE, DESCRIBE, CREATE, ALL
    resource: str  # topic, group, transactional_id, cluster
    name: str
    pattern: str = "LITERAL"  # or PREFIXED

    def __str__(self) -> str:
        return f"{self.principal:<28} ALLOW {self.operation:<9} {self.resource:<16} {self.pattern:<8} {self.name}"

    def to_kafka(self) -> AclBinding:
        return AclBinding(
            _RESOURCE_TYPES[self.resource],
            self.name,
            getattr(ResourcePatternType, self.pattern),
            self.principal,
            "*",
            getattr(AclOperation, self.operation),
            AclPermissionType.ALLOW,
        )


def _reads(principal: str, resource: str, name: str, pattern: str = "LITERAL") -> list[Binding]:
    return [Binding(principal, op, resource, name, pattern) for op in (READ, DESCRIBE)]


def _writes(principal: str, name: str, pattern: str = "LITERAL") -> list[Binding]:
    return [Binding(principal, op, "topic", name, pattern) for op in (WRITE, DESCRIBE)]


def _transactional(principal: str, prefix: str) -> list[Binding]:
    return [Binding(principal, op, "transactional_id", prefix, "PREFIXED") for op in (WRITE, DESCRIBE)]


def plan(topology: Topology) -> list[Binding]:
    t = topology
    bindings: list[Binding] = []
    for department in t.departments:
        principal = f"User:{department}"
        bindings += _writes(principal, t.inbound(department))
        bindings += _reads(principal, "topic", t.feed(department))
        bindings.append(Binding(principal, READ, "group", t.department_group_prefix(department), "PREFIXED"))
    ingest = "User:civicbus-ingest"
    bindings += _reads(ingest, "topic", t.name(IN_PREFIX), "PREFIXED") + _reads(ingest, "topic", t.name(REF_PREFIX), "PREFIXED")
    bindings += _writes(ingest, t.name(PIPE_CASES)) + _writes(ingest, t.name(DIST_EVENTS)) + _writes(ingest, t.name(DLQ))
    bindings += [Binding(ingest, READ, "group", t.group("civicbus-ingest"))] + _transactional(ingest, t.group("civicbus-ingest"))
    cases = "User:civicbus-cases"
    bindings += _reads(cases, "topic", t.name(PIPE_CASES)) + _writes(cases, t.name(PIPE_CASES))  # its clock records
    bindings += _writes(cases, t.name(DIST_EVENTS)) + _writes(cases, t.name(DLQ))
    bindings += _reads(cases, "topic", t.cases_changelog) + _writes(cases, t.cases_changelog) + _writes(cases, t.name(CASES))
    bindings += [Binding(cases, READ, "group", t.group("civicbus-cases"), "PREFIXED")] + _transactional(cases, t.group("civicbus-cases"))
    fanout = "User:civicbus-fanout"
    bindings += _reads(fanout, "topic", t.name(DIST_EVENTS)) + _reads(fanout, "topic", t.name(FEED_PREFIX), "PREFIXED")  # its restore
    bindings += _writes(fanout, t.name(FEED_PREFIX), "PREFIXED") + _writes(fanout, t.name(AUDIT))
    bindings += _writes(fanout, t.name(DLQ)) + [Binding(fanout, READ, "group", t.group("civicbus-fanout"), "PREFIXED")]
    bindings += _transactional(fanout, t.group("civicbus-fanout"))
    gateway = "User:civicbus-gateway"  # publishes and reads on behalf of the department its token names
    bindings += _writes(gateway, t.name(IN_PREFIX), "PREFIXED") + _reads(gateway, "topic", t.name(FEED_PREFIX), "PREFIXED")
    bindings += _writes(gateway, t.name(AUDIT)) + [Binding(gateway, READ, "group", t.group("civicbus-gateway"), "PREFIXED")]
    bindings += _reads(gateway, "topic", t.name(CASES)) + _reads(gateway, "topic", t.cases_changelog)  # the case views; report index
    operator = "User:civicbus-operator"  # lag exporter, `topics apply`, `reference load`
    bindings += [Binding(operator, DESCRIBE, "topic", t.name("civic."), "PREFIXED"), Binding(operator, DESCRIBE, "group", t.group(""), "PREFIXED")]
    bindings += [Binding(operator, CREATE, "cluster", "kafka-cluster"), Binding(operator, "DESCRIBE_CONFIGS", "topic", t.name("civic."), "PREFIXED")]
    bindings += _writes(operator, t.name(REF_PREFIX), "PREFIXED")
    return sorted(set(bindings))


def is_embedded(bootstrap: str) -> bool:
    metadata = make_admin(bootstrap).list_topics(timeout=10)
    return (metadata.cluster_id or "").startswith(EMBEDDED_CLUSTER_ID_PREFIX)


def apply(admin: AdminClient, bindings: list[Binding], timeout_s: float = 30.0) -> list[str]:
    """Create the bindings (idempotent on Kafka); return the failures, empty when all applied."""
    futures = admin.create_acls([b.to_kafka() for b in bindings], request_timeout=timeout_s)
    failures = []
    for binding, future in futures.items():
        try:
            future.result()
        except Exception as e:  # KafkaException: authorizer missing, not authorised, ...
            failures.append(f"{binding}: {e}")
    return failures
