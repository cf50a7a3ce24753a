# The civicbus image of docker-compose.yml: every civicbus command, installed from this checkout.
FROM python:3.11.11-slim-bookworm
WORKDIR /opt/civicbus
COPY pyproject.toml README.md ./
COPY civicbus ./civicbus
COPY producers ./producers
COPY processors ./processors
COPY consumers ./consumers
COPY schemas ./schemas
COPY config ./config
# Editable, so the settings' defaults (config/, schemas/) point into /opt/civicbus.
RUN pip install --no-cache-dir -e . && useradd --system --home-dir /var/lib/civicbus --create-home civicbus \
    && mkdir -p /opt/civicbus/.civicbus && chown civicbus /opt/civicbus/.civicbus
USER civicbus
ENTRYPOINT ["civicbus"]
