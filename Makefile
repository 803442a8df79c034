# outbox: make help lists the targets.
GO ?= go

.PHONY: help quickstart services test soak bench lint

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

quickstart: ## run the quickstart: SQLite + in-process Kafka, no services needed
	$(GO) run ./examples/quickstart

services: ## make sure Postgres, MariaDB, RabbitMQ, NATS (JetStream), Redis and Chromium are installed, and the servers running and reachable
	./.ci/services

test: ## start the test services (.ci/services), run every test with the race detector, then the database restart test alone
	./.ci/services
	$(GO) test -race -count=1 -timeout 30m ./...
	OUTBOX_TEST_RESTART=$(CURDIR)/.ci/services $(GO) test -race -count=1 -timeout 10m -run '^TestDatabaseRestartLosesNothing$$' -v ./dispatcher

soak: ## kill a dispatcher process 100 times while 200,000 messages flow, on SQLite, Postgres and MariaDB in log and polling mode, and Postgres log-only (1.2M messages; about 8 minutes here)
	./.ci/services
	OUTBOX_SOAK_MESSAGES=200000 OUTBOX_SOAK_KILLS=100 $(GO) test -count=1 -timeout 90m -run 'TestKilledDispatchersLoseNothing' -v ./dispatcher

bench: ## start the databases, then drain and idle cases against SQLite, Postgres and MariaDB into Kafka
	./.ci/services
	$(GO) run ./internal/benchmark

lint: ## gofmt, go vet, and staticcheck when installed
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi
