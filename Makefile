# civicbus: `make run` starts the whole bus with the simulator; `make test` runs the suite.
# Both create .venv and install everything they need from a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install run test test-fast bench clean prometheus asyncapi-parser chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(BIN)/civicbus up --simulate 20

# --durations: the suite must stay under 15 minutes on CI's 2 cores; the slowest tests are where to look.
test: install prometheus asyncapi-parser chromium
	$(BIN)/python -m pytest -p no:cacheprovider -q --durations=15

# promtool, the Prometheus server and Alertmanager (Debian packages `prometheus` and
# `prometheus-alertmanager`): the alerting-rule unit tests, the lag test against a real Prometheus
# and the alert-to-webhook test need them. CI is a fresh Debian machine as root.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager; }

# The official AsyncAPI parser (npm, version pinned by tests/asyncapi/package-lock.json): the
# gateway's /v1/asyncapi.json is checked with it. node and npm come from Debian when missing.
ASYNCAPI := tests/asyncapi
asyncapi-parser: $(ASYNCAPI)/node_modules/.package-lock.json

$(ASYNCAPI)/node_modules/.package-lock.json: $(ASYNCAPI)/package-lock.json
	@command -v npm >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm; }
	npm ci --prefix $(ASYNCAPI) --no-audit --no-fund --loglevel=error
	touch $@

# Debian's chromium and a CJK font: the console test drives it headless through Playwright
# (which must not download a browser of its own) and keeps a screenshot.
chromium:
	@command -v chromium >/dev/null && dpkg -s fonts-wqy-zenhei >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-wqy-zenhei; }

bench: install
	$(BIN)/python -m benchmarks all

clean:
	rm -rf $(VENV) .civicbus
