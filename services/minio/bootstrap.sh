#!/usr/bin/env bash
# First-boot bootstrap of the single-node Garage that serves the `minio` (S3) role, run by
# `stack up` right after Garage starts (and retried until Garage answers). Idempotent: every
# step checks first, so a re-run changes nothing and a missing piece is repaired.
#   bootstrap.sh CONFIG KEY_ID KEY_SECRET BUCKET...
set -eu
config=$1 key_id=$2 key_secret=$3
shift 3
g() { garage -c "$config" "$@"; }

# Fast path, every start but the first: one admin API request confirms the key can reach every
# bucket (buckets exist only once the node has its layout). It runs inside this one bash (no
# curl, no sed): the script runs while every other service starts too, on a small machine, and
# each spawned program costs a few milliseconds of CPU. Anything missing falls through to the
# CLI checks below, which repair it (each opens an RPC session: about 50 ms).
admin="" token="" section=""
while IFS= read -r line; do
  case "$line" in
    "["*"]") section=$line ;;
    "api_bind_addr = "*) [ "$section" != "[admin]" ] || { admin=${line#*\"}; admin=${admin%\"*}; } ;;
    "admin_token = "*) token=${line#*\"}; token=${token%\"*} ;;
  esac
done < "$config"
if [ -n "$admin" ] && [ -n "$token" ]; then
  # Nothing listens yet: fail, and `stack up` retries the step in a moment.
  { exec 3<>"/dev/tcp/${admin%:*}/${admin##*:}"; } 2>/dev/null || { echo "garage's admin API does not answer yet" >&2; exit 1; }
  printf 'GET /v2/GetKeyInfo?id=%s HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n' "$key_id" "$admin" "$token" >&3
  info=""
  while IFS= read -r line || [ -n "$line" ]; do info+=${line//[[:space:]]/}; done <&3
  exec 3<&-
  missing=0
  for bucket in "$@"; do
    [[ $info == *'"globalAliases":['*'"'"$bucket"'"'* ]] || missing=1
  done
  if [[ $info == HTTP/1.?200* ]] && [ "$missing" = 0 ]; then
    echo "garage ready: key $key_id, buckets: $*"
    exit 0
  fi
fi

# The CLI checks: three calls on an initialised node.
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
