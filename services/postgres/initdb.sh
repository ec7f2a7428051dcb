#!/bin/sh
# Creates the PostgreSQL cluster in $1/cluster, atomically: initdb writes into a scratch dir that
# is renamed into place only when complete, so an interrupted first start (stack killed, machine
# off) leaves nothing half-made; the next `stack up` simply starts over.
#   initdb.sh DATA_DIR
set -eu
data=$1
rm -rf "$data/cluster.partial"
/usr/lib/postgresql/15/bin/initdb -D "$data/cluster.partial" \
  --username=boxlite --auth=trust --encoding=UTF8 --no-locale --no-instructions \
  --no-sync  # an empty template cluster is cheap to recreate; the server itself keeps fsync on
mv "$data/cluster.partial" "$data/cluster"
