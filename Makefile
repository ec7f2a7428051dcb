# Thin wrappers; the logic lives in Rust and scripts/.
.PHONY: help deps build up down test check bench acceptance

STACK := target/release/stack

help:            ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps:            ## install the servers of the default stack (Debian)
	scripts/install-deps.sh

build:           ## build the release binary
	cargo build --release --locked

up: deps build   ## install, build and bring up the default stack
	$(STACK) up

down:            ## stop the default stack (data kept)
	$(STACK) down

acceptance: build ## the shared CLI contract checks
	../shared/acceptance/run $(STACK)

test: build      ## the whole suite: unit + integration tests, then the CLI contract checks
	cargo test --locked --all-targets
	@if [ -x ../shared/acceptance/run ]; then ../shared/acceptance/run $(STACK); else echo "acceptance: ../shared not present, skipped"; fi

check:           ## formatting and lints, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

bench: build     ## benchmarks: cold/warm up and down against the critical-path limit
	scripts/bench.sh
