#!/bin/bash
# Start one Kafka node of docker-compose.yml: render server.properties, format the KRaft storage
# once with the SCRAM credentials of every principal, then run the broker.
# Principals: the infrastructure's (admin, schema-registry) and every one `civicbus acl plan` names,
# read from principals.txt (`civicbus acl principals`). A principal's password comes from
# KAFKA_PASSWORD_<NAME> (upper case, . and - as _), e.g. KAFKA_PASSWORD_CIVICBUS_INGEST, else the
# development default <name>-secret. Credentials are added when the storage is first formatted.
# Their ACLs come later from `civicbus acl apply` (the civicbus-acls service).
set -euo pipefail
: "${KAFKA_NODE_ID:?}" "${KAFKA_EXTERNAL_PORT:?}" "${KAFKA_CLUSTER_ID:?}"
: "${KAFKA_ADMIN_PASSWORD:?}" "${KAFKA_CONTROLLER_PASSWORD:?}" "${SCHEMA_REGISTRY_KAFKA_PASSWORD:?}"
here=$(dirname "$0")
kafka_home=${KAFKA_HOME:-/opt/kafka}

config=/tmp/server.properties
sed -e "s|\${KAFKA_NODE_ID}|${KAFKA_NODE_ID}|g" \
    -e "s|\${KAFKA_EXTERNAL_PORT}|${KAFKA_EXTERNAL_PORT}|g" \
    -e "s|\${KAFKA_ADMIN_PASSWORD}|${KAFKA_ADMIN_PASSWORD}|g" \
    -e "s|\${KAFKA_CONTROLLER_PASSWORD}|${KAFKA_CONTROLLER_PASSWORD}|g" \
    "$here/server.properties" > "$config"

scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]"
       --add-scram "SCRAM-SHA-512=[name=schema-registry,password=${SCHEMA_REGISTRY_KAFKA_PASSWORD}]")
while read -r name; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  variable="KAFKA_PASSWORD_$(tr 'a-z.-' 'A-Z__' <<<"$name")"
  scram+=(--add-scram "SCRAM-SHA-512=[name=${name},password=${!variable:-${name}-secret}]")
done < "$here/principals.txt"

"$kafka_home/bin/kafka-storage.sh" format --ignore-formatted -t "$KAFKA_CLUSTER_ID" -c "$config" "${scram[@]}"

exec "$kafka_home/bin/kafka-server-start.sh" "$config"
