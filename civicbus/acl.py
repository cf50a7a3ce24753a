"""Kafka ACLs for production: each principal may touch only its own topics and groups.

`plan` derives every binding from the topology (pure): a department writes only
civic.in.<itself>, reads only civic.feed.<itself>, and joins only consumer groups starting with
`dept.<itself>.`; each civicbus role (civicbus/roles.py: the stages, the gateway, the simulator,
the operator that runs `civicbus up`) gets exactly what its declaration says it does. `apply` sends them
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
from civicbus.roles import Resource, Role, roles
from civicbus.topology import Topology

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


def _grants(principal: str, operations: tuple[str, ...], resource: str, resources: tuple[Resource, ...]) -> list[Binding]:
    return [Binding(principal, op, resource, r.name, r.pattern) for r in resources for op in operations]


def role_bindings(role: Role) -> list[Binding]:
    """Exactly what the role's declaration says it does (civicbus/roles.py). Kafka implies
    DESCRIBE from READ and WRITE, and idempotent produce from WRITE on a topic; DESCRIBE is granted
    explicitly all the same, so the plan reads as what each principal may do."""
    p = role.principal
    bindings = _grants(p, (READ, DESCRIBE), "topic", role.reads) + _grants(p, (WRITE, DESCRIBE), "topic", role.writes)
    bindings += _grants(p, (READ,), "group", role.groups) + _grants(p, (WRITE, DESCRIBE), "transactional_id", role.transactional_ids)
    bindings += _grants(p, (CREATE,), "topic", role.creates)
    bindings += _grants(p, (DESCRIBE,), "topic", role.describes_topics) + _grants(p, (DESCRIBE,), "group", role.describes_groups)
    if role.creates_any_topic:
        bindings.append(Binding(p, CREATE, "cluster", "kafka-cluster"))
        bindings += _grants(p, ("DESCRIBE_CONFIGS",), "topic", role.describes_topics)
    return bindings


def plan(topology: Topology) -> list[Binding]:
    t = topology
    bindings: list[Binding] = []
    for department in t.departments:
        principal = f"User:{department}"
        bindings += _grants(principal, (WRITE, DESCRIBE), "topic", (Resource(t.inbound(department)),))
        bindings += _grants(principal, (READ, DESCRIBE), "topic", (Resource(t.feed(department)),))
        bindings.append(Binding(principal, READ, "group", t.department_group_prefix(department), "PREFIXED"))
    for role in roles(topology):
        bindings += role_bindings(role)
    return sorted(set(bindings))


def principals(topology: Topology) -> list[str]:
    """Every principal the plan names: each needs a SASL/SCRAM credential on the cluster."""
    return sorted({b.principal for b in plan(topology)})


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
