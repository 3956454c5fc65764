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
.PHONY: help venv protos run up down migrate test lint bench faults clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

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
	$(PY) -m services.common.stack run

up: $(GEN_STAMP) ## start the whole network in the background, write .invo/dev.env
	$(PY) -m services.common.stack up

down: ## stop what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m services.common.stack down; fi

migrate: $(GEN_STAMP) ## apply every service's migrations to INVO_DATABASE_URL (or the embedded server)
	$(PY) -m services.common.stack migrate

test: $(GEN_STAMP) ## run every test against real PostgreSQL and NATS
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(GEN_STAMP) ## ruff and mypy (generated code excluded)
	$(BIN)/ruff check services tests tools bench faults
	$(BIN)/ruff format --check services tests tools bench faults
	$(BIN)/mypy

bench: $(GEN_STAMP) ## measure the network end to end
	$(PY) -m bench $(BENCH_ARGS)

faults: $(GEN_STAMP) ## the fault suite: every process killed in turn under load, nothing lost or doubled
	$(PY) -m faults $(FAULTS_ARGS)

clean: ## remove the venv, generated code and local data
	rm -rf $(VENV) $(GEN) .invo .mypy_cache .ruff_cache .pytest_cache
