# Two commands matter: `make run` (the whole local stack with demo data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup browser run test lint bench chaos clean

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
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  command -v apt-get >/dev/null || { echo "install Chromium and chromedriver at /usr/bin (Debian: chromium chromium-driver)"; exit 1; }; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	fi

## Azurite + Dataverse and BC sandboxes + the dev host, with demo data, syncing live. Ctrl-C stops all.
run: setup
	$(PY) -m devstack up

## The whole test suite (starts and stops its own Azurite and sandboxes).
test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared sync_functions function_app.py

bench: setup
	$(PY) -m bench

## Random edits on both sides under injected faults, two dev hosts, one killed with SIGKILL; then
## every coupled pair compared. Exit 1 on divergence, duplicates or lost updates. See bench/chaos.py.
CHAOS_ARGS ?= --seed 1 --edits 400 --seconds 90
chaos: setup
	$(PY) -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .hypothesis
