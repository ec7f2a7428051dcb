#!/usr/bin/env bash
# Benchmarks of the default stack:
#   1. `cargo bench --bench stack` (benches/stack.rs says what is measured and why): cold `up`,
#      warm `up`, `down` and warm start against limits measured in the same run, for the
#      infrastructure tier and then for the whole stack, platform tier included;
#   2. sandboxes through a runner's HTTP API (runc, the image in a real registry): create to
#      exec-ready p50/p95 over 20, and an exec's round trip (crates/runner/tests/it/bench.rs);
#   3. the control plane under load: `GET /api/sandbox` with 50 concurrent clients for 2000
#      requests (oha, from crates.io, installed once under $STACK_TOOLS_DIR/oha), p50 and p99;
#   4. box archives through a runner (crates/runner/tests/it/backups.rs): backup to S3 and
#      restore of a sandbox with BENCH_ARCHIVE_MB (1024) written, against `tar | zstd -3` of the
#      same layer and `aws s3 cp` of the same bytes, measured in the same run;
#   5. moves: `stack rehearse migration --sandboxes 10 --size 100` on the default stack (target:
#      p50 <= 2 s per sandbox moved; the reference measured 35-42 s);
#   6. whole-stack snapshots: `stack backup` and `stack restore latest --yes` of the default stack
#      (platform tier included), and the whole `stack rehearse backup`.
#
#   BENCH_RUNS=5 scripts/bench.sh        # BENCH_TIER=infrastructure|platform: one tier only
#   BENCH_ONLY=stack|sandboxes|api|archive|migration|snapshot scripts/bench.sh
# The default stack's ports must be free (`stack down` first). Ratios, never assertions.
set -euo pipefail
cd "$(dirname "$0")/.."
only=${BENCH_ONLY:-}
tools=${STACK_TOOLS_DIR:-/opt/stack-tools}

if [ -z "$only" ] || [ "$only" = stack ]; then
  cargo bench --locked --bench stack
fi

if [ -z "$only" ] || [ "$only" = sandboxes ]; then
  echo
  echo "sandboxes (runc, through the runner's HTTP API; target: create -> exec-ready p50 <= 0.300s):"
  cargo test --locked --release -p runner --test it bench -- --ignored --nocapture 2>&1 |
    grep -E '^(through|skipped)' || { echo "the runner bench failed: run it alone to see why" >&2; exit 1; }
fi

if [ -z "$only" ] || [ "$only" = archive ]; then
  echo
  echo "box archives through a runner (target: >= 50% of the slower of tar|zstd -3 and aws s3 cp):"
  BACKUP_BENCH_MB=${BENCH_ARCHIVE_MB:-1024} \
    cargo test --locked --release -p runner --test it bench_backup -- --ignored --nocapture 2>&1 |
    grep -E '^(sandbox with|baseline|ratio|skipped)' || { echo "the archive bench failed: run it alone to see why" >&2; exit 1; }
fi

# The default stack in a state dir of its own, for the sections that need it running.
platform_up() {
  cargo build --locked --release --quiet --bin stack
  state=$(mktemp -d /tmp/stack-bench-platform.XXXXXX)
  # PostgreSQL runs as the service user when this runs as root: it must reach its data dir.
  chmod 755 "$state"
  stack=("${CARGO_TARGET_DIR:-target}/release/stack" --state-dir "$state" --plain)
  cleanup() { "${stack[@]}" down >/dev/null 2>&1 || true; rm -rf "$state"; }
  trap cleanup EXIT
  "${stack[@]}" up >/dev/null 2>"$state/up.log" || { cat "$state/up.log" >&2; exit 1; }
  eval "$("${stack[@]}" env)"
}

if [ -z "$only" ] || [ "$only" = migration ]; then
  [ -n "${state:-}" ] || platform_up
  echo
  echo "moves: stack rehearse migration --sandboxes 10 --size 100 (target: p50 <= 2 s per sandbox; reference 35-42 s)"
  "${stack[@]}" rehearse migration --sandboxes 10 --size 100 --json > "$state/rehearsal.json" ||
    { cat "$state/rehearsal.json"; echo "the rehearsal failed" >&2; exit 1; }
  python3 - "$state/rehearsal.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
there = [m["figures"] for m in r["moves"] if m["to"] == r["target"]]
print(f"  per sandbox moved ({len(there)} x {r['sizeMb']} MiB): p50 {r['migrateP50Ms'] / 1000:.2f} s, p95 {r['migrateP95Ms'] / 1000:.2f} s"
      f"  (ratio to the 2 s target: {r['migrateP50Ms'] / 2000:.2f})")
for k in ("stopMs", "backupMs", "restoreMs", "switchMs"):
    v = sorted(m.get(k, 0) for m in there)
    print(f"    {k[:-2]:8} p50 {v[len(v) // 2] / 1000:.2f} s")
for p in r["phases"]:
    print(f"  {p['name']:8} {p['ms'] / 1000:7.2f} s  {p['detail']}")
EOF
fi

if [ -z "$only" ] || [ "$only" = snapshot ]; then
  [ -n "${state:-}" ] || platform_up
  echo
  echo "whole-stack snapshots of the default stack:"
  # Outside the state dir: the rehearsal deletes that on the way.
  snapshots=$(mktemp -d /tmp/stack-bench-snapshots.XXXXXX)
  timed() { local t0; t0=$(date +%s.%N); "$@" >/dev/null 2>"$snapshots.log" || { cat "$snapshots.log" >&2; return 1; }; python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f} s')" "$t0" "$(date +%s.%N)"; }
  echo "  stack backup                 $(timed "${stack[@]}" backup --to "$snapshots")"
  latest=$(ls -d "$snapshots"/*/ | tail -n 1)
  echo "  stack restore --yes          $(timed "${stack[@]}" restore "$latest" --yes)"
  echo "  stack rehearse backup        $(timed "${stack[@]}" rehearse backup --yes --to "$snapshots")"
  rm -rf "$snapshots" "$snapshots.log"
fi

if [ -z "$only" ] || [ "$only" = api ]; then
  oha=$(command -v oha || echo "$tools/oha/bin/oha")
  if [ ! -x "$oha" ]; then
    echo "installing oha (the HTTP load generator) into $tools/oha, once"
    cargo install --locked --quiet --root "$tools/oha" oha
  fi
  [ -n "${state:-}" ] || platform_up
  token=$(curl -fsS -d grant_type=password -d username=test01@boxlite.dev -d password=password \
    -d 'scope=openid email profile' -d client_id=boxlite "$OIDC_ISSUER/token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  # Ten sandboxes to list, as a user with some running.
  for _ in $(seq 10); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'content-type: application/json' \
      -d '{"image": "boxlite/busybox:latest"}' "$CONTROL_PLANE_URL/api/sandbox"
  done
  "$oha" --no-tui --output-format json -n 2000 -c 50 -H "Authorization: Bearer $token" \
    "$CONTROL_PLANE_URL/api/sandbox" > "$state/oha.json"
  python3 - "$state/oha.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print()
print("control plane under load: GET /api/sandbox (10 sandboxes), 50 concurrent clients, 2000 requests (oha)")
print(f"  p50 {p['p50'] * 1000:.1f} ms   p99 {p['p99'] * 1000:.1f} ms   {r['summary']['requestsPerSec']:.0f} requests/s   statuses {codes}")
EOF
fi
