#!/bin/bash
# ACLs for the infrastructure principals of docker-compose.yml (run once by the kafka-acls service,
# as the admin super user). The bus's own bindings (departments and every civicbus role, the lag
# exporter's among them) come from `civicbus acl plan|apply`, which the civicbus-acls service runs next.
set -euo pipefail
: "${KAFKA_ADMIN_PASSWORD:?}"
bootstrap=kafka1:9092,kafka2:9092,kafka3:9092
admin=/tmp/admin.properties
cat > "$admin" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
PROPS
acls() { /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap" --command-config "$admin" --add "$@"; }

# Confluent Schema Registry keeps its schemas in the compacted _schemas topic.
acls --allow-principal User:schema-registry --operation All --topic _schemas
acls --allow-principal User:schema-registry --operation All --group schema-registry
acls --allow-principal User:schema-registry --operation DescribeConfigs --topic __consumer_offsets
