#!/usr/bin/env bash
# Bootstrap of the single-node Garage that serves the `minio` (S3) role, run by `stack up` right
# after Garage starts (and retried until Garage answers). Idempotent: every step checks first,
# so a re-run changes nothing and a missing piece is repaired:
#   the node's layout role, the dev key (allowed to create buckets), each bucket, and the key's
#   read/write/owner permission on it.
#   bootstrap.sh CONFIG KEY_ID KEY_SECRET BUCKET...
#
# It calls Garage's admin API through `garage json-api`, which goes over the RPC port with the
# cluster's RPC secret: about 5 ms of CPU a call. The admin API's HTTP port would need a bearer
# token, and Garage checks one with argon2 on every request and hashes the configured one at
# every start, about 37 ms of CPU each, which is why garage.toml configures none. Each CLI call
# waits about 40 ms on the network (Garage's RPC), so independent calls run side by side.
# A warm start costs one call.
set -eu
config=$1 key_id=$2 key_secret=$3
shift 3

rpc="" meta=""
while IFS= read -r line; do
  case "$line" in
    "rpc_bind_addr = "*) rpc=${line#*\"}; rpc=${rpc%\"*} ;;
    "metadata_dir = "*) meta=${line#*\"}; meta=${meta%\"*} ;;
  esac
done < "$config"
# Exit 78 (EX_CONFIG) tells `stack up` that retrying cannot help; any other failure is retried.
[ -n "$rpc" ] || { echo "$config has no rpc_bind_addr" >&2; exit 78; }
# Garage is still starting when `stack up` runs this. Wait here until its RPC port answers: a
# refused connect costs microseconds, and `read -t` on a pipe that nobody writes to sleeps
# without starting a process. After a second, fail: `stack up` checks that Garage still runs
# and runs this again.
rpc_answers() {
  { exec 3<>"/dev/tcp/${rpc%:*}/${rpc##*:}"; } 2>/dev/null || return 1
  exec 3<&-
}
if ! rpc_answers; then
  exec {nap}<> <(:)
  for _ in {1..100}; do
    read -rt 0.01 -u "$nap" _ || true
    if rpc_answers; then break; fi
  done
  exec {nap}<&-
  rpc_answers || { echo "garage's RPC port $rpc does not answer yet" >&2; exit 1; }
fi

# api ENDPOINT [JSON]: one admin API call. Sets $ok (1 when it succeeded), $out (what it
# printed) and $body ($out without whitespace, to match against).
api() {
  if out=$(garage -c "$config" json-api "$@" 2>&1); then ok=1; else ok=0; fi
  body=${out//[[:space:]]/}
}

# want WHAT: fail with Garage's answer unless the last call succeeded.
want() {
  [ "$ok" = 1 ] || { echo "garage refused to $1: $out" >&2; exit 1; }
}

# Does the key (its info in $key_info) have read, write and owner on the bucket named $1?
full_access() {
  [[ $key_info =~ \"globalAliases\":\[[^]]*\"$1\"[^]]*\][^}]*\"permissions\":\{\"owner\":true,\"read\":true,\"write\":true\} ]]
}
can_create_buckets() { [[ $key_info == *'"permissions":{"createBucket":true}'* ]]; }

# A warm start: the key reaches every bucket, so the layout, key and buckets all exist. A node
# that never had a layout (no cluster_layout file yet) has no key to ask about.
ok=0
if [ ! -d "$meta" ] || [ -e "$meta/cluster_layout" ]; then
  api GetKeyInfo "{\"id\":\"$key_id\"}"
  if [ "$ok" = 1 ]; then
    key_info=$body
    missing=0
    for bucket in "$@"; do full_access "$bucket" || missing=1; done
    can_create_buckets || missing=1
    [ "$missing" = 1 ] || { echo "garage ready: key $key_id, buckets: $*"; exit 0; }
  fi
fi
key_known=$ok

# A fresh node has no role: give it one (1 GB nominal capacity) and apply the next layout.
api GetClusterStatus
want "report its status"
if [[ $body == *'"role":null'* ]]; then
  node=${body#*'"id":"'}
  node=${node%%'"'*}
  version=${body#*'"layoutVersion":'}
  version=${version%%[!0-9]*}
  api UpdateClusterLayout "{\"roles\":[{\"id\":\"$node\",\"zone\":\"dc1\",\"capacity\":1000000000,\"tags\":[]}]}"
  want "stage a layout role for node $node"
  api ApplyClusterLayout "{\"version\":$((version + 1))}"
  want "apply layout version $((version + 1))"
fi

if [ "$key_known" = 0 ]; then
  # Missing, or unreadable before the layout existed: import it, and look it up if it exists.
  api ImportKey "{\"accessKeyId\":\"$key_id\",\"secretAccessKey\":\"$key_secret\",\"name\":\"stack\"}"
  if [ "$ok" = 0 ] && [[ $out == *KeyAlreadyExists* ]]; then
    api GetKeyInfo "{\"id\":\"$key_id\"}"
    if [ "$ok" = 0 ]; then
      echo "garage will not import key $key_id again: it was deleted, and Garage never reuses a key id." >&2
      echo "fix: \`stack rebuild-box minio\` (a fresh Garage; its objects are lost), or set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY to a new key (GK + 24 hex digits, 64 hex digits)" >&2
      exit 78
    fi
  fi
  want "import key $key_id"
  key_info=$body
fi

# ensure_bucket NAME: the bucket exists and the key has read, write and owner on it. A new
# bucket gets the permission in the same call, through a local alias of the key with the same
# name (it resolves to the same bucket, and S3 lists the name once).
ensure_bucket() {
  local perms='{"read":true,"write":true,"owner":true}'
  api CreateBucket "{\"globalAlias\":\"$1\",\"localAlias\":{\"accessKeyId\":\"$key_id\",\"alias\":\"$1\",\"allow\":$perms}}"
  [ "$ok" = 0 ] || return 0
  if [[ $out == *BucketAlreadyExists* ]]; then
    api GetBucketInfo "{\"globalAlias\":\"$1\"}"
  else
    # The key may hold a local alias of that name already: create it without one.
    api CreateBucket "{\"globalAlias\":\"$1\"}"
  fi
  want "create bucket $1"
  local id=${body#*'"id":"'}
  id=${id%%'"'*}
  api AllowBucketKey "{\"bucketId\":\"$id\",\"accessKeyId\":\"$key_id\",\"permissions\":$perms}"
  want "give key $key_id access to bucket $1"
}

# The remaining repairs are independent: run them side by side, each in a subshell.
pids=()
if ! can_create_buckets; then
  (api UpdateKey "{\"id\":\"$key_id\",\"body\":{\"allow\":{\"createBucket\":true}}}"; want "let key $key_id create buckets") &
  pids+=($!)
fi
for bucket in "$@"; do
  full_access "$bucket" && continue
  ensure_bucket "$bucket" &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || exit 1
echo "garage ready: key $key_id, buckets: $*"
