#!/usr/bin/env bash
# Bootstrap of the single-node Garage that serves the `minio` (S3) role, run by `stack up` right
# after Garage starts (and retried until Garage answers). Idempotent: every step checks first,
# so a re-run changes nothing and a missing piece is repaired:
#   the node's layout role, the dev key (allowed to create buckets), each bucket, and the key's
#   read/write/owner permission on it.
#   bootstrap.sh CONFIG KEY_ID KEY_SECRET BUCKET...
#
# It speaks Garage's admin API (v2, JSON) from this one bash over /dev/tcp: no CLI processes
# (each opened an RPC session, about 60 ms of CPU) and no curl, because it runs while every
# other service starts too, on small machines. A warm start costs one request.
set -eu
config=$1 key_id=$2 key_secret=$3
shift 3

admin="" token="" section=""
while IFS= read -r line; do
  case "$line" in
    "["*"]") section=$line ;;
    "api_bind_addr = "*) [ "$section" != "[admin]" ] || { admin=${line#*\"}; admin=${admin%\"*}; } ;;
    "admin_token = "*) token=${line#*\"}; token=${token%\"*} ;;
  esac
done < "$config"
[ -n "$admin" ] && [ -n "$token" ] || { echo "$config has no [admin] api_bind_addr and admin_token" >&2; exit 2; }

# api METHOD PATH [JSON]: sets $status (HTTP code) and $body (whitespace removed).
api() {
  { exec 3<>"/dev/tcp/${admin%:*}/${admin##*:}"; } 2>/dev/null || {
    # Nothing listens yet: fail, and `stack up` retries the step in a moment.
    echo "garage's admin API does not answer yet" >&2
    exit 1
  }
  local data=${3:-}
  printf '%s /v2/%s HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$1" "$2" "$admin" "$token" "${#data}" "$data" >&3
  local response="" line
  while IFS= read -r line || [ -n "$line" ]; do response+=${line%$'\r'}$'\n'; done <&3
  exec 3<&-
  status=${response#HTTP/1.? }
  status=${status:0:3}
  said=${response#*$'\n'$'\n'}
  said=${said//$'\n'/ }
  # Matched against, so without the pretty-printer's whitespace.
  body=${said//[[:space:]]/}
}

# want CODE WHAT: fail with Garage's answer unless the last request returned CODE.
want() {
  [ "$status" = "$1" ] || { echo "garage refused to $2 (HTTP $status): $said" >&2; exit 1; }
}

# A warm start: the key reaches every bucket, so the layout, key and buckets all exist.
api GET "GetKeyInfo?id=$key_id"
key_info=$body
has_bucket() { [[ $key_info == *'"globalAliases":['*'"'"$1"'"'* ]]; }
if [ "$status" = 200 ]; then
  missing=0
  for bucket in "$@"; do has_bucket "$bucket" || missing=1; done
  [ "$missing" = 1 ] || { echo "garage ready: key $key_id, buckets: $*"; exit 0; }
fi

# A fresh node has no role: give it one (1 GB nominal capacity) and apply the next layout.
api GET GetClusterStatus
want 200 "report its status"
if [[ $body == *'"role":null'* ]]; then
  node=${body#*'"id":"'}
  node=${node%%'"'*}
  version=${body#*'"layoutVersion":'}
  version=${version%%[!0-9]*}
  api POST UpdateClusterLayout "{\"roles\":[{\"id\":\"$node\",\"zone\":\"dc1\",\"capacity\":1000000000,\"tags\":[]}]}"
  want 200 "stage a layout role for node $node"
  api POST ApplyClusterLayout "{\"version\":$((version + 1))}"
  want 200 "apply layout version $((version + 1))"
fi

api GET "GetKeyInfo?id=$key_id"
if [ "$status" != 200 ]; then
  api POST ImportKey "{\"accessKeyId\":\"$key_id\",\"secretAccessKey\":\"$key_secret\",\"name\":\"stack\"}"
  if [ "$status" = 409 ]; then
    echo "garage will not import key $key_id again: it was deleted, and Garage never reuses a key id." >&2
    echo "fix: \`stack rebuild-box minio\` (a fresh Garage; its objects are lost), or set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY to a new key (GK + 24 hex digits, 64 hex digits)" >&2
    exit 1
  fi
  want 200 "import key $key_id"
  api POST "UpdateKey?id=$key_id" '{"allow":{"createBucket":true}}'
  want 200 "let key $key_id create buckets"
  api GET "GetKeyInfo?id=$key_id"
fi
key_info=$body

for bucket in "$@"; do
  has_bucket "$bucket" && continue
  api GET "GetBucketInfo?globalAlias=$bucket"
  if [ "$status" != 200 ]; then
    api POST CreateBucket "{\"globalAlias\":\"$bucket\"}"
    want 200 "create bucket $bucket"
  fi
  bucket_id=${body#*'"id":"'}
  bucket_id=${bucket_id%%'"'*}
  api POST AllowBucketKey "{\"bucketId\":\"$bucket_id\",\"accessKeyId\":\"$key_id\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}"
  want 200 "give key $key_id access to bucket $bucket"
done
echo "garage ready: key $key_id, buckets: $*"
