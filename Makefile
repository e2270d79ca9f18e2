# Cablecar — the commands a newcomer needs: `make run` and `make test`.
GO      ?= go
BIN     := bin/cablecar
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cablecar/cablecar/sidecar.Version=$(VERSION)

# What the tests run for real: Redis, Ruby with Rack, Puma, and Chromium for
# the browser test of the chat example (Debian packages).
TEST_PKGS  := redis-server ruby ruby-rack ruby-minitest ruby-rspec ruby-redis ruby-railties ruby-rails ruby-sqlite3 puma chromium
BENCH_PKGS := nginx-light wrk

.PHONY: all build run check test ruby-test unit e2e deps deps-bench jsdeps bench-proxy bench-ws bench-redis bench-ruby bench-rails bench-peers bench-go fmt vet clean demo demo-presence demo-rails soak

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

## run: Cablecar on :3000 in front of the app on 127.0.0.1:3001 (in-memory broker); once the
## app answers, `cablecar doctor` checks the wiring once (never fatal). Ctrl-C stops it.
## DOCTOR_FLAGS: e.g. -path /cable, the path your WebSockets use.
DOCTOR_FLAGS ?=
run: build
	@test -n "$$CABLECAR_CALLBACK_SECRET" || echo "make run: callbacks are unsigned: export CABLECAR_CALLBACK_SECRET=\$$(openssl rand -hex 32) for Cablecar and the app alike"
	@./$(BIN) -config sidecar.yaml & pid=$$!; \
	trap 'wait $$pid; exit 0' INT; trap 'kill -TERM $$pid; wait $$pid; exit 0' TERM; \
	./$(BIN) doctor -config sidecar.yaml -wait 60s $(DOCTOR_FLAGS) || true; \
	wait $$pid

## demo: the chat example (examples/chat) on http://localhost:3000/; Ctrl-C stops it.
demo: build
	bash examples/chat/demo.sh

## demo-presence: the device dashboard (examples/presence) on http://localhost:3000/, devices driven from the terminal.
.PHONY: demo-presence
demo-presence: build
	bash examples/presence/demo.sh

## demo-rails: the Rails chat example (examples/rails_chat: ActionCable channels and Turbo
## Streams, Debian's Rails 6.1) on http://localhost:3000/; Ctrl-C stops it.
demo-rails: build
	bash examples/rails_chat/demo.sh

## check: validate sidecar.yaml and print the effective configuration.
check: build
	./$(BIN) -check -config sidecar.yaml

## test: unit and end-to-end tests with the race detector (installs what they need).
test: deps jsdeps vet ruby-test
	$(GO) test -race -count=1 -timeout 15m ./...

## ruby-test: the gem's own tests (minitest, and the test kit under RSpec), and the hand-written ActionCable test app's; no sidecar needed.
ruby-test: deps
	cd ruby && ruby -w -Ilib -Itest -e 'Dir.glob("test/*_test.rb").sort.each { |f| require File.expand_path(f) }'
	cd ruby && rspec -I lib --order defined spec
	ruby -w testdata/acapp/acapp_test.rb
	ruby -w -I ruby/lib examples/presence/test/presence_test.rb
	ruby -w -I ruby/lib examples/rails_chat/test/chat_channel_test.rb

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: deps
	$(GO) test -race -count=1 -timeout 15m ./e2e/...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

## deps: install the Debian packages the tests use, if missing.
deps:
	@sh e2e/deps.sh $(TEST_PKGS)

deps-bench:
	@sh e2e/deps.sh $(TEST_PKGS) $(BENCH_PKGS)

## jsdeps: the real JavaScript clients (@rails/actioncable, Turbo, @anycable/web), pinned,
## fetched with Debian's npm into e2e/.jsdeps (git-ignored) for the browser tests.
jsdeps:
	@sh e2e/jsdeps.sh

## bench-proxy: requests/s and latency, direct vs nginx vs Cablecar (see docs/performance.md).
bench-proxy: deps-bench
	bash e2e/bench/proxy.sh

# WebSockets on the real binary in front of Puma: memory and goroutines per
# idle connection, fan-out latency of one broadcast to every connection.
bench-ws: deps
	$(GO) test -run - -bench WSConnections -benchtime 1x -timeout 10m ./e2e/

# Broadcasts through Redis: two nodes, one redis-server, the app's raw PUBLISH
# fanned out to 10,000 clients, and the highest publish rate that keeps p99
# under 100 ms (see docs/performance.md).
bench-redis: deps
	$(GO) test -run - -bench Redis -benchtime 1x -timeout 15m ./e2e/

# The gem's cost per callback, in process (ruby/bench/middleware.rb), and
# echo round trips through Cablecar and Puma, gem vs a hand-written handler.
bench-ruby: deps
	ruby -Iruby/lib ruby/bench/middleware.rb
	$(GO) test -run - -bench GemEcho -benchtime 1x -timeout 5m ./e2e/

# The seed's claim about ActionCable on Puma (docs/performance.md, "Rails"):
# 5,000 idle ActionCable clients against ActionCable inside Puma and against
# Cablecar in front of the same app; BENCH_CLIENTS=… for another count.
bench-rails: deps
	bash e2e/bench/rails.sh

# The chaos soak (docs/soak.md): two nodes, Redis, the app under Puma and
# SOAK_CLIENTS clients chatting for SOAK_DURATION while nodes are killed and
# restarted, Redis restarts and the app fails; it fails on a lost or
# reordered event or a node that does not come back to rest. Not part of
# `make test`. Smoke run: make soak SOAK_DURATION=45s SOAK_CLIENTS=300
SOAK_DURATION ?= 5m
SOAK_CLIENTS  ?= 2000
SOAK_TIMEOUT  ?= 30m
soak: deps
	SOAK_DURATION=$(SOAK_DURATION) SOAK_CLIENTS=$(SOAK_CLIENTS) \
		$(GO) test -tags soak -run '^TestSoak$$' -count=1 -v -timeout $(SOAK_TIMEOUT) ./e2e/

# Cablecar beside anycable-go and Centrifugo (built from the Go module proxy
# into e2e/.peers the first time) on issue 13's cells; prints a markdown
# table. PEERS_CELLS, PEERS_RUNS, PEERS_SETTLE: see e2e/bench/peers.sh.
bench-peers: deps
	bash e2e/bench/peers.sh

# In-process Go benchmarks (pass-through, event bodies, broker, replies).
bench-go:
	$(GO) test -run - -bench . -benchmem $$($(GO) list ./... | grep -v /e2e)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
