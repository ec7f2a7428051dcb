#!/usr/bin/env bash
# Benchmarks of the default stack (see benches/stack.rs for what is measured and why).
#   BENCH_RUNS=5 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked --bench stack
