# modelship — developer entry points. `make test` works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins old versions of common packages: it gets a virtualenv of its own.
CHECKOV := $(VENV)/checkov/bin/checkov

.PHONY: help setup system-deps test lint demo e2e bench-operator clean locks sync protos
.DEFAULT_GOAL := help

## help: list these targets with what they do (also what a bare `make` does)
help:
	@echo "modelship: make TARGET (needs Python $$(sed -n 's/^requires-python = "\(.*\)"/\1/p' operator/pyproject.toml))"
	@awk '/^## [a-z][a-z0-9-]*: / { if (t != "") printf "  %-16s %s\n", t, d; \
	        t = $$2; sub(/:$$/, "", t); d = $$0; sub(/^## [a-z0-9-]+: /, "", d); next } \
	      /^## / { if (t != "") { sub(/^## /, ""); d = d " " $$0 }; next } \
	      { if (t != "") printf "  %-16s %s\n", t, d; t = "" } \
	      END { if (t != "") printf "  %-16s %s\n", t, d }' $(firstword $(MAKEFILE_LIST))

# The two distributions (operator/, runtime/) editable, and the dev group of pyproject.toml.
# `modelship` was the single distribution before the split (and is another project's on PyPI).
$(STAMP): pyproject.toml operator/pyproject.toml runtime/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and \
	  f"modelship needs Python >= 3.11; $(PYTHON) is {sys.version.split()[0]} (make PYTHON=python3.11 ...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/pip uninstall --quiet --yes modelship
	$(BIN)/pip install --quiet -e ./operator -e ./runtime --group dev
	touch $(STAMP)

$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet 'checkov>=3.2,<4'

# Node's gRPC client of the gRPC interop test (tests/runtime/test_grpc_interop.py)
GRPCJS := tests/runtime/grpcjs
GRPCJS_STAMP := $(GRPCJS)/node_modules/.installed

$(GRPCJS_STAMP): $(GRPCJS)/package.json $(GRPCJS)/package-lock.json
	@if command -v npm >/dev/null; then \
	  npm ci --prefix $(GRPCJS) --ignore-scripts --silent --no-audit --no-fund && touch $(GRPCJS_STAMP); \
	else \
	  echo "npm missing: the grpc-js interop test will skip (make setup as root installs it)"; \
	fi

## setup: create .venv with every Python package the tests need, plus system packages
## (and the npm packages of the grpc-js test)
setup: system-deps $(STAMP) $(CHECKOV) $(GRPCJS_STAMP)

## system-deps: redis-server, prometheus, wrk, h2load, nodejs and npm from Debian when
## missing (root only)
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$(echo $$missing | tr ' ' '\n' | sort -u) >/dev/null; \
	  else \
	    echo "missing:$$missing (not root: tests that need them will skip)"; \
	  fi; \
	fi; \
	command -v kubectl >/dev/null || \
	  echo "kubectl missing: the kustomize tests will skip (install it from your distribution)"

## test: run the whole test suite
test: setup
	$(BIN)/pytest -q -p no:cacheprovider -n 3 --dist loadfile $(PYTEST_ARGS)

## lint: ruff, mypy and the import layers of pyproject.toml's [tool.importlinter]
lint: $(STAMP)
	$(BIN)/ruff check operator runtime tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## demo: kind cluster with everything in it, then a canary that must promote (needs Docker;
## scripts/demo.sh; DEMO_ARGS=rollout repeats only the canary on the running cluster)
demo:
	@scripts/demo.sh $(DEMO_ARGS)

## e2e: end-to-end suite against the kind cluster of `make demo` (skips, saying why, without)
e2e: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m e2e -rs tests/e2e

## bench-operator: 200 ModelDeployments to Ready with the real operator and a real MLflow
## against the emulated API, then a quiet window and spec changes; fails unless all are
## Ready (benchmarks/operator: --sizes 1000,5000,10000 --check for the scale runs)
bench-operator: $(STAMP)
	$(BIN)/python benchmarks/operator/run.py --count 200

## sync: generate the CRD from operator/modelship_operator/api.py (scripts/crd_schema.py)
## and rewrite its copies and rbac.py's RULES in the chart and kustomize base,
## the README's ModelDeployment reference and the Argo CD health check's copies in
## kustomize/components/argocd-health and docs/gitops.md (a test fails when they are stale)
sync: $(STAMP)
	$(BIN)/python scripts/sync_generated.py

## locks: regenerate the images' hash-locked dependencies from operator/pyproject.toml and
## runtime/pyproject.toml (needs PyPI)
locks: $(STAMP)
	$(BIN)/pip-compile --quiet --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o requirements/runtime.lock runtime/pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o requirements/operator.lock operator/pyproject.toml
	cd requirements && ../$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links -o build.lock build.in

## clean: remove .venv and the linters' caches
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache

## bench-runtime: modelship-runtime vs MLServer and KServe (issue 6; ~18 min, needs wrk)
.PHONY: bench-runtime
bench-runtime: $(STAMP)
	$(BIN)/python benchmarks/runtime/run.py $(BENCH_ARGS)

## protos: regenerate the runtime's gRPC modules from the .proto files in
## runtime/modelship_runtime/_proto (the V2 service, gRPC Server Reflection v1 and v1alpha;
## grpcio-tools; a test fails when they are stale)
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py
