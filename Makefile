# The CI steps are these targets; .ci/run calls the same ones a newcomer runs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROTOS  := $(wildcard protos/aral/v1/*.proto)

.PHONY: help venv run test gen gen-check lint typecheck check bench clean

help:
	@echo "make run        set up and start a demo node (gRPC :50051, HTTP :8080)"
	@echo "make test       set up and run the whole test suite"
	@echo "make gen        regenerate gen/ from protos/"
	@echo "make gen-check  fail if gen/ differs from what protos/ generate"
	@echo "make lint typecheck check bench"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/aralnode run --name demo --load examples/demo.py --discovery none $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

gen: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

gen-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

lint: $(STAMP)
	$(BIN)/ruff check aralnode tests bench examples scripts
	$(BIN)/ruff format --check aralnode

typecheck: $(STAMP)
	$(BIN)/mypy

check: gen-check lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
