#!/bin/bash
# Start one Kafka node of docker-compose.yml: render server.properties, format the KRaft storage
# once with the SCRAM credentials of the infrastructure principals, then run the broker.
# Department principals and their ACLs are added later by `civicbus acl apply` (acl-init service).
set -euo pipefail
: "${KAFKA_NODE_ID:?}" "${KAFKA_EXTERNAL_PORT:?}" "${KAFKA_CLUSTER_ID:?}"
: "${KAFKA_ADMIN_PASSWORD:?}" "${KAFKA_CONTROLLER_PASSWORD:?}" "${CIVICBUS_KAFKA_PASSWORD:?}" "${SCHEMA_REGISTRY_KAFKA_PASSWORD:?}"

config=/tmp/server.properties
sed -e "s|\${KAFKA_NODE_ID}|${KAFKA_NODE_ID}|g" \
    -e "s|\${KAFKA_EXTERNAL_PORT}|${KAFKA_EXTERNAL_PORT}|g" \
    -e "s|\${KAFKA_ADMIN_PASSWORD}|${KAFKA_ADMIN_PASSWORD}|g" \
    -e "s|\${KAFKA_CONTROLLER_PASSWORD}|${KAFKA_CONTROLLER_PASSWORD}|g" \
    /opt/civicbus/server.properties > "$config"

/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$KAFKA_CLUSTER_ID" -c "$config" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]" \
  --add-scram "SCRAM-SHA-512=[name=civicbus,password=${CIVICBUS_KAFKA_PASSWORD}]" \
  --add-scram "SCRAM-SHA-512=[name=schema-registry,password=${SCHEMA_REGISTRY_KAFKA_PASSWORD}]"

exec /opt/kafka/bin/kafka-server-start.sh "$config"
