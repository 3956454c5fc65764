# One Makefile for humans and CI. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
GEN    := gen
PROTOS := $(wildcard protos/invo/v1/*.proto)
GEN_STAMP := $(GEN)/.stamp

.DEFAULT_GOAL := help
.PHONY: help venv protos run up down migrate test lint k8s-check bench faults clean chromium

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml tools/install.py
	$(PYTHON) -m venv $(VENV)
	$(PY) tools/install.py
	@touch $@

venv: $(STAMP) ## create .venv with the pinned dependencies

$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --grpc_python_out=$(GEN) \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	@touch $@

protos: $(GEN_STAMP) ## generate the protobuf and gRPC code into gen/

run: $(GEN_STAMP) ## start the whole network in the foreground (Ctrl-C stops it)
	$(PY) -m devstack.stack run

up: $(GEN_STAMP) ## start the whole network in the background, write .invo/dev.env
	$(PY) -m devstack.stack up

down: ## stop what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m devstack.stack down; fi

migrate: $(GEN_STAMP) ## apply every service's migrations to INVO_DATABASE_URL (or the embedded server)
	$(PY) -m devstack.stack migrate

# The browser tests drive Debian's Chromium. As root with apt-get it is installed when missing;
# otherwise `make test` stops at once and says what to install: browser tests are never skipped.
CHROMIUM ?= /usr/bin/chromium

chromium:
	@if [ ! -x "$(CHROMIUM)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests (apt-get install chromium)..."; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	fi
	@if [ ! -x "$(CHROMIUM)" ]; then \
		echo "The browser tests need Chromium at $(CHROMIUM): install Debian's package (sudo apt-get install chromium), or set CHROMIUM=/path/to/chromium." >&2; \
		exit 1; \
	fi

# axe-core (from the npm registry, pinned) checks the checkout page's accessibility in the browser
# tests; it is installed into the venv's own folder, never into the repository.
AXE_VERSION := 4.14.1
AXE_DIR := $(VENV)/npm
AXE_JS := $(AXE_DIR)/node_modules/axe-core/axe.min.js

$(AXE_JS):
	@command -v npm >/dev/null || { echo "The accessibility tests need npm (Node.js) to fetch axe-core $(AXE_VERSION)." >&2; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(AXE_DIR) axe-core@$(AXE_VERSION) >/dev/null
	@test -f $@

test: $(GEN_STAMP) chromium $(AXE_JS) ## run every test against real PostgreSQL and NATS, and the browser tests in headless Chromium
	INVO_CHROMIUM=$(CHROMIUM) INVO_AXE_JS=$(AXE_JS) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(GEN_STAMP) ## ruff and mypy (generated code excluded)
	$(BIN)/ruff check services devstack invoctl tests tools bench faults
	$(BIN)/ruff format --check services devstack invoctl tests tools bench faults
	$(BIN)/mypy

k8s-check: $(STAMP) ## render the k8s/ overlays with kustomize, validate them strictly, check them (tools/k8s_check.py)
	$(PY) tools/k8s_check.py

bench: $(GEN_STAMP) ## measure the network end to end
	$(PY) -m bench $(BENCH_ARGS)

faults: $(GEN_STAMP) ## the fault suite: every process killed in turn under load, nothing lost or doubled
	$(PY) -m faults $(FAULTS_ARGS)

clean: ## remove the venv, generated code and local data
	rm -rf $(VENV) $(GEN) .invo .mypy_cache .ruff_cache .pytest_cache
