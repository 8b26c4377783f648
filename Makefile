# streamsight developer entry points. `make` alone lists them.
SHELL := bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?= --timeout=600
# Integration tests in parallel processes (pytest-xdist); INTEGRATION_JOBS=0 runs them in one.
# The runs on Apache Kafka come after the others, fewer at once: each starts JVMs; the
# three-broker failover test (-m failover) last and alone: three JVMs under load.
INTEGRATION_JOBS ?= 3
KAFKA_JOBS ?= 2
# Alert-rule tests for promtool; `test` runs them as soon as such files exist.
PROMTOOL_TESTS := $(wildcard prometheus/*test*.yml prometheus/tests/*.yml)

# Debian packages the tests need (promtool, kcat); installed where missing, as root or by sudo.
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: help venv tools services test test-unit test-integration test-rules lint bench demo

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install streamsight with dev extras

# Reinstall only when the dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

tools: ## install promtool and kcat (Debian's prometheus and kcat) when they are missing
	@missing="$$(command -v promtool >/dev/null 2>&1 || echo prometheus) \
		$$(command -v kcat >/dev/null 2>&1 || echo kcat)"; \
	if [ -n "$${missing// /}" ]; then \
		$(APT_GET) update -qq && \
		$(APT_GET) install -y -qq --no-install-recommends $$missing </dev/null; \
	fi

services: venv ## make sure PostgreSQL answers and both brokers (Tansu, Apache Kafka) start
	$(PY) -m streams.local.embedded check

test: venv tools services ## everything: unit, integration (real broker + PostgreSQL), alert rules
	$(PY) -m pytest $(PYTEST_ARGS) -q tests/unit
	$(PY) -m pytest $(PYTEST_ARGS) -n $(INTEGRATION_JOBS) -q -m "not on_kafka" tests/integration
	$(PY) -m pytest $(PYTEST_ARGS) -n $(KAFKA_JOBS) -q -m "on_kafka and not failover" tests/integration
	$(PY) -m pytest $(PYTEST_ARGS) -q -s -m failover tests/integration
	@$(MAKE) --no-print-directory test-rules

test-unit: venv ## unit tests only: no services, seconds
	$(PY) -m pytest $(PYTEST_ARGS) -q tests/unit

test-integration: venv tools services ## integration tests only
	$(PY) -m pytest $(PYTEST_ARGS) -n $(INTEGRATION_JOBS) -q -m "not on_kafka" tests/integration
	$(PY) -m pytest $(PYTEST_ARGS) -n $(KAFKA_JOBS) -q -m "on_kafka and not failover" tests/integration
	$(PY) -m pytest $(PYTEST_ARGS) -q -s -m failover tests/integration

test-rules: tools ## promtool tests of the Prometheus alert rules (when there are any)
ifneq ($(strip $(PROMTOOL_TESTS)),)
	promtool check config prometheus/prometheus.yml
	promtool check rules prometheus/alerts.yml
	promtool test rules $(PROMTOOL_TESTS)
else
	@echo "no promtool rule tests yet"
endif

lint: venv ## ruff, mypy and the import-linter layer contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy streams agents
	$(VENV)/bin/lint-imports

# BROKER=tansu, kafka (Apache Kafka, one KRaft node) or both: every bench runs on each.
# The analyst and sink benches first, so that the batcher ratio lines stay last; all always
# run, and the target fails if any did.
BROKER ?= both
bench: venv ## throughput and latency benchmarks on Tansu and Apache Kafka (BROKER=tansu|kafka)
	failed=0; for broker in $(if $(filter both,$(BROKER)),tansu kafka,$(BROKER)); do \
		$(PY) bench/analyst.py --broker $$broker || failed=1; \
		$(PY) bench/sink.py --broker $$broker || failed=1; \
	done; $(PY) bench/run.py --broker $(BROKER) && exit $$failed

demo: venv ## embedded broker + PostgreSQL, a worker and sample traffic
	$(PY) -m streams.cli demo $(ARGS)
