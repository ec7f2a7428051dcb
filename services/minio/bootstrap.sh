#!/bin/sh
# First-boot bootstrap of the single-node Garage that serves the `minio` (S3) role, run by
# `stack up` right after Garage starts (and retried until Garage answers). Idempotent: every
# step checks first, so a re-run changes nothing and a missing piece is repaired.
#   bootstrap.sh CONFIG KEY_ID KEY_SECRET BUCKET...
set -eu
config=$1 key_id=$2 key_secret=$3
shift 3
g() { garage -c "$config" "$@"; }

# Every check is one CLI call (each opens an RPC session): three on an initialised node.
# A fresh node has no role: give it one (1 GB nominal capacity) and apply the next layout.
if g status | grep -q "NO ROLE ASSIGNED"; then
  node=$(g node id -q)
  current=$(g layout show | sed -n 's/^Current cluster layout version: \([0-9][0-9]*\).*/\1/p')
  g layout assign -z dc1 -c 1G "${node%%@*}" >/dev/null
  g layout apply --version $((${current:-0} + 1)) >/dev/null
fi

if ! g key info "$key_id" >/dev/null 2>&1; then
  g key import --yes -n stack "$key_id" "$key_secret" >/dev/null
  g key allow --create-bucket "$key_id" >/dev/null
fi

buckets=$(g bucket list)
for bucket in "$@"; do
  if ! printf '%s\n' "$buckets" | grep -qw -- "$bucket"; then
    g bucket create "$bucket" >/dev/null
    g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
  fi
done
echo "garage ready: key $key_id, buckets: $*"
