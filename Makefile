# One task runner for humans and CI. `make test` and `make demo` work on a fresh machine:
# they install what the local stack needs (apt, a Python venv, Go builds; cached outside git).
SHELL := /bin/bash
.DEFAULT_GOAL := build
CARGO ?= cargo
TESTENV := scripts/testenv.sh

.PHONY: build release test test-faults unit integration lint fmt demo up down install bench bench-churn clean-testenv

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

install:
	$(TESTENV) install

up:
	$(TESTENV) up

down:
	$(TESTENV) down
	$(TESTENV) leftovers

# Unit tests, then every integration test against the real stack, which is stopped
# afterwards whatever the outcome; then nothing of the stack's node may remain.
test: install
	$(CARGO) build --locked --all-targets
	$(TESTENV) up
	@set -o pipefail; rc=0; \
	  $(CARGO) test --locked --all-targets || rc=$$?; \
	  $(TESTENV) down || rc=1; \
	  $(TESTENV) leftovers || rc=1; \
	  exit $$rc

unit:
	$(CARGO) test --locked --lib --bins

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

demo: install
	scripts/demo.sh

# The fault suite alone (it also runs in `make test`): AWS, API server, etcd and leader
# failures, floods, malformed secrets, conflicting edits. Leaves the stack running.
test-faults: install
	$(CARGO) test --locked --test faults

# regcred against the usual delete-and-create cron script (bench/baseline-cron.sh), on the
# real stack in a private cluster; prints a table and writes target/bench/results.md.
NAMESPACES ?= 1000
bench: install
	NAMESPACES=$(NAMESPACES) $(CARGO) bench --locked --bench bench

# The namespace churn alone (issue 12): CHURN namespaces created, served and deleted under
# one `regcred run`; its memory and regcred_namespaces_tracked before, with them and after.
CHURN ?= 10000
bench-churn: install
	BENCH_ONLY=churn CHURN=$(CHURN) $(CARGO) bench --locked --bench bench
