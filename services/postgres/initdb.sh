#!/bin/sh
# Creates the PostgreSQL cluster in $1/cluster, with the `boxlite` database, atomically: everything
# is written into a scratch dir that is renamed into place only when complete, so an interrupted
# first start (stack killed, machine off) leaves nothing half-made and the next `stack up` simply
# starts over.
#   initdb.sh DATA_DIR
set -eu
data=$1
bin=/usr/lib/postgresql/15/bin
rm -rf "$data/cluster.partial"
# An empty template cluster is cheap to recreate (`stack rebuild-box postgres`), so it is written
# without fsync (--no-sync, -F); the server itself always runs with fsync on.
"$bin/initdb" -D "$data/cluster.partial" --username=boxlite --auth=trust --encoding=UTF8 \
  --no-locale --no-instructions --no-sync
# Single-user mode creates the database before the server ever listens: no client round trip,
# no CREATE DATABASE checkpoint competing with the other services' first start.
echo "CREATE DATABASE boxlite OWNER boxlite" |
  "$bin/postgres" --single -F -D "$data/cluster.partial" -c listen_addresses= -c unix_socket_directories= postgres >/dev/null
mv "$data/cluster.partial" "$data/cluster"
