# Thin wrappers; the logic lives in Rust and scripts/.
# `stack` and the platform crates (crates/) are tested and linted in separate cargo runs: one
# workspace-wide run unifies their dependencies' features (axum turns on hyper's server side),
# which rebuilds all of `stack`'s dependencies a second time.
.PHONY: help deps deps-microvm build build-microvm up down test test-microvm check bench acceptance

STACK := target/release/stack

help:            ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps:            ## install the servers of the default stack (Debian)
	scripts/install-deps.sh

deps-microvm:    ## also what the microvm backend needs: protoc, busybox-static, BoxLite's runtime
	scripts/install-deps.sh --microvm

build:           ## build the release binary
	cargo build --release --locked

build-microvm:   ## the release binary with the microvm backend (docs/microvm.md)
	cargo build --release --locked --features microvm

up: deps build   ## install, build and bring up the default stack
	$(STACK) up

down:            ## stop the default stack (data kept)
	$(STACK) down

acceptance: build ## the shared CLI contract checks
	../shared/acceptance/run $(STACK)

test: deps-microvm build ## the whole suite: unit + integration, microvm feature, CLI contract
	cargo test --locked --all-targets
	cargo test --locked -p testbed -p sandbox -p runner -p platform-proto -p control-plane -p boxarchive -p objectstore --all-targets
	$(MAKE) test-microvm
	@if [ -x ../shared/acceptance/run ]; then ../shared/acceptance/run $(STACK); else echo "acceptance: ../shared not present, skipped"; fi

test-microvm:    ## the microvm backend's and box driver's tests (booting ones skip, with the reason, where KVM cannot boot)
	cargo test --locked --features microvm --lib backend::microvm
	cargo test --locked --features microvm --test it microvm:: -- --nocapture
	cargo test --locked -p sandbox -p runner --features runner/microvm --lib --bins
	@# The runner's booting test reads this host boot's verdict: doctor probes once and caches it.
	target/debug/stack --state-dir target/boot-probe doctor >/dev/null || true
	STACK_BOOT_PROBE=$(CURDIR)/target/boot-probe/boxlite/boot-probe.json \
	  cargo test --locked -p sandbox --features microvm --test it microvm:: -- --nocapture
	STACK_BOOT_PROBE=$(CURDIR)/target/boot-probe/boxlite/boot-probe.json \
	  cargo test --locked -p runner --features microvm --test it microvm:: -- --nocapture

check:           ## formatting and lints, as CI runs them (both builds: default and microvm)
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked -p testbed -p sandbox -p runner -p platform-proto -p control-plane -p boxarchive -p objectstore --all-targets -- -D warnings
	cargo clippy --locked --all-targets --features microvm -- -D warnings
	cargo clippy --locked -p sandbox -p runner --all-targets --features runner/microvm -- -D warnings

bench: build     ## benchmarks: cold/warm up and down against the critical-path limit
	scripts/bench.sh
