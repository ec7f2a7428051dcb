#!/bin/sh
# Bundles server.mjs and its packages into one file, dist/server.cjs (esbuild), which start.cjs
# loads through V8's code cache. Node 20 spends most of a start resolving and compiling the ~60
# modules of oidc-provider and its dependencies one by one: bundled and cached, the provider
# answers in about 0.17 s instead of 0.40 s. Run by scripts/install-deps.sh, and by start.cjs
# when the bundle is older than its sources; a no-op while it is newer.
set -eu
cd "$(dirname "$0")"
if [ -f dist/server.cjs ] && [ dist/server.cjs -nt server.mjs ] && [ dist/server.cjs -nt package-lock.json ]; then
  exit 0
fi
[ -x node_modules/.bin/esbuild ] || { echo "services/dex has no node_modules: run scripts/install-deps.sh (npm ci)" >&2; exit 1; }
npm run --silent build
