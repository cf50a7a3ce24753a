#!/bin/bash
# Start the Schema Registry of docker-compose.yml with HTTP basic authentication: write the
# password file jaas.conf names (Jetty PropertyFileLoginModule: `user: password,role`), then run
# the image's own entrypoint. `schemas-admin` loads the lock (`civicbus schemas push`); the
# civicbus services and departments' tools read as `civicbus`.
set -euo pipefail
: "${SCHEMA_REGISTRY_ADMIN_PASSWORD:?}" "${SCHEMA_REGISTRY_CIVICBUS_PASSWORD:?}"

umask 077
cat > /tmp/schema-registry.passwords <<PASSWORDS
schemas-admin: ${SCHEMA_REGISTRY_ADMIN_PASSWORD},admin
civicbus: ${SCHEMA_REGISTRY_CIVICBUS_PASSWORD},reader
PASSWORDS

exec /etc/confluent/docker/run
