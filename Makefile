# The two commands: `make demo` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv tools console-vendor up down status demo worker test test-unit test-integration test-e2e test-faults lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The infrastructure checks' tools (tests/infra): promtool from Debian's prometheus package,
# and checkov in a venv of its own (its pins would fight the project's). terraform and its
# AWS provider mirror come with the machine; tests/infra fails saying so when they do not.
TOOLS           := .venv-tools
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP   := $(TOOLS)/.checkov-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

# The console's browser tests (tests/e2e/test_console.py) drive Debian's Chromium through
# Playwright from PyPI: never Playwright's own browser download.
tools: $(CHECKOV_STAMP)
	command -v promtool >/dev/null || (apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus)
	test -x /usr/bin/chromium || (apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

# The console's charting library, from the npm registry, committed under its static files
# so neither a run nor a test needs npm or the internet. Run this to change its version.
CHARTJS_VERSION := 4.6.1
CONSOLE_VENDOR  := query_api/console/static/vendor
console-vendor:
	rm -rf .npm-pack && mkdir .npm-pack
	cd .npm-pack && npm pack -q chart.js@$(CHARTJS_VERSION) && tar xzf chart.js-$(CHARTJS_VERSION).tgz
	cp .npm-pack/package/dist/chart.umd.min.js $(CONSOLE_VENDOR)/chart.umd.min.js
	cp .npm-pack/package/LICENSE.md $(CONSOLE_VENDOR)/chart.js-LICENSE.md
	cd $(CONSOLE_VENDOR) && sha256sum chart.umd.min.js > SHA256SUMS && echo "chart.js $(CHARTJS_VERSION)" > VERSION
	rm -rf .npm-pack

up: venv
	$(BIN)/leadscore services up

down:
	-$(BIN)/leadscore demo --down
	$(BIN)/leadscore services down

status: venv
	$(BIN)/leadscore services status

demo: up
	$(BIN)/leadscore demo

worker: up
	$(BIN)/leadscore worker

# The test session starts the services it needs itself (tests/conftest.py).
test: venv tools
	$(BIN)/pytest

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: venv
	$(BIN)/pytest tests/integration

test-e2e: venv
	$(BIN)/pytest tests/e2e

# Workers and services killed and restarted mid-stream; CI runs these too.
test-faults: venv
	$(BIN)/pytest -m faults tests/faults -s

# Benchmarks print medians of several runs and a ratio to a peer measured in the same run;
# results are appended to bench/results/. Never part of `make test`.
bench: up
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python -m bench.scoring
	$(BIN)/python -m bench.explain
	$(BIN)/python -m bench.api
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.idle
	$(BIN)/python -m bench.replay
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.own_data
	$(BIN)/python -m bench.privacy

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
