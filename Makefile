# The CI steps are these targets; .ci/run calls the same ones a newcomer runs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROTOS  := $(wildcard protos/aral/v1/*.proto)
# Bytecode is cached (__pycache__/, ignored by git) even where the environment says
# not to: the suite starts some hundreds of Python processes (the CLI, nodes), and
# each compiling the package from source took 0.5 s more (README, "Make targets").
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help venv browser etcd mcp-conformance run test test-min gen gen-check lint typecheck check bench clean

help:
	@echo "make run        set up and start a demo node (gRPC :50051, HTTP :8080)"
	@echo "make test       set up and run the whole test suite"
	@echo "make gen        regenerate gen/ from protos/"
	@echo "make gen-check  fail if gen/ differs from what protos/ generate"
	@echo "make test-min   the suite with every dependency at its declared minimum"
	@echo "make lint typecheck check bench"
	@echo "make browser    install Debian's Chromium for the /ui page test (root, apt)"
	@echo "make etcd       install Debian's etcd-server for the etcd tests (root, apt)"
	@echo "make mcp-conformance  install the official MCP conformance suite (npm)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/aralnode run --name demo --load examples/demo.py --discovery none --a2a-default-skill demo.echo $(ARGS)

# The /ui page test's browser: Debian's Chromium, installed where this is root on a
# machine with apt; elsewhere tests/test_ui.py skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian's) for the /ui page test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the /ui page test will skip"; \
	  else echo "no chromium and no way to install it: the /ui page test will skip"; fi; }

# The etcd tests' server (tests/etcd_cluster.py starts a 3-member cluster on
# loopback): Debian's etcd-server, installed where this is root on a machine with apt;
# elsewhere those tests skip and say why.
etcd:
	@command -v etcd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing etcd (Debian's etcd-server) for the etcd discovery tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null) \
	      || echo "etcd could not be installed: the etcd tests will skip"; \
	  else echo "no etcd and no way to install it: the etcd tests will skip"; fi; }

# The official MCP conformance suite (tests/test_mcp_conformance.py runs its server
# scenarios against a node): @modelcontextprotocol/conformance from the npm registry,
# pinned, under .cache/, with a Node.js of 22 or newer from the registry where the
# machine's is older; without npm the test skips and says why.
MCPCONF         := .cache/mcp-conformance
MCPCONF_VERSION := 0.1.16
MCPCONF_NODE    := 22.23.5
mcp-conformance:
	@test -x $(MCPCONF)/conformance-$(MCPCONF_VERSION) || { \
	  if command -v npm >/dev/null 2>&1; then \
	    echo "installing the MCP conformance suite $(MCPCONF_VERSION) (npm)"; \
	    mkdir -p $(MCPCONF) && node=node; \
	    major=$$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0); \
	    case $$(uname -m) in x86_64) arch=x64;; aarch64) arch=arm64;; *) arch=$$(uname -m);; esac; \
	    if [ "$$major" -lt 22 ]; then node=$$PWD/$(MCPCONF)/node_modules/node-linux-$$arch/bin/node; \
	      extra=node-linux-$$arch@$(MCPCONF_NODE); else extra=; fi; \
	    if npm install --silent --no-audit --no-fund --prefix $(MCPCONF) \
	        @modelcontextprotocol/conformance@$(MCPCONF_VERSION) $$extra >/dev/null; then \
	      printf '#!/bin/sh\nexec "%s" "%s" "$$@"\n' "$$node" \
	        "$$PWD/$(MCPCONF)/node_modules/@modelcontextprotocol/conformance/dist/index.js" \
	        > $(MCPCONF)/conformance-$(MCPCONF_VERSION); \
	      chmod +x $(MCPCONF)/conformance-$(MCPCONF_VERSION); \
	    else echo "the MCP conformance suite could not be installed: its test will skip"; fi; \
	  else echo "no npm: the MCP conformance test will skip"; fi; }

# The suite in PYTEST_WORKERS processes (pytest-xdist), a test module to a worker
# (its module fixtures start once); PYTEST_WORKERS=0 runs it in this one.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadscope)

test: $(STAMP) browser etcd mcp-conformance
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The declared lower bounds, installed and tested in a venv of their own (CI runs it).
MINVENV ?= .venv-min
test-min: $(STAMP) browser etcd mcp-conformance
	rm -rf $(MINVENV)
	$(PY) -m venv $(MINVENV)
	$(BIN)/python scripts/min_constraints.py > $(MINVENV)/constraints.txt
	$(MINVENV)/bin/python -m pip install --quiet --upgrade pip
	$(MINVENV)/bin/python -m pip install --quiet -c $(MINVENV)/constraints.txt -e '.[dev]'
	$(MINVENV)/bin/python -m pytest -q -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

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

bench: $(STAMP) etcd
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MINVENV) .cache .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv*' -prune -exec rm -rf {} +
