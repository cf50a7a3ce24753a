"""Kafka's StandardAuthorizer (KRaft) decision rules, for checking an ACL plan without a cluster.

As org.apache.kafka.metadata.authorizer.StandardAuthorizer decides, with
allow.everyone.if.no.acl.found=false: super users may do anything; otherwise a request is
refused unless an ALLOW binding matches and no DENY binding does (DENY beats ALLOW). A binding
matches when its resource type is the request's, its pattern covers the name (LITERAL equal,
LITERAL `*` any name, PREFIXED a prefix of it), its principal is the request's or `User:*`, its
host is the request's or `*`, and its operation is the request's or ALL. READ, WRITE, DELETE and
ALTER imply DESCRIBE, and ALTER_CONFIGS implies DESCRIBE_CONFIGS, for ALLOW bindings only.
Idempotent produce (InitProducerId without a transactional id) is allowed by IDEMPOTENT_WRITE on
the cluster or, since Kafka 2.8 (KIP-679), by WRITE on any topic. CreateTopics is allowed by
CREATE on the cluster or on the topic (the broker's request handler asks both).
"""

from __future__ import annotations

from dataclasses import dataclass

IMPLIES = {"DESCRIBE": {"READ", "WRITE", "DELETE", "ALTER"}, "DESCRIBE_CONFIGS": {"ALTER_CONFIGS"}}
CLUSTER_NAME = "kafka-cluster"


@dataclass(frozen=True)
class Acl:
    principal: str
    operation: str
    resource: str  # topic, group, transactional_id, cluster
    name: str
    pattern: str = "LITERAL"
    permission: str = "ALLOW"
    host: str = "*"

    def __post_init__(self):
        if not self.name:
            raise ValueError(f"{self}: Kafka refuses an empty resource name")
        if self.pattern == "PREFIXED" and self.name == "*":
            raise ValueError(f"{self}: `*` is a wildcard only as a LITERAL pattern")
        if self.resource == "cluster" and self.name != CLUSTER_NAME:
            raise ValueError(f"{self}: the cluster resource is named {CLUSTER_NAME}")

    def covers(self, name: str) -> bool:
        if self.pattern == "PREFIXED":
            return name.startswith(self.name)
        return self.name == "*" or self.name == name

    def grants(self, operation: str) -> bool:
        if self.operation in ("ALL", operation):
            return True
        return self.permission == "ALLOW" and self.operation in IMPLIES.get(operation, ())


@dataclass(frozen=True)
class Request:
    principal: str
    operation: str
    resource: str
    name: str
    why: str  # the Kafka request and the client that sends it
    host: str = "10.0.0.7"


class StandardAuthorizer:
    def __init__(self, acls: list[Acl], super_users: set[str] = frozenset()):
        self.acls = acls
        self.super_users = super_users

    def _matching(self, request: Request, resource: str, permission: str) -> list[Acl]:
        return [a for a in self.acls if a.permission == permission and a.resource == resource
                and a.principal in (request.principal, "User:*") and a.host in (request.host, "*")]

    def allows(self, request: Request) -> bool:
        if request.principal in self.super_users:
            return True
        if request.operation == "IDEMPOTENT_WRITE" and request.resource == "cluster":
            return self._allows_one(request) or self._writes_some_topic(request)
        if request.operation == "CREATE" and request.resource == "topic":
            on_cluster = Request(request.principal, "CREATE", "cluster", CLUSTER_NAME, request.why, request.host)
            return self._allows_one(on_cluster) or self._allows_one(request)
        return self._allows_one(request)

    def _allows_one(self, request: Request) -> bool:
        matches = lambda permission: [a for a in self._matching(request, request.resource, permission)
                                      if a.covers(request.name) and a.grants(request.operation)]
        return not matches("DENY") and bool(matches("ALLOW"))

    def _writes_some_topic(self, request: Request) -> bool:
        """authorizeByResourceType(WRITE, TOPIC): some ALLOW for WRITE on a topic, not denied on all topics."""
        denied_everywhere = any(a.grants("WRITE") and a.pattern == "LITERAL" and a.name == "*"
                                for a in self._matching(request, "topic", "DENY"))
        return not denied_everywhere and any(a.grants("WRITE") for a in self._matching(request, "topic", "ALLOW"))
