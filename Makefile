# Two commands matter: `make run` (the whole local stack with demo data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup browser run test lint bench chaos conformance solution clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Debian's headless Chromium and its WebDriver, for the operator page's browser test
## (tests/e2e/test_operator_page_e2e.py); installed with apt when missing (as root, or with sudo).
## Where tests/support/webdriver.py looks for them (tests/unit/test_setup.py checks both).
CHROMIUM_BINARY ?= /usr/bin/chromium
CHROMEDRIVER_BINARY ?= /usr/bin/chromedriver
browser:
	@if [ ! -x $(CHROMIUM_BINARY) ] || [ ! -x $(CHROMEDRIVER_BINARY) ]; then \
	  command -v apt-get >/dev/null || { echo "install Chromium and chromedriver as $(CHROMIUM_BINARY) and $(CHROMEDRIVER_BINARY) (Debian: chromium chromium-driver)"; exit 1; }; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver && \
	  { [ -x $(CHROMIUM_BINARY) ] && [ -x $(CHROMEDRIVER_BINARY) ] || \
	    { echo "apt installed chromium and chromium-driver, but $(CHROMIUM_BINARY) or $(CHROMEDRIVER_BINARY) is still missing: the browser test needs both there"; exit 1; }; }; \
	fi

## Azurite + Dataverse and BC sandboxes + the dev host, with demo data, syncing live. Ctrl-C stops all.
run: setup
	$(PY) -m devstack up

## The whole test suite (starts and stops its own Azurite and sandboxes), in TEST_WORKERS processes:
## each runs whole test files and starts its own Azurite and sandboxes on free ports. Most tests wait
## on servers rather than the CPU, so three processes pay off on two cores (7 min instead of 14).
TEST_WORKERS ?= 3
test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared sync_functions function_app.py

bench: setup
	$(PY) -m bench

## The Sales-side Dataverse solution as an importable zip in dist/ (docs/sales-solution.md).
solution: setup
	$(PY) -m bcsync pack-solution --out dist

## Random edits on both sides under injected faults, two dev hosts, one killed with SIGKILL; then
## every coupled pair compared. Exit 1 on divergence, duplicates or lost updates. See bench/chaos.py.
CHAOS_ARGS ?= --seed 1 --edits 400 --seconds 90
chaos: setup
	$(PY) -m bench.chaos $(CHAOS_ARGS)

## Third-party clients against the sandboxes (tests/conformance/third_party; README, Development):
## bc-cli and python-odata against the BC sandbox, Airbyte's Dataverse source against the Dataverse
## sandbox. Their packages go into .venv-conformance and .venv-airbyte, never into .venv.
CONFORMANCE_VENV := .venv-conformance
AIRBYTE_VENV := .venv-airbyte

$(CONFORMANCE_VENV)/.installed: requirements.txt requirements-dev.txt requirements-conformance.txt
	test -x $(CONFORMANCE_VENV)/bin/python || $(PYTHON) -m venv $(CONFORMANCE_VENV)
	$(CONFORMANCE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-conformance.txt
	touch $@

$(AIRBYTE_VENV)/.installed: requirements-airbyte.txt
	test -x $(AIRBYTE_VENV)/bin/python || $(PYTHON) -m venv $(AIRBYTE_VENV)
	$(AIRBYTE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-airbyte.txt
	touch $@

conformance: $(CONFORMANCE_VENV)/.installed $(AIRBYTE_VENV)/.installed
	BCSYNC_CONFORMANCE=1 AIRBYTE_SOURCE_DATAVERSE=$(CURDIR)/$(AIRBYTE_VENV)/bin/source-microsoft-dataverse \
		$(CONFORMANCE_VENV)/bin/python -m pytest -p no:cacheprovider tests/conformance/third_party

clean:
	rm -rf $(VENV) $(CONFORMANCE_VENV) $(AIRBYTE_VENV) node_modules .pytest_cache .ruff_cache .hypothesis
